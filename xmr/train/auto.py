"""``xmr train --auto LABELS TRAIN [--budget 20m]``: one default that adapts to the catalogue and the clock.

No hand-tuned recipe per data set: every choice is made from what is measured (label count, training size, encoding
throughput on this machine, validation metrics) and written with its reason to ``runs/NAME/choices.json``.

1. **Validation**: a seeded sample of the training queries (``VALIDATION_SHARE``, at most ``MAX_VALIDATION``),
   held out of fine-tuning and of every channel until the weights are chosen, then added to the channels.
2. **Encoder**: the bundled MiniLM at ``max_seq_length`` 64 (titles and first sentences; encoding is the dominant
   CPU cost), fine-tuned first within ``FINE_TUNE_SHARE`` of the budget when that raises validation P@1
   (:mod:`xmr.train.auto_fine_tune`: steps from the measured step time, negatives from the label count). Vectors
   go through :mod:`xmr.encoders.vector_cache`, so reruns encode nothing again.
3. **Budget**: label texts and validation queries, then the other training queries chunk by chunk while the
   measured encoding rate says the next chunk still fits ``ENCODE_SHARE`` of the budget (cached chunks are free).
   The dense channels use the encoded prefix; the lexical channel always sees every training text (TF-IDF costs
   seconds).
4. **Channels** (each a predictor folder, :mod:`xmr.index.knn`, :mod:`xmr.index.lexical`, label indexes):
   ``text`` (zero-shot label-text vectors: the floor for labels with no training data), ``centroid`` (text +
   mean of the label's training query vectors, ``centroid_enriched``), ``knn`` (instance votes; ``m`` and
   ``power`` chosen on validation), ``lexical`` (TF-IDF prototypes), ``learned`` (text + centroid + per-label
   classifier vectors trained on the frozen query vectors within ``LABEL_VECTOR_SHARE`` of the budget, their epoch
   chosen on validation: :mod:`xmr.train.auto_label_vectors`).
5. **Fusion**: weights on the validation split (:func:`xmr.index.fusion.choose_weights`), then every channel is
   rebuilt on all training data with the chosen knobs and saved as ``runs/NAME/index`` (kind ``fused``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances, read_instances
from xmr.encoders import load_encoder
from xmr.encoders.vector_cache import CHUNK, chunk_path, encode_cached, encode_chunk
from xmr.errors import InvalidArgument
from xmr.evaluation import truth_as_rows
from xmr.index import build_index_from_embeddings
from xmr.index.fusion import DEPTH, FusedPredictor, choose_weights, objective_of, propensities
from xmr.index.knn import build_knn_index
from xmr.index.lexical import build_lexical_index
from xmr.io.atomic import write_text_atomically
from xmr.train.auto_fine_tune import FINE_TUNE_SHARE
from xmr.train.auto_fine_tune import fine_tune as fine_tune_encoder
from xmr.train.auto_label_vectors import LABEL_VECTOR_SHARE, learn_label_vectors
from xmr.train.label_vectors import centroid_enriched, label_centroids, unit_length

ENCODER = {"type": "sentence-transformers", "model": "all-MiniLM-L6-v2", "max_seq_length": 64}
DEFAULT_BUDGET = "20m"
ENCODE_SHARE = 0.7  # of the budget: the training queries' encoding; then label vectors (LABEL_VECTOR_SHARE), the rest
# builds, selects and saves channels
VALIDATION_SHARE = 0.1
MAX_VALIDATION = 2000
MIN_VALIDATION = 20
PROBE = 64  # texts encoded to measure the encoding rate before the first uncached chunk
KNN_GRID = {"m": (10, 30, 100), "power": (1.0, 4.0)}
LEXICAL_TEXT_WEIGHT = 0.5
CENTROID_WEIGHT = 1.0


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``"20m"``, ``"90s"``, ``"1.5h"`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
        if match is None:
            raise InvalidArgument(f"--budget: {text!r} is not a duration like 20m, 90s or 1h")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0:
        raise InvalidArgument(f"--budget: must be positive, got {text!r}")
    return seconds


@dataclass
class Choices:
    """Every decision with its value and reason, in order (written to ``choices.json``)."""

    entries: list[dict[str, Any]]

    def add(self, what: str, value: Any, reason: str) -> Any:
        self.entries.append({"what": what, "value": value, "reason": reason})
        return value


def encode_training(encoder: Any, texts: list[str], seconds: float, choices: Choices) -> np.ndarray:
    """Vectors of the longest chunk-aligned prefix of ``texts`` that fits ``seconds`` of encoding at the rate
    measured on a probe and then on the chunks encoded so far (cached chunks cost nothing); at least one chunk."""
    parts, spent, rate = [], 0.0, None
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start:start + CHUNK]
        cached = chunk_path(encoder, chunk, "query").is_file()
        if parts and not cached and rate is None:  # measure the rate on a probe before committing to a chunk
            tick = time.perf_counter()
            encoder.encode_queries(chunk[:PROBE])
            spent += time.perf_counter() - tick
            rate = len(chunk[:PROBE]) / max(time.perf_counter() - tick, 1e-6)
        if parts and not cached and spent + len(chunk) / rate > seconds:
            break
        tick = time.perf_counter()
        parts.append(encode_chunk(encoder, chunk, "query"))
        if not cached:
            spent += time.perf_counter() - tick
            rate = len(chunk) / max(time.perf_counter() - tick, 1e-6)
    vectors = np.concatenate(parts)
    reason = ("every training query fits the encoding share of the budget" if len(vectors) == len(texts) else
              f"the measured rate ({rate:.1f} queries/s) leaves no room for the next chunk of {CHUNK} within "
              f"{seconds:.0f} s; dense channels use this prefix, the lexical channel all {len(texts)} texts")
    choices.add("dense training queries", len(vectors), reason)
    return vectors


def build_channels(labels: LabelCatalogue, encoder: Any, text_vectors: np.ndarray, vectors: np.ndarray,
                   rows: list[np.ndarray], texts: list[str], knn_knobs: dict[str, float],
                   learned: np.ndarray | None) -> dict[str, Any]:
    """The channels over training queries ``vectors``/``texts`` (``rows``: their catalogue rows; the lexical
    channel gets every text, the dense ones the encoded prefix), and ``learned`` label vectors when there are."""
    dense_rows = rows[:len(vectors)]
    centroids, counts = label_centroids(vectors, dense_rows, len(labels))
    channels = {
        "text": build_index_from_embeddings(labels, text_vectors, None, encoder=encoder),
        "centroid": build_index_from_embeddings(
            labels, centroid_enriched(text_vectors, centroids, counts, CENTROID_WEIGHT), None, encoder=encoder),
        "knn": build_knn_index(labels, vectors, dense_rows, encoder=encoder, **knn_knobs),
        "lexical": build_lexical_index(labels, texts, rows, text_weight=LEXICAL_TEXT_WEIGHT),
    }
    if learned is not None:
        channels["learned"] = build_index_from_embeddings(labels, learned, None, encoder=encoder,
                                                          normalized=unit_length(learned))
    return channels


def auto_train(labels_path: str | Path, train_path: str | Path, run: str | Path, budget: str | float = DEFAULT_BUDGET,
               seed: int = 0, say: Any = print, encoder: Any = None, fine_tune: bool = True,
               learn: bool = True) -> dict[str, Any]:
    """Build ``run/index`` (a fused predictor) from a catalogue and a training split within ``budget``; returns
    the summary also written to ``run/summary.json`` (see the module docstring). ``encoder``: another encoder
    config than the default MiniLM (tests use a tiny one); ``fine_tune=False`` keeps it frozen; ``learn=False``
    leaves out the learned label-vector channel."""
    started = time.perf_counter()
    run = Path(run)
    seconds = parse_budget(budget)
    choices = Choices([])
    labels = LabelCatalogue.from_file(labels_path)
    train: Instances = read_instances(train_path)
    if len(train) < MIN_VALIDATION * 2:
        raise InvalidArgument(f"{train_path}: {len(train)} training instances; --auto needs at least "
                              f"{MIN_VALIDATION * 2} (half of them to choose weights on)")
    rows, missing = truth_as_rows(labels, train.labels)
    texts = [str(item) if isinstance(item, str) else str(item.get("text", "")) for item in train.items()]
    choices.add("budget seconds", seconds, f"--budget {budget}")
    size = int(min(MAX_VALIDATION, max(MIN_VALIDATION, VALIDATION_SHARE * len(train))))
    held = np.sort(np.random.default_rng(seed).choice(len(train), size, replace=False))
    kept = np.setdiff1d(np.arange(len(train)), held)
    choices.add("validation queries", size, f"{VALIDATION_SHARE:.0%} of the training queries (at most "
                f"{MAX_VALIDATION}), seed {seed}: held out of fine-tuning and of every channel; knobs and weights "
                "are chosen on them, never on the test split")
    config = encoder or ENCODER
    choices.add("encoder", config, "the bundled MiniLM: encoding is the dominant cost on CPU; 64 tokens keep titles "
                "and first sentences at half the cost of 128")
    choices.add("label count", len(labels), f"{sum(len(r) for r in rows)} training label occurrences, {missing} "
                "outside the catalogue (dropped)")
    if fine_tune:
        config = fine_tune_encoder(run, labels_path, len(labels), train, kept.tolist(), held.tolist(), config,
                                   FINE_TUNE_SHARE * seconds, seed, choices, say)
    else:
        choices.add("fine-tuning", None, "off (fine_tune: false): the encoder stays frozen")
    encoder = load_encoder(config)
    text_vectors = encode_cached(encoder, labels.items(), "label")
    held_rows, held_texts = [rows[i] for i in held], [texts[i] for i in held]
    held_vectors = encode_cached(encoder, held_texts, "query")
    fit_rows, fit_texts = [rows[i] for i in kept], [texts[i] for i in kept]
    vectors = encode_training(encoder, fit_texts, ENCODE_SHARE * seconds - (time.perf_counter() - started), choices)
    inverse = propensities(fit_rows, len(labels))
    if learn:
        learned = learn_label_vectors(run, labels_path, len(labels), train, kept[:len(vectors)].tolist(),
                                      held.tolist(), config, LABEL_VECTOR_SHARE * seconds, seed, choices, say)
    else:
        learned = choices.add("learned label vectors", None, "off (learned: false)")
    channels = build_channels(labels, encoder, text_vectors, vectors, fit_rows, fit_texts,
                              {"m": KNN_GRID["m"][0], "power": KNN_GRID["power"][0]}, learned)
    knn = channels["knn"]
    grid = []
    for m in KNN_GRID["m"]:
        for power in KNN_GRID["power"]:
            result = knn.predict_encoded(held_vectors, k=5, m=m, power=power)
            grid.append((objective_of(result.rows, held_rows, inverse), m, power))
    _, best_m, best_power = max(grid)
    knn_knobs = choices.add("knn knobs", {"m": best_m, "power": best_power},
                            f"best mean(P@1, PSP@1) on validation over m {KNN_GRID['m']} x power "
                            f"{KNN_GRID['power']}: " + ", ".join(f"m={m} p={p}: {100 * v:.2f}" for v, m, p in grid))
    results = {}
    for name, channel in channels.items():
        if name == "lexical":
            results[name] = channel.predict(held_texts, k=DEPTH)
        else:
            results[name] = channel.predict_encoded(held_vectors, k=DEPTH, **(knn_knobs if name == "knn" else {}))
    selection = choose_weights(results, held_rows, inverse)
    choices.add("fusion weights", selection["weights"], f"grid on the simplex (step {selection['step']}) maximising "
                f"{selection['objective']} on the validation queries: {100 * selection['value']:.2f}")
    say(f"auto: weights {selection['weights']} (validation {selection['objective']} "
        f"{100 * selection['value']:.2f}); rebuilding the channels on all {len(train)} training queries")
    final = build_channels(labels, encoder, text_vectors, np.concatenate([held_vectors, vectors]),  # held-out too
                           held_rows + fit_rows, held_texts + fit_texts, knn_knobs, learned)
    fused = FusedPredictor(final, selection["weights"], DEPTH, {**selection, "knn": knn_knobs}, None)
    fused.save(run / "index")
    summary = {"index": str(run / "index"), "train_seconds": round(time.perf_counter() - started, 1),
               "budget_seconds": seconds, "labels": len(labels), "training_queries": len(train),
               "dense_training_queries": len(vectors) + len(held), "weights": selection["weights"], "knn": knn_knobs,
               "validation": selection["validation"]}
    write_text_atomically(run / "choices.json", json.dumps(choices.entries, indent=2, default=str) + "\n")
    write_text_atomically(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def auto_recipe(path: str | Path) -> dict[str, Any] | None:
    """The ``--auto`` settings of a recipe whose ``method`` is ``auto`` (``name``, ``data.labels``, ``data.train``,
    optional ``auto.budget``, ``auto.fine_tune``, ``auto.learned`` and ``seed``), or None for any other recipe
    (which ``load_recipe`` then reads)."""
    import yaml

    from xmr.train.recipe import RecipeError, resolve_recipe

    resolved = resolve_recipe(path)
    try:
        values = yaml.safe_load(resolved.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # load_recipe reports what is wrong with it, with the line
    if not isinstance(values, dict) or values.get("method") != "auto":
        return None
    data, settings = values.get("data") or {}, values.get("auto") or {}
    problems = [f"data.{key}: required by method auto" for key in ("labels", "train") if not data.get(key)]
    problems += [f"auto.{key}: unknown field (known: budget, fine_tune, learned)" for key in settings
                 if key not in ("budget", "fine_tune", "learned")]
    problems += [f"auto.{key}: true or false, got {settings[key]!r}" for key in ("fine_tune", "learned")
                 if not isinstance(settings.get(key, True), bool)]
    problems += [f"{key}: unknown field for method auto" for key in values
                 if key not in ("name", "method", "data", "auto", "seed")]
    if not values.get("name"):
        problems.append("name: required")
    if problems:
        raise RecipeError(f"{resolved}: " + "; ".join(problems))
    return {"name": values["name"], "labels": data["labels"], "train": data["train"],
            "budget": settings.get("budget", DEFAULT_BUDGET), "seed": int(values.get("seed", 0)),
            "fine_tune": settings.get("fine_tune", True), "learned": settings.get("learned", True)}
