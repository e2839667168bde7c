"""ANCE-style hard negatives (Xiong et al., ICLR 2021, Sec. 4): the top-ranked non-positive labels of each training
query in an xmr index of the current label embeddings, refreshed every N optimiser steps during training.

A refresh encodes every label but only the queries the coming steps will train on (``rows``): on a catalogue of
tens of thousands of labels with a time-capped schedule, encoding every training query at every refresh would cost
more than the steps themselves. ``label_vectors`` lets the caller pass vectors it already has (the untrained
encoder's, from the vector cache).
"""

from __future__ import annotations

import numpy as np

from xmr.encoders import Encoder
from xmr.index import build_index_from_embeddings
from xmr.train.batches import TrainingPairs


def mine_hard_negatives(encoder: Encoder, pairs: TrainingPairs, depth: int, factory: str = "Flat",
                        rows: np.ndarray | None = None, label_vectors: np.ndarray | None = None) -> np.ndarray:
    """``(queries, depth)`` catalogue rows of each query's highest-scoring non-positive labels, ``-1`` padded; only
    the queries in ``rows`` (default: all) are mined, the others stay ``-1``."""
    rows = np.arange(len(pairs)) if rows is None else np.unique(rows)
    if label_vectors is None:
        label_vectors = encoder.encode_labels(pairs.labels.items())
    index = build_index_from_embeddings(pairs.labels, label_vectors, None, factory=factory)
    widest = max(len(pairs.positives[row]) for row in rows)
    found = index.search_embeddings(encoder.encode_queries([pairs.queries[row] for row in rows]),
                                    k=min(depth + widest, len(pairs.labels)))
    table = np.full((len(pairs), depth), -1, dtype=np.int64)
    for row, ranked in zip(rows, found.rows, strict=True):
        ranked = ranked[(ranked >= 0) & ~np.isin(ranked, pairs.positives[row])][:depth]
        table[row, :len(ranked)] = ranked
    return table
