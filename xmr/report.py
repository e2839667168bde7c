"""Evaluation run folders: ``metrics.json``, ``report.md`` and PNG plots, and side-by-side comparison of runs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.errors import XMRError

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
MAIN_COLUMNS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5", "nDCG@5", "R@10", "RP@10")


def _percent(value: float | None) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: one row per metric family, one column per k."""
    values = result["metrics"]
    families = ["P", "nDCG", "R", "RP", "PSP", "PSnDCG"]
    ks = result["ks"]
    lines = ["| metric | " + " | ".join(f"@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for family in families:
        if f"{family}@{ks[0]}" in values:
            lines.append(f"| {family} | " + " | ".join(_percent(values.get(f"{family}@{k}")) for k in ks) + " |")
    return "\n".join(lines)


def _structure(result: dict[str, Any]) -> str:
    """What answered the queries; run folders written before predictors existed name a FAISS factory."""
    return result.get("structure") or f"faiss {result.get('faiss', '?')}"


def render_report(result: dict[str, Any], name: str) -> str:
    """The human-readable report of one run."""
    timings = result["timings"]
    depth = max(result["ks"])
    lines = [
        f"# Evaluation: {name}",
        "",
        f"- dataset: `{result['dataset']}` ({result['queries']} queries, "
        f"query modality: {result.get('modality', 'text')})",
        f"- predictor: `{result['index']}` ({result['labels_in_index']} labels, `{_structure(result)}`, "
        f"search parameters {result['search_params'] or '{}'})",
        f"- encoder: `{result['encoder'].get('type')}` `{result['encoder'].get('model', '')}`",
        f"- true label occurrences missing from the index: {result['true_labels_missing_from_index']}",
        f"- propensities: {_propensity_line(result)}",
        f"- reciprocal-pair filter: {result['filter']['pairs'] if result['filter'] else 'none'}",
        "",
        "All values in percent. PSP/PSnDCG are normalised by the best achievable value (pyxclib convention).",
        "",
        metrics_table(result),
        "",
        f"MAP@{depth} {_percent(result['metrics'][f'MAP@{depth}'])} · MRR@{depth} "
        f"{_percent(result['metrics'][f'MRR@{depth}'])} · coverage@{depth} "
        f"{_percent(result['metrics'][f'coverage@{depth}'])}",
    ]
    if result.get("set_metrics"):
        sets = result["set_metrics"]
        lines += ["", "Predicted label sets: " + " · ".join(
            f"{kind} P/R/F1 {_percent(sets[f'{kind}_precision'])}/{_percent(sets[f'{kind}_recall'])}/"
            f"{_percent(sets[f'{kind}_f1'])}" for kind in ("micro", "macro", "example"))]
    if result["groups"]:
        columns = [column for column in ("P@1", "P@5", "R@10", "RP@5", "RP@10") if column in result["metrics"]]
        lines += ["", "## By group", "", "| group | queries | " + " | ".join(columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for group, entry in result["groups"].items():
            lines.append(f"| {group} | {entry['queries']} | "
                         + " | ".join(_percent(entry["metrics"].get(c)) for c in columns) + " |")
    deciles = result["deciles"]
    lines += [
        "",
        f"## P@{deciles['k']} by label-frequency decile (label counts from {deciles['label_counts_from']})",
        "",
        "Decile 1 holds the rarest tenth of the labels, decile 10 the most frequent; the contributions sum to "
        f"P@{deciles['k']}.",
        "",
        "| decile | " + " | ".join(str(d + 1) for d in range(len(deciles["contribution"]))) + " |",
        "|---|" + "---|" * len(deciles["contribution"]),
        "| contribution | " + " | ".join(_percent(v) for v in deciles["contribution"]) + " |",
        "",
        "## Timings",
        "",
        f"encode {timings['encode_queries_per_s']:.1f} queries/s, search {timings['search_queries_per_s']:.1f} "
        f"queries/s, total {timings['total_s']:.1f} s, peak RSS {timings['peak_rss_mb']:.0f} MB",
        "",
        "![P@k and PSP@k](p_at_k.png)",
        "",
        f"![P@{deciles['k']} by decile](p_by_decile.png)",
        "",
    ]
    return "\n".join(lines)


def _propensity_line(result: dict[str, Any]) -> str:
    propensity = result["propensity"]
    if not propensity:
        return "none (no training split: PSP omitted)"
    return f"A={propensity['A']}, B={propensity['B']}, counted on `{propensity['train']}`"


def plot_run(result: dict[str, Any], folder: Path, name: str) -> None:
    """``p_at_k.png`` (P@k and PSP@k for k = 1..K) and ``p_by_decile.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result["curves"]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(curves["k"], [100 * v for v in curves["P@k"]], marker="o", label="P@k")
    if "PSP@k" in curves:
        axis.plot(curves["k"], [100 * v for v in curves["PSP@k"]], marker="s", label="PSP@k")
    axis.set(xlabel="k", ylabel="%", title=f"{name}: precision at k", xticks=curves["k"])
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "p_at_k.png", dpi=110)
    plt.close(figure)

    deciles = result["deciles"]
    figure, axis = plt.subplots(figsize=(6, 4))
    positions = range(1, len(deciles["contribution"]) + 1)
    axis.bar(positions, [100 * v for v in deciles["contribution"]])
    axis.set(xlabel="label-frequency decile (1 = rarest)", ylabel=f"contribution to P@{deciles['k']} (%)",
             title=f"{name}: P@{deciles['k']} by label frequency", xticks=list(positions))
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(folder / "p_by_decile.png", dpi=110)
    plt.close(figure)


def write_run(result: dict[str, Any], folder: str | Path) -> Path:
    """Write ``metrics.json``, ``report.md`` and the plots into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = folder.name
    (folder / METRICS_FILE).write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    (folder / REPORT_FILE).write_text(render_report(result, name), encoding="utf-8")
    plot_run(result, folder, name)
    return folder


def load_run(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise XMRError(f"{folder}: not an evaluation run (no {METRICS_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def compare_runs(folders: Sequence[str | Path]) -> str:
    """Markdown table with one row per run and the main metrics as columns."""
    runs = [(Path(folder).name, load_run(folder)) for folder in folders]
    columns = [c for c in MAIN_COLUMNS if any(c in run["metrics"] for _, run in runs)]
    lines = ["| run | dataset | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for name, run in runs:
        lines.append(f"| {name} | {Path(run['dataset']).parent.name}/{Path(run['dataset']).name} | "
                     + " | ".join(_percent(run["metrics"].get(c)) for c in columns) + " |")
    return "\n".join(lines)
