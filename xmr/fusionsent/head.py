"""The multi-label head on the frozen fused body (FusionSent Sec. 3.4): one-vs-rest logistic regression, and the
decision thresholds tuned on validation queries.

The reference trainer collapses multi-hot targets with ``argmax`` before fitting its head
(``Trainer._ensure_single_label_format``), so a text can never get two labels; here every label gets its own binary
logistic regression on the full multi-hot target (scikit-learn's ``LogisticRegression``, one per label column:
what ``OneVsRestClassifier`` does, kept as plain weight rows so the head is stored as safetensors, never pickled,
and its rows can serve as label vectors). A label without negatives or without positives in the training texts gets
a zero weight row and the bias of its constant answer. Thresholds (one global, or one per label) maximise F1 on
validation queries the head was not fitted on; without validation they stay at 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xmr import metrics as m

CONSTANT_LOGIT = 20.0  # the bias of a label every (or no) training text carries: sigmoid(+-20) ~ 1 or 0
GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)  # candidate thresholds


def multi_hot(positives: Sequence[np.ndarray], n_labels: int) -> np.ndarray:
    """``(n, L)`` uint8 targets from each row's label rows."""
    targets = np.zeros((len(positives), n_labels), dtype=np.uint8)
    for row, labels in enumerate(positives):
        targets[row, np.asarray(labels, dtype=np.int64)] = 1
    return targets


def fit_head(features: np.ndarray, targets: np.ndarray, c: float = 1.0, max_iter: int = 1000,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression per label column; returns float32 ``weights (L, d)`` and ``bias (L,)``."""
    from sklearn.linear_model import LogisticRegression

    n_labels, dim = targets.shape[1], features.shape[1]
    weights = np.zeros((n_labels, dim), dtype=np.float32)
    bias = np.zeros(n_labels, dtype=np.float32)
    for label in range(n_labels):
        column = targets[:, label]
        if column.min() == column.max():
            bias[label] = CONSTANT_LOGIT if column.max() else -CONSTANT_LOGIT
            continue
        model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(features, column)
        weights[label], bias[label] = model.coef_[0], model.intercept_[0]
    return weights, bias


def probabilities(features: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Per-label sigmoid probabilities ``(n, L)``."""
    logits = features.astype(np.float32) @ weights.T + bias
    return (1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))).astype(np.float32)


def label_sets(probs: np.ndarray, thresholds: np.ndarray, at_least_one: bool = True) -> list[np.ndarray]:
    """Each row's labels with probability at or above its threshold (the top label when none is and
    ``at_least_one``)."""
    chosen = probs >= thresholds[None, :]
    sets = []
    for row in range(len(probs)):
        labels = np.flatnonzero(chosen[row])
        if not len(labels) and at_least_one:
            labels = np.array([int(np.argmax(probs[row]))])
        sets.append(labels.astype(np.int64))
    return sets


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, mode: str = "global",
                    at_least_one: bool = True) -> np.ndarray:
    """Thresholds ``(L,)`` maximising validation F1: ``global`` one value for micro-F1 of the label sets,
    ``per-label`` each label's own F1 (labels absent from validation keep the global value)."""
    truth = [np.flatnonzero(row) for row in targets]
    n_labels = probs.shape[1]
    scores = [m.set_metrics(label_sets(probs, np.full(n_labels, value), at_least_one), truth)["micro_f1"]
              for value in GRID]
    best = float(GRID[int(np.argmax(scores))])
    thresholds = np.full(n_labels, best, dtype=np.float32)
    if mode == "per-label":
        positive = targets.astype(bool)
        for label in np.flatnonzero(positive.any(axis=0)):
            predicted = probs[:, label][:, None] >= GRID[None, :]
            true_positive = (predicted & positive[:, label][:, None]).sum(axis=0)
            f1 = 2 * true_positive / (predicted.sum(axis=0) + positive[:, label].sum())
            thresholds[label] = GRID[int(np.argmax(f1))]
    return thresholds
