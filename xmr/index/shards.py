"""One catalogue split over several label indexes: every shard searched in parallel, the top-k merged exactly.

Each shard is an ordinary index folder holding a disjoint part of the labels, built with the same encoder and
representation. A shard's internal ids are offset by ``id_offsets`` (saved in the sharded folder's manifest, not
implied by list order), so merged ids stay unambiguous; ``merge_top_k`` (FAISS ``merge_knn_results``) is also what a
caller uses to merge results gathered from other machines.

Folder (``kind: "sharded-index"``)::

    manifest.json   {"kind": "sharded-index", "shards": [{"path": "shard-000", "id_offset": 0, "labels": n}, ...]}
    shard-000/ ...  ordinary label-index folders (their own manifests and checksums)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder
from xmr.errors import IndexFolderError, XMRError
from xmr.index.folder import read_manifest, refuse_foreign, write_manifest
from xmr.index.label_index import LabelIndex, load_index
from xmr.io.atomic import recover, write_folder_atomically
from xmr.predictor import EncodedPredictor
from xmr.representations import Representation, as_representation
from xmr.search import SearchResult

SHARD_FOLDER = "shard-{:03d}"


def merge_top_k(ids: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of per-shard ``(n, k_s)`` results by score (higher is better; every xmr score is). Empty slots
    (id -1, score -inf or NaN) stay empty: id -1, score -inf."""
    depth = max(k, *(part.shape[1] for part in ids))
    padded_ids = np.stack([np.pad(part, ((0, 0), (0, depth - part.shape[1])), constant_values=-1) for part in ids])
    padded_scores = np.stack([np.pad(np.where(part_ids >= 0, part, -np.inf).astype(np.float32),
                                     ((0, 0), (0, depth - part.shape[1])), constant_values=-np.inf)
                              for part, part_ids in zip(scores, ids, strict=True)])
    merged_scores, merged_ids = faiss.merge_knn_results(padded_scores, padded_ids, keep_max=True)
    merged_ids, merged_scores = merged_ids[:, :k], merged_scores[:, :k]
    merged_scores[merged_ids < 0] = -np.inf
    return merged_ids, merged_scores


class ShardedIndex(EncodedPredictor):
    """Several label indexes searched as one (in parallel threads: FAISS releases the GIL while it searches)."""

    kind = "sharded-index"

    def __init__(self, shards: Sequence[LabelIndex], id_offsets: Sequence[int] | None = None,
                 path: Path | None = None) -> None:
        if not shards:
            raise XMRError("a sharded index needs at least one shard")
        first = shards[0].manifest
        for shard in shards[1:]:
            for key in ("representation", "encoder"):
                if shard.manifest[key] != first[key]:
                    raise XMRError(f"shard {shard.path} differs from {shards[0].path} in {key!r}: "
                                   f"{shard.manifest[key]!r} vs {first[key]!r}")
        self.shards = list(shards)
        sizes = [int(shard.manifest["labels"]["next_internal_id"]) for shard in shards]
        offsets = np.cumsum([0, *sizes[:-1]]) if id_offsets is None else np.asarray(id_offsets, dtype=np.int64)
        if len(offsets) != len(shards) or any(offsets[i] + sizes[i] > offsets[i + 1] for i in range(len(shards) - 1)):
            raise XMRError(f"shard id offsets {list(offsets)} overlap for shards of {sizes} internal ids")
        self.id_offsets = np.asarray(offsets, dtype=np.int64)
        self.path = path
        self.catalogue = functools.reduce(LabelCatalogue.concat, [shard.catalogue for shard in shards])
        self.internal_ids = np.concatenate([s.internal_ids + o for s, o in zip(shards, self.id_offsets, strict=True)])
        self._pool = ThreadPoolExecutor(max_workers=len(shards), thread_name_prefix="xmr-shard")

    @property
    def representation(self) -> dict[str, Any]:
        return self.shards[0].representation

    @property
    def dim(self) -> int:
        return self.shards[0].dim

    @property
    def encoder(self) -> Encoder:
        return self.shards[0].encoder

    def predict_encoded(self, queries: Representation | np.ndarray, k: int = 10, **knobs: int) -> SearchResult:
        """Every shard's top-k (searched in parallel), merged by score; ids are global (offset + shard id)."""
        queries = as_representation(queries, self.representation)
        results = list(self._pool.map(lambda shard: shard.predict_encoded(queries, k=k, **knobs), self.shards))
        ids, scores = merge_top_k([np.where(r.ids >= 0, r.ids + offset, -1) for r, offset in
                                   zip(results, self.id_offsets, strict=True)], [r.scores for r in results], k)
        rows = np.searchsorted(self.internal_ids, ids).clip(max=len(self.internal_ids) - 1)
        rows = np.where((ids >= 0) & (self.internal_ids[rows] == ids), rows, -1)
        return SearchResult(ids=ids, scores=scores, rows=rows, catalogue=self.catalogue, score=results[0].score)

    def describe(self) -> dict[str, Any]:
        first = self.shards[0].describe()
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": first["encoder"],
                "representation": self.representation, "structure": f"{len(self.shards)} shards of "
                f"{first['structure']}", "params": first["params"], "labels": len(self)}

    def save(self, path: str | Path) -> Path:
        """Write ``path/manifest.json`` and every shard as ``path/shard-NNN`` (each an ordinary index folder)."""
        path = Path(path)

        def write(folder: Path) -> None:
            entries = []
            for number, (shard, offset) in enumerate(zip(self.shards, self.id_offsets, strict=True)):
                name = SHARD_FOLDER.format(number)
                shard.save(folder / name)
                entries.append({"path": name, "id_offset": int(offset), "labels": len(shard),
                                "manifest_sha256": shard.manifest["manifest_sha256"]})
            write_manifest(folder, {
                "kind": self.kind, "xmr_version": __version__,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "encoder": self.shards[0].manifest["encoder"], "representation": self.representation,
                "shards": entries})

        refuse_foreign(path)
        write_folder_atomically(path, write)
        for shard, entry in zip(self.shards, range(len(self.shards)), strict=True):
            shard.path = path / SHARD_FOLDER.format(entry)
        self.path = path
        return path

    @classmethod
    def open(cls, paths: Sequence[str | Path], **load_options: Any) -> ShardedIndex:
        """Shards from separate index folders; ids are offset in the order given."""
        return cls([load_index(path, **load_options) for path in paths])


def load_sharded_index(path: str | Path, **load_options: Any) -> ShardedIndex:
    """Open a folder written by :meth:`ShardedIndex.save` (shards and their saved id offsets)."""
    path = Path(path)
    recover(path)
    manifest = read_manifest(path)
    entries = manifest.get("shards")
    if not isinstance(entries, list) or not entries:
        raise IndexFolderError(f"{path}: a sharded-index manifest lists its shards under 'shards'")
    shards = []
    for entry in entries:
        folder = (path / entry["path"]).resolve()
        if path.resolve() not in folder.parents:
            raise IndexFolderError(f"{path}: shard path {entry['path']!r} leaves the folder")
        shard = load_index(folder, **load_options)
        if shard.manifest.get("manifest_sha256") != entry.get("manifest_sha256"):
            raise IndexFolderError(f"{path}: shard {entry['path']} is not the one this folder was saved with")
        shards.append(shard)
    return ShardedIndex(shards, [entry["id_offset"] for entry in entries], path=path)
