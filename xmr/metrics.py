"""Metrics for extreme multi-label retrieval, as pyxclib and the Extreme Classification Repository define them.

Ranked predictions are int64 ``(n, k)`` label ids, best first, ``-1`` where nothing was predicted. Ground truth is
a list of label-id lists (one per query) or a scipy CSR ``(n, L)`` matrix. Every ranking metric returns the mean
over ALL queries as a float; a query with no true label scores 0 (it stays in the mean, as in pyxclib).
Predictions are consumed as given: ties were already broken by the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from xmr.errors import InvalidArgument

Truth = Sequence[Sequence[int]] | sp.spmatrix | sp.sparray

PROPENSITY_PRESETS = {"default": (0.55, 1.5), "amazon": (0.6, 2.6), "wikipedia": (0.5, 0.4)}


@dataclass
class Hits:
    """Per query: which of the top-k predictions are correct, and how many labels are true."""

    matrix: np.ndarray  # bool (n, k)
    true_counts: np.ndarray  # int64 (n,)
    predictions: np.ndarray  # int64 (n, k)
    truth: list[np.ndarray]  # true label ids per query

    def __len__(self) -> int:
        return len(self.matrix)


def truth_lists(truth: Truth) -> list[np.ndarray]:
    """Ground truth as one int64 array of label ids per query."""
    if sp.issparse(truth):
        csr = sp.csr_array(truth)
        return [csr.indices[csr.indptr[i]:csr.indptr[i + 1]].astype(np.int64) for i in range(csr.shape[0])]
    return [np.asarray(labels, dtype=np.int64).reshape(-1) for labels in truth]


def hits(pred: np.ndarray, truth: Truth | list[np.ndarray], k: int) -> Hits:
    """Correctness of the top-k predictions of every query."""
    pred = np.asarray(pred, dtype=np.int64)
    if pred.ndim != 2:
        raise InvalidArgument(f"predictions must be 2-D (n, k), got shape {pred.shape}")
    if k < 1 or k > pred.shape[1]:
        raise InvalidArgument(f"k={k} is outside 1..{pred.shape[1]} (the number of predictions per query)")
    lists = truth if isinstance(truth, list) and all(isinstance(t, np.ndarray) for t in truth) else truth_lists(truth)
    if len(lists) != len(pred):
        raise InvalidArgument(f"{len(pred)} prediction rows but {len(lists)} ground-truth rows")
    top = pred[:, :k]
    # one vectorised membership test: (row, label) pairs encoded as row * stride + label
    flat_truth = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
    truth_rows = np.repeat(np.arange(len(lists)), [len(true) for true in lists])
    stride = int(max(top.max(initial=0), flat_truth.max(initial=0))) + 1
    truth_keys = np.unique(truth_rows * stride + flat_truth)
    matrix = np.isin(np.arange(len(top))[:, None] * stride + top, truth_keys) & (top >= 0)
    counts = np.bincount(truth_keys // stride, minlength=len(lists)).astype(np.int64)
    return Hits(matrix, counts, top, lists)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else 0.0


def precision_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """P@k = |top-k ∩ true| / k (divides by k even when fewer than k were predicted)."""
    return _mean(hits(pred, truth, k).matrix.sum(axis=1) / k)


def recall_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """R@k = |top-k ∩ true| / |true|."""
    h = hits(pred, truth, k)
    return _mean(h.matrix.sum(axis=1) / np.maximum(h.true_counts, 1))


def rprecision_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """RP@k = |top-k ∩ true| / min(k, |true|) (R-precision capped at k; 1.0 is achievable for every query)."""
    h = hits(pred, truth, k)
    return _mean(h.matrix.sum(axis=1) / np.maximum(np.minimum(h.true_counts, k), 1))


def ndcg_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """nDCG@k with binary gains: Σ_j hit_j / log2(j+1) over the ideal Σ_{j ≤ min(k, |true|)} 1 / log2(j+1)."""
    h = hits(pred, truth, k)
    discounts = _discounts(k)
    ideal = np.concatenate([[1.0], np.cumsum(discounts)])[np.minimum(h.true_counts, k)]
    return _mean((h.matrix * discounts).sum(axis=1) / ideal * (h.true_counts > 0))  # ideal[0] = 1 avoids 0/0


def mean_average_precision(pred: np.ndarray, truth: Truth, k: int | None = None) -> float:
    """MAP over the returned ranking: AP = Σ_{hits at rank j ≤ k} P@j / min(|true|, k)."""
    pred = np.asarray(pred)
    h = hits(pred, truth, k or pred.shape[1])
    depth = h.matrix.shape[1]
    precision_at_rank = np.cumsum(h.matrix, axis=1) / np.arange(1, depth + 1)
    return _mean((precision_at_rank * h.matrix).sum(axis=1) / np.maximum(np.minimum(h.true_counts, depth), 1))


def mrr(pred: np.ndarray, truth: Truth, k: int | None = None) -> float:
    """Mean reciprocal rank of the first correct prediction within the top k (0 when none is correct)."""
    pred = np.asarray(pred)
    h = hits(pred, truth, k or pred.shape[1])
    first = np.argmax(h.matrix, axis=1)
    return _mean(np.where(h.matrix.any(axis=1), 1.0 / (first + 1), 0.0))


# ---- propensity-scored metrics ---------------------------------------------------------------------------------
def label_counts(truth: Truth, n_labels: int) -> np.ndarray:
    """How many queries have each label (each label counted once per query)."""
    counts = np.zeros(n_labels, dtype=np.int64)
    for labels in truth_lists(truth):
        labels = np.unique(labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= n_labels):
            raise InvalidArgument(f"label id outside 0..{n_labels - 1}")
        counts[labels] += 1
    return counts


def inverse_propensity(train_truth: Truth, n_labels: int, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Jain et al. (2016) inverse propensities 1/p_l, counted on the TRAIN split.

    p_l = 1 / (1 + C e^{-A log(N_l + B)}), C = (log N - 1)(B + 1)^A, N = number of training instances,
    N_l = training instances with label l. Presets: ``PROPENSITY_PRESETS`` (0.55/1.5 default, 0.6/2.6 Amazon,
    0.5/0.4 Wikipedia).
    """
    counts = label_counts(train_truth, n_labels)
    n = len(truth_lists(train_truth))
    c = (np.log(n) - 1.0) * (B + 1.0) ** A
    return 1.0 + c * np.exp(-A * np.log(counts + B))


def _propensity_weights(ids: np.ndarray, inv_propensity: np.ndarray) -> np.ndarray:
    """Weight per predicted id; ids outside the propensity table (unreachable labels, -1) weigh nothing."""
    valid = (ids >= 0) & (ids < len(inv_propensity))
    return np.where(valid, inv_propensity[np.clip(ids, 0, len(inv_propensity) - 1)], 0.0)


def _ideal_weights(h: Hits, inv_propensity: np.ndarray, k: int) -> np.ndarray:
    """The k largest propensity weights among each query's true labels (the best achievable ranking)."""
    ideal = np.zeros((len(h), k))
    for row, true in enumerate(h.truth):
        weights = np.sort(_propensity_weights(np.unique(true), inv_propensity))[::-1][:k]
        ideal[row, :len(weights)] = weights
    return ideal


def psprecision_at_k(pred: np.ndarray, truth: Truth, inv_propensity: np.ndarray, k: int) -> float:
    """PSP@k, normalised by the best achievable PSP@k (as pyxclib and the XMC repository report it).

    Raw PSP@k = mean_i Σ_{j ≤ k} hit_ij / p_{pred_ij} / k; the reported value divides it by the same sum for the
    ideal ranking (each query's true labels ordered by 1/p), so 1.0 is the best possible.
    """
    h = hits(pred, truth, k)
    achieved = (h.matrix * _propensity_weights(h.predictions, inv_propensity)).sum(axis=1)
    best = _ideal_weights(h, inv_propensity, k).sum(axis=1)
    return float(achieved.sum() / best.sum()) if best.sum() > 0 else 0.0


def psndcg_at_k(pred: np.ndarray, truth: Truth, inv_propensity: np.ndarray, k: int) -> float:
    """PSnDCG@k: propensity-weighted DCG over the ideal count-based DCG, normalised by the best achievable."""
    h = hits(pred, truth, k)
    discounts = _discounts(k)
    ideal_dcg = np.concatenate([[1.0], np.cumsum(discounts)])[np.minimum(h.true_counts, k)]
    achieved = (h.matrix * _propensity_weights(h.predictions, inv_propensity) * discounts).sum(axis=1) / ideal_dcg
    best = (_ideal_weights(h, inv_propensity, k) * discounts).sum(axis=1) / ideal_dcg
    return float(achieved.sum() / best.sum()) if best.sum() > 0 else 0.0


# ---- label-level views ----------------------------------------------------------------------------------------
def coverage_at_k(pred: np.ndarray, truth: Truth, k: int) -> float:
    """Fraction of the distinct labels in the ground truth that are predicted correctly (top k) at least once."""
    h = hits(pred, truth, k)
    relevant = np.unique(np.concatenate(h.truth)) if h.truth else np.array([], dtype=np.int64)
    found = np.unique(h.predictions[h.matrix])
    return float(len(found) / len(relevant)) if len(relevant) else 0.0


def label_deciles(label_counts: np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin of each label (0 = rarest ... bins-1 = most frequent): labels sorted by count, cut into equal-size bins."""
    order = np.argsort(label_counts, kind="stable")
    decile = np.empty(len(label_counts), dtype=np.int64)
    decile[order] = np.arange(len(label_counts)) * bins // max(len(label_counts), 1)
    return decile


def precision_at_k_by_decile(pred: np.ndarray, truth: Truth, k: int, label_counts: np.ndarray,
                             bins: int = 10) -> np.ndarray:
    """Contribution of each label-frequency bin to P@k (the bins sum to P@k): where do the correct hits come from."""
    h = hits(pred, truth, k)
    decile = label_deciles(np.asarray(label_counts), bins)
    correct = h.predictions[h.matrix]
    correct = correct[correct < len(decile)]
    totals = np.bincount(decile[correct], minlength=bins).astype(np.float64)
    return totals / (k * max(len(h), 1))


# ---- label-set metrics (thresholded scores, decoder outputs) ------------------------------------------------------
def threshold_predictions(ids: np.ndarray, scores: np.ndarray, threshold: float) -> list[list[int]]:
    """Predicted label sets: the ids whose score is at least ``threshold``."""
    return [[int(label) for label, score in zip(row_ids, row_scores, strict=True) if label >= 0 and score >= threshold]
            for row_ids, row_scores in zip(ids, scores, strict=True)]


def set_metrics(predicted: Sequence[Sequence[int]], truth: Truth) -> dict[str, float]:
    """Micro, macro and example-based precision, recall and F1 of predicted label SETS.

    Micro pools every (query, label) decision; macro averages per-label scores over the labels that occur in the
    truth or the predictions (a label with no true and no predicted occurrence has no defined score); example-based
    averages per-query scores. 0/0 counts as 0.
    """
    lists = truth_lists(truth)
    if len(predicted) != len(lists):
        raise InvalidArgument(f"{len(predicted)} predicted sets but {len(lists)} ground-truth rows")
    true_positive: dict[int, int] = {}
    predicted_count: dict[int, int] = {}
    true_count: dict[int, int] = {}
    example = np.zeros((len(lists), 3))
    for row, (guess, true) in enumerate(zip(predicted, lists, strict=True)):
        guess_set, true_set = set(int(x) for x in guess), set(true.tolist())
        correct = guess_set & true_set
        for label in guess_set:
            predicted_count[label] = predicted_count.get(label, 0) + 1
        for label in true_set:
            true_count[label] = true_count.get(label, 0) + 1
        for label in correct:
            true_positive[label] = true_positive.get(label, 0) + 1
        precision = len(correct) / len(guess_set) if guess_set else 0.0
        recall = len(correct) / len(true_set) if true_set else 0.0
        example[row] = precision, recall, _f1(precision, recall)

    tp, pp, tc = sum(true_positive.values()), sum(predicted_count.values()), sum(true_count.values())
    micro_p, micro_r = (tp / pp if pp else 0.0), (tp / tc if tc else 0.0)
    labels = set(predicted_count) | set(true_count)
    per_label = np.array([
        (true_positive.get(label, 0) / predicted_count[label] if predicted_count.get(label) else 0.0,
         true_positive.get(label, 0) / true_count[label] if true_count.get(label) else 0.0)
        for label in labels
    ]).reshape(-1, 2)
    macro_f1 = np.array([_f1(p, r) for p, r in per_label])
    return {
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": _f1(micro_p, micro_r),
        "macro_precision": _mean(per_label[:, 0]),
        "macro_recall": _mean(per_label[:, 1]),
        "macro_f1": _mean(macro_f1),
        "example_precision": _mean(example[:, 0]),
        "example_recall": _mean(example[:, 1]),
        "example_f1": _mean(example[:, 2]),
    }


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
