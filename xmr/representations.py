"""What an encoder emits, as types: dense vectors, binary hash codes, token-level vectors.

Each representation knows its metric and how to score one side against the other exactly, so index stages, the
re-rank, calibration and the shard merge take metric and score direction from the representation instead of assuming
inner products. Scores are always "higher is better": Hamming distances are reported as the number of agreeing
bits (``bits - distance``).

A representation's :meth:`spec` (kind, size, metric, normalisation) is what an index folder's manifest records and
what loading checks an encoder against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from xmr.errors import XMRError


class Representation(ABC):
    """Encoded queries or labels; row ``i`` belongs to item ``i``."""

    kind: ClassVar[str]
    metric: ClassVar[str]

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """``{"kind", "metric", ...size fields}``: what a manifest records and an encoder must match."""

    @abstractmethod
    def take(self, rows: np.ndarray | Sequence[int]) -> Representation:
        """The given rows, in that order."""

    @abstractmethod
    def score(self, candidates: Representation) -> np.ndarray:
        """Exact scores ``(len(self), len(candidates))`` of these queries against ``candidates`` (higher is better)."""

    @classmethod
    @abstractmethod
    def concat(cls, parts: Sequence[Representation]) -> Representation:
        """Rows of ``parts`` one after another."""

    def check_matches(self, spec: dict[str, Any], where: str) -> None:
        """Refuse rows of another kind or size than ``spec`` (e.g. query vectors of the wrong dimension)."""
        mine = {key: value for key, value in self.spec().items() if key != "normalized"}
        different = [key for key in mine if spec.get(key) != mine[key]]
        if different:
            got = ", ".join(f"{key} {mine[key]}" for key in different)
            expected = ", ".join(f"{key} {spec.get(key)}" for key in different)
            raise XMRError(f"{where}: got {self.kind} with {got}; expected {expected}")


@dataclass
class DenseVectors(Representation):
    """float32 ``(n, dim)`` vectors scored by inner product (cosine when ``normalized``)."""

    kind: ClassVar[str] = "dense"
    metric: ClassVar[str] = "inner_product"

    values: np.ndarray
    normalized: bool = False

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float32)
        if values.ndim == 1:
            values = values[None, :]
        if values.ndim != 2:
            raise XMRError(f"dense vectors must be 2-d (n, dim), got shape {values.shape}")
        self.values = np.ascontiguousarray(values)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "dim": self.dim, "normalized": self.normalized}

    def take(self, rows: np.ndarray | Sequence[int]) -> DenseVectors:
        return DenseVectors(np.asarray(self.values)[np.asarray(rows, dtype=np.int64)], self.normalized)

    def score(self, candidates: Representation) -> np.ndarray:
        return self.values @ _same_kind(self, candidates).values.T

    @classmethod
    def concat(cls, parts: Sequence[Representation]) -> DenseVectors:
        return DenseVectors(np.concatenate([_same_kind(parts[0], part).values for part in parts]),
                            all(part.normalized for part in parts))


@dataclass
class BinaryCodes(Representation):
    """``bits``-bit hash codes packed into uint8 ``(n, bits / 8)`` (FAISS's binary layout), compared by Hamming
    distance; :meth:`score` reports agreeing bits, ``bits - distance``, so higher is better like every score."""

    kind: ClassVar[str] = "binary"
    metric: ClassVar[str] = "hamming"

    codes: np.ndarray
    bits: int

    def __post_init__(self) -> None:
        codes = np.ascontiguousarray(self.codes, dtype=np.uint8)
        if codes.ndim == 1:
            codes = codes[None, :]
        if self.bits % 8 or codes.ndim != 2 or codes.shape[1] * 8 != self.bits:
            raise XMRError(f"binary codes of {self.bits} bits must be uint8 (n, {self.bits // 8}), got {codes.shape}")
        self.codes = codes

    @classmethod
    def from_signs(cls, values: np.ndarray) -> BinaryCodes:
        """Bit ``j`` is 1 where ``values[:, j] > 0`` (sign hashing); ``values`` has a multiple of 8 columns."""
        values = np.asarray(values)
        return cls(np.packbits(values > 0, axis=1), int(values.shape[1]))

    def __len__(self) -> int:
        return len(self.codes)

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "bits": self.bits}

    def take(self, rows: np.ndarray | Sequence[int]) -> BinaryCodes:
        return BinaryCodes(self.codes[np.asarray(rows, dtype=np.int64)], self.bits)

    def hamming(self, candidates: Representation) -> np.ndarray:
        """Hamming distances ``(len(self), len(candidates))`` (FAISS ``hammings``, the popcount kernel its binary
        indexes use)."""
        import faiss  # imported here: representations are used where faiss is not needed

        other = _same_kind(self, candidates).codes
        distances = np.empty((len(self), len(other)), dtype=np.int32)
        if distances.size:
            faiss.hammings(faiss.swig_ptr(self.codes), faiss.swig_ptr(np.ascontiguousarray(other)), len(self),
                           len(other), self.bits // 8, faiss.swig_ptr(distances))
        return distances.astype(np.int64)

    def score(self, candidates: Representation) -> np.ndarray:
        return (self.bits - self.hamming(candidates)).astype(np.float32)

    @classmethod
    def concat(cls, parts: Sequence[Representation]) -> BinaryCodes:
        return BinaryCodes(np.concatenate([_same_kind(parts[0], part).codes for part in parts]), parts[0].bits)


@dataclass
class TokenVectors(Representation):
    """Per-token vectors of every item (ragged: float16 ``values`` of all tokens, item ``i`` owns rows
    ``offsets[i]:offsets[i + 1]``) with one pooled float32 vector per item beside them (what a dense candidate
    stage searches). :meth:`score` is the pooled inner product; late-interaction scorers read the tokens."""

    kind: ClassVar[str] = "tokens"
    metric: ClassVar[str] = "inner_product"

    values: np.ndarray
    offsets: np.ndarray
    pooled: np.ndarray
    normalized: bool = False

    def __post_init__(self) -> None:
        self.values = np.ascontiguousarray(self.values, dtype=np.float16)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        self.pooled = np.ascontiguousarray(self.pooled, dtype=np.float32)
        if (self.offsets.ndim != 1 or len(self.offsets) != len(self.pooled) + 1 or self.offsets[0] != 0
                or self.offsets[-1] != len(self.values) or np.any(np.diff(self.offsets) < 0)):
            raise XMRError(f"token offsets must run from 0 to {len(self.values)} with one entry per item plus one")
        if self.values.ndim != 2 or self.pooled.ndim != 2 or self.values.shape[1] != self.pooled.shape[1]:
            raise XMRError(f"token values {self.values.shape} and pooled vectors {self.pooled.shape} must share dim")

    def __len__(self) -> int:
        return len(self.pooled)

    @property
    def dim(self) -> int:
        return int(self.pooled.shape[1])

    def tokens(self, item: int) -> np.ndarray:
        """The float16 token vectors of one item."""
        return self.values[self.offsets[item]:self.offsets[item + 1]]

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "metric": self.metric, "dim": self.dim, "normalized": self.normalized}

    def pooled_vectors(self) -> DenseVectors:
        return DenseVectors(self.pooled, self.normalized)

    def take(self, rows: np.ndarray | Sequence[int]) -> TokenVectors:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        values = np.concatenate([self.tokens(int(row)) for row in rows]) if len(rows) else self.values[:0]
        return TokenVectors(values, np.concatenate([[0], np.cumsum(lengths)]), self.pooled[rows], self.normalized)

    def score(self, candidates: Representation) -> np.ndarray:
        return self.pooled @ _same_kind(self, candidates).pooled.T

    @classmethod
    def concat(cls, parts: Sequence[Representation]) -> TokenVectors:
        parts = [_same_kind(parts[0], part) for part in parts]
        lengths = np.concatenate([np.diff(part.offsets) for part in parts])
        return TokenVectors(np.concatenate([part.values for part in parts]), np.concatenate([[0], np.cumsum(lengths)]),
                            np.concatenate([part.pooled for part in parts]), all(p.normalized for p in parts))


REPRESENTATIONS: dict[str, type[Representation]] = {cls.kind: cls for cls in (DenseVectors, BinaryCodes, TokenVectors)}


def _same_kind(first: Representation, other: Representation) -> Any:
    if type(other) is not type(first):
        raise XMRError(f"cannot combine {first.kind} with {other.kind} representations")
    return other


def as_representation(queries: Representation | np.ndarray, spec: dict[str, Any]) -> Representation:
    """Precomputed queries as a representation: a float32 array means dense vectors, a uint8 array binary codes."""
    if isinstance(queries, Representation):
        return queries
    array = np.asarray(queries)
    if spec.get("kind") == BinaryCodes.kind:
        return BinaryCodes(array, int(spec["bits"]))
    return DenseVectors(array, bool(spec.get("normalized", False)))
