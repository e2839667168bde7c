"""One catalogue split over several index folders (processes or machines): search each, merge the top-k.

Each shard is an ordinary index folder holding a disjoint part of the labels, built with the same encoder. A
shard's internal ids are offset by the id space of the shards before it, so merged results stay unambiguous;
``merge_top_k`` (FAISS ``merge_knn_results``) is what a caller uses to merge results gathered from remote shards.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmr.catalogue import LabelCatalogue, LabelId
from xmr.encoders import Encoder, Item
from xmr.errors import XMRError
from xmr.index.label_index import LabelIndex, load_index
from xmr.search import SearchResult


def merge_top_k(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of per-shard ``(n, k_s)`` results by score (higher is better); -1 / -inf pad missing slots."""
    depth = max(k, *(part.shape[1] for part in ids))
    padded_ids = np.stack([np.pad(part, ((0, 0), (0, depth - part.shape[1])), constant_values=-1) for part in ids])
    padded_scores = np.stack([np.pad(part.astype(np.float32), ((0, 0), (0, depth - part.shape[1])),
                                     constant_values=-np.inf) for part in scores])
    merged_scores, merged_ids = faiss.merge_knn_results(padded_scores, padded_ids, keep_max=True)
    merged_ids, merged_scores = merged_ids[:, :k], merged_scores[:, :k]
    merged_scores[merged_ids < 0] = -np.inf
    return merged_ids, merged_scores


class ShardedIndex:
    """Several label index folders searched as one; quacks like :class:`LabelIndex` for search and evaluation."""

    def __init__(self, shards: Sequence[LabelIndex]) -> None:
        if not shards:
            raise XMRError("a sharded index needs at least one shard")
        first = shards[0].manifest
        for shard in shards[1:]:
            for key in ("dim", "metric", "normalized", "encoder"):
                if shard.manifest[key] != first[key]:
                    raise XMRError(f"shard {shard.path} differs from {shards[0].path} in {key!r}: "
                                   f"{shard.manifest[key]!r} vs {first[key]!r}")
        self.shards = list(shards)
        self.path = shards[0].path.parent if shards[0].path else None  # the folder holding the shard folders
        self.id_offsets = np.cumsum([0] + [int(s.manifest["next_internal_id"]) for s in shards[:-1]])
        self.catalogue = functools.reduce(LabelCatalogue.concat, [shard.catalogue for shard in shards])
        self.internal_ids = np.concatenate([s.internal_ids + o for s, o in zip(shards, self.id_offsets, strict=True)])
        self.manifest: dict[str, Any] = {**first, "next_internal_id": int(self.id_offsets[-1]) + int(
            shards[-1].manifest["next_internal_id"]), "shards": [str(shard.path) for shard in shards]}

    @classmethod
    def open(cls, paths: Sequence[str | Path], **load_options: Any) -> ShardedIndex:
        return cls([load_index(path, **load_options) for path in paths])

    def __len__(self) -> int:
        return len(self.catalogue)

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def encoder(self) -> Encoder:
        return self.shards[0].encoder

    def internal_id(self, label_id: LabelId) -> int:
        return int(self.internal_ids[self.catalogue.position(label_id)])

    def search(self, queries: Sequence[Item] | Item, k: int = 10, **search_params: int) -> SearchResult:
        if isinstance(queries, (str, Mapping)):
            queries = [queries]
        return self.search_embeddings(self.encoder.encode_queries(queries), k=k, **search_params)

    def search_embeddings(self, vectors: np.ndarray, k: int = 10, **search_params: int) -> SearchResult:
        """Every shard's top-k, merged by score; ids are global (shard offset + the shard's internal id)."""
        results = [shard.search_embeddings(vectors, k=k, **search_params) for shard in self.shards]
        ids, scores = merge_top_k([np.where(r.ids >= 0, r.ids + offset, -1) for r, offset in
                                   zip(results, self.id_offsets, strict=True)], [r.scores for r in results], k)
        rows = np.searchsorted(self.internal_ids, ids).clip(max=len(self.internal_ids) - 1)
        rows = np.where((ids >= 0) & (self.internal_ids[rows] == ids), rows, -1)
        return SearchResult(ids=ids, scores=scores, rows=rows, catalogue=self.catalogue)
