"""The data-set suite of ``scripts/bench_quality.py --all``: every labelled data set, ``xmr train --auto`` against
PECOS XR-Linear and napkinXC in the same run.

For each folder of ../shared/data with labels, train and test splits (and text): ``auto_train`` into
``runs/auto-<name>`` with one budget and no per-data-set setting, then every channel alone and the fused ranking on
the test split (a seeded sample of ``max_test`` queries when the split has more than ``LARGE_TEST``), and the peers
(``scripts/peers/xmc_linear.py`` in .venv-peers) on the same queries; all scored by ``xmr.metrics`` with the
train split's propensities. Writes, after every data set (a partial run keeps what it finished),
``suite.csv``, ``suite.md``, ``suite-deciles.png`` (P@5 by label-frequency decile: does the fused ranking keep
the tail of zero-shot MiniLM on the label texts?) and ``suite/<name>.json`` (its rows, deciles, and what
``--auto`` chose and why); data sets left out by ``--only`` keep their earlier ``suite/<name>.json`` in the tables.
Query encoding goes through the vector cache (``~/.cache/xmr/vectors``): predict times are search + fusion.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_quality import run_peers  # scripts/bench_quality.py

import xmr
from xmr import metrics as m
from xmr.datasets import read_instances
from xmr.encoders.vector_cache import encode_cached
from xmr.evaluation import ranking_metrics, truth_as_rows
from xmr.index.fusion import DEPTH, padded
from xmr.predictor import load_predictor
from xmr.train.auto import auto_train

ROOT = Path(__file__).resolve().parents[1]
LARGE_TEST = 5000
PEER_WAIT_S = 1800  # --reuse-peers: how long to wait for a peers run already writing runs/peers-<name>
KS = (1, 3, 5, 10)
COLUMNS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5", "R@10")
CHANNELS = {"fused": "xmr --auto (fused)", "text": "  channel: label text",
            "centroid": "  channel: text + centroid", "knn": "  channel: instance kNN", "lexical": "  channel: TF-IDF",
            "learned": "  channel: learned label vectors"}
ZERO_SHOT = "zero-shot MiniLM (label text, no training)"


def test_sample(test_size: int, max_test: int) -> np.ndarray:
    """The scored test rows: all, or a seeded sample of ``max_test`` when the split has more than ``LARGE_TEST``."""
    if test_size <= LARGE_TEST:
        return np.arange(test_size)
    return np.sort(np.random.default_rng(0).choice(test_size, max_test, replace=False))


def zero_shot_rows(labels: xmr.LabelCatalogue, items: list) -> np.ndarray:
    """Top labels of the frozen bundled MiniLM over the label texts: the floor ``--auto`` must keep on the tail,
    also when its own text channel is fine-tuned (cheap through the vector cache)."""
    from xmr.index import build_index_from_embeddings
    from xmr.train.auto import ENCODER

    encoder = xmr.load_encoder(ENCODER)
    index = build_index_from_embeddings(labels, encode_cached(encoder, labels.items(), "label"), None,
                                        encoder=encoder)
    return padded(index.search_embeddings(encode_cached(encoder, items), k=max(KS)).rows, max(KS))


def data_sets(root: Path) -> tuple[list[Path], dict[str, str]]:
    """Folders with labels + train + test (text records), and why the others are left out."""
    chosen, skipped = [], {}
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        missing = [name for name in ("labels.jsonl", "train.jsonl", "test.jsonl") if not (folder / name).is_file()]
        if missing:
            skipped[folder.name] = f"no {', '.join(missing)}"
        else:
            chosen.append(folder)
    return chosen, skipped


def evaluate_one(folder: Path, budget: str, max_test: int, reuse_peers: bool = False) -> dict:
    labels = xmr.LabelCatalogue.from_file(folder / "labels.jsonl")
    train, test = read_instances(folder / "train.jsonl"), read_instances(folder / "test.jsonl")
    sample = test_sample(len(test), max_test)
    run = ROOT / "runs" / f"auto-{folder.name}"
    tick = time.perf_counter()
    summary = auto_train(folder / "labels.jsonl", folder / "train.jsonl", run, budget)
    train_s = time.perf_counter() - tick
    fused = load_predictor(run / "index")
    items = [test.items()[row] for row in sample]
    vectors = {}

    def encode(channel, queries):  # through the cache: encoding is not the predictor's time
        key = id(channel.encoder)
        if key not in vectors:
            vectors[key] = encode_cached(channel.encoder, queries)
        return vectors[key]

    fused.channel_results(items, 1, encode=encode)  # encode (or read) the queries and load every channel once
    tick = time.perf_counter()
    results = fused.channel_results(items, DEPTH, encode=encode)
    fused_result = fused.fuse(results, max(KS))
    predict_s = time.perf_counter() - tick
    truth, _ = truth_as_rows(labels, [test.labels[row] for row in sample])
    train_truth, _ = truth_as_rows(labels, train.labels)
    inverse = m.inverse_propensity(train_truth, len(labels), *m.PROPENSITY_PRESETS["default"])
    counts = m.label_counts(train_truth, len(labels))
    predictions = {"fused": fused_result.rows, **{name: padded(result.rows, max(KS)) for name, result in
                                                  results.items()}}
    rows = [{"system": CHANNELS[name], "train_s": train_s if name == "fused" else None,
             "predict_s": predict_s if name == "fused" else None,
             **ranking_metrics(padded(predictions[name], max(KS)), truth, KS, inverse)}
            for name in CHANNELS if name in predictions]
    predictions["zero-shot"] = zero_shot_rows(labels, items)
    rows.append({"system": ZERO_SHOT, "train_s": None, "predict_s": None,
                 **ranking_metrics(predictions["zero-shot"], truth, KS, inverse)})
    peer_folder = ROOT / "runs" / f"peers-{folder.name}"
    timings_file = peer_folder / "timings.json"

    def fresh() -> bool:
        return timings_file.is_file() and timings_file.stat().st_mtime > (folder / "train.jsonl").stat().st_mtime

    waited = 0.0
    while reuse_peers and not fresh() and (peer_folder / "pecos.npy").parent.is_dir() and waited < PEER_WAIT_S:
        time.sleep(10)  # a peers run started beside this one is still writing its folder
        waited += 10
    timings = json.loads(timings_file.read_text()) if reuse_peers and fresh() else run_peers(
        folder, len(labels), peer_folder)
    for name, key in (("PECOS XR-Linear (TF-IDF)", "pecos"), ("napkinXC PLT (TF-IDF)", "napkinxc")):
        predicted = np.load(peer_folder / f"{key}.npy")[sample]
        predictions[key] = predicted
        rows.append({"system": name, "train_s": timings["tfidf_s"] + timings[f"{key}_train_s"],
                     "predict_s": timings[f"{key}_predict_s"] * len(sample) / len(test),
                     **ranking_metrics(padded(predicted, max(KS)), truth, KS, inverse)})
    deciles = {name: m.precision_at_k_by_decile(padded(predictions[name], 5), truth, 5, counts).tolist()
               for name in ("fused", "text", "zero-shot", "pecos")}
    return {"name": folder.name, "budget": budget, "labels": len(labels), "train": len(train), "test": len(test),
            "scored": len(sample), "rows": rows, "summary": summary, "deciles": deciles,
            "choices": json.loads((run / "choices.json").read_text())}


def fine_tuning(entry: dict) -> str:
    """What ``--auto``'s fine-tuning stage did, from the run's choices (runs before the stage existed: none)."""
    choice = next((item for item in entry["choices"] if item["what"] == "fine-tuning"), None)
    return "none (a run before the stage existed: frozen MiniLM)" if choice is None else choice["reason"]


def write(out: Path, done: list[dict], skipped: dict[str, str], budget: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "suite").mkdir(parents=True, exist_ok=True)
    with open(out / "suite.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["data set", "system", "train_s", "predict_s", *COLUMNS])
        for entry in done:
            for row in entry["rows"]:
                writer.writerow([entry["name"], row["system"].strip(),
                                 "" if row["train_s"] is None else f"{row['train_s']:.1f}",
                                 "" if row["predict_s"] is None else f"{row['predict_s']:.2f}",
                                 *(f"{100 * row[c]:.2f}" for c in COLUMNS)])
    lines = ["# Data-set suite: `xmr train --auto` vs PECOS XR-Linear and napkinXC", "",
             "One default for every data set (no per-data-set setting); each xmr channel is also scored alone. "
             "Every row is scored by `xmr.metrics` on the same test queries; PSP uses Jain et al. propensities "
             "(A=0.55, B=1.5) from the train split. xmr train s is the whole `auto_train` wall time (encoding the "
             "train split, or reading it from the vector cache when an earlier run encoded it: see the choices); "
             "xmr predict s is channel search + fusion on pre-encoded queries; peers' train s includes TF-IDF, "
             f"their predict s excludes it. {os.cpu_count()} shared CPU cores.", ""]
    for entry in done:
        summary = entry["summary"]
        lines += [f"## {entry['name']}: {entry['labels']:,} labels, {entry['train']:,} train, "
                  f"{entry['scored']:,} of {entry['test']:,} test queries scored", "",
                  f"`--budget {entry.get('budget', budget)}`: dense channels over "
                  f"{summary['dense_training_queries']:,} of {summary['training_queries']:,} "
                  f"encoded training queries; weights {summary['weights']}; kNN {summary['knn']}", "",
                  f"Fine-tuning: {fine_tuning(entry)}", "",
                  "| system | train s | predict s | " + " | ".join(COLUMNS) + " |",
                  "|---|---|---|" + "---|" * len(COLUMNS)]
        for row in entry["rows"]:
            train_s = "–" if row["train_s"] is None else f"{row['train_s']:.0f}"
            predict_s = "–" if row["predict_s"] is None else f"{row['predict_s']:.1f}"
            lines.append(f"| {row['system']} | {train_s} | {predict_s} | "
                         + " | ".join(f"{100 * row[c]:.2f}" for c in COLUMNS) + " |")
        ours = entry["rows"][0]
        pecos = next(row for row in entry["rows"] if row["system"].startswith("PECOS"))
        verdict = ", ".join(f"{c} {100 * (ours[c] - pecos[c]):+.2f}" for c in ("P@1", "PSP@1", "P@5", "PSP@5"))
        lines += ["", f"fused vs PECOS: {verdict} (points)", ""]
        (out / "suite" / f"{entry['name']}.json").write_text(json.dumps(entry, indent=2, default=str) + "\n")
    if skipped:
        lines += ["Left out: " + "; ".join(f"{name} ({why})" for name, why in skipped.items()), ""]
    (out / "suite.md").write_text("\n".join(lines) + "\n")
    figure, axes = plt.subplots(1, max(len(done), 1), figsize=(4 * max(len(done), 1), 3.2), squeeze=False)
    for axis, entry in zip(axes[0], done, strict=False):
        for name, label in (("zero-shot", "zero-shot text"), ("fused", "xmr --auto"), ("pecos", "PECOS")):
            axis.plot(range(10), 100 * np.array(entry["deciles"][name]), marker="o", label=label)
        axis.set_title(entry["name"], fontsize=9)
        axis.set_xlabel("label-frequency decile (0 = rarest)")
        axis.set_ylabel("share of P@5 (points)")
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "suite-deciles.png", dpi=100)
    plt.close(figure)


def run_suite(root: Path, out: Path, budget: str, max_test: int, only: list[str] | None = None,
              reuse_peers: bool = False) -> None:
    folders, skipped = data_sets(root)
    if only:
        folders = [folder for folder in folders if folder.name in only]
    names = {folder.name for folder in folders}
    done: list[dict] = [json.loads(path.read_text()) for path in sorted((out / "suite").glob("*.json"))
                        if path.stem not in names]  # data sets of earlier --only runs stay in the tables
    for folder in folders:
        print(f"suite: {folder.name}", flush=True)
        done.append(evaluate_one(folder, budget, max_test, reuse_peers))
        done.sort(key=lambda entry: entry["name"])
        write(out, done, skipped, budget)
    print((out / "suite.md").read_text())
