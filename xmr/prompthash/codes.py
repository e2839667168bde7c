"""Hash codes that carry the float vectors they were hashed from, and the re-rank stage that uses them.

:class:`HashCodes` is a :class:`~xmr.representations.BinaryCodes` (same kind, spec and packed layout, so the spine's
``faiss-binary`` stage indexes and searches it unchanged) with an optional ``floats`` array beside the codes: the
towers' unit vectors. Stage ``hamming-float`` (re-rank, binary kind: the spine's ``exact-dense`` stage fed with those
floats) keeps the labels' floats in ``vectors.npy`` (memory-mapped on open) and re-scores the Hamming candidates by
exact inner product with the query's floats: the rescoring step of sentence-transformers' ``semantic_search_faiss``
(binary candidates, float32 rescoring), with stored float corpus vectors instead of the unpacked +-1 codes.
Knob ``rerank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import XMRError
from xmr.index.stages.base import register_stage
from xmr.index.stages.exact_rerank import ExactDenseRerank
from xmr.representations import BinaryCodes, DenseVectors, Representation


@dataclass
class HashCodes(BinaryCodes):
    """Binary codes plus, optionally, the float32 unit vectors ``(n, dim)`` they were hashed from."""

    floats: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.floats is not None:
            self.floats = np.ascontiguousarray(self.floats, dtype=np.float32)
            if self.floats.ndim != 2 or len(self.floats) != len(self.codes):
                raise XMRError(f"hash codes: {len(self.codes)} codes but float vectors of shape {self.floats.shape}")

    def take(self, rows: np.ndarray | Sequence[int]) -> HashCodes:
        rows = np.asarray(rows, dtype=np.int64)
        return HashCodes(self.codes[rows], self.bits, None if self.floats is None else self.floats[rows])

    @classmethod
    def concat(cls, parts: Sequence[Representation]) -> HashCodes:
        floats = [getattr(part, "floats", None) for part in parts]
        return HashCodes(np.concatenate([part.codes for part in parts]), parts[0].bits,  # type: ignore[attr-defined]
                         None if any(f is None for f in floats) else np.concatenate(floats))


def _floats(representation: Representation, what: str) -> np.ndarray:
    floats = getattr(representation, "floats", None)
    if floats is None:
        raise XMRError(f"the hamming-float re-rank needs {what} hash codes with their float vectors (an encoder "
                       "with floats: true); turn it off with rerank=0")
    return floats


@register_stage("hamming-float")
class HammingFloatRerank(ExactDenseRerank):
    """``exact-dense`` over the floats that travel with hash codes (same file, ``vectors.npy``, memory-mapped)."""

    representation = BinaryCodes.kind

    @classmethod
    def build(cls, labels: Representation, depth: int) -> HammingFloatRerank:
        return cls(super().build(DenseVectors(_floats(labels, "label")), depth).vectors, depth)

    def rescore(self, queries: Representation, rows: np.ndarray) -> np.ndarray:
        values = _floats(queries, "query")
        if values.shape[1] != self.vectors.shape[1]:
            raise XMRError(f"query float vectors have {values.shape[1]} dimensions, the index {self.vectors.shape[1]}")
        return super().rescore(DenseVectors(values), rows)

    def add(self, labels: Representation) -> None:
        super().add(DenseVectors(_floats(labels, "label")))

    def section(self) -> dict[str, Any]:
        return {"depth": self.depth, "dim": int(self.vectors.shape[1])}

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> HammingFloatRerank:
        return super().open(folder, section, {"dim": section.get("dim")}, mmap)  # type: ignore[return-value]
