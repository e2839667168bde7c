"""LabelIndex: a label catalogue, a pipeline of index stages, and the encoder that feeds them, as one folder.

Folder layout (manifest format in ``folder.py``)::

    manifest.json     kind, encoder, representation, labels, stages (in order), recipe, checksums
    labels.parquet    the label store: the catalogue (id, text, images, metadata) plus the ``internal_id`` column
    <stage files>     each stage's own files, e.g. index.faiss (candidates ``faiss``), index.binary.faiss
                      (``faiss-binary``), vectors.npy (re-rank ``exact-dense``, opened memory-mapped)

A search encodes the queries into the encoder's representation, asks the candidate stage for the top candidates
(as deep as the re-rank stages need), and lets each re-rank stage re-score them. Metric and score direction come
from the representation; every stage reports scores where higher is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue, LabelId
from xmr.encoders import Encoder, load_encoder
from xmr.errors import CatalogueError, IndexFolderError, UnsupportedOperation, XMRError
from xmr.index import faiss_ops
from xmr.index.fast_queries import SECTION as FAST_SECTION
from xmr.index.fast_queries import check_fast_encoder, open_fast_encoder, write_fast_files
from xmr.index.fast_queries import section as fast_section
from xmr.index.folder import read_manifest, refuse_foreign, verify_files, write_index_folder
from xmr.index.recipes import IndexRecipe, auto_recipe, load_recipe, parse_memory
from xmr.index.stages import CandidateStage, RerankStage, stage_class, stage_for
from xmr.io.atomic import recover
from xmr.predictor import EncodedPredictor, as_items
from xmr.representations import REPRESENTATIONS, DenseVectors, Representation, as_representation
from xmr.search import SearchResult

LABELS_FILE = "labels.parquet"
INTERNAL_ID = "internal_id"
NO_ENCODER = "none"  # manifest encoder type of an index built from precomputed vectors without an encoder
SCORE_NAMES = {"dense": "inner product", "binary": "agreeing bits", "tokens": "inner product"}


def score_name(spec: Mapping[str, Any]) -> str:
    """What a score means for a representation (``cosine`` for unit-length dense vectors)."""
    return "cosine" if spec.get("normalized") else SCORE_NAMES.get(spec["kind"], "score")


class LabelIndex(EncodedPredictor):
    """Search labels by query (texts, images, or precomputed representations); add, remove and save labels."""

    kind = "label-index"

    def __init__(self, catalogue: LabelCatalogue, internal_ids: np.ndarray, candidates: CandidateStage,
                 rerankers: Sequence[RerankStage], manifest: dict[str, Any], path: Path | None = None,
                 encoder: Encoder | None = None, read_only: bool = False, trust_remote_code: bool = False) -> None:
        self.catalogue = catalogue
        self.internal_ids = np.asarray(internal_ids, dtype=np.int64)
        self.candidates = candidates
        self.rerankers = list(rerankers)
        self.manifest = manifest
        self.path = path
        self._encoder = encoder
        self.read_only = read_only  # opened memory-mapped: stage data is not writable
        self.trust_remote_code = trust_remote_code  # the caller's permission for this process, never the folder's
        self.device_search: Any = None  # the candidate stage placed on a GPU, see to_device()
        self._fast_encoder: Encoder | None = None  # the fast query encoder (xmr.index.fast_queries), if any
        self.fast_queries = False  # queries go through it (use_fast_queries)

    # ---- properties ---------------------------------------------------------------------------------------
    @property
    def representation(self) -> dict[str, Any]:
        """The representation spec (kind, metric, dim or bits, normalized) every stage holds."""
        return self.manifest["representation"]

    @property
    def dim(self) -> int:
        spec = self.representation
        return int(spec.get("dim", spec.get("bits", 0)))

    @property
    def metric(self) -> str:
        return str(self.representation["metric"])

    def __repr__(self) -> str:
        return f"LabelIndex({len(self)} labels, {self.describe()['structure']}, path={self.path})"

    @property
    def encoder(self) -> Encoder:
        """The encoder from the manifest, loaded on first use (``search_embeddings`` never needs it)."""
        if self._encoder is None:
            if self.manifest["encoder"].get("type") == NO_ENCODER:
                raise XMRError(f"{self.path or 'this index'} was built from precomputed vectors without an encoder; "
                               "query it with search_embeddings")
            if asks_for_remote_code(self.manifest["encoder"]) and not self.trust_remote_code:
                raise IndexFolderError(
                    f"{self.path or 'this index'}: its encoder config sets trust_remote_code, which would run Python "
                    "code from the model's folder; allow it for this run with --trust-remote-code "
                    "(load_index(..., trust_remote_code=True)) only if you trust where the index and model came from")
            encoder = load_encoder(self.manifest["encoder"])
            check_encoder(encoder, self.manifest, self.path)
            self._encoder = encoder
        return self._encoder

    @property
    def fast_query_encoder(self) -> Encoder:
        """The fast query encoder the folder records (or attached), loaded on first use."""
        if self._fast_encoder is None:
            if self.path is None:
                raise XMRError("this index has no fast query encoder; attach one with attach_fast_queries")
            self._fast_encoder = open_fast_encoder(self.path, self.manifest)
        return self._fast_encoder

    def attach_fast_queries(self, encoder: Encoder) -> None:
        """Store ``encoder`` (made from this index's encoder) as the fast query path; ``save()`` records it."""
        check_fast_encoder(encoder, self.manifest, self.path or "this index")
        self._fast_encoder = encoder
        self.manifest[FAST_SECTION] = fast_section(encoder)

    def use_fast_queries(self, enabled: bool = True) -> LabelIndex:
        """Encode queries with the fast query encoder (refused if the folder has none or it does not match)."""
        if enabled:
            self.fast_query_encoder  # noqa: B018 -- load and check it now, not at the first query
        self.fast_queries = enabled
        return self

    def encode_queries(self, items: Sequence[Any] | Any) -> Representation:
        encoder = self.fast_query_encoder if self.fast_queries else self.encoder
        return encoder.encode(as_items(items), "query")

    # ---- search -------------------------------------------------------------------------------------------
    def predict_encoded(self, queries: Representation | np.ndarray, k: int = 10, **knobs: int) -> SearchResult:
        """Top-k labels for encoded queries (a representation, or a float32 array for dense indexes).

        Knobs: the candidate stage's (``efSearch``, ``nprobe``, ...) and each re-rank stage's depth (``rerank``:
        re-score that many candidates; 0 turns it off). The manifest's values are the defaults.
        """
        queries = as_representation(queries, self.representation)
        queries.check_matches(self.representation, "query representation")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise XMRError(f"k must be a positive integer, got {k!r}")
        if isinstance(queries, DenseVectors) and not np.isfinite(queries.values).all():
            row = int(np.flatnonzero(~np.isfinite(queries.values).all(axis=1))[0])
            raise XMRError(f"query vector {row} has NaN or infinite values")
        k = min(int(k), max(len(self.catalogue), 1))  # never more columns than labels (k=10**9 must not allocate)
        depths = [int(knobs.pop(stage.knob, stage.depth) or 0) for stage in self.rerankers]
        if knobs.pop("rerank", 0):  # asked for, but no stage re-ranks
            raise XMRError(f"{self.path or 'this index'} stores no vectors to re-rank with; build it with a recipe "
                           "that has rerank > 0")
        depth = max(int(k), *depths) if depths else int(k)
        searcher = self.device_search or self.candidates
        ids, scores = searcher.search(queries, depth, knobs)
        rows = self._rows_of(ids)
        for position, (stage, stage_depth) in enumerate(zip(self.rerankers, depths, strict=True)):
            if stage_depth:  # re-score the top max(depth, what is kept) candidates, keep what later stages need
                keep = max(int(k), *depths[position + 1:]) if position + 1 < len(depths) else int(k)
                width = max(stage_depth, keep)
                ids, scores, rows = stage.rerank(queries, ids[:, :width], rows[:, :width], keep)
        ids, scores, rows = ids[:, :k], scores[:, :k], rows[:, :k]
        return SearchResult(ids=ids, scores=scores, rows=rows, catalogue=self.catalogue,
                            score=score_name(self.representation))

    def to_device(self, device: str = "cuda", dtype: str = "float16") -> LabelIndex:
        """Search on a GPU: FAISS GPU indexes when faiss has GPUs, else exact torch search (Flat indexes only).

        ``dtype`` is the storage of the torch path (``float16``, ``bfloat16``, ``float32``). ``device="cpu"`` undoes
        it. Knobs passed per call reach the device searcher (never a silent switch back to the CPU).
        """
        if device == "cpu":
            self.device_search = None
            return self
        from xmr.index.gpu import DeviceSearch
        from xmr.index.stages.faiss_dense import FaissDenseStage

        if not isinstance(self.candidates, FaissDenseStage):
            raise UnsupportedOperation(f"device search needs a dense faiss candidate stage, not "
                                       f"{self.candidates.type_name}")
        self.device_search = DeviceSearch(self.candidates, device, dtype)
        return self

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Catalogue rows of internal ids (-1, a stage's empty slot, stays -1); internal ids are kept strictly
        increasing."""
        if not len(self.internal_ids):
            return np.full(ids.shape, -1, dtype=np.int64)
        if self.internal_ids[-1] == len(self.internal_ids) - 1:  # ids 0..n-1 (nothing removed): row == id
            return ids  # SearchResult copies ids, so the two stay separate arrays
        rows = np.searchsorted(self.internal_ids, ids).clip(max=len(self.internal_ids) - 1)
        found = (ids >= 0) & (self.internal_ids[rows] == ids)
        return np.where(found, rows, -1)

    def knobs(self) -> dict[str, int]:
        """Every stage's query-time knobs with their defaults."""
        values = dict(self.candidates.knobs())
        for stage in self.rerankers:
            values.update(stage.knobs())
        return values

    def set_search_params(self, **knobs: int) -> None:
        """Change the default query-time knobs (kept in the manifest on :meth:`save`)."""
        for stage in self.rerankers:
            if stage.knob in knobs:
                stage.depth = int(knobs.pop(stage.knob))
        self.candidates.set_knobs(knobs)
        self._record_stages()

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
        merged = self.catalogue.concat(labels)  # validates ids before anything is added
        encoded = self.encoder.encode(labels.items(), "label")
        start = int(self.manifest["labels"]["next_internal_id"])
        new_ids = np.arange(start, start + len(labels), dtype=np.int64)
        self.candidates.add(encoded, new_ids)
        for stage in self.rerankers:
            stage.add(encoded)
        self.catalogue = merged
        self.internal_ids = np.concatenate([self.internal_ids, new_ids])
        self.manifest["labels"]["next_internal_id"] = start + len(labels)
        return new_ids

    def remove(self, label_ids: Sequence[LabelId]) -> int:
        """Remove labels by catalogue id (in memory; :meth:`save` persists). Not every FAISS index can."""
        self._check_writable()
        try:
            rows = sorted({self.catalogue.position(label_id) for label_id in label_ids})
        except KeyError as error:
            raise XMRError(f"cannot remove: {error.args[0]}") from None
        removed = self.candidates.remove(self.internal_ids[rows])
        if removed != len(rows):
            raise IndexFolderError(f"the index removed {removed} entries for {len(rows)} labels; it is inconsistent")
        keep = np.setdiff1d(np.arange(len(self.catalogue)), rows)
        self.catalogue = self.catalogue.take(keep.tolist())
        self.internal_ids = self.internal_ids[keep]
        for stage in self.rerankers:
            stage.keep(keep)
        return removed

    # ---- persistence --------------------------------------------------------------------------------------
    def _record_stages(self) -> None:
        self.manifest["stages"] = [
            {"role": stage.role, "type": stage.type_name, "files": list(stage.files), **stage.section()}
            for stage in [self.candidates, *self.rerankers]
        ]

    def save(self, path: str | Path | None = None) -> Path:
        """Write the index folder atomically (to its own folder by default)."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise XMRError("this index has no folder yet; pass a path to save()")
        table = self.catalogue.to_arrow()
        if INTERNAL_ID in table.column_names:
            raise CatalogueError(f"{self.catalogue.source}: metadata field {INTERNAL_ID!r} is reserved")
        table = table.append_column(INTERNAL_ID, pa.array(self.internal_ids, pa.int64()))
        self._record_stages()

        def write_files(folder: Path) -> dict[str, Any]:
            pq.write_table(table, folder / LABELS_FILE)
            for stage in [self.candidates, *self.rerankers]:
                stage.write(folder)
            if FAST_SECTION in self.manifest:
                write_fast_files(self.fast_query_encoder, folder)
            body = {key: value for key, value in self.manifest.items()
                    if key not in ("format", "format_version", "written_at", "files")}
            body["xmr_version"] = __version__
            body["labels"] = {**self.manifest["labels"], "file": LABELS_FILE, "count": len(self.catalogue),
                              "has_images": self.catalogue.images is not None}
            return body

        self.manifest = write_index_folder(target, write_files)
        self.path = target
        return target

    def describe(self) -> dict[str, Any]:
        rerank = " + ".join(f"{stage.type_name} {stage.knob} {stage.depth}" for stage in self.rerankers)
        factory = getattr(self.candidates, "factory", "")
        structure = f"{self.candidates.type_name} {factory}".strip() + (f" + {rerank}" if rerank else "")
        described = {"kind": self.kind, "path": str(self.path) if self.path else None,
                     "encoder": self.manifest["encoder"], "representation": self.representation,
                     "structure": structure, "params": self.knobs(), "labels": len(self)}
        if self.fast_queries:
            described["query_encoder"] = self.manifest[FAST_SECTION]["encoder"]
        return described

    def info(self) -> dict[str, Any]:
        """What ``xmr info`` prints: the manifest plus live counts and each stage's structure and knobs."""
        return {
            "path": str(self.path) if self.path else None,
            "kind": self.kind,
            "labels": len(self),
            "entries": len(self.candidates),
            "stages": [{"role": stage.role, "structure": getattr(stage, "structure", stage.type_name),
                        **stage.info()} for stage in [self.candidates, *self.rerankers]],
            "search_parameters": self.knobs(),
            "memory_mapped": self.read_only,
        "encoder_asks_for_remote_code": asks_for_remote_code(self.manifest["encoder"]),
            "manifest": self.manifest,
        }


def asks_for_remote_code(config: Any) -> bool:
    """Whether an encoder config (or one nested in it, e.g. a fused encoder's text encoder) sets trust_remote_code."""
    if isinstance(config, Mapping):
        return config.get("trust_remote_code") is True or any(asks_for_remote_code(value) for value in config.values())
    return False


def check_representation(encoder: Encoder, manifest: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse an encoder whose representation differs from the index's (kind, size, metric)."""
    stored_spec = manifest["representation"]
    given_spec = encoder.representation_spec()
    for key in ("kind", "dim", "bits", "metric"):
        if key in stored_spec and stored_spec.get(key) != given_spec.get(key):
            raise IndexFolderError(f"{where}: index holds {key} {stored_spec[key]!r}, the encoder gives "
                                   f"{given_spec.get(key)!r}")


def check_encoder(encoder: Encoder, manifest: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse an encoder whose output would not match the index (representation, size, metric, model, prompts)."""
    check_representation(encoder, manifest, where)
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
    if out is not None:
        refuse_foreign(Path(out))  # before the expensive encoding, not after it
    if not isinstance(catalogue, LabelCatalogue):
        catalogue = LabelCatalogue.from_file(catalogue)
    encoder = load_encoder(encoder)
    labels = encoder.encode(catalogue.items(), "label")
    return build_index_from_embeddings(catalogue, labels, out, encoder, factory, search_params, train_size,
                                       recipe=recipe, max_memory=max_memory, target_recall=target_recall)


def _label_representation(vectors: Representation | np.ndarray, encoder: Encoder | None,
                          normalized: bool | None) -> Representation:
    spec = encoder.representation_spec() if encoder is not None else {"kind": DenseVectors.kind}
    labels = as_representation(vectors, spec)
    if isinstance(labels, DenseVectors):
        if normalized is None:
            normalized = encoder.normalize if encoder is not None else bool(
                np.allclose(np.linalg.norm(labels.values[:1000], axis=1), 1.0, atol=1e-3))
        labels.normalized = bool(normalized)
    if encoder is not None:
        labels.check_matches(spec, f"label {labels.kind} vs encoder {encoder.type_name!r}")
    return labels


def _resolve_recipe(kind: str, recipe: IndexRecipe | str | None, factory: str, n_labels: int, dim: int,
                    max_memory: int | str | None, target_recall: float) -> tuple[IndexRecipe, bool]:
    auto = isinstance(recipe, str) and recipe.lower() == "auto"
    if auto and kind == DenseVectors.kind:
        recipe = auto_recipe(n_labels, dim, parse_memory(max_memory), target_recall)
    elif auto:
        recipe = IndexRecipe("auto", "Flat", reason=f"{kind} representations: exact search")
        auto = False
    elif recipe is not None and not isinstance(recipe, IndexRecipe):
        recipe = load_recipe(recipe)
    return (recipe or IndexRecipe("factory", factory)).resolved(n_labels, dim), auto


def new_manifest(catalogue: LabelCatalogue, encoder: Encoder | None, spec: dict[str, Any],
                 recipe: IndexRecipe) -> dict[str, Any]:
    """The manifest of a label index just built over ``catalogue`` (internal ids 0..n-1); stages are added on save."""
    return {
        "kind": LabelIndex.kind,
        "xmr_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": encoder.identity() if encoder is not None else {"type": NO_ENCODER, **spec},
        "representation": spec,
        "labels": {"file": LABELS_FILE, "source": catalogue.source, "id_type": type(catalogue.ids[0]).__name__,
                   "count": len(catalogue), "has_images": catalogue.images is not None,
                   "next_internal_id": len(catalogue)},
        "recipe": recipe.to_manifest(),
    }


def build_index_from_embeddings(
    catalogue: LabelCatalogue,
    vectors: Representation | np.ndarray,
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
    """Index label representations computed elsewhere (row i = catalogue row i): a representation, or a float32
    array of dense vectors.

    Name the ``encoder`` that produced them to make text search work; without one the index answers
    ``search_embeddings`` only. ``normalized`` records whether dense vectors are unit length (default: the
    encoder's setting, else measured). The candidate stage is the default one for the representation (``faiss`` for
    dense vectors, ``faiss-binary`` for hash codes). With ``recipe="auto"`` the search knob is calibrated to reach
    ``target_recall`` recall@10 against exact search on ``calibration_queries`` (default: midpoints of random label
    pairs), and the choice, its reason and the calibration go into the manifest.
    """
    encoder = load_encoder(encoder) if encoder is not None else None
    labels = _label_representation(vectors, encoder, normalized)
    if len(labels) != len(catalogue):
        raise XMRError(f"{len(labels)} label rows for {len(catalogue)} labels")
    spec = labels.spec()
    size = int(spec.get("dim", spec.get("bits", 0)))
    recipe, auto = _resolve_recipe(labels.kind, recipe, factory, len(catalogue), size, max_memory, target_recall)
    internal_ids = np.arange(len(catalogue), dtype=np.int64)
    candidates = stage_for(CandidateStage, labels.kind).build(labels, internal_ids, recipe.factory, recipe.build,
                                                        train_size)
    knobs = {**recipe.search, **(search_params or {})}
    if knobs:
        candidates.set_knobs(knobs)
    rerankers = [stage_for(RerankStage, labels.kind).build(labels, recipe.rerank)] if recipe.rerank else []
    manifest = new_manifest(catalogue, encoder, spec, recipe)
    index = LabelIndex(catalogue, internal_ids, candidates, rerankers, manifest, encoder=encoder)
    index._record_stages()
    if auto:
        from xmr.index.calibration import calibrate

        calibration = manifest["recipe"]["calibration"] = calibrate(index, labels, target_recall,
                                                                    calibration_queries)
        if "knob" in calibration:  # the recipe's search knobs are the ones the index serves with
            manifest["recipe"]["search"] = {**manifest["recipe"]["search"], calibration["knob"]: calibration["value"]}
    if out is not None:
        index.save(out)
    return index


def load_index(path: str | Path, encoder: Encoder | str | Mapping[str, Any] | None = None,
               verify: bool = True, mmap: bool = False, trust_remote_code: bool = False,
               fast_queries: bool = False) -> LabelIndex:
    """Open an index folder (format 1 or 2). Checksums are verified (``verify=False`` checks sizes only, for very
    large folders).

    Passing ``encoder`` checks it against the one recorded in the manifest and refuses a mismatch. ``mmap=True``
    maps the FAISS data instead of reading it (FAISS ``IO_FLAG_MMAP``): a large index opens in about the time it
    takes to read its labels, and processes share its pages; it is then read-only. Stored re-rank vectors are
    always memory-mapped. An encoder config in the folder that sets ``trust_remote_code`` is refused unless the
    caller passes ``trust_remote_code=True``: what a folder says never decides whether code runs.
    ``fast_queries=True`` encodes queries with the folder's fast query encoder (``xmr.index.fast_queries``).
    """
    path = Path(path)
    recover(path)  # what a killed writer of this folder left beside it
    manifest = read_manifest(path)
    if manifest.get("kind", LabelIndex.kind) != LabelIndex.kind:
        raise IndexFolderError(f"{path}: a {manifest['kind']!r} folder, not a label index; open it with "
                               "xmr.load_predictor")
    verify_files(path, manifest, checksums=verify)
    spec = manifest.get("representation", {})
    if spec.get("kind") not in REPRESENTATIONS or REPRESENTATIONS[spec["kind"]].metric != spec.get("metric"):
        raise IndexFolderError(f"{path}: unknown representation or metric in manifest: {spec!r}")
    try:
        table = pq.read_table(path / manifest["labels"].get("file", LABELS_FILE))
    except (OSError, pa.ArrowException) as error:
        raise IndexFolderError(f"{path}: cannot read the label store: {error}") from None
    sections = manifest.get("stages", [])
    if not sections or sections[0].get("role") != "candidates" or any(s.get("role") != "rerank" for s in sections[1:]):
        raise IndexFolderError(f"{path}: the manifest needs one candidate stage followed by re-rank stages")
    stages = [stage_class(section, path).open(path, section, spec, mmap) for section in sections]
    candidates, rerankers = stages[0], stages[1:]
    if len(candidates) != table.num_rows or table.num_rows != manifest["labels"]["count"]:
        raise IndexFolderError(f"{path}: {len(candidates)} indexed entries, {table.num_rows} label rows, manifest "
                               f"says {manifest['labels']['count']}")
    for stage in rerankers:
        if len(stage) != table.num_rows:
            raise IndexFolderError(f"{path}: re-rank stage {stage.type_name} has {len(stage)} rows for "
                                   f"{table.num_rows} labels")
    internal_ids = table.column(INTERNAL_ID).to_numpy()
    catalogue = LabelCatalogue.from_arrow(table.drop_columns([INTERNAL_ID]), source=str(path / LABELS_FILE))
    index = LabelIndex(catalogue, internal_ids, candidates, rerankers, manifest, path=path, read_only=mmap,
                       trust_remote_code=trust_remote_code)
    if encoder is not None:
        encoder = load_encoder(encoder)
        check_encoder(encoder, manifest, path)
        index._encoder = encoder
    return index.use_fast_queries(fast_queries)
