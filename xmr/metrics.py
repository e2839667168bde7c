"""Ranking metrics for extreme multi-label retrieval, as pyxclib defines them.

Predictions are int64 ``(n, k)`` label ids, best first, ``-1`` where nothing was predicted. Ground truth is a
list of label-id lists (one per query) or a scipy CSR ``(n, L)`` matrix. Every function returns the mean over
queries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

Truth = Sequence[Sequence[int]] | sp.spmatrix | sp.sparray


def _truth_sets(truth: Truth, n: int) -> list[set[int]]:
    if sp.issparse(truth):
        csr = sp.csr_array(truth)
        sets = [set(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tolist()) for i in range(csr.shape[0])]
    else:
        sets = [set(labels) for labels in truth]
    if len(sets) != n:
        raise ValueError(f"{n} prediction rows but {len(sets)} ground-truth rows")
    return sets


def hits(pred: np.ndarray, truth: Truth, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(n, k)`` matrix of correct predictions in the top k, and each query's number of true labels."""
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"predictions must be 2-D (n, k), got shape {pred.shape}")
    if k < 1 or k > pred.shape[1]:
        raise ValueError(f"k={k} is outside 1..{pred.shape[1]} (the number of predictions per query)")
    sets = _truth_sets(truth, len(pred))
    top = pred[:, :k]
    matrix = np.array([[label >= 0 and label in true for label in row] for row, true in zip(top, sets, strict=True)],
                      dtype=bool).reshape(len(top), k)
    return matrix, np.array([len(true) for true in sets], dtype=np.int64)


def precision_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """P@k = |top-k ∩ true| / k, averaged over queries (divides by k even when fewer were predicted)."""
    matrix, _ = hits(pred, truth, k)
    return float(matrix.sum(axis=1).mean() / k) if len(matrix) else 0.0


def recall_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """R@k = |top-k ∩ true| / |true|, averaged over queries (a query with no true label counts 0)."""
    matrix, counts = hits(pred, truth, k)
    if not len(matrix):
        return 0.0
    return float((matrix.sum(axis=1) / np.maximum(counts, 1)).mean())
