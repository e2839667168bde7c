"""Re-rank stage ``exact-dense``: re-score candidates exactly from the stored float32 label vectors.

Compressed candidate stages (PQ, SQ codes) find the candidates; ``vectors.npy`` (row i = catalogue row i, opened
memory-mapped, so only the candidates' pages are read) gives their exact scores. Knob ``rerank``: how many candidates
to re-score (0 turns the stage off for a call).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import IndexFolderError, XMRError
from xmr.index.stages.base import RerankStage, register_stage
from xmr.representations import DenseVectors, Representation

VECTORS_FILE = "vectors.npy"
BLOCK = 256  # queries re-scored at once (bounds the gathered candidate vectors)


@register_stage("exact-dense")
class ExactDenseRerank(RerankStage):
    representation = DenseVectors.kind
    knob = "rerank"
    files = (VECTORS_FILE,)

    def __init__(self, vectors: np.ndarray, depth: int) -> None:
        self.vectors = vectors
        self.depth = int(depth)

    @classmethod
    def build(cls, labels: Representation, depth: int) -> ExactDenseRerank:
        if not isinstance(labels, DenseVectors):
            raise XMRError(f"exact re-ranking needs dense vectors, got {labels.kind}")
        if depth < 1:
            raise XMRError(f"re-rank depth must be at least 1, got {depth}")
        return cls(np.ascontiguousarray(labels.values, dtype=np.float32), depth)

    def __len__(self) -> int:
        return len(self.vectors)

    def rescore(self, queries: Representation, rows: np.ndarray) -> np.ndarray:
        values = queries.values  # type: ignore[attr-defined]
        scores = np.empty(rows.shape, dtype=np.float32)
        for start in range(0, len(rows), BLOCK):
            block = rows[start:start + BLOCK]
            gathered = np.asarray(self.vectors[np.maximum(block, 0).ravel()]).reshape(*block.shape, -1)
            scores[start:start + BLOCK] = np.einsum("nd,ncd->nc", values[start:start + BLOCK], gathered)
        return scores

    def add(self, labels: Representation) -> None:
        self.vectors = np.concatenate([self.vectors, labels.values])  # type: ignore[attr-defined]

    def keep(self, rows: np.ndarray) -> None:
        self.vectors = np.asarray(self.vectors[rows])

    def section(self) -> dict[str, Any]:
        return {"depth": self.depth}

    def write(self, folder: Path) -> None:
        np.save(folder / VECTORS_FILE, np.asarray(self.vectors, dtype=np.float32))

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> ExactDenseRerank:
        try:
            vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise IndexFolderError(f"{folder / VECTORS_FILE}: cannot read it: {error}") from None
        if vectors.ndim != 2 or vectors.shape[1] != spec["dim"] or vectors.dtype != np.float32:
            raise IndexFolderError(f"{folder / VECTORS_FILE}: {vectors.dtype} {vectors.shape}, expected float32 "
                                   f"(labels, {spec['dim']})")
        return cls(vectors, int(section.get("depth", 0)))
