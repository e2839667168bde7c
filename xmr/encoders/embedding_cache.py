"""An append-only Parquet cache of vectors keyed by content hash, safe with several processes writing at once.

A cache is a folder of part files. Each call that computed new vectors adds ONE part holding only those, written
under a hidden temporary name and renamed into place, so a reader sees a whole part or none and no writer ever
rewrites (or loses) another's entries. Loading reads every part. When parts pile up, :meth:`EmbeddingCache.compact`
merges the parts it could read into one new part and then deletes exactly those, so parts that other processes add
meanwhile are kept; two processes compacting at once at worst leave duplicate entries.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

PART_SUFFIX = ".parquet"
COMPACT_AFTER = 64  # parts in a cache folder before the next write merges them


class EmbeddingCache:
    """Vectors of ``dim`` floats by key (e.g. an image's SHA-256), persisted in ``folder``."""

    def __init__(self, folder: Path, dim: int, compact_after: int = COMPACT_AFTER) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self.compact_after = compact_after
        self._vectors: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()  # part file names already read (or found unreadable)

    def parts(self) -> list[Path]:
        """The complete part files now in the folder, oldest name first."""
        if not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir()
                      if path.name.endswith(PART_SUFFIX) and not path.name.startswith("."))

    def load(self) -> dict[str, np.ndarray]:
        """All cached vectors, reading the parts not read yet (other processes may have added some)."""
        for path in self.parts():
            if path.name in self._seen:
                continue
            entries = self._read_part(path)
            if entries is None:  # compacted away meanwhile: its entries are in the merged part, read next time
                continue
            self._vectors.update(entries)
            self._seen.add(path.name)
        return self._vectors

    def add(self, entries: Mapping[str, np.ndarray]) -> None:
        """Persist new entries as one new part (never touching existing parts); compact when parts pile up."""
        if not entries:
            return
        self._vectors.update(entries)
        try:
            self._seen.add(self._write_part(entries).name)
        except OSError as error:  # the cache only saves time: encoding goes on without it
            log.warning("cannot write the embedding cache %s: %s", self.folder, error)
            return
        if len(self.parts()) > self.compact_after:
            self.compact()

    def compact(self) -> None:
        """Merge the readable parts into one new part, then delete exactly the parts merged."""
        merged: dict[str, np.ndarray] = {}
        read = []
        for path in self.parts():
            entries = self._read_part(path)
            if entries is not None:
                merged.update(entries)
                read.append(path)
        if len(read) < 2:
            return
        try:
            new = self._write_part(merged)
        except OSError as error:
            log.warning("cannot compact the embedding cache %s: %s", self.folder, error)
            return
        for path in read:
            path.unlink(missing_ok=True)
        self._seen = (self._seen - {path.name for path in read}) | {new.name}
        self._vectors.update(merged)

    def _write_part(self, entries: Mapping[str, np.ndarray]) -> Path:
        vectors = np.asarray(list(entries.values()), dtype=np.float32).reshape(-1, self.dim)
        table = pa.table({"key": pa.array(list(entries), pa.string()),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim)})
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        temporary = self.folder / f".{name}.tmp"
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, self.folder / name)
        finally:
            temporary.unlink(missing_ok=True)
        return self.folder / name

    def _read_part(self, path: Path) -> dict[str, np.ndarray] | None:
        """A part's entries; None when it vanished (compacted by another process). An unreadable part is skipped
        with a warning naming it (deleting it is safe)."""
        try:
            table = pq.read_table(path)
            keys = table.column("key").to_pylist()
            vectors = table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.dim)
            if len(vectors) != len(keys):
                raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors of {self.dim} floats")
        except FileNotFoundError:
            return None
        except (OSError, KeyError, ValueError, pa.ArrowException) as error:
            log.warning("skipping unreadable embedding cache part %s: %s", path, error)
            self._seen.add(path.name)
            return None
        return dict(zip(keys, vectors, strict=True))
