"""ViXML on real data (issue 18): decoder LoRA fine-tuning on Reuters, trained image fusion on COCO-mini.

    python scripts/eval_vixml.py --part reuters [--train RUN]   # eval/results/vixml-reuters/
    python scripts/eval_vixml.py --part coco                    # eval/results/vixml-coco/

``--part reuters`` trains (unless ``runs/RUN/summary.json`` exists) the ViXML recipe
(``training/vixml-smollm2-reuters.yaml``: LoRA SmolLM2-135M, OHNM triplet, clustered batches), the same recipe with
xmr's multi-positive InfoNCE, and the MiniLM recipe (``training/reuters-minilm.yaml``) on the decoder's training
articles and batch size, at the decoder's number of steps and at the decoder's training time, each in its own
``xmr train`` process whose wall time and peak RSS come from ``os.wait4``; then it scores every encoder, and both
untrained starting points, on one seeded sample of the Reuters test split (the decoders encode slowly on 2 cores).
``--train RUN`` trains that run only (to train the decoders side by side).

``--part coco`` trains ``training/vixml-coco-mini.yaml`` (MiniLM + image projection, early fusion), the same with the
projection alone (text rate 0) and MiniLM on the captions alone, then scores text-only, image-only and text+image
queries of the COCO-mini test split with each encoder and with the untrained fused encoder.
Every row is an ``xmr.evaluation.evaluate`` run folder (``metrics.json``, ``report.md``); ``table.md`` and
``results.json`` sum them up. Finished rows are kept (delete a folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.datasets import read_instances
from xmr.encoders import load_encoder
from xmr.evaluation import evaluate
from xmr.index import build_index
from xmr.io.atomic import write_text_atomically
from xmr.report import load_run, write_run
from xmr.train.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
DATA = Path("../shared/data")
REUTERS, COCO = DATA / "reuters21578-modapte", DATA / "coco-mini"
TEST_SAMPLE, SAMPLE_SEED = 200, 0
VIXML_RECIPE, MINILM_RECIPE, COCO_RECIPE = ("training/vixml-smollm2-reuters.yaml", "training/reuters-minilm.yaml",
                                            "training/vixml-coco-mini.yaml")
INFONCE = ["loss.name=multi-positive-infonce", "loss.options={temperature: 0.05}",
           "negatives.positive_sampling=uniform"]
MINILM = ["data.validation_size=0", "index=null"]  # no hold-out, no final index: the table builds its own
# run name -> (recipe, --set fields); the MiniLM step caps are derived in ``overrides``
RUNS: dict[str, tuple[str, list[str]]] = {
    "vixml-smollm2-reuters": (VIXML_RECIPE, []),
    "vixml-smollm2-reuters-infonce": (VIXML_RECIPE, INFONCE),
    "vixml-minilm-reuters-steps": (MINILM_RECIPE, MINILM),
    "vixml-minilm-reuters-wallclock": (MINILM_RECIPE, MINILM),
    "vixml-coco-mini": (COCO_RECIPE, []),
    "vixml-coco-mini-projection": (COCO_RECIPE, ["optimizer.lr=0"]),
    "vixml-coco-mini-textonly": (COCO_RECIPE, ["encoder=all-MiniLM-L6-v2"]),
}


def run_folder(name: str) -> Path:
    return ROOT / "runs" / name


def summary(name: str) -> dict[str, Any]:
    return json.loads((run_folder(name) / "summary.json").read_text())


def overrides(name: str) -> list[str]:
    """The run's ``--set`` fields: its name; for MiniLM the ViXML recipe's training articles and batch size (both
    encoders see the same articles in batches of the same size) and the step caps (its steps; its train time)."""
    fields = [f"name={name}", *RUNS[name][1]]
    if "minilm-reuters" in name:
        vixml = load_recipe(ROOT / VIXML_RECIPE)
        fields += [f"data.max_train={vixml.section('data').max_train}",
                   f"batching.batch_size={vixml.section('batching').batch_size}"]
    if name == "vixml-minilm-reuters-steps":
        fields.append(f"schedule.max_steps={load_recipe(ROOT / VIXML_RECIPE).section('schedule').max_steps}")
    if name == "vixml-minilm-reuters-wallclock":
        fields.append(f"schedule.max_steps={wallclock_steps()}")
    return fields


def seconds_per_step(name: str) -> float:
    """The loop's training time per step so far (``log.jsonl``): readable while the run is still going."""
    steps = [json.loads(line) for line in (run_folder(name) / "log.jsonl").read_text().splitlines()]
    last = [entry for entry in steps if "step" in entry and "loss" in entry][-1]
    return last["elapsed_s"] / last["step"]


def wallclock_steps() -> int:
    """MiniLM steps that take the ViXML run's training time: its step count times the ratio of the two runs'
    seconds per step (read from their logs, so the wall-clock run can start while the decoder still trains; the
    table shows both runs' actual training times)."""
    decoder_steps = load_recipe(ROOT / VIXML_RECIPE).section("schedule").max_steps
    ratio = seconds_per_step("vixml-smollm2-reuters") / seconds_per_step("vixml-minilm-reuters-steps")
    return max(1, round(decoder_steps * ratio))


def train(name: str) -> None:
    """``xmr train`` in a child process; wall time and the child's peak RSS go to ``runs/NAME/resources.json``."""
    if (run_folder(name) / "summary.json").is_file():
        return
    command = [sys.executable, "-m", "xmr.cli", "train", RUNS[name][0], "--restart"]
    for field in overrides(name):
        command += ["--set", field]
    print(" ".join(command), flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{name}: xmr train failed")
    resources = {"command": "xmr train " + " ".join(command[4:]), "wall_s": round(time.perf_counter() - started, 1),
                 "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)}
    write_text_atomically(run_folder(name) / "resources.json", json.dumps(resources, indent=2) + "\n")


def scored(folder: Path, encoder: Any, labels: Path, test: Any, train_path: Path, ks: list[int],
           modality: str = "all") -> dict[str, Any]:
    """``evaluate`` of a fresh in-memory index of ``encoder`` over ``labels``; the run folder is kept."""
    if (folder / "metrics.json").is_file():
        return load_run(folder)
    started = time.perf_counter()
    index = build_index(labels, load_encoder(encoder), None)
    result = evaluate(index, test, ks=ks, train=train_path, modality=modality)
    result["eval_seconds"] = round(time.perf_counter() - started, 1)
    write_run(result, folder)
    return result


def training_columns(name: str | None) -> dict[str, Any]:
    if name is None:
        return {"steps": 0, "train_s": None, "wall_s": None, "cpu_s": None, "peak_rss_mib": None}
    run, resources = summary(name), json.loads((run_folder(name) / "resources.json").read_text())
    return {"steps": run["steps"], "train_s": run["train_seconds"], "wall_s": resources["wall_s"],
            "cpu_s": resources["cpu_s"], "peak_rss_mib": resources["peak_rss_mib"], "command": resources["command"]}


def cell(value: Any, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if percent else f"{value:g}" if isinstance(value, float) else str(value)


def write_table(out: Path, rows: list[dict[str, Any]], metrics: list[str], header: str) -> None:
    columns = ["row", *metrics, "steps", "train_s", "wall_s", "cpu_s", "peak_rss_mib"]
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join([row["row"], *(cell(row.get(m), True) for m in metrics),
                                        *(cell(row.get(c)) for c in columns[len(metrics) + 1:])]) + " |")
    write_text_atomically(out / "table.md", "\n".join(lines) + "\n")
    write_text_atomically(out / "results.json", json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


def finished(run: str | None) -> bool:
    return run is None or (run_folder(run) / "summary.json").is_file()


def reuters(only: str | None = None, train_missing: bool = True) -> None:
    """The Reuters table; ``only``: score that row alone (its run must be trained), without the table;
    ``train_missing`` False: rows whose run has not finished are left out (and named)."""
    for name in [name for name in RUNS if "reuters" in name and only is None and train_missing]:
        train(name)
    out = ROOT / "eval/results/vixml-reuters"
    test = read_instances(REUTERS / "test.jsonl")
    rows = sorted(np.random.default_rng(SAMPLE_SEED).choice(len(test), TEST_SAMPLE, replace=False).tolist())
    sample = test.subset(rows, f"sample-{TEST_SAMPLE}-seed-{SAMPLE_SEED}")
    vixml_encoder = load_recipe(ROOT / VIXML_RECIPE).section("encoder")
    minilm_encoder = load_recipe(ROOT / MINILM_RECIPE).section("encoder")
    encoders = {  # row -> (encoder spec, training run)
        "smollm2-lora-zero-shot (start)": (vixml_encoder, None),
        "smollm2-lora-vixml-ohnm": (run_folder("vixml-smollm2-reuters") / "encoder", "vixml-smollm2-reuters"),
        "smollm2-lora-infonce": (run_folder("vixml-smollm2-reuters-infonce") / "encoder",
                                 "vixml-smollm2-reuters-infonce"),
        "minilm-zero-shot (start)": (minilm_encoder, None),
        "minilm-same-steps": (run_folder("vixml-minilm-reuters-steps") / "encoder", "vixml-minilm-reuters-steps"),
        "minilm-same-wallclock": (run_folder("vixml-minilm-reuters-wallclock") / "encoder",
                                  "vixml-minilm-reuters-wallclock"),
    }
    table = []
    for row, (encoder, run) in encoders.items():
        if only is not None and row.split(" ")[0] != only:
            continue
        if not finished(run):
            print(f"{row}: {run} has not finished; left out")
            continue
        result = scored(out / row.split(" ")[0], encoder, REUTERS / "labels.jsonl", sample, REUTERS / "train.jsonl",
                        [1, 3, 5, 10])
        table.append({"row": row, **{m: result["metrics"][m] for m in ("P@1", "P@5", "PSP@1", "R@10")},
                      "eval_s": result.get("eval_seconds"), **training_columns(run)})
    if only is not None:
        return
    write_table(out, table, ["P@1", "P@5", "PSP@1", "R@10"],
                f"Reuters-21578 ModApte test sample ({TEST_SAMPLE} of {len(test)} articles, seed {SAMPLE_SEED}); "
                f"metrics in %; train_s = the loop's training time, wall_s = the whole `xmr train` process, "
                f"cpu_s = its CPU seconds, peak_rss_mib = its peak RSS; on 2 CPU cores, one run at a time. Every "
                f"row trains on the same {load_recipe(ROOT / VIXML_RECIPE).section('data').max_train} articles in "
                f"batches of the same size. Made by `python scripts/eval_vixml.py --part reuters`.")


def coco(train_missing: bool = True) -> None:
    for name in [name for name in RUNS if "coco" in name and train_missing]:
        train(name)
    out = ROOT / "eval/results/vixml-coco"
    test = read_instances(COCO / "test.jsonl")
    untrained = load_recipe(ROOT / COCO_RECIPE).section("encoder")
    encoders = {  # folder -> (row, encoder spec, training run)
        "fused-untrained": ("fused, untrained", untrained, None),
        "fused-trained": ("fused, text + projection trained", run_folder("vixml-coco-mini") / "encoder",
                          "vixml-coco-mini"),
        "fused-projection": ("fused, projection trained", run_folder("vixml-coco-mini-projection") / "encoder",
                             "vixml-coco-mini-projection"),
        "minilm-text-trained": ("MiniLM, text-only training", run_folder("vixml-coco-mini-textonly") / "encoder",
                                "vixml-coco-mini-textonly"),
    }
    table = []
    for folder, (row, encoder, run) in encoders.items():
        if not finished(run):
            print(f"{row}: {run} has not finished; left out")
            continue
        entry = {"row": row}
        for modality in ("text", "image", "all"):
            if folder.startswith("minilm") and modality != "text":
                continue  # a text encoder reads no images: its text+image queries are its text queries
            result = scored(out / f"{folder}-{modality}", encoder, COCO / "labels.jsonl", test,
                            COCO / "train.jsonl", [1, 5, 10], modality)
            entry.update({f"{modality} {m}": result["metrics"][m] for m in ("P@1", "R@10")})
        table.append({**entry, **training_columns(run)})
    write_table(out, table, [f"{modality} {m}" for modality in ("text", "image", "all") for m in ("P@1", "R@10")],
                f"COCO-mini test ({len(test)} images; queries: first caption, image, or both), metrics in %; "
                f"`all` = text+image. The image tower is a random ViT-B-32 (no weights offline). "
                f"Made by `python scripts/eval_vixml.py --part coco`.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["reuters", "coco"], required=True)
    parser.add_argument("--train", choices=sorted(RUNS), help="train this run only")
    parser.add_argument("--row", help="--part reuters: score this row only (e.g. smollm2-lora-zero-shot)")
    parser.add_argument("--no-train", action="store_true", help="score finished runs only, train nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.chdir(ROOT)  # the recipes' data paths are relative to the repository root
    if args.train:
        train(args.train)
    elif args.part == "reuters":
        reuters(args.row, not args.no_train)
    else:
        coco(not args.no_train)


if __name__ == "__main__":
    main()
