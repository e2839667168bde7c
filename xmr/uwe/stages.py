"""Index stages for token vectors: candidates ``faiss-pooled`` and re-rank ``late-interaction``.

UWE's two-stage search (UWE Sec. 3 "cached target spaces"; ConTeXT-match's inference): FAISS finds the top-K labels by
the pooled vectors, then the soft late-interaction score (``scoring.py`` (1)/(2)) re-ranks those K from each label's
cached token vectors. The cache is two files in the index folder, listed (and so checksummed) in the manifest:
``tokens.npy`` (float16, all labels' token vectors one after another; one mean vector per label with
``target="pooled"``) and ``token_offsets.npy`` (int64, label row i owns ``tokens[offsets[i]:offsets[i+1]]``); both
open memory-mapped, so a query reads only its candidates' pages. The stage's manifest section records the re-rank
depth (knob ``rerank``, overridable per call; 0 turns it off: pooled-only ranking), the temperature, the target mode
and the memory per label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xmr.errors import IndexFolderError, XMRError
from xmr.index.stages.base import RerankStage, register_stage
from xmr.index.stages.faiss_dense import FaissDenseStage
from xmr.representations import Representation, TokenVectors
from xmr.uwe.encoder import DEFAULT_TEMPERATURE, TARGETS

TOKENS_FILE = "tokens.npy"
OFFSETS_FILE = "token_offsets.npy"
BLOCK = 16  # queries re-scored at once (bounds the padded candidate tensor: BLOCK x K x tokens x dim)


def _tokens(representation: Representation, stage: str) -> TokenVectors:
    if not isinstance(representation, TokenVectors):
        raise XMRError(f"the {stage} stage takes token vectors, got {representation.kind}")
    return representation


@register_stage("faiss-pooled")
class PooledFaissStage(FaissDenseStage):
    """The ``faiss`` candidate stage over the pooled vectors of token representations (same file and knobs)."""

    representation = TokenVectors.kind

    @classmethod
    def build(cls, labels: Representation, ids: np.ndarray, factory: str, build: dict[str, int],
              train_size: int) -> PooledFaissStage:
        return super().build(_tokens(labels, "faiss-pooled").pooled_vectors(), ids, factory, build,
                             train_size)  # type: ignore[return-value]

    def search(self, queries: Representation, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        return super().search(_tokens(queries, "faiss-pooled").pooled_vectors(), k, knobs)

    def add(self, labels: Representation, ids: np.ndarray) -> None:
        super().add(_tokens(labels, "faiss-pooled").pooled_vectors(), ids)


@register_stage("late-interaction")
class LateInteractionRerank(RerankStage):
    """Re-scores candidates with the soft late interaction over the cached label token vectors."""

    representation = TokenVectors.kind
    knob = "rerank"
    files = (TOKENS_FILE, OFFSETS_FILE)

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, depth: int, temperature: float = DEFAULT_TEMPERATURE,
                 target: str = "pooled") -> None:
        if target not in TARGETS:
            raise XMRError(f"late-interaction target must be one of {TARGETS}, got {target!r}")
        if not temperature > 0:
            raise XMRError(f"late-interaction temperature must be positive, got {temperature}")
        self.tokens = tokens
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.depth = int(depth)
        self.temperature = float(temperature)
        self.target = target

    @classmethod
    def build(cls, labels: Representation, depth: int, temperature: float = DEFAULT_TEMPERATURE,
              target: str | None = None) -> LateInteractionRerank:
        """Keep the labels' token vectors; ``target`` defaults to what they hold (one vector per label: pooled)."""
        labels = _tokens(labels, "late-interaction")
        if depth < 1:
            raise XMRError(f"re-rank depth must be at least 1, got {depth}")
        if target is None:
            target = "pooled" if np.all(np.diff(labels.offsets) == 1) else "tokens"
        return cls(labels.values, labels.offsets, depth, temperature, target)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def labels(self, rows: np.ndarray) -> TokenVectors:
        """The cached token vectors of catalogue ``rows`` (pooled vectors are not kept: zeros)."""
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        positions = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])  # one gather, no loop
        pooled = np.zeros((len(rows), self.tokens.shape[1]), dtype=np.float32)
        return TokenVectors(np.asarray(self.tokens[positions]), offsets, pooled)

    def rescore(self, queries: Representation, rows: np.ndarray) -> np.ndarray:
        import torch

        from xmr.uwe.scoring import pad_ragged, soft_late_interaction

        queries = _tokens(queries, "late-interaction")
        scores = np.empty(rows.shape, dtype=np.float32)
        symmetric = self.target == "tokens"
        with torch.inference_mode():
            for start in range(0, len(rows), BLOCK):
                block = np.maximum(rows[start:start + BLOCK], 0)
                mine = queries.take(np.arange(start, start + len(block)))
                query_tokens, query_mask = pad_ragged(torch.from_numpy(mine.values.astype(np.float32)),
                                                      torch.from_numpy(mine.offsets))
                cached = self.labels(block.ravel())
                label_tokens, label_mask = pad_ragged(torch.from_numpy(cached.values.astype(np.float32)),
                                                      torch.from_numpy(cached.offsets))
                shape = (*block.shape, *label_tokens.shape[1:])
                scores[start:start + BLOCK] = soft_late_interaction(
                    query_tokens, query_mask, label_tokens.reshape(shape), label_mask.reshape(shape[:-1]),
                    self.temperature, symmetric).numpy()
        return scores

    def add(self, labels: Representation) -> None:
        labels = _tokens(labels, "late-interaction")
        self.tokens = np.concatenate([np.asarray(self.tokens), labels.values])
        self.offsets = np.concatenate([self.offsets, self.offsets[-1] + labels.offsets[1:]])

    def keep(self, rows: np.ndarray) -> None:
        kept = self.labels(np.asarray(rows, dtype=np.int64))
        self.tokens, self.offsets = kept.values, kept.offsets

    def bytes_per_label(self) -> float:
        """Mean memory of one label's cached tokens (float16 values plus its int64 offset)."""
        return float((self.offsets[-1] * self.tokens.shape[1] * 2 + 8 * len(self.offsets)) / max(len(self), 1))

    def section(self) -> dict[str, Any]:
        return {"depth": self.depth, "temperature": self.temperature, "target": self.target,
                "tokens": int(self.offsets[-1]), "dim": int(self.tokens.shape[1]),
                "bytes_per_label": round(self.bytes_per_label(), 1)}

    def write(self, folder: Path) -> None:
        np.save(folder / TOKENS_FILE, np.asarray(self.tokens, dtype=np.float16))
        np.save(folder / OFFSETS_FILE, self.offsets)

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> LateInteractionRerank:
        arrays = {}
        for name, dtype in ((TOKENS_FILE, np.float16), (OFFSETS_FILE, np.int64)):
            try:
                arrays[name] = np.load(folder / name, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise IndexFolderError(f"{folder / name}: cannot read it: {error}") from None
            if arrays[name].dtype != dtype:
                raise IndexFolderError(f"{folder / name}: {arrays[name].dtype}, expected {np.dtype(dtype)}")
        tokens, offsets = arrays[TOKENS_FILE], np.asarray(arrays[OFFSETS_FILE])
        if tokens.ndim != 2 or tokens.shape[1] != spec["dim"]:
            raise IndexFolderError(f"{folder / TOKENS_FILE}: shape {tokens.shape}, expected (tokens, {spec['dim']})")
        if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or offsets[-1] != len(tokens) or np.any(
                np.diff(offsets) < 0):
            raise IndexFolderError(f"{folder / OFFSETS_FILE}: offsets must rise from 0 to {len(tokens)}")
        try:
            return cls(tokens, offsets, int(section.get("depth", 0)),
                       float(section.get("temperature", DEFAULT_TEMPERATURE)), str(section.get("target", "pooled")))
        except XMRError as error:
            raise IndexFolderError(f"{folder}: late-interaction stage: {error}") from None
