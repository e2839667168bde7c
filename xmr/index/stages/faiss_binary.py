"""Candidate stage ``faiss-binary``: binary hash codes in a FAISS ``IndexBinary*`` (``BFlat``, ``BHNSW32``,
``BIVF1024``, multi-index hashing ``BHash4x16`` = ``IndexBinaryMultiHash`` with knob ``nflip``, any
``faiss.index_binary_factory`` string), searched by Hamming distance.

FAISS returns distances (lower is better); this stage reports ``bits - distance``, the number of agreeing bits, so
its scores rank like every other stage's. File ``index.binary.faiss``; ids are the labels' internal ids.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmr.errors import IndexFolderError, UnsupportedOperation, XMRError
from xmr.index.stages.base import CandidateStage, register_stage
from xmr.representations import BinaryCodes, Representation

INDEX_FILE = "index.binary.faiss"
_knob_lock = threading.Lock()


@register_stage("faiss-binary")
class FaissBinaryStage(CandidateStage):
    representation = BinaryCodes.kind
    files = (INDEX_FILE,)

    def __init__(self, index: faiss.IndexBinary, factory: str, trained_on: int = 0) -> None:
        self.index = index
        self.factory = factory
        self.trained_on = trained_on

    @classmethod
    def build(cls, labels: Representation, ids: np.ndarray, factory: str, build: dict[str, int],
              train_size: int) -> FaissBinaryStage:
        codes = _binary(labels)
        factory = "BFlat" if factory in ("Flat", "") else factory
        try:
            index = faiss.index_binary_factory(codes.bits, factory)
        except RuntimeError as error:
            raise XMRError(f"invalid FAISS binary factory string {factory!r}: {error}") from None
        if not isinstance(faiss.downcast_IndexBinary(index), faiss.IndexBinaryIVF):
            index = faiss.IndexBinaryIDMap2(index)
        for name, value in build.items():
            graph = _layer(index, "hnsw")
            if name != "efConstruction" or graph is None:
                raise XMRError(f"build parameter {name!r} does not apply to binary index {factory!r}")
            graph.hnsw.efConstruction = int(value)
        trained_on = 0
        if not index.is_trained:
            sample = codes.codes[np.random.default_rng(0).permutation(len(codes))[:train_size]]
            index.train(sample)
            trained_on = len(sample)
        index.add_with_ids(codes.codes, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index, factory, trained_on)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def bits(self) -> int:
        return int(self.index.d)

    @property
    def structure(self) -> str:
        names, layer = [], self.index
        while layer is not None:
            layer = faiss.downcast_IndexBinary(layer)
            names.append(type(layer).__name__)
            layer = getattr(layer, "index", None)
        return ">".join(names)

    def knobs(self) -> dict[str, int]:
        knobs = {}
        if (ivf := _layer(self.index, "nprobe")) is not None:
            knobs["nprobe"] = int(ivf.nprobe)
        if (graph := _layer(self.index, "hnsw")) is not None:
            knobs["efSearch"] = int(graph.hnsw.efSearch)
        if (hashed := _layer(self.index, "nflip")) is not None:
            knobs["nflip"] = int(hashed.nflip)
        return knobs

    def set_knobs(self, knobs: dict[str, int]) -> None:
        unknown = sorted(set(knobs) - set(self.knobs()))
        if unknown:
            raise XMRError(f"search parameter(s) {unknown} do not apply to {self.structure}; it has "
                           f"{sorted(self.knobs())}")
        for name, value in knobs.items():
            if int(value) < (0 if name == "nflip" else 1):
                raise XMRError(f"search parameter {name} must be >= {0 if name == 'nflip' else 1}, got {value}")
            if name == "nprobe":
                _layer(self.index, "nprobe").nprobe = int(value)
            elif name == "nflip":
                _layer(self.index, "nflip").nflip = int(value)
            else:
                _layer(self.index, "hnsw").hnsw.efSearch = int(value)

    def search(self, queries: Representation, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        codes = _binary(queries)
        if codes.bits != self.bits:
            raise XMRError(f"query codes have {codes.bits} bits; this index holds {self.bits}-bit codes")
        if knobs:
            with _knob_lock:  # binary indexes take no per-call parameters: set, search, restore
                defaults = self.knobs()
                self.set_knobs(knobs)
                try:
                    distances, ids = self.index.search(codes.codes, k)
                finally:
                    self.set_knobs(defaults)
        else:
            distances, ids = self.index.search(codes.codes, k)
        scores = np.where(ids >= 0, self.bits - distances.astype(np.float32), -np.inf).astype(np.float32)
        return ids, scores

    def add(self, labels: Representation, ids: np.ndarray) -> None:
        self.index.add_with_ids(_binary(labels).codes, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        try:
            return int(self.index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))
        except RuntimeError as error:
            raise UnsupportedOperation(f"this binary index ({self.structure}) cannot remove codes: {error}") from None

    def section(self) -> dict[str, Any]:
        return {"factory": self.factory, "structure": self.structure, "search_params": self.knobs(),
                "trained_on": self.trained_on, "faiss_version": faiss.__version__}

    def write(self, folder: Path) -> None:
        faiss.write_index_binary(self.index, str(folder / INDEX_FILE))

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> FaissBinaryStage:
        try:
            index = faiss.read_index_binary(str(folder / INDEX_FILE), faiss.IO_FLAG_MMAP if mmap else 0)
        except RuntimeError as error:
            raise IndexFolderError(f"{folder / INDEX_FILE}: cannot read it: {error}") from None
        if index.d != spec["bits"]:
            raise IndexFolderError(f"{folder}: {INDEX_FILE} holds {index.d}-bit codes, manifest says {spec['bits']}")
        stage = cls(index, section.get("factory", ""), section.get("trained_on", 0))
        if section.get("search_params"):
            stage.set_knobs(section["search_params"])
        return stage


def _layer(index: faiss.IndexBinary, attribute: str) -> Any:
    """The first wrapped binary index that has ``attribute`` (``nprobe`` for IVF, ``hnsw`` for graphs)."""
    while index is not None:
        index = faiss.downcast_IndexBinary(index)
        if hasattr(index, attribute):
            return index
        index = getattr(index, "index", None)
    return None


def _binary(representation: Representation) -> BinaryCodes:
    if not isinstance(representation, BinaryCodes):
        raise XMRError(f"the faiss-binary stage searches binary codes, got {representation.kind}")
    return representation
