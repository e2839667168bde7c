"""Offline evaluation of any predictor (label index, sharded index, classifier head, set decoder) on labelled queries.

Queries are predicted in batches and only the top-K catalogue rows per query are kept, so memory grows with n x K,
never with n x L. Metrics come from :mod:`xmr.metrics`; propensities are counted on the training split. Predictors
that encode queries separately (indexes) are timed per phase and may be given precomputed query representations.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xmr import metrics as m
from xmr.catalogue import LabelCatalogue, LabelId
from xmr.datasets import Instances, read_filter_pairs, read_instances, read_label_lists
from xmr.errors import InvalidArgument, XMRError
from xmr.predictor import EncodedPredictor, Predictor
from xmr.representations import Representation

DECILE_K = 5


def truth_as_rows(catalogue: LabelCatalogue, labels: Sequence[Sequence[LabelId]]) -> tuple[list[np.ndarray], int]:
    """True labels as catalogue rows; labels missing from the catalogue get rows no predictor returns.

    Returns the mapped arrays and how many label occurrences were missing (they stay in recall's denominator).
    """
    unreachable = len(catalogue)
    missing: dict[LabelId, int] = {}
    mapped = []
    for query_labels in labels:
        row = []
        for label_id in query_labels:
            if label_id in catalogue:
                row.append(catalogue.position(label_id))
            else:
                row.append(missing.setdefault(label_id, unreachable + len(missing)))
        mapped.append(np.array(row, dtype=np.int64))
    occurrences = sum(int((row >= unreachable).sum()) for row in mapped)
    return mapped, occurrences


def predict_rows(predictor: Predictor, queries: Sequence[Any] | Representation | np.ndarray, k: int,
                 batch_size: int = 1024, exclude: Mapping[int, set[int]] | None = None,
                 **options: int) -> tuple[np.ndarray, dict[str, float], list[np.ndarray] | None]:
    """Top-k catalogue rows per query, predicted batch by batch, and the predicted label sets (catalogue rows) when
    the predictor decides sets (``SearchResult.sets``), else None.

    ``queries`` are items, or (predictors that encode queries) a precomputed representation or float32 array (a
    ``np.memmap`` keeps memory bounded); ``exclude`` drops catalogue rows per query (reciprocal-pair filtering) from
    both the rankings and the sets.
    """
    exclude = exclude or {}
    encodes = isinstance(predictor, EncodedPredictor)
    if isinstance(queries, (Representation, np.ndarray)) and not encodes:
        raise XMRError(f"a {predictor.kind} predictor takes query items, not precomputed query vectors")
    depth = k + max((len(rows) for rows in exclude.values()), default=0)
    predictions = np.full((len(queries), k), -1, dtype=np.int64)
    sets: list[np.ndarray] | None = []
    encode_seconds = search_seconds = 0.0
    for start in range(0, len(queries), batch_size):
        block = slice(start, start + batch_size)
        tick = time.perf_counter()
        if isinstance(queries, Representation):
            batch = queries.take(np.arange(len(queries))[block])
        elif isinstance(queries, np.ndarray):
            batch = np.asarray(queries[block], dtype=np.float32)
        elif encodes:
            batch = predictor.encode_queries(list(queries[block]))
        else:
            batch = list(queries[block])
        encode_seconds += time.perf_counter() - tick
        tick = time.perf_counter()
        if encodes:
            result = predictor.predict_encoded(batch, k=depth, **options)
        else:
            result = predictor.predict(batch, k=depth, **options)
        search_seconds += time.perf_counter() - tick
        for offset, row in enumerate(result.rows):
            row = row[row >= 0]
            dropped = list(exclude.get(start + offset, ()))
            predictions[start + offset, :min(k, len(row))] = row[~np.isin(row, dropped)][:k]
            if sets is not None and result.sets is not None:
                chosen = np.asarray(result.sets[offset], dtype=np.int64)
                sets.append(chosen[~np.isin(chosen, dropped)])
            else:
                sets = None
    n = max(len(queries), 1)
    timings = {
        "encode_s": encode_seconds,
        "search_s": search_seconds,
        "encode_queries_per_s": n / encode_seconds if encode_seconds else float("nan"),
        "search_queries_per_s": n / search_seconds if search_seconds else float("nan"),
    }
    return predictions, timings, sets


def ranking_metrics(pred: np.ndarray, truth: list[np.ndarray], ks: Sequence[int],
                    inv_propensity: np.ndarray | None) -> dict[str, float]:
    """Every ranking metric at every k (PS metrics only with propensities), plus MAP, MRR and coverage at max k."""
    values: dict[str, float] = {}
    for name, function in (("P", m.precision_at_k), ("nDCG", m.ndcg_at_k), ("R", m.recall_at_k),
                           ("RP", m.rprecision_at_k)):
        for k in ks:
            values[f"{name}@{k}"] = function(pred, truth, k)
    if inv_propensity is not None:
        for name, function in (("PSP", m.psprecision_at_k), ("PSnDCG", m.psndcg_at_k)):
            for k in ks:
                values[f"{name}@{k}"] = function(pred, truth, inv_propensity, k)
    depth = max(ks)
    values[f"MAP@{depth}"] = m.mean_average_precision(pred, truth, depth)
    values[f"MRR@{depth}"] = m.mrr(pred, truth, depth)
    values[f"coverage@{depth}"] = m.coverage_at_k(pred, truth, depth)
    return values


def evaluate(
    predictor: Predictor,
    dataset: Instances | str | Path,
    ks: Sequence[int] = (1, 3, 5),
    propensity: tuple[float, float] = m.PROPENSITY_PRESETS["default"],
    train: Instances | str | Path | None = None,
    filter_labels: str | Path | Mapping[int, set[int]] | None = None,
    group_by: str | None = None,
    batch_size: int = 1024,
    query_vectors: Representation | np.ndarray | None = None,
    modality: str = "all",
    **search_params: int,
) -> dict[str, Any]:
    """Score any ``predictor`` on labelled queries; returns every metric, curves, deciles, groups and timings.

    ``train`` (instances or a file, including sparse BoW) gives the label counts for PSP/PSnDCG (Jain et al.
    propensities with ``propensity=(A, B)``) and for the frequency deciles; without it PS metrics are omitted and
    deciles use test counts. ``filter_labels`` (file or row -> label ids) removes reciprocal (query, label) pairs
    from predictions and truth. ``group_by`` names a record field (e.g. ESCO's ``subset``) to report per group.
    ``query_vectors`` (row i = query i; predictors that encode queries) replaces encoding the queries.
    ``modality`` picks what a query is when the data has images: ``all`` (text and images), ``text`` or ``image``.
    """
    started = time.perf_counter()
    instances = dataset if isinstance(dataset, Instances) else read_instances(dataset)
    if group_by and not any(group_by in extra for extra in instances.extra or []):
        raise InvalidArgument(f"--group-by {group_by}: no record of {instances.source} has that field")
    ks = sorted(set(int(k) for k in ks))
    depth = max(ks)
    catalogue = predictor.catalogue
    truth, missing = truth_as_rows(catalogue, instances.labels)
    pairs = read_filter_pairs(filter_labels) if isinstance(filter_labels, (str, Path)) else (filter_labels or {})
    exclude: dict[int, set[int]] = {}
    for row, label_ids in pairs.items():
        if 0 <= row < len(instances):
            rows = {catalogue.position(label) for label in label_ids if label in catalogue}
            exclude[row] = rows
            truth[row] = truth[row][~np.isin(truth[row], list(rows))]
    queries = instances.items(modality) if query_vectors is None else query_vectors
    if len(queries) != len(instances):
        raise XMRError(f"{len(queries)} query vectors for {len(instances)} queries in {instances.source}")
    predictions, timings, sets = predict_rows(predictor, queries, depth, batch_size, exclude, **search_params)

    table_size = len(catalogue)
    inv_propensity = None
    if train is not None:
        train_labels = train.labels if isinstance(train, Instances) else read_label_lists(train)
        train_truth, _ = truth_as_rows(catalogue, train_labels)
        clean = [labels[labels < table_size] for labels in train_truth]  # labels missing from the index
        counts = m.label_counts(clean, table_size)
        inv_propensity = m.inverse_propensity(clean, table_size, *propensity)
        counts_from = "train"
    else:
        counts = m.label_counts([labels[labels < table_size] for labels in truth], table_size)
        counts_from = "test"

    curve_ks = list(range(1, depth + 1))
    curves = {"k": curve_ks, "P@k": [m.precision_at_k(predictions, truth, k) for k in curve_ks]}
    if inv_propensity is not None:
        curves["PSP@k"] = [m.psprecision_at_k(predictions, truth, inv_propensity, k) for k in curve_ks]
    decile_k = min(DECILE_K, depth)
    groups = {}
    if group_by:
        values = [extra.get(group_by) for extra in instances.extra] if instances.extra else []
        for group in sorted({value for value in values if value is not None}, key=str):
            rows = [row for row, value in enumerate(values) if value == group]
            groups[str(group)] = {"queries": len(rows), "metrics": ranking_metrics(
                predictions[rows], [truth[row] for row in rows], ks, inv_propensity)}
    timings["total_s"] = time.perf_counter() - started
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    described = predictor.describe()
    return {
        "dataset": instances.source,
        "queries": len(instances),
        "modality": modality if instances.images else "text",
        "predictor": described,
        "index": described["path"],
        "encoder": described["encoder"] or {},
        "structure": described["structure"],
        "search_params": search_params or described["params"],
        "labels_in_index": len(catalogue),
        "true_labels_missing_from_index": missing,
        "ks": ks,
        "propensity": {"A": propensity[0], "B": propensity[1], "train": getattr(train, "source", str(train))}
        if inv_propensity is not None else None,
        "filter": {"pairs": sum(len(v) for v in pairs.values())} if pairs else None,
        "metrics": ranking_metrics(predictions, truth, ks, inv_propensity),
        "set_metrics": m.set_metrics(sets, truth) if sets is not None else None,
        "curves": curves,
        "deciles": {
            "k": decile_k,
            "label_counts_from": counts_from,
            "contribution": m.precision_at_k_by_decile(predictions, truth, decile_k, counts).tolist(),
        },
        "groups": groups,
        "timings": timings,
    }
