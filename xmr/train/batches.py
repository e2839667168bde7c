"""Training pairs and batches: which queries form a batch, which label columns it scores, which cells are positive.

Batch plans are a deterministic function of (seed, epoch) and, for NGAME clustered batching, of the query
embeddings at the epoch start; per-batch sampling (positives, mined negatives) is a deterministic function of
(seed, epoch, batch). A checkpoint therefore only needs the plan and the position to resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances
from xmr.errors import XMRError
from xmr.metrics import inverse_propensity


@dataclass
class TrainingPairs:
    """Queries with the catalogue rows of their positive labels; queries with no known label are dropped."""

    queries: list  # encoder items (text, or {"text", "images"})
    positives: list[np.ndarray]  # int64 catalogue rows per query
    labels: LabelCatalogue
    dropped: int = 0  # queries without any label in the catalogue
    unknown_labels: int = 0  # label occurrences not in the catalogue
    kept: list[int] | None = None  # each query's position among the instances it came from

    @classmethod
    def from_instances(cls, instances: Instances, labels: LabelCatalogue) -> TrainingPairs:
        queries, positives, kept, dropped, unknown = [], [], [], 0, 0
        for position, (item, label_ids) in enumerate(zip(instances.items(), instances.labels, strict=True)):
            rows = sorted({labels.position(label) for label in label_ids if label in labels})
            unknown += sum(1 for label in label_ids if label not in labels)
            if rows:
                queries.append(item)
                positives.append(np.asarray(rows, dtype=np.int64))
                kept.append(position)
            else:
                dropped += 1
        if not queries:
            raise XMRError(f"{instances.source}: no training query has a label from {labels.source}")
        return cls(queries, positives, labels, dropped, unknown, kept)

    def __len__(self) -> int:
        return len(self.queries)

    def label_weights(self, A: float, B: float) -> np.ndarray:
        """Inverse propensities of the labels (Jain et al.), counted on these pairs."""
        return inverse_propensity(self.positives, len(self.labels), A, B)


def random_plan(n_queries: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A shuffled epoch cut into batches (the last one may be smaller)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_queries)
    return [order[start:start + batch_size] for start in range(0, n_queries, batch_size)]


def clustered_plan(query_vectors: np.ndarray, cluster_size: int, batch_size: int, seed: int,
                   epoch: int) -> list[np.ndarray]:
    """NGAME negative-aware batching (Dahiya et al., WSDM 2023, Sec. 3.2): cluster the queries' current embeddings
    (spherical FAISS k-means, about ``cluster_size`` queries per cluster), shuffle the clusters, concatenate them and
    cut batches, so a batch holds groups of similar queries whose labels are each other's hard negatives."""
    n, dim = query_vectors.shape
    n_clusters = max(1, n // cluster_size)
    if n_clusters == 1:
        return random_plan(n, batch_size, seed, epoch)
    kmeans = faiss.Kmeans(dim, n_clusters, niter=10, seed=seed + epoch, spherical=True, min_points_per_centroid=1,
                          max_points_per_centroid=max(256, 4 * cluster_size))
    vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
    kmeans.train(vectors)
    _, assignment = kmeans.index.search(vectors, 1)
    assignment = assignment[:, 0]
    rng = np.random.default_rng([seed, epoch])
    order = np.concatenate([rng.permutation(np.flatnonzero(assignment == cluster))
                            for cluster in rng.permutation(n_clusters)])
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]


@dataclass
class Batch:
    """One micro-batch: query rows, label columns (catalogue rows), positive cells and one anchor positive per query."""

    queries: np.ndarray
    columns: np.ndarray
    positives: np.ndarray  # bool (queries, columns)
    anchors: np.ndarray  # column index of each query's sampled positive


def make_batch(pairs: TrainingPairs, query_rows: np.ndarray, rng: np.random.Generator, *,
               one_positive: bool, all_labels: bool, positive_weights: np.ndarray | None = None,
               hard_negatives: np.ndarray | None = None, negatives_per_query: int = 0) -> Batch:
    """Label columns = every positive of the batch's queries (or one sampled positive each when ``one_positive``,
    as in NGAME/ViXML), plus ``negatives_per_query`` mined hard negatives per query, or all labels."""
    anchors = []
    for row in query_rows:
        candidates = pairs.positives[row]
        weights = positive_weights[candidates] if positive_weights is not None else None
        anchors.append(rng.choice(candidates, p=weights / weights.sum() if weights is not None else None))
    anchors = np.asarray(anchors, dtype=np.int64)
    if all_labels:
        columns = np.arange(len(pairs.labels), dtype=np.int64)
    else:
        parts = [anchors] if one_positive else [pairs.positives[row] for row in query_rows]
        if hard_negatives is not None and negatives_per_query:
            for row in query_rows:
                pool = hard_negatives[row][hard_negatives[row] >= 0]
                if len(pool):
                    parts.append(rng.choice(pool, size=min(negatives_per_query, len(pool)), replace=False))
        columns = np.unique(np.concatenate(parts))
    positives = np.zeros((len(query_rows), len(columns)), dtype=bool)
    for position, row in enumerate(query_rows):
        positives[position] = np.isin(columns, pairs.positives[row])
    return Batch(np.asarray(query_rows, dtype=np.int64), columns, positives, np.searchsorted(columns, anchors))
