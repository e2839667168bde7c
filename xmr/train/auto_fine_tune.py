"""The fine-tuning stage of ``xmr train --auto``: the encoder contrastively fine-tuned on the training split within a
share of the budget, or kept frozen when that does not pay.

One default for every catalogue, chosen from what is measured, never per data set:

- **Steps** from the clock: ``schedule.max_seconds`` (``FINE_TUNE_SHARE`` of the budget) makes the loop time its
  first steps and train as many as fit, at most ``EPOCHS`` epochs (:mod:`xmr.train.loop`).
- **Negatives** from the label count: up to ``ALL_LABELS_UP_TO`` labels every label is a column of every batch
  (exact softmax over the catalogue); above it the batch's own positives are the columns (in-batch negatives),
  because each column costs a forward and backward pass of its label text per step, plus ``MINED_PER_QUERY``
  index-mined hard negative per query (ANCE, :mod:`xmr.train.mining`): in a catalogue of thousands of labels the
  in-batch columns are mostly easy, and the labels the encoder confuses are the ones worth a column. The first
  mining reads the frozen encoder's label vectors from the vector cache (the channels need them anyway); every
  ``MINE_EVERY`` steps the labels are encoded again and the coming steps' queries mined; the loop pays those pauses
  and the validations (on a large catalogue each encodes every label) from the same ``max_seconds``, so they cost
  steps, not the encoding time of the channels after the stage.
- **Loss**: UWE's multi-positive InfoNCE in both directions (a query has several labels), temperature 0.05.
- **Selection**: validation P@1 of the label-text index on the held-out queries before the first step and after
  the last; when the steps do not raise it, the frozen encoder is kept (its cached vectors stay valid).

The stage is the dual-encoder task (:mod:`xmr.train.tasks.dual_encoder`) run through :func:`xmr.train.train` on a
recipe written to ``runs/NAME/fine-tune.yaml``, so ``xmr train runs/NAME/fine-tune.yaml`` repeats it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xmr.datasets import Instances
from xmr.io.atomic import write_text_atomically

FINE_TUNE_SHARE = 0.4  # of the budget: steps, mining refreshes and validations (saving comes on top)
MIN_FINE_TUNE_SECONDS = 60.0  # a smaller share is not worth loading a trainer for
ALL_LABELS_UP_TO = 256
EPOCHS = 2.0  # at most, however fast the steps are
BATCH_SIZE = 32
MINED_PER_QUERY = 1
MINE_DEPTH = 20  # top non-positive labels kept per query, the hard negative sampled among them
MINE_EVERY = 100  # optimiser steps between refreshes (3,200 queries mined per refresh)
SETTINGS = {
    "loss": {"name": "multi-positive-infonce", "options": {"temperature": 0.05}},
    "optimizer": {"lr": 1.0e-4, "warmup": 0.1, "clip_norm": 1.0},
}


def write_split(path: Path, instances: Instances, rows: list[int]) -> None:
    """``rows`` of ``instances`` as xmr JSONL (texts and label ids: the fine-tuning stage's data)."""
    write_text_atomically(path, "".join(
        json.dumps({"id": instances.ids[row], "text": instances.texts[row], "labels": instances.labels[row]},
                   default=str) + "\n" for row in rows))


def fine_tune_recipe(run: Path, labels_path: Path, train_rows: int, label_count: int, encoder: Any,
                     seconds: float, seed: int) -> tuple[dict[str, Any], str]:
    """The dual-encoder recipe of the stage (data in ``run/fine-tune-data``) and why its negatives are what they
    are."""
    cap = math.ceil(EPOCHS * math.ceil(train_rows / BATCH_SIZE))
    if label_count <= ALL_LABELS_UP_TO:
        negatives = {"all_labels_up_to": ALL_LABELS_UP_TO}
        why = f"{label_count} labels <= {ALL_LABELS_UP_TO}: every label is a column of every batch"
    else:
        negatives = {"all_labels_up_to": 0, "mined": {"per_query": MINED_PER_QUERY, "depth": MINE_DEPTH,
                                                      "refresh_every": MINE_EVERY, "cached_first": True}}
        why = (f"{label_count} labels > {ALL_LABELS_UP_TO}: in-batch negatives (the batch's positives as columns; "
               "each column costs a forward and backward pass of its label text per step) plus "
               f"{MINED_PER_QUERY} hard negative per query from the top {MINE_DEPTH} non-positive labels of an index "
               f"of the current label vectors, refreshed every {MINE_EVERY} steps")
    data = run / "fine-tune-data"
    recipe = {
        "name": "fine-tune", "output": str(run), "seed": seed,
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                 "labels": str(Path(labels_path).resolve())},
        "encoder": encoder, "negatives": negatives, **SETTINGS,
        "batching": {"batch_size": BATCH_SIZE},
        "schedule": {"epochs": EPOCHS, "max_seconds": round(seconds, 1)},
        "evaluation": {"every": cap, "before": True, "ks": [1, 3, 5], "metric": "P@1"},  # before and after only
        "checkpoint": {"every": cap, "keep": 1},
    }
    return recipe, why


def fine_tune(run: Path, labels_path: str | Path, label_count: int, train: Instances, fit: list[int], held: list[int],
              encoder: Any, seconds: float, seed: int, choices: Any, say: Any) -> Any:
    """Fine-tune ``encoder`` on the ``fit`` rows of ``train`` for about ``seconds`` of steps, choosing on the
    ``held`` rows; returns the encoder to build the channels with (the fine-tuned folder, or ``encoder``)."""
    from xmr.train import train as run_recipe

    if seconds < MIN_FINE_TUNE_SECONDS:
        choices.add("fine-tuning", None, f"skipped: {seconds:.0f} s for steps is under {MIN_FINE_TUNE_SECONDS:.0f} s")
        return encoder
    write_split(run / "fine-tune-data" / "train.jsonl", train, fit)
    write_split(run / "fine-tune-data" / "validation.jsonl", train, held)
    recipe, why = fine_tune_recipe(run, Path(labels_path), len(fit), label_count, encoder, seconds, seed)
    choices.add("negatives", recipe["negatives"], why)
    path = run / "fine-tune.yaml"
    write_text_atomically(path, json.dumps(recipe, indent=2) + "\n")  # JSON is YAML
    summary = run_recipe(path, restart=True, say=say)
    best, before = summary["best"], _before(run / "fine-tune" / "log.jsonl")
    budget = summary.get("time_budget")
    clock = (f"{budget['measured_step_seconds']:.2f} s each: {FINE_TUNE_SHARE:.0%} of the budget = {seconds:.0f} s "
             f"allows {budget['steps_allowed']} of the {budget['steps_of_the_schedule']} steps of {EPOCHS:g} epochs"
             if budget else f"all of {EPOCHS:g} epochs, done before the clock was consulted")
    facts = (f"{summary['steps']} steps ({clock}) in {summary['train_seconds']:.0f} s; validation P@1 of the label "
             f"texts {100 * before:.2f} before, {100 * best['value']:.2f} at step {best['step']}")
    if best["step"] == 0:
        choices.add("fine-tuning", None, f"kept the frozen encoder: {facts}")
        return encoder
    choices.add("fine-tuning", {"steps": summary["steps"], "encoder": summary["encoder"]}, facts)
    return summary["encoder"]


def _before(log: Path) -> float:
    """Validation P@1 at step 0 from a run's log."""
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry.get("step") == 0 and "validation" in entry:
            return float(entry["validation"]["P@1"])
    return float("nan")
