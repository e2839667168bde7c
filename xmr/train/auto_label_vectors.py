"""The learned label-vector channel of ``xmr train --auto``: per-label classifier vectors learned on top of the text +
centroid vectors over the frozen query vectors, within a share of the budget.

One default for every catalogue, chosen from what is measured, never per data set:

- **Parts**: text + centroid + a per-label classifier vector (NGAME's one-vs-all classifiers as a residual on the
  fixed parts, :mod:`xmr.train.label_vectors`), combined by a plain sum. Labels without training queries keep their
  text vector exactly, so the channel never falls below zero-shot on them.
- **Negatives** from the label count: up to ``ALL_LABELS_UP_TO`` labels every label is a column of every batch
  (the decoupled softmax over the catalogue); above it each batch's positives plus the ``SHORTLIST`` labels that
  currently score highest for its queries, so a step's cost stops growing with the catalogue.
- **Steps** from the clock: ``LABEL_VECTOR_SHARE`` of the budget as ``label_vectors.max_seconds``, at most
  ``EPOCHS`` epochs; validation (the held-out queries, P@1 of the combined vectors) before the first epoch and after
  every epoch keeps the best epoch, so classifier vectors that overfit a label's few queries are never served.
  When no epoch beats the untrained sum the channel is left out: it would repeat the centroid channel.
- **Rate** 1e-3, measured on the fine-tuned encoders of two suite runs (validation P@1 of the best epoch, untrained
  sum first): cooking 72.42 -> 72.42 at 1e-2 (the first epoch already overfits), 74.44 at 1e-3, 74.76 at 3e-4;
  Reuters 94.98 -> 95.75, 95.37, 95.50 (within a query or two of 777). 1e-3 gains on both and leaves a time-capped
  stage on a large catalogue enough epochs to get there.

The stage is the ``label-vectors`` task (:mod:`xmr.train.tasks.label_vectors`) run through :func:`xmr.train.train`
on a recipe written to ``runs/NAME/label-vectors.yaml``; its queries, validation queries and labels are read from
the vector cache the channels filled, so it encodes nothing. It learns on the dense training queries only (the
validation queries choose its epoch), and the fused index serves those vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from xmr.datasets import Instances
from xmr.io.atomic import write_text_atomically
from xmr.train.auto_fine_tune import write_split
from xmr.train.tasks.label_vectors import VECTORS_FILE

LABEL_VECTOR_SHARE = 0.1  # of the budget: steps and per-epoch validations
MIN_SECONDS = 10.0  # below this the stage is not worth loading its inputs for
EPOCHS = 20
# Every label a column of every batch up to 65,536 (256 x 65k logits, 67 MB a step): below that a shortlist saves
# little, since a batch's 256 x top-256 labels covered 24k of 27k labels (random unit vectors at TIBKAT's size), and
# finding them is one more pass over every label (0.1-0.2 s of a 0.5 s step there). Above it: the top-scoring
# labels per query.
ALL_LABELS_UP_TO = 65536
SHORTLIST = 256
SETTINGS = {"parts": ["text", "centroid", "classifier"], "combine": "sum", "loss": "softmax", "batch_size": 256,
            "lr": 1e-3, "temperature": 0.05}  # lr: see the module docstring


def label_vectors_recipe(run: Path, labels_path: Path, label_count: int, encoder: Any, seconds: float,
                         seed: int) -> tuple[dict[str, Any], str]:
    """The label-vectors recipe of the stage (data in ``run/label-vectors-data``) and why its negatives are what they
    are."""
    if label_count <= ALL_LABELS_UP_TO:
        shortlist, why = 0, f"{label_count} labels <= {ALL_LABELS_UP_TO}: every label is a column of every batch"
    else:
        shortlist, why = SHORTLIST, (f"{label_count} labels > {ALL_LABELS_UP_TO}: each batch's positives plus the "
                                     f"{SHORTLIST} labels scoring highest for its queries")
    data = run / "label-vectors-data"
    recipe = {
        "name": "label-vectors", "method": "label-vectors", "output": str(run), "seed": seed,
        "data": {"train": str(data / "train.jsonl"), "validation": str(data / "validation.jsonl"),
                 "labels": str(Path(labels_path).resolve())},
        "encoder": encoder, "index": {"factory": "Flat"},
        "label_vectors": {**SETTINGS, "shortlist": shortlist, "epochs": EPOCHS, "select_on_validation": True,
                          "max_seconds": round(seconds, 1)},
        "evaluation": {"ks": [1, 3, 5], "metric": "P@1"},
        "checkpoint": {"every": 1_000_000, "keep": 1},  # seconds of work: a crash reruns it
    }
    return recipe, why


def learn_label_vectors(run: Path, labels_path: str | Path, label_count: int, train: Instances, fit: list[int],
                        held: list[int], encoder: Any, seconds: float, seed: int, choices: Any,
                        say: Any) -> np.ndarray | None:
    """Label vectors learned on the ``fit`` rows of ``train`` (the dense training queries, in the order they were
    encoded) for about ``seconds``, the epoch chosen on the ``held`` rows; None when the stage does not pay."""
    from xmr.train import train as run_recipe

    if seconds < MIN_SECONDS:
        choices.add("learned label vectors", None, f"skipped: {seconds:.0f} s is under {MIN_SECONDS:.0f} s")
        return None
    write_split(run / "label-vectors-data" / "train.jsonl", train, fit)
    write_split(run / "label-vectors-data" / "validation.jsonl", train, held)
    recipe, why = label_vectors_recipe(run, Path(labels_path), label_count, encoder, seconds, seed)
    path = run / "label-vectors.yaml"
    write_text_atomically(path, json.dumps(recipe, indent=2) + "\n")  # JSON is YAML
    summary = run_recipe(path, restart=True, say=say)
    best, steps = summary["best"], summary["steps"]
    facts = (f"{'+'.join(SETTINGS['parts'])} ({SETTINGS['combine']}), {why}; {steps} steps in "
             f"{summary['train_seconds']:.0f} s of {seconds:.0f} s; validation P@1 {100 * best['value']:.2f} at "
             f"epoch {summary['best_epoch']}")
    if best["step"] == 0:
        choices.add("learned label vectors", None, f"left out: no epoch beat the untrained text + centroid sum "
                    f"({facts})")
        return None
    choices.add("learned label vectors", {"epoch": summary["best_epoch"], "steps": steps,
                                          "shortlist": recipe["label_vectors"]["shortlist"]}, facts)
    return load_file(Path(summary["label_vectors"]) / VECTORS_FILE)["vectors"]
