"""Cross-modal hashing metrics (the MIRFlickr / NUS-WIDE / MS-COCO protocol of DCMH and its successors, which
PromptHash reports): a query's relevant database items are those sharing at least one label with it.

* :func:`hamming_map`: mAP@k of the Hamming ranking (ties broken by database order: a stable sort), scored by the
  spine's :func:`xmr.metrics.mean_average_precision` (AP@k = sum of the precision at each relevant rank <= k,
  over min(relevant, k)).
* :func:`precision_within_radius`: precision of the items within Hamming distance ``radius`` (2 by default); a query
  that retrieves nothing scores 0, as in DCMH's ``calc_precisions_hamming_radius``.

The reference's validation calls its mAP function with a keyword it does not take (``k=`` for ``topk=``), catches
the exception and reports 0.0 (``train_asym.py``, ``valid``). Here the arguments are keyword-only and checked, and
a result that could only come from bad input (no query has any relevant item, codes of different lengths, label
rows that do not match the codes) is an error, never a number.
"""

from __future__ import annotations

import numpy as np

from xmr.errors import XMRError
from xmr.metrics import mean_average_precision
from xmr.representations import BinaryCodes

BLOCK = 1024  # queries ranked at once


def relevance(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """``(queries, items)`` booleans: the two share at least one label (multi-hot rows)."""
    return (np.asarray(query_labels, dtype=np.float32) @ np.asarray(database_labels, dtype=np.float32).T) > 0


def _check(queries: BinaryCodes, database: BinaryCodes, query_labels: np.ndarray,
           database_labels: np.ndarray) -> None:
    if not isinstance(queries, BinaryCodes) or not isinstance(database, BinaryCodes):
        raise XMRError(f"hashing metrics take BinaryCodes, got {type(queries).__name__} and "
                       f"{type(database).__name__}")
    if queries.bits != database.bits:
        raise XMRError(f"query codes have {queries.bits} bits, database codes {database.bits}")
    for name, codes, labels in (("query", queries, query_labels), ("database", database, database_labels)):
        if np.ndim(labels) != 2 or len(labels) != len(codes):
            raise XMRError(f"{name} labels must be a multi-hot (rows, labels) array with one row per code; got "
                           f"shape {np.shape(labels)} for {len(codes)} codes")
    if np.shape(query_labels)[1] != np.shape(database_labels)[1]:
        raise XMRError(f"query labels have {np.shape(query_labels)[1]} columns, database labels "
                       f"{np.shape(database_labels)[1]}")


def hamming_map(*, queries: BinaryCodes, database: BinaryCodes, query_labels: np.ndarray,
                database_labels: np.ndarray, k: int | None = None) -> float:
    """mAP@k (``k=None``: the whole ranking) of Hamming ranking with label-sharing relevance."""
    _check(queries, database, query_labels, database_labels)
    depth = len(database) if k is None else int(k)
    if depth < 1:
        raise XMRError(f"mAP@k needs k >= 1, got {k}")
    depth = min(depth, len(database))
    total, has_relevant = 0.0, 0
    for start in range(0, len(queries), BLOCK):
        stop = min(start + BLOCK, len(queries))
        distances = queries.take(np.arange(start, stop)).hamming(database)
        order = np.argsort(distances, axis=1, kind="stable")[:, :depth]
        relevant = [np.flatnonzero(row) for row in relevance(query_labels[start:stop], database_labels)]
        has_relevant += sum(len(rows) > 0 for rows in relevant)
        total += mean_average_precision(order, relevant, depth) * (stop - start)
    if has_relevant == 0:
        raise XMRError("no query shares a label with any database item: mAP is undefined (check the label rows)")
    return total / len(queries)


def precision_within_radius(*, queries: BinaryCodes, database: BinaryCodes, query_labels: np.ndarray,
                            database_labels: np.ndarray, radius: int = 2) -> dict[str, float]:
    """``{"precision": mean precision within the radius (0 for an empty ball), "empty": share of queries whose ball
    is empty}``."""
    _check(queries, database, query_labels, database_labels)
    if radius < 0:
        raise XMRError(f"Hamming radius must be >= 0, got {radius}")
    precisions, empty = [], 0
    for start in range(0, len(queries), BLOCK):
        stop = min(start + BLOCK, len(queries))
        inside = queries.take(np.arange(start, stop)).hamming(database) <= radius
        relevant = relevance(query_labels[start:stop], database_labels)
        count = inside.sum(axis=1)
        empty += int((count == 0).sum())
        precisions.append(np.where(count > 0, (inside & relevant).sum(axis=1) / np.maximum(count, 1), 0.0))
    if not relevance(query_labels, database_labels).any():
        raise XMRError("no query shares a label with any database item: precision is undefined (check the label rows)")
    return {"precision": float(np.concatenate(precisions).mean()), "empty": empty / len(queries)}


def multi_hot(label_lists: list[list[int]] | list[np.ndarray], n_labels: int) -> np.ndarray:
    """Multi-hot ``(rows, n_labels)`` float32 from label-position lists."""
    out = np.zeros((len(label_lists), n_labels), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        out[row, np.asarray(labels, dtype=np.int64)] = 1.0
    return out
