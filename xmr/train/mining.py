"""ANCE-style hard negatives (Xiong et al., ICLR 2021, Sec. 4): the top-ranked non-positive labels of each training
query in an xmr index of the current label embeddings, refreshed every N optimiser steps during training."""

from __future__ import annotations

import numpy as np

from xmr.encoders import Encoder
from xmr.index import build_index_from_embeddings
from xmr.train.batches import TrainingPairs


def mine_hard_negatives(encoder: Encoder, pairs: TrainingPairs, depth: int, factory: str = "Flat") -> np.ndarray:
    """``(queries, depth)`` catalogue rows of each query's highest-scoring non-positive labels, ``-1`` padded."""
    label_vectors = encoder.encode_labels(pairs.labels.items())
    index = build_index_from_embeddings(pairs.labels, label_vectors, None, factory=factory)
    widest = max(len(positives) for positives in pairs.positives)
    found = index.search_embeddings(encoder.encode_queries(pairs.queries), k=min(depth + widest, len(pairs.labels)))
    table = np.full((len(pairs), depth), -1, dtype=np.int64)
    for row, ranked in enumerate(found.rows):
        ranked = ranked[(ranked >= 0) & ~np.isin(ranked, pairs.positives[row])][:depth]
        table[row, :len(ranked)] = ranked
    return table
