"""Candidate stage ``faiss-ondisk``: an IVF index whose inverted lists live in their own file, ``index.ivfdata``
(FAISS ``OnDiskInvertedLists``), memory-mapped by FAISS on open.

What ``build_index_ray`` writes: shards indexed in parallel against one trained quantiser are merged into one list
file by ``faiss.contrib.ondisk.merge_ondisk``; the index file holds the quantiser and the lists' offsets, the list
file the codes and ids (the labels' internal ids, explicit). The index file records the list file by its base name
and is opened with ``IO_FLAG_ONDISK_SAME_DIR``, so the folder can move (and be swapped in atomically). Processes that
open the folder share the list file's pages. The stage is read-only: adding to the lists would rewrite the file in
place, outside the folder's atomic writes, so ``add``/``remove`` are refused (rebuild instead).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import faiss

from xmr.errors import IndexFolderError, UnsupportedOperation
from xmr.index import faiss_ops
from xmr.index.stages.base import register_stage
from xmr.index.stages.faiss_dense import INDEX_FILE, FaissDenseStage
from xmr.representations import Representation

LISTS_FILE = "index.ivfdata"
OPEN_FLAGS = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY


def on_disk_lists(index: faiss.Index) -> faiss.OnDiskInvertedLists:
    """The ``OnDiskInvertedLists`` of an IVF index; an error if its lists are held in memory."""
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise IndexFolderError(f"the faiss-ondisk stage needs on-disk inverted lists, got {type(lists).__name__}")
    return lists


@register_stage("faiss-ondisk")
class FaissOnDiskStage(FaissDenseStage):
    files = (INDEX_FILE, LISTS_FILE)
    default_for_kind = False  # only build_index_ray makes it

    @classmethod
    def build(cls, labels: Representation, ids: Any, factory: str, build: dict[str, int],
              train_size: int) -> FaissOnDiskStage:
        raise UnsupportedOperation("a faiss-ondisk stage is made by merging shards (xmr.index.ray_build), not by "
                                   "adding vectors to it")

    def add(self, labels: Representation, ids: Any) -> None:
        raise UnsupportedOperation("an on-disk IVF index (faiss-ondisk, built with --engine ray) is read-only; "
                                   "rebuild it with the new labels")

    def remove(self, ids: Any) -> int:
        raise UnsupportedOperation("an on-disk IVF index (faiss-ondisk, built with --engine ray) is read-only; "
                                   "rebuild it without those labels")

    def write(self, folder: Path) -> None:
        """The list file linked (or copied) into ``folder``, and the index file naming it by its base name."""
        lists = on_disk_lists(self.index)
        source = Path(lists.filename)
        target = folder / LISTS_FILE
        if source.resolve() != target.resolve():
            try:
                os.link(source, target)  # same file system: no copy of what may be the largest file
            except OSError:
                shutil.copyfile(source, target)
        lists.filename = LISTS_FILE
        try:
            faiss.write_index(self.index, str(folder / INDEX_FILE))
        finally:
            lists.filename = str(source)

    def section(self) -> dict[str, Any]:
        return {**super().section(), "lists_file": LISTS_FILE}

    @classmethod
    def open(cls, folder: Path, section: dict[str, Any], spec: dict[str, Any], mmap: bool) -> FaissOnDiskStage:
        try:
            index = faiss.read_index(str(folder / INDEX_FILE), OPEN_FLAGS)
        except RuntimeError as error:
            raise IndexFolderError(f"{folder / INDEX_FILE}: cannot read it: {error}") from None
        on_disk_lists(index)
        if index.d != spec["dim"] or index.metric_type != faiss_ops.METRICS.get(spec["metric"]):
            raise IndexFolderError(f"{folder}: {INDEX_FILE} does not match the manifest's {spec}")
        stage = cls(index, section.get("factory", ""), section.get("build"), section.get("trained_on", 0))
        if section.get("search_params"):
            stage.set_knobs(section["search_params"])
        return stage
