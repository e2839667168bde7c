"""Few-shot selection and the two branches' training pairs, sampled without ever listing all n^2 text pairs.

Body 1 (SetFit branch, FusionSent Sec. 3.1; SetFit's ``ContrastiveDataset``): pairs of training texts, positive
(target 1) when they share at least one label, negative (0) otherwise. SetFit enumerates every pair with
``np.triu_indices`` (quadratic memory: the reference notebook caps data at 250 texts), so here the number of
positive and negative pairs is counted exactly over the distinct label *sets* (``G^2`` for ``G`` distinct sets, not
``n^2``) and pairs are drawn directly: a positive by anchor, one of its labels, then another text with that label;
a negative by anchor and a text rejection-sampled to share none of its labels. The strategies keep SetFit's
meaning: ``unique`` keeps the natural positive:negative ratio and at most every pair once in size, ``oversampling``
balances 1:1 at the size of the larger class, ``undersampling`` 1:1 at the size of the smaller one; ``max_pairs``
caps an epoch (the compute budget).

Body 2 (label branch, Sec. 3.2; reference ``Trainer._get_label_embedding_dataloader``): (text, label text) pairs,
every positive label of each text (target 1) plus sampled negative labels (target 0): ``undersampling`` draws as
many negatives as the text has labels, ``oversampling`` takes every negative label and repeats positives to match.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xmr.errors import XMRError

STRATEGIES = ("unique", "oversampling", "undersampling")
LABEL_STRATEGIES = ("undersampling", "oversampling")
COUNT_BLOCK = 1024  # distinct label sets per block of the pair count


def few_shot_rows(positives: Sequence[np.ndarray], n_labels: int, shots: int, seed: int) -> np.ndarray:
    """Rows of a k-shot sample: for each label in random order, up to ``shots`` random texts carrying it (texts
    already taken for an earlier label count towards it); sorted row numbers."""
    rng = np.random.default_rng([seed, 15])
    by_label: list[list[int]] = [[] for _ in range(n_labels)]
    for row, labels in enumerate(positives):
        for label in labels:
            by_label[int(label)].append(row)
    chosen: set[int] = set()
    have = np.zeros(n_labels, dtype=np.int64)
    for label in rng.permutation(n_labels):
        for row in rng.permutation(by_label[label]):
            if have[label] >= shots:
                break
            if row not in chosen:
                chosen.add(int(row))
                have[positives[row]] += 1
    return np.array(sorted(chosen), dtype=np.int64)


class TextPairSampler:
    """Draws body-1 pairs (see the module docstring) from the rows' label sets."""

    def __init__(self, positives: Sequence[np.ndarray], n_labels: int) -> None:
        if len(positives) < 2:
            raise XMRError("fusionsent: the SetFit branch needs at least two training texts")
        self.positives = [np.asarray(labels, dtype=np.int64) for labels in positives]
        self.by_label = [[] for _ in range(n_labels)]
        for row, labels in enumerate(self.positives):
            for label in labels:
                self.by_label[int(label)].append(row)
        self.by_label = [np.array(rows, dtype=np.int64) for rows in self.by_label]
        self.n_positive, self.n_negative = self._count_pairs()

    def _count_pairs(self) -> tuple[int, int]:
        """Exact numbers of unordered positive and negative pairs of distinct texts, over distinct label sets: the
        sparse product of the (set x label) incidence matrix with itself, ``COUNT_BLOCK`` sets at a time, says which
        sets share a label (memory bounded by a block's row of the product, time by its non-zeros)."""
        from scipy import sparse

        groups: dict[frozenset[int], int] = {}
        for labels in self.positives:
            key = frozenset(labels.tolist())
            groups[key] = groups.get(key, 0) + 1
        counts = np.array(list(groups.values()), dtype=np.int64)
        indices = np.array([label for key in groups for label in sorted(key)], dtype=np.int64)
        indptr = np.cumsum([0] + [len(key) for key in groups])
        n_labels = len(self.by_label)
        sets = sparse.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                                 shape=(len(groups), n_labels))
        positive = int((counts * (counts - 1) // 2).sum())  # the same set shares every label
        for start in range(0, len(groups), COUNT_BLOCK):
            shared = (sets[start:start + COUNT_BLOCK] @ sets.T).tocoo()
            rows = shared.row.astype(np.int64) + start
            later = shared.col > rows  # each unordered pair of distinct sets once
            positive += int((counts[rows[later]] * counts[shared.col[later]]).sum())
        n = len(self.positives)
        return positive, int(n * (n - 1) // 2 - positive)

    def sizes(self, strategy: str) -> tuple[int, int]:
        """(positive, negative) pairs of an uncapped epoch under ``strategy``."""
        if strategy == "unique":
            return self.n_positive, self.n_negative
        size = max(self.n_positive, self.n_negative) if strategy == "oversampling" else min(self.n_positive,
                                                                                            self.n_negative)
        return (size, size) if self.n_positive and self.n_negative else (self.n_positive, self.n_negative)

    def sample(self, strategy: str, max_pairs: int | None, rng: np.random.Generator) -> np.ndarray:
        """An epoch of pairs, ``(m, 3)`` int64 rows ``[text_a, text_b, target]``, positives and negatives
        interleaved in random order."""
        if strategy not in STRATEGIES:
            raise XMRError(f"fusionsent.pair_sampling: {strategy!r} is not one of {', '.join(STRATEGIES)}")
        n_pos, n_neg = self.sizes(strategy)
        total = n_pos + n_neg
        if max_pairs is not None and total > max_pairs:
            n_pos = int(round(max_pairs * n_pos / total))
            n_neg = max_pairs - n_pos
        pairs = np.concatenate([self._positive(n_pos, rng), self._negative(n_neg, rng)])
        return pairs[rng.permutation(len(pairs))]

    def _positive(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((count, 3), dtype=np.int64)
        made = 0
        while made < count:
            anchor = int(rng.integers(len(self.positives)))
            rows = self.by_label[int(rng.choice(self.positives[anchor]))]
            if len(rows) < 2:
                continue  # the only text with this label: no partner through it
            partner = int(rows[rng.integers(len(rows))])
            if partner != anchor:
                out[made] = anchor, partner, 1
                made += 1
        return out

    def _negative(self, count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((count, 3), dtype=np.int64)
        made, n = 0, len(self.positives)
        while made < count:
            anchor, partner = (int(x) for x in rng.integers(n, size=2))
            if not np.intersect1d(self.positives[anchor], self.positives[partner]).size:
                out[made] = anchor, partner, 0
                made += 1
        return out


def label_pairs(positives: Sequence[np.ndarray], n_labels: int, strategy: str, max_pairs: int | None,
                rng: np.random.Generator) -> np.ndarray:
    """An epoch of body-2 pairs, ``(m, 3)`` int64 rows ``[text, label_row, target]`` in random order."""
    if strategy not in LABEL_STRATEGIES:
        raise XMRError(f"fusionsent.label_sampling: {strategy!r} is not one of {', '.join(LABEL_STRATEGIES)}")
    parts = []
    for row, labels in enumerate(positives):
        labels = np.asarray(labels, dtype=np.int64)
        if strategy == "undersampling":
            negatives = other_labels(labels, n_labels, min(len(labels), n_labels - len(labels)), rng)
            chosen_positives = labels
        else:
            others = np.setdiff1d(np.arange(n_labels), labels)
            negatives = others
            chosen_positives = np.concatenate([labels, rng.choice(labels, size=max(0, len(others) - len(labels)))])
        parts.append(np.stack([np.full(len(chosen_positives), row), chosen_positives,
                               np.ones(len(chosen_positives), dtype=np.int64)], axis=1))
        parts.append(np.stack([np.full(len(negatives), row), negatives, np.zeros(len(negatives), dtype=np.int64)],
                              axis=1))
    pairs = np.concatenate(parts).astype(np.int64)
    pairs = pairs[rng.permutation(len(pairs))]
    return pairs[:max_pairs] if max_pairs is not None else pairs


def other_labels(labels: np.ndarray, n_labels: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct labels outside ``labels``, uniformly at random: drawn and rejected one at a time when
    ``labels`` is a small part of the catalogue (a text's few labels among thousands: listing the other labels for
    every text cost 2.6 ms a text on 13,896 ESCO skills), else chosen from the listed others."""
    if 2 * len(labels) > n_labels:
        return rng.choice(np.setdiff1d(np.arange(n_labels), labels), size=count, replace=False)
    taken, chosen = set(labels.tolist()), []
    while len(chosen) < count:
        label = int(rng.integers(n_labels))
        if label not in taken:
            taken.add(label)
            chosen.append(label)
    return np.array(chosen, dtype=np.int64)


def label_pair_count(positives: Sequence[np.ndarray], n_labels: int, strategy: str) -> int:
    """How many pairs :func:`label_pairs` makes uncapped (the epoch length before ``max_pairs``)."""
    sizes = np.array([len(labels) for labels in positives], dtype=np.int64)
    negatives = n_labels - sizes
    if strategy == "undersampling":
        return int((sizes + np.minimum(sizes, negatives)).sum())
    return int((np.maximum(sizes, negatives) + negatives).sum())
