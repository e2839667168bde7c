"""Training throughput of a recipe: optimiser steps/s on each device and precision, in one run.

    .venv/bin/python scripts/bench_train_speed.py training/reuters-minilm.yaml --steps 20
    (on a GPU machine it adds cuda rows in fp32 and bf16; CPU rows always run, as the baseline)
writes eval/bench/train/results.csv (recipe, device, precision, steps, seconds, steps_per_s, queries_per_s) and
prints the ratio of every row to the CPU fp32 row measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from xmr.train import load_recipe, train


def measure(recipe_path: str, steps: int, device: str, precision: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(recipe_path, {"schedule.max_steps": steps, "output": scratch, "index": None,
                                           "label_vectors": None, "evaluation.every": None,
                                           "checkpoint.every": 10**9, "optimizer.precision": precision,
                                           "negatives.mined": None})
        started = time.perf_counter()
        summary = train(recipe, device=device, say=lambda message: None)
        seconds = time.perf_counter() - started
    return {"recipe": recipe.name, "device": device, "precision": precision, "steps": steps,
            "seconds": round(summary["train_seconds"], 2), "wall_s": round(seconds, 2),
            "steps_per_s": round(steps / summary["train_seconds"], 3),
            "queries_per_s": round(steps * recipe.section("batching").batch_size
                                   * recipe.section("optimizer").accumulate / summary["train_seconds"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu-steps", type=int, default=None, help="steps for the CPU baseline (default: --steps)")
    parser.add_argument("--out", default="eval/bench/train")
    args = parser.parse_args()
    runs = [("cpu", "fp32", args.cpu_steps or args.steps)]
    if torch.cuda.is_available():
        runs += [("cuda", "fp32", args.steps), ("cuda", "bf16", args.steps)]
    rows = [measure(args.recipe, steps, device, precision) for device, precision, steps in runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    baseline = rows[0]["steps_per_s"]
    for row in rows:
        print(f"{row['device']:>5} {row['precision']:>5}: {row['steps_per_s']:.3f} steps/s "
              f"({row['queries_per_s']:.0f} queries/s), {row['steps_per_s'] / baseline:.1f}x CPU fp32")


if __name__ == "__main__":
    main()
