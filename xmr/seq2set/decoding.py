"""From a decoder's outputs to what a predictor returns: the predicted label set and a ranked list (Sec. 3.4 of
OTSeq2Set: greedy decoding, the set is the non-empty tokens with duplicates removed; reference
caojie54/OTSeq2Set ``model/seq2seq.py`` ``sample``).

Ranking (needed for P@k, which the paper does not report for its generated sets): a label's score is the highest
probability any decoding step gave it. For MLC2Seq the set ends at the first end token; for the BCE head the set is
the labels whose probability reaches the threshold.
"""

from __future__ import annotations

import numpy as np
import torch


def generated_sets(tokens: np.ndarray, empty: int, stop_at_end: bool) -> list[np.ndarray]:
    """Per query the distinct non-empty table rows of its greedy tokens ``(b, T)``, in generation order; with
    ``stop_at_end`` (MLC2Seq) only the tokens before the first empty/end token."""
    sets = []
    for row in tokens:
        if stop_at_end and (row == empty).any():
            row = row[: int(np.argmax(row == empty))]
        chosen = row[row != empty]
        _, first = np.unique(chosen, return_index=True)
        sets.append(chosen[np.sort(first)].astype(np.int64))
    return sets


def ranked(column_scores: torch.Tensor, column_rows: torch.Tensor | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` label rows and scores from per-column scores ``(b, C)`` over label columns only (no empty
    column); ``column_rows`` ``(b, C)`` maps columns to rows (None: column = row; -1: padding, never returned)."""
    if column_rows is not None:
        column_scores = column_scores.masked_fill(column_rows < 0, float("-inf"))
    depth = min(k, column_scores.shape[1])
    scores, columns = column_scores.topk(depth, dim=1)
    rows = columns if column_rows is None else column_rows.gather(1, columns)
    rows = torch.where(torch.isfinite(scores), rows, torch.full_like(rows, -1))
    return rows.cpu().numpy(), scores.float().cpu().numpy()


def sequence_outputs(log_probs: torch.Tensor, column_rows: torch.Tensor | None, empty: int, k: int,
                     stop_at_end: bool) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Rows, scores and sets of a greedy decode ``(b, T, C)`` (last column: empty)."""
    choice = log_probs.argmax(dim=2)  # (b, T)
    tokens = choice if column_rows is None else torch.cat(
        [column_rows, torch.full_like(column_rows[:, :1], empty)], dim=1).gather(1, choice)
    best = log_probs[:, :, :-1].exp().amax(dim=1)  # (b, C - 1)
    rows, scores = ranked(best, column_rows, k)
    return rows, scores, generated_sets(tokens.cpu().numpy(), empty, stop_at_end)


def threshold_outputs(logits: torch.Tensor, column_rows: torch.Tensor | None, k: int,
                      threshold: float) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Rows, scores and sets of a one-vs-all head's logits ``(b, C)``: the set is every label with probability at
    least ``threshold``."""
    probabilities = torch.sigmoid(logits.float())
    rows, scores = ranked(probabilities, column_rows, len(probabilities[0]))
    sets = [row[(score >= threshold) & (row >= 0)] for row, score in zip(rows, scores, strict=True)]
    return rows[:, :k], scores[:, :k], sets
