"""LabelIndex: a label catalogue, its vectors in a FAISS index, and the encoder that made them, as one folder.

Folder layout (see ``folder.py`` for atomicity and checksums)::

    manifest.json    format, encoder config, dim, metric, FAISS factory and knobs, label count, checksums
    index.faiss      the FAISS index; its ids are the labels' internal ids
    labels.parquet   the catalogue (id, text, image, metadata) plus the ``internal_id`` column
    vectors.npy      float32 label vectors in catalogue row order, only for recipes that re-rank exactly
                     (compressed codes find candidates; these re-score them; opened memory-mapped)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue, LabelId
from xmr.encoders import Encoder, Item, load_encoder
from xmr.errors import CatalogueError, IndexFolderError, UnsupportedOperation, XMRError
from xmr.index import faiss_ops
from xmr.index.folder import read_manifest, verify_files, write_index_folder
from xmr.index.recipes import IndexRecipe, auto_recipe, load_recipe, parse_memory
from xmr.search import SearchResult

INDEX_FILE = "index.faiss"
LABELS_FILE = "labels.parquet"
VECTORS_FILE = "vectors.npy"
RERANK_BLOCK = 256  # queries re-scored at once (bounds the gathered candidate vectors)
# memory-mapped reading: IVF inverted lists map with IO_FLAG_MMAP, flat code arrays (Flat, HNSW storage) with
# IO_FLAG_MMAP_IFC; FAISS refuses the two together on IVF files
MMAP_FLAGS = {"ivf": faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY,
              "codes": faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY}
INTERNAL_ID = "internal_id"
NO_ENCODER = "none"  # manifest encoder type of an index built from precomputed vectors without an encoder


class LabelIndex:
    """Search labels by query text (or precomputed query vectors); add, remove and save labels."""

    def __init__(
        self,
        faiss_index: faiss.Index,
        catalogue: LabelCatalogue,
        internal_ids: np.ndarray,
        manifest: dict[str, Any],
        path: Path | None = None,
        encoder: Encoder | None = None,
        stored_vectors: np.ndarray | None = None,
        read_only: bool = False,
    ) -> None:
        self.faiss_index = faiss_index
        self.catalogue = catalogue
        self.internal_ids = np.asarray(internal_ids, dtype=np.int64)
        self.manifest = manifest
        self.path = path
        self._encoder = encoder
        self.stored_vectors = stored_vectors  # row i = catalogue row i; for exact re-ranking
        self.read_only = read_only  # opened memory-mapped: FAISS data is not writable
        self.device_search: Any = None  # a GPU searcher (faiss-gpu index or TorchExactSearch), see to_device()

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def metric(self) -> str:
        return str(self.manifest["metric"])

    def __len__(self) -> int:
        return len(self.catalogue)

    def __repr__(self) -> str:
        return f"LabelIndex({len(self)} labels, {self.manifest['faiss']['factory']}, dim={self.dim}, path={self.path})"

    @property
    def encoder(self) -> Encoder:
        """The encoder from the manifest, loaded on first use (``search_embeddings`` never needs it)."""
        if self._encoder is None:
            if self.manifest["encoder"].get("type") == NO_ENCODER:
                raise XMRError(f"{self.path or 'this index'} was built from precomputed vectors without an encoder; "
                               "query it with search_embeddings")
            encoder = load_encoder(self.manifest["encoder"])
            check_encoder(encoder, self.manifest, self.path)
            self._encoder = encoder
        return self._encoder

    # ---- search -------------------------------------------------------------------------------------------
    def search(self, queries: Sequence[Item] | Item, k: int = 10, **search_params: int) -> SearchResult:
        """Top-k labels for each query (texts, or ``{"text", "image"}`` items); knobs like ``efSearch=128``."""
        if isinstance(queries, (str, Mapping)):
            queries = [queries]
        return self.search_embeddings(self.encoder.encode_queries(queries), k=k, **search_params)

    def search_embeddings(self, vectors: np.ndarray, k: int = 10, **search_params: int) -> SearchResult:
        """Top-k labels for precomputed float32 query vectors ``(n, dim)``.

        Knobs: ``efSearch``, ``nprobe`` (FAISS), ``rerank`` (re-score that many candidates exactly from the stored
        vectors; 0 turns it off; the manifest's recipe gives the default).
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise XMRError(f"query vectors have shape {vectors.shape}; this index expects (n, {self.dim})")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise XMRError(f"k must be a positive integer, got {k!r}")
        rerank = int(search_params.pop("rerank", self.manifest["faiss"].get("rerank", 0)) or 0)
        if rerank and self.stored_vectors is None:
            raise XMRError(f"{self.path or 'this index'} stores no vectors to re-rank with; build it with a recipe "
                           "that has rerank > 0")
        depth = max(int(k), rerank)
        if self.device_search is not None and not search_params:
            ids, scores = self.device_search(vectors, depth)
        else:
            ids, scores = faiss_ops.search(self.faiss_index, vectors, depth, search_params)
        rows = self._rows_of(ids)
        if rerank:
            ids, scores, rows = self._rerank(vectors, ids, rows, int(k))
        return SearchResult(ids=ids, scores=scores, rows=rows, catalogue=self.catalogue)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, rows: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact inner products of each query with its candidates' stored vectors; keep the best ``k``."""
        exact = np.full(ids.shape, -np.inf, dtype=np.float32)
        for start in range(0, len(queries), RERANK_BLOCK):
            block = rows[start:start + RERANK_BLOCK]
            gathered = np.asarray(self.stored_vectors[np.maximum(block, 0).ravel()]).reshape(*block.shape, self.dim)
            scores = np.einsum("nd,ncd->nc", queries[start:start + RERANK_BLOCK], gathered)
            exact[start:start + RERANK_BLOCK] = np.where(block >= 0, scores, -np.inf)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        take = lambda values: np.take_along_axis(values, order, axis=1)  # noqa: E731
        return take(ids), take(exact), take(rows)

    def to_device(self, device: str = "cuda", dtype: str = "float16") -> LabelIndex:
        """Search on a GPU: FAISS GPU indexes when faiss has GPUs, else exact torch search (Flat indexes only).

        FAISS-GPU answers k <= 2048; deeper searches fall back to torch (Flat) or to the CPU index. ``dtype`` is the
        storage of the torch path (``float16``, ``bfloat16``, ``float32``). ``device="cpu"`` undoes it.
        """
        from xmr.index import gpu

        self.device_search = None if device == "cpu" else gpu.device_searcher(self.faiss_index, device, dtype)
        return self

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of internal ids (-1 stays -1); internal ids are kept strictly increasing."""
        if not len(self.internal_ids):
            return np.full(ids.shape, -1, dtype=np.int64)
        if self.internal_ids[-1] == len(self.internal_ids) - 1:  # ids 0..n-1 (nothing removed): row == id
            return ids.copy()
        rows = np.searchsorted(self.internal_ids, ids).clip(max=len(self.internal_ids) - 1)
        found = (ids >= 0) & (self.internal_ids[rows] == ids)
        return np.where(found, rows, -1)

    def set_search_params(self, **search_params: int) -> None:
        """Change the default query-time knobs (kept in the manifest on :meth:`save`)."""
        faiss_ops.set_search_parameters(self.faiss_index, search_params)
        self.manifest["faiss"]["search_params"] = faiss_ops.search_parameters(self.faiss_index)

    def internal_id(self, label_id: LabelId) -> int:
        """Internal id of a catalogue label id (what ``SearchResult.ids`` holds)."""
        return int(self.internal_ids[self.catalogue.position(label_id)])

    # ---- changes ------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise UnsupportedOperation(f"{self.path} is open memory-mapped (read-only); load it with mmap=False to "
                                       "add or remove labels")
        if self.device_search is not None:
            raise UnsupportedOperation("this index searches on a GPU copy; call to_device('cpu') before changing it")

    def add(self, labels: LabelCatalogue | Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encode and add new labels (in memory; :meth:`save` persists). Returns their internal ids."""
        self._check_writable()
        if not isinstance(labels, LabelCatalogue):
            labels = LabelCatalogue.from_records(labels, source="<added labels>")
        merged = self.catalogue.concat(labels)  # validates ids before any vector is added
        vectors = self.encoder.encode_labels(labels.items())
        start = int(self.manifest["next_internal_id"])
        new_ids = np.arange(start, start + len(labels), dtype=np.int64)
        faiss_ops.add(self.faiss_index, vectors, new_ids)
        if self.stored_vectors is not None:
            self.stored_vectors = np.concatenate([self.stored_vectors, vectors])
        self.catalogue = merged
        self.internal_ids = np.concatenate([self.internal_ids, new_ids])
        self.manifest["next_internal_id"] = start + len(labels)
        return new_ids

    def remove(self, label_ids: Sequence[LabelId]) -> int:
        """Remove labels by catalogue id (in memory; :meth:`save` persists). Not every FAISS index can."""
        self._check_writable()
        try:
            rows = sorted({self.catalogue.position(label_id) for label_id in label_ids})
        except KeyError as error:
            raise XMRError(f"cannot remove: {error.args[0]}") from None
        removed = faiss_ops.remove(self.faiss_index, self.internal_ids[rows])
        if removed != len(rows):
            raise IndexFolderError(f"FAISS removed {removed} vectors for {len(rows)} labels; the index is inconsistent")
        keep = np.setdiff1d(np.arange(len(self.catalogue)), rows)
        self.catalogue = self.catalogue.take(keep.tolist())
        self.internal_ids = self.internal_ids[keep]
        if self.stored_vectors is not None:
            self.stored_vectors = np.asarray(self.stored_vectors[keep])
        return removed

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write the index folder atomically (to its own folder by default)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise XMRError("this index has no folder yet; pass a path to save()")
        table = self.catalogue.to_arrow()
        if INTERNAL_ID in table.column_names:
            raise CatalogueError(f"{self.catalogue.source}: metadata field {INTERNAL_ID!r} is reserved")
        table = table.append_column(INTERNAL_ID, pa.array(self.internal_ids, pa.int64()))

        def write_files(folder: Path) -> dict[str, Any]:
            faiss.write_index(self.faiss_index, str(folder / INDEX_FILE))
            pq.write_table(table, folder / LABELS_FILE)
            if self.stored_vectors is not None:
                np.save(folder / VECTORS_FILE, np.asarray(self.stored_vectors, dtype=np.float32))
            body = {key: value for key, value in self.manifest.items() if key not in ("format", "format_version",
                                                                                      "written_at", "files")}
            body["xmr_version"] = __version__
            body["labels"] = {
                **self.manifest["labels"],
                "count": len(self.catalogue),
                "has_images": self.catalogue.images is not None,
            }
            return body

        self.manifest = write_index_folder(target, write_files)
        self.path = target
        return target

    def info(self) -> dict[str, Any]:
        """What ``xmr info`` prints: the manifest plus live counts and the FAISS structure."""
        return {
            "path": str(self.path) if self.path else None,
            "labels": len(self),
            "vectors": int(self.faiss_index.ntotal),
            "faiss_structure": faiss_ops.describe(self.faiss_index),
            "search_parameters": faiss_ops.search_parameters(self.faiss_index),
            "rerank": self.manifest["faiss"].get("rerank", 0),
            "memory_mapped": self.read_only,
            "manifest": self.manifest,
        }


def check_encoder(encoder: Encoder, manifest: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse an encoder whose vectors would not match the index (model, prompts, dim, metric, normalisation)."""
    if encoder.dim != manifest["dim"]:
        raise IndexFolderError(f"{where}: index holds {manifest['dim']}-d vectors, encoder gives {encoder.dim}-d")
    if encoder.metric != manifest["metric"]:
        raise IndexFolderError(f"{where}: index metric is {manifest['metric']!r}, encoder's is {encoder.metric!r}")
    stored = {key: value for key, value in manifest["encoder"].items() if key not in encoder.runtime_keys}
    given = encoder.identity()
    differences = {key: (stored.get(key), given.get(key)) for key in stored.keys() | given.keys()
                   if stored.get(key) != given.get(key)}
    if differences:
        details = ", ".join(f"{key}: index {a!r} vs encoder {b!r}" for key, (a, b) in sorted(differences.items()))
        raise IndexFolderError(f"{where}: the encoder does not match the one this index was built with ({details})")


def build_index(
    catalogue: LabelCatalogue | str | Path,
    encoder: Encoder | str | Mapping[str, Any],
    out: str | Path | None,
    factory: str = "Flat",
    search_params: Mapping[str, int] | None = None,
    train_size: int = faiss_ops.DEFAULT_TRAIN_SIZE,
    recipe: IndexRecipe | str | None = None,
    max_memory: int | str | None = None,
    target_recall: float = 0.95,
) -> LabelIndex:
    """Encode a catalogue's labels, index them, and write the folder ``out`` (``None``: in memory only).

    Either a FAISS ``factory`` string, or a ``recipe``: a preset name (``hnsw32``, ``ivf-sq8`` ...), a YAML file, an
    :class:`IndexRecipe`, or ``"auto"`` (chosen from the label count, dimension, ``max_memory`` and
    ``target_recall``; see ``recipes.py``). ``search_params`` (e.g. ``{"efSearch": 128}``) override the recipe's
    defaults. IVF/PQ/SQ indexes are trained on a random sample of at most ``train_size`` label vectors.
    """
    if not isinstance(catalogue, LabelCatalogue):
        catalogue = LabelCatalogue.from_file(catalogue)
    encoder = load_encoder(encoder)
    vectors = encoder.encode_labels(catalogue.items())
    return build_index_from_embeddings(catalogue, vectors, out, encoder, factory, search_params, train_size,
                                       recipe=recipe, max_memory=max_memory, target_recall=target_recall)


def build_index_from_embeddings(
    catalogue: LabelCatalogue,
    vectors: np.ndarray,
    out: str | Path | None,
    encoder: Encoder | str | Mapping[str, Any] | None = None,
    factory: str = "Flat",
    search_params: Mapping[str, int] | None = None,
    train_size: int = faiss_ops.DEFAULT_TRAIN_SIZE,
    normalized: bool | None = None,
    recipe: IndexRecipe | str | None = None,
    max_memory: int | str | None = None,
    target_recall: float = 0.95,
    calibration_queries: np.ndarray | None = None,
) -> LabelIndex:
    """Index label vectors computed elsewhere (row i = catalogue row i).

    Name the ``encoder`` that produced them to make text search work; without one the index answers
    ``search_embeddings`` only. ``normalized`` records whether the vectors are unit length (default: the
    encoder's setting, else measured). With ``recipe="auto"`` the search knob is calibrated to reach
    ``target_recall`` recall@10 against exact search on ``calibration_queries`` (default: midpoints of random label
    pairs), and the choice, its reason and the calibration go into the manifest.
    """
    if len(vectors) != len(catalogue):
        raise XMRError(f"{len(vectors)} vectors for {len(catalogue)} labels")
    encoder = load_encoder(encoder) if encoder is not None else None
    dim = int(vectors.shape[1])
    if encoder is not None and encoder.dim != dim:
        raise XMRError(f"vectors are {dim}-d but encoder {encoder!r} gives {encoder.dim}-d")
    metric = encoder.metric if encoder is not None else "inner_product"
    if normalized is None:
        normalized = encoder.normalize if encoder is not None else bool(
            np.allclose(np.linalg.norm(vectors[:1000], axis=1), 1.0, atol=1e-3))
    auto = isinstance(recipe, str) and recipe.lower() == "auto"
    if auto:
        recipe = auto_recipe(len(catalogue), dim, parse_memory(max_memory), target_recall)
    elif recipe is not None and not isinstance(recipe, IndexRecipe):
        recipe = load_recipe(recipe)
    recipe = (recipe or IndexRecipe("factory", factory)).resolved(len(catalogue), dim)
    index = faiss_ops.create(dim, recipe.factory, metric)
    faiss_ops.set_build_parameters(index, recipe.build)
    trained_on = faiss_ops.train(index, vectors, train_size)
    internal_ids = np.arange(len(catalogue), dtype=np.int64)
    faiss_ops.add(index, vectors, internal_ids)
    knobs = {**recipe.search, **(search_params or {})}
    if knobs:
        faiss_ops.set_search_parameters(index, knobs)
    manifest = {
        "xmr_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": encoder.identity() if encoder is not None else {"type": NO_ENCODER, "dim": dim},
        "output": encoder.output if encoder is not None else "dense",
        "dim": dim,
        "metric": metric,
        "normalized": normalized,
        "similarity": "cosine" if normalized else "inner_product",
        "faiss": {
            "factory": recipe.factory,
            "structure": faiss_ops.describe(index),
            "search_params": faiss_ops.search_parameters(index),
            "rerank": recipe.rerank,
            "recipe": recipe.to_manifest(),
            "trained_on": trained_on,
            "faiss_version": faiss.__version__,
        },
        "labels": {"source": catalogue.source, "id_type": type(catalogue.ids[0]).__name__},
        "next_internal_id": len(catalogue),
    }
    stored = np.ascontiguousarray(vectors, dtype=np.float32) if recipe.rerank else None
    label_index = LabelIndex(index, catalogue, internal_ids, manifest, encoder=encoder, stored_vectors=stored)
    if auto:
        manifest["faiss"]["recipe"]["calibration"] = calibrate(label_index, vectors, target_recall,
                                                               calibration_queries)
    if out is not None:
        label_index.save(out)
    return label_index


CALIBRATION_VALUES = {"efSearch": [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
                      "nprobe": [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096]}


def calibrate(index: LabelIndex, vectors: np.ndarray, target_recall: float, queries: np.ndarray | None = None,
              k: int = 10, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """Set the smallest ``efSearch``/``nprobe`` whose recall@k against exact search reaches ``target_recall``.

    Queries default to normalised midpoints of random label pairs (points between labels, like real queries,
    rather than the labels themselves, which every index finds trivially). Returns what was measured.
    """
    knobs = [name for name in ("nprobe", "efSearch") if name in faiss_ops.search_parameters(index.faiss_index)]
    if not knobs:
        return {"note": "exact search: nothing to calibrate", "recall_at_10": 1.0}
    if queries is None:
        pairs = np.random.default_rng(seed).integers(len(vectors), size=(min(sample, len(vectors)), 2))
        queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    depth = min(k, len(vectors))
    _, truth = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), depth,
                         metric=faiss.METRIC_INNER_PRODUCT)
    knob = knobs[0]
    limit = int(faiss.extract_index_ivf(index.faiss_index).nlist) if knob == "nprobe" else 1 << 30
    recall: dict[int, float] = {}
    for value in [value for value in CALIBRATION_VALUES[knob] if value < limit] + [limit] * (knob == "nprobe"):
        found = index.search_embeddings(queries, k=depth, **{knob: value}).ids
        recall[value] = float(np.mean([len(np.intersect1d(f, t)) / depth for f, t in zip(found, truth, strict=True)]))
        if recall[value] >= target_recall:
            break
    chosen = next((value for value, got in recall.items() if got >= target_recall), max(recall))
    index.set_search_params(**{knob: chosen})
    return {"knob": knob, "value": chosen, f"recall_at_{depth}": recall[chosen], "queries": len(queries),
            "target_reached": recall[chosen] >= target_recall,
            "sweep": {str(value): round(got, 4) for value, got in recall.items()}}


def load_index(path: str | Path, encoder: Encoder | str | Mapping[str, Any] | None = None,
               verify: bool = True, mmap: bool = False) -> LabelIndex:
    """Open an index folder. Checksums are verified (``verify=False`` checks sizes only, for very large folders).

    Passing ``encoder`` checks it against the one recorded in the manifest and refuses a mismatch. ``mmap=True``
    maps the FAISS data instead of reading it (FAISS ``IO_FLAG_MMAP``): a large index opens in about the time it
    takes to read its labels, and processes share its pages; it is then read-only. Stored re-rank vectors are
    always memory-mapped.
    """
    path = Path(path)
    manifest = read_manifest(path)
    verify_files(path, manifest, checksums=verify)
    if manifest.get("metric") not in faiss_ops.METRICS:
        raise IndexFolderError(f"{path}: unknown metric {manifest.get('metric')!r} in manifest")
    try:
        layout = "ivf" if "IVF" in manifest["faiss"].get("structure", "") else "codes"
        index = faiss.read_index(str(path / INDEX_FILE), MMAP_FLAGS[layout] if mmap else 0)
        table = pq.read_table(path / LABELS_FILE)
        stored = np.load(path / VECTORS_FILE, mmap_mode="r") if (path / VECTORS_FILE).is_file() else None
    except (RuntimeError, OSError, pa.ArrowException) as error:
        raise IndexFolderError(f"{path}: cannot read index files: {error}") from None
    if index.d != manifest["dim"]:
        raise IndexFolderError(f"{path}: {INDEX_FILE} has dim {index.d}, manifest says {manifest['dim']}")
    if index.metric_type != faiss_ops.METRICS[manifest["metric"]]:
        raise IndexFolderError(f"{path}: {INDEX_FILE} metric does not match manifest metric {manifest['metric']!r}")
    if index.ntotal != table.num_rows or table.num_rows != manifest["labels"]["count"]:
        raise IndexFolderError(f"{path}: {index.ntotal} vectors, {table.num_rows} label rows, manifest says "
                               f"{manifest['labels']['count']}")
    internal_ids = table.column(INTERNAL_ID).to_numpy()
    catalogue = LabelCatalogue.from_arrow(table.drop_columns([INTERNAL_ID]), source=str(path / LABELS_FILE))
    if manifest["faiss"].get("search_params"):
        faiss_ops.set_search_parameters(index, manifest["faiss"]["search_params"])
    if stored is not None and stored.shape != (table.num_rows, manifest["dim"]):
        raise IndexFolderError(f"{path / VECTORS_FILE}: shape {stored.shape}, expected ({table.num_rows}, "
                               f"{manifest['dim']})")
    label_index = LabelIndex(index, catalogue, internal_ids, manifest, path=path, stored_vectors=stored,
                             read_only=mmap)
    if encoder is not None:
        encoder = load_encoder(encoder)
        check_encoder(encoder, manifest, path)
        label_index._encoder = encoder
    return label_index
