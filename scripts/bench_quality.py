"""Reuters quality benchmark: xmr (zero-shot, fine-tuned encoder, learned label vectors) vs PECOS XR-Linear and
napkinXC PLT on TF-IDF, all scored by xmr.metrics on the same test split with the same propensities.

    .venv/bin/python scripts/bench_quality.py            # trains runs/reuters-labelvectors unless --reuse-run
writes eval/bench/quality/{results.csv,report.md,quality.png}.

    .venv/bin/python scripts/bench_quality.py --all [--budget 20m]
runs the data-set suite instead (``quality_suite.py`` beside this script): every labelled data set in ../shared/data,
``xmr train --auto`` (each channel alone and fused) vs the same peers, into eval/bench/quality/suite.{md,csv,png}.
The peers run in .venv-peers (created on first use:
libpecos pins numpy<2) through scripts/peers/xmc_linear.py and hand back top-k predictions as .npy files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from peers.environment import peers_python  # scripts/peers/environment.py (scripts/ is on sys.path)

import xmr
from xmr import metrics as m
from xmr.datasets import read_instances
from xmr.evaluation import predict_rows, ranking_metrics, truth_as_rows

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "training" / "reuters-labelvectors.yaml"
KS = (1, 3, 5, 10)
COLUMNS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5", "nDCG@5", "R@10")


def run_peers(data: Path, labels: int, out: Path) -> dict:
    command = [str(peers_python()), str(ROOT / "scripts/peers/xmc_linear.py"), "--train", str(data / "train.jsonl"),
               "--test", str(data / "test.jsonl"), "--labels", str(labels), "--out", str(out)]
    subprocess.run(command, check=True)
    return json.loads((out / "timings.json").read_text())


def train_run(run: Path, reuse: bool) -> dict:
    if not (reuse and (run / "summary.json").is_file()):
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        subprocess.run([str(Path(sys.executable).parent / "xmr"), "train", str(RECIPE), "--restart"], check=True,
                       cwd=ROOT, env=env)
    return json.loads((run / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/reuters21578-modapte"))
    parser.add_argument("--out", default=str(ROOT / "eval/bench/quality"))
    parser.add_argument("--reuse-run", action="store_true", help="use runs/reuters-labelvectors if it is complete")
    parser.add_argument("--all", action="store_true", help="the data-set suite: xmr train --auto on every labelled set")
    parser.add_argument("--budget", default="20m", help="--all: the budget of each xmr train --auto run")
    parser.add_argument("--max-test", type=int, default=2000, help="--all: test splits above 5,000 queries are "
                        "scored on a seeded sample of this many")
    parser.add_argument("--only", nargs="+", help="--all: just these data set folders")
    parser.add_argument("--reuse-peers", action="store_true", help="--all: reuse runs/peers-<name> predictions "
                        "written after the data (the peers' own run of scripts/peers/xmc_linear.py)")
    args = parser.parse_args()
    if args.all:
        from quality_suite import run_suite  # scripts/quality_suite.py

        run_suite(ROOT.parent / "shared/data", Path(args.out), args.budget, args.max_test, args.only, args.reuse_peers)
        return
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = xmr.LabelCatalogue.from_file(data / "labels.jsonl")
    train, test = read_instances(data / "train.jsonl"), read_instances(data / "test.jsonl")

    run = ROOT / "runs" / "reuters-labelvectors"
    started = time.perf_counter()
    summary = train_run(run, args.reuse_run)
    train_wall = time.perf_counter() - started
    encoder = xmr.load_encoder(run / "encoder")
    zero_shot = xmr.load_encoder({"type": "sentence-transformers", "model": "all-MiniLM-L6-v2",
                                  "max_seq_length": 128})
    systems = {
        "xmr zero-shot MiniLM (label texts)": (xmr.build_index(labels, zero_shot, None), None),
        "xmr fine-tuned encoder (label texts)": (xmr.build_index(labels, encoder, None), summary["train_seconds"]),
        "xmr fine-tuned + learned label vectors": (xmr.load_index(run / "index", encoder=encoder),
                                                   summary["train_seconds"] + summary["index_seconds"]),
    }
    reference = systems["xmr fine-tuned encoder (label texts)"][0]
    truth, _ = truth_as_rows(reference.catalogue, test.labels)
    train_truth, _ = truth_as_rows(reference.catalogue, train.labels)
    inverse = m.inverse_propensity(train_truth, len(labels), *m.PROPENSITY_PRESETS["default"])
    rows = []
    for name, (index, seconds) in systems.items():
        tick = time.perf_counter()
        predictions, _, _ = predict_rows(index, test.items(), max(KS))
        rows.append({"system": name, "train_s": seconds, "predict_s": time.perf_counter() - tick,
                     **ranking_metrics(predictions, truth, KS, inverse)})
    peer_folder = ROOT / "runs" / "peers-reuters"  # predictions and napkinXC's model files: not committed
    peer_timings = run_peers(data, len(labels), peer_folder)
    for name, key in (("PECOS XR-Linear (TF-IDF)", "pecos"), ("napkinXC PLT (TF-IDF)", "napkinxc")):
        predictions = np.load(peer_folder / f"{key}.npy")
        rows.append({"system": name, "train_s": peer_timings["tfidf_s"] + peer_timings[f"{key}_train_s"],
                     "predict_s": peer_timings[f"{key}_predict_s"], **ranking_metrics(predictions, truth, KS, inverse)})
    write(out, rows, summary, train_wall)


def write(out: Path, rows: list[dict], summary: dict, train_wall: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["system", "train_s", "predict_s", *COLUMNS])
        for row in rows:
            writer.writerow([row["system"], f"{row['train_s']:.1f}" if row["train_s"] is not None else "",
                             f"{row['predict_s']:.2f}", *(f"{100 * row[c]:.2f}" for c in COLUMNS)])
    lines = ["# Reuters-21578 ModApte test (3,019 articles, 90 topics): xmr vs linear XMC", "",
             "| system | train s | predict s | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        train_s = f"{row['train_s']:.0f}" if row["train_s"] is not None else "–"
        lines.append(f"| {row['system']} | {train_s} | {row['predict_s']:.1f} | "
                     + " | ".join(f"{100 * row[c]:.2f}" for c in COLUMNS) + " |")
    lines += ["", f"xmr training (`{RECIPE.relative_to(ROOT)}`): {summary['steps']} encoder steps in "
              f"{summary['train_seconds']:.0f} s, whole `xmr train` {train_wall:.0f} s wall (0 when reused) on "
              f"{os.cpu_count()} cores. PSP uses Jain et al. propensities (A=0.55, B=1.5) from the train split; every "
              "row is scored by `xmr.metrics` on the same top-10 predictions. Peers: TF-IDF (1-2 grams, sublinear tf, "
              "min_df 2), PECOS XR-Linear and napkinXC PLT with default settings, run in `.venv-peers`."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    figure, axis = plt.subplots(figsize=(8, 4))
    names = [row["system"] for row in rows]
    positions = np.arange(len(rows))
    axis.barh(positions - 0.2, [100 * row["P@1"] for row in rows], 0.4, label="P@1")
    axis.barh(positions + 0.2, [100 * row["PSP@1"] for row in rows], 0.4, label="PSP@1")
    axis.set_yticks(positions, names)
    axis.invert_yaxis()
    axis.set_xlabel("%")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "quality.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
