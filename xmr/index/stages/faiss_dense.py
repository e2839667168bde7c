"""Candidate stage ``faiss``: dense vectors in any FAISS index (``index_factory`` string), searched by inner product.

File ``index.faiss``; its ids are the labels' internal ids. Knobs (``efSearch``, ``nprobe``, ...) are discovered from
the index structure and travel per call (see :func:`faiss_ops.search`). A built or loaded index asks for huge pages
(:func:`faiss_ops.use_huge_pages`); the build knob ``cluster_layout`` stores a graph's vectors by k-means cluster
(:func:`faiss_ops.store_by_cluster`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmr.errors import IndexFolderError, XMRError
from xmr.index import faiss_ops
from xmr.index.stages.base import CandidateStage, register_stage
from xmr.representations import DenseVectors, Representation

INDEX_FILE = "index.faiss"
# memory-mapped reading: IVF inverted lists map with IO_FLAG_MMAP, flat code arrays (Flat, HNSW storage) with
# IO_FLAG_MMAP_IFC; FAISS refuses the two together on IVF files
MMAP_FLAGS = {"ivf": faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
              "codes": faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY}


@register_stage("faiss")
class FaissDenseStage(CandidateStage):
    representation = DenseVectors.kind
    files = (INDEX_FILE,)

    def __init__(self, index: faiss.Index, factory: str, build: dict[str, int] | None = None,
                 trained_on: int = 0) -> None:
        self.index = index
        self.factory = factory
        self.build_params = dict(build or {})
        self.trained_on = trained_on
        self._prepared: dict[tuple, faiss.SearchParameters | None] = {}  # per-call parameters per knob setting

    @classmethod
    def build(cls, labels: Representation, ids: np.ndarray, factory: str, build: dict[str, int],
              train_size: int) -> FaissDenseStage:
        vectors = _dense(labels).values
        index = faiss_ops.create(vectors.shape[1], factory, labels.metric)
        faiss_ops.set_build_parameters(index, build)
        trained_on = faiss_ops.train(index, vectors, train_size)
        faiss_ops.add(index, vectors, ids)
        if faiss_ops.CLUSTER_LAYOUT in build:
            faiss_ops.store_by_cluster(index, vectors, int(build[faiss_ops.CLUSTER_LAYOUT]))
        faiss_ops.use_huge_pages(index)
        return cls(index, factory, build, trained_on)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def structure(self) -> str:
        return faiss_ops.describe(self.index)

    def knobs(self) -> dict[str, int]:
        return faiss_ops.search_parameters(self.index)

    def set_knobs(self, knobs: dict[str, int]) -> None:
        faiss_ops.set_search_parameters(self.index, knobs)
        self._prepared.clear()  # they were built from the old values of the knobs a call leaves unset

    def search(self, queries: Representation, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        return faiss_ops.search(self.index, _dense(queries).values, k, knobs, self._prepared)

    def add(self, labels: Representation, ids: np.ndarray) -> None:
        faiss_ops.add(self.index, _dense(labels).values, ids)
        faiss_ops.use_huge_pages(self.index)  # the arrays may have moved as they grew

    def remove(self, ids: np.ndarray) -> int:
        return faiss_ops.remove(self.index, ids)

    def flat_vectors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(vectors, ids)`` when the index is exact (Flat), for device search; else None."""
        return faiss_ops.flat_vectors(self.index)

    def section(self) -> dict[str, Any]:
        return {"factory": self.factory, "structure": self.structure, "build": self.build_params,
                "search_params": self.knobs(), "trained_on": self.trained_on, "faiss_version": faiss.__version__}

    def write(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / INDEX_FILE))

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> FaissDenseStage:
        layout = "ivf" if "IVF" in section.get("structure", "") else "codes"
        try:
            index = faiss.read_index(str(folder / INDEX_FILE), MMAP_FLAGS[layout] if mmap else 0)
        except RuntimeError as error:
            raise IndexFolderError(f"{folder / INDEX_FILE}: cannot read it: {error}") from None
        if index.d != spec["dim"]:
            raise IndexFolderError(f"{folder}: {INDEX_FILE} has dim {index.d}, manifest says {spec['dim']}")
        if index.metric_type != faiss_ops.METRICS.get(spec["metric"]):
            raise IndexFolderError(f"{folder}: {INDEX_FILE} metric does not match manifest metric {spec['metric']!r}")
        if not mmap:
            faiss_ops.use_huge_pages(index)
        stage = cls(index, section.get("factory", ""), section.get("build"), section.get("trained_on", 0))
        if section.get("search_params"):
            stage.set_knobs(section["search_params"])
        return stage


def _dense(representation: Representation) -> DenseVectors:
    if not isinstance(representation, DenseVectors):
        raise XMRError(f"the faiss stage searches dense vectors, got {representation.kind}")
    return representation
