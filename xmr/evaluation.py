"""Offline evaluation of an index on labelled queries, streamed in batches (no n x L score matrix)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.catalogue import LabelId
from xmr.datasets import Instances
from xmr.index import LabelIndex
from xmr.metrics import precision_at_k, recall_at_k


def truth_as_internal_ids(index: LabelIndex, labels: Sequence[Sequence[LabelId]]) -> tuple[list[list[int]], int]:
    """True labels as the index's internal ids; labels missing from the catalogue get ids no search returns.

    Returns the mapped lists and how many label occurrences were missing (they stay in recall's denominator).
    """
    unreachable = int(index.manifest["next_internal_id"])
    missing: dict[LabelId, int] = {}
    mapped = []
    for query_labels in labels:
        row = []
        for label_id in query_labels:
            if label_id in index.catalogue:
                row.append(index.internal_id(label_id))
            else:
                row.append(missing.setdefault(label_id, unreachable + len(missing)))
        mapped.append(row)
    occurrences = sum(1 for row in mapped for label in row if label >= unreachable)
    return mapped, occurrences


def evaluate(
    index: LabelIndex,
    instances: Instances,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 1024,
    **search_params: int,
) -> dict[str, Any]:
    """P@k and R@k for each k, with encode/search throughput; queries are encoded and searched per batch."""
    max_k = max(ks)
    predictions = np.empty((len(instances), max_k), dtype=np.int64)
    encode_seconds = search_seconds = 0.0
    for start in range(0, len(instances), batch_size):
        batch = instances.texts[start:start + batch_size]
        tick = time.perf_counter()
        vectors = index.encoder.encode_queries(batch)
        encode_seconds += time.perf_counter() - tick
        tick = time.perf_counter()
        predictions[start:start + len(batch)] = index.search_embeddings(vectors, k=max_k, **search_params).ids
        search_seconds += time.perf_counter() - tick
    truth, missing = truth_as_internal_ids(index, instances.labels)
    metrics: dict[str, Any] = {}
    for k in ks:
        metrics[f"P@{k}"] = precision_at_k(predictions, truth, k)
    for k in ks:
        metrics[f"R@{k}"] = recall_at_k(predictions, truth, k)
    return {
        "dataset": instances.source,
        "queries": len(instances),
        "labels_in_index": len(index),
        "true_labels_missing_from_index": missing,
        "metrics": metrics,
        "encode_queries_per_s": len(instances) / encode_seconds if encode_seconds else None,
        "search_queries_per_s": len(instances) / search_seconds if search_seconds else None,
    }
