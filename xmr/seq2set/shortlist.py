"""Shortlists for extreme label spaces (beyond the paper, whose full softmax grows with the label count): each
query's output layer is restricted to the top-``S`` labels an xmr index retrieves for it (the dual encoder's
nearest labels), plus the empty token, so a decoding step costs ``O(S)`` instead of ``O(L)`` in time and memory.

The index is any :class:`~xmr.index.LabelIndex` (a trained encoder's ``runs/NAME/index``, or one built here over
the catalogue's text vectors, optionally centroid-enriched with the training queries as the dual-encoder task's
``index.centroid_weight`` does). While training, gold labels the index missed replace the lowest-ranked
candidates, so every gold label can be matched (as XR-Transformer/NGAME-style shortlists do with positives).
"""

from __future__ import annotations

import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.encoders.base import Encoder
from xmr.index import LabelIndex, build_index_from_embeddings
from xmr.train.label_vectors import centroid_enriched, label_centroids, unit_length


def shortlist_index(labels: LabelCatalogue, label_vectors: np.ndarray, encoder: Encoder,
                    query_vectors: np.ndarray | None = None, positives: list[np.ndarray] | None = None,
                    centroid_weight: float = 0.0) -> LabelIndex:
    """An exact (``Flat``) in-memory index over the label text vectors (enriched with training-query centroids when
    ``centroid_weight > 0``)."""
    vectors = label_vectors
    if centroid_weight > 0 and query_vectors is not None and positives is not None:
        centroids, counts = label_centroids(query_vectors, positives, len(labels))
        vectors = centroid_enriched(label_vectors, centroids, counts, centroid_weight)
    return build_index_from_embeddings(labels, vectors, None, encoder=encoder, factory="Flat",
                                       normalized=unit_length(vectors))


def retrieve(index: LabelIndex, query_vectors: np.ndarray, size: int, batch_size: int = 4096) -> np.ndarray:
    """Top-``size`` catalogue rows per query ``(n, size)``, -1 where the index returned fewer."""
    parts = [index.predict_encoded(query_vectors[start:start + batch_size], k=size).rows
             for start in range(0, len(query_vectors), batch_size)]
    rows = np.concatenate(parts) if parts else np.zeros((0, size), dtype=np.int64)
    if rows.shape[1] < size:
        rows = np.pad(rows, ((0, 0), (0, size - rows.shape[1])), constant_values=-1)
    return rows


def with_gold(candidates: np.ndarray, gold: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Candidates with each query's missing gold rows written over its lowest-ranked non-gold candidates; also the
    share of gold labels the index had retrieved (the shortlist's recall)."""
    out = candidates.copy()
    found = total = 0
    for row, labels in enumerate(gold):
        labels = labels[: out.shape[1]]
        present = np.isin(labels, out[row])
        found, total = found + int(present.sum()), total + len(labels)
        missing = labels[~present]
        if len(missing):
            free = np.flatnonzero(~np.isin(out[row], labels))[::-1][: len(missing)]
            out[row, free] = missing
    return out, found / total if total else 1.0
