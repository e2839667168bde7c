"""Thin helpers around a raw FAISS index: create from a factory string, train, add with ids, tune, search, remove.

Every index xmr builds stores explicit int64 ids (IVF natively, anything else inside ``IndexIDMap2``), so label
ids stay stable when labels are added or removed. A factory ending in ``,RFlat`` or ``,Refine(...)`` (FAISS
``IndexRefine``: compressed candidates re-scored in C++ from a second, finer copy of the vectors) has the knob
``k_factor_rf``: the candidates re-scored per result.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

from xmr.errors import UnsupportedOperation, XMRError
from xmr.index import huge_pages

METRICS = {"inner_product": faiss.METRIC_INNER_PRODUCT}
DEFAULT_TRAIN_SIZE = 200_000
_tuning_lock = threading.Lock()
PREPARED_LIMIT = 64  # distinct knob settings whose per-call parameters a caller keeps
CLUSTER_LAYOUT = "cluster_layout"  # build knob: labels per k-means cluster whose vectors a graph stores together
MIN_CLUSTER = 39  # FAISS k-means wants at least this many points per centroid
MAX_LAYOUT_CLUSTERS = 1024  # k-means assignment costs n x clusters x dim: beyond ~1M labels the clusters grow instead


def create(dim: int, factory: str, metric: str) -> faiss.Index:
    """An empty index for ``factory`` (any ``faiss.index_factory`` string) that accepts explicit ids."""
    if metric not in METRICS:
        raise XMRError(f"unknown metric {metric!r}; known: {sorted(METRICS)}")
    try:
        index = faiss.index_factory(dim, factory, METRICS[metric])
    except RuntimeError as error:
        raise XMRError(f"invalid FAISS factory string {factory!r}: {_faiss_message(error)}") from None
    if isinstance(index, faiss.IndexIDMap) or (
            faiss.try_extract_index_ivf(index) is not None and not isinstance(index, faiss.IndexRefine)):
        return index  # IVF keeps ids itself; IndexRefine addresses its refine copy by position, so it gets a map
    return faiss.IndexIDMap2(index)


def set_build_parameters(index: faiss.Index, params: dict[str, int]) -> None:
    """Build-time knobs of HNSW graphs set before vectors are added: ``efConstruction``, and ``cluster_layout``
    (checked here, applied after the add by :func:`store_by_cluster`)."""
    graphs = [layer for layer in _layers(index) if hasattr(layer, "hnsw")]
    for name, value in params.items():
        if name not in ("efConstruction", CLUSTER_LAYOUT) or not graphs:
            raise XMRError(f"build parameter {name!r} does not apply to {describe(index)}; it has "
                           f"{['efConstruction', CLUSTER_LAYOUT] if graphs else []}")
        if name == CLUSTER_LAYOUT and int(value) < MIN_CLUSTER:
            raise XMRError(f"build parameter {CLUSTER_LAYOUT} (labels per k-means cluster) must be at least "
                           f"{MIN_CLUSTER}, got {value}")
        for layer in graphs if name == "efConstruction" else ():
            layer.hnsw.efConstruction = int(value)


def store_by_cluster(index: faiss.Index, vectors: np.ndarray, labels_per_cluster: int, seed: int = 0) -> None:
    """Reorder a built graph index so that the vectors of each k-means cluster (about ``labels_per_cluster`` labels,
    at most ``MAX_LAYOUT_CLUSTERS`` clusters) lie next to each other in memory, graph and answers unchanged.

    A graph search walks between near neighbours; stored in insertion order they sit at random places, stored by
    cluster a walk stays within few pages and cache lines (graph reordering for cache-efficient search, Coleman
    et al., NeurIPS 2022). FAISS's ``permute_entries`` moves the graph's vectors and links; the id map follows, so
    every search returns what it returned before. On 723,485 PyPI vectors (HNSW32, efSearch 32-64) it took the
    single-query p50 to 0.93-0.96x and batch QPS to 1.01-1.08x, on top of huge pages 0.96-0.98x and 1.03-1.04x; adding
    the vectors in cluster order instead did not help, since FAISS shuffles its insertion order
    (``eval/bench/index-layout/README.md``).
    """
    layers = _layers(index)
    if not isinstance(layers[0], faiss.IndexIDMap2) or not any(isinstance(layer, faiss.IndexHNSW)
                                                               for layer in layers):
        raise XMRError(f"{CLUSTER_LAYOUT} reorders an HNSW graph under an id map, not {describe(index)}")
    clusters = min(len(vectors) // labels_per_cluster, MAX_LAYOUT_CLUSTERS)
    if clusters < 2:
        return
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    kmeans = faiss.Kmeans(vectors.shape[1], clusters, niter=10, seed=seed, spherical=True,
                          max_points_per_centroid=100)
    kmeans.train(vectors)
    _, assignment = kmeans.index.search(vectors, 1)
    order = np.argsort(assignment.ravel(), kind="stable").astype(np.int64)
    for layer in layers[1:]:
        if isinstance(layer, faiss.IndexRefine):
            faiss.downcast_index(layer.refine_index).permute_entries(order)
        if isinstance(layer, faiss.IndexHNSW):
            layer.permute_entries(order)  # its storage with it
    faiss.copy_array_to_vector(faiss.vector_to_array(layers[0].id_map)[order], layers[0].id_map)
    layers[0].construct_rev_map()


def use_huge_pages(index: faiss.Index) -> int:
    """Back the index's randomly read arrays (stored vectors and codes, graph links) with huge pages
    (:mod:`xmr.index.huge_pages`); arrays FAISS does not own (a memory-mapped file) stay as they are. Returns the
    bytes now in huge pages."""
    arrays = []
    for layer in _layers(index):
        for part in (layer, getattr(layer, "storage", None), getattr(layer, "refine_index", None)):
            part = faiss.downcast_index(part) if isinstance(part, faiss.Index) else None
            if isinstance(part, faiss.IndexFlatCodes):
                arrays.append(part.codes)
        if isinstance(layer, faiss.IndexHNSW):
            arrays.append(layer.hnsw.neighbors)
    return sum(huge_pages.advise(int(array.data()), array.byte_size()) for array in arrays
               if array.is_owned and array.size())


def _layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and every index it wraps, outermost first, downcast to their concrete classes."""
    layers = []
    while index is not None:
        index = faiss.downcast_index(index)
        layers.append(index)
        index = _inner(index)
    return layers


def flat_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray] | None:
    """``(vectors, ids)`` of an exact index (Flat inside an id map), or None for any other structure."""
    layers = _layers(index)
    if len(layers) != 2 or not isinstance(layers[0], faiss.IndexIDMap) or type(layers[1]) not in (
            faiss.IndexFlat, faiss.IndexFlatIP):
        return None
    vectors = faiss.rev_swig_ptr(layers[1].get_xb(), layers[1].ntotal * layers[1].d).reshape(-1, layers[1].d)
    return vectors, faiss.vector_to_array(layers[0].id_map)


def training_rows(rows: int, train_size: int = DEFAULT_TRAIN_SIZE, seed: int = 0) -> np.ndarray | None:
    """The sorted rows :func:`train` samples from ``rows`` vectors (None: all of them, in order); a sharded build
    gathers the same rows from its shards, so its quantiser is the one a single-process build trains."""
    if rows <= train_size:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, size=train_size, replace=False))


def train(index: faiss.Index, vectors: np.ndarray, train_size: int = DEFAULT_TRAIN_SIZE, seed: int = 0) -> int:
    """Train ``index`` (IVF, PQ, SQ, ...) on a random sample of at most ``train_size`` rows; returns rows used."""
    if index.is_trained:
        return 0
    chosen = training_rows(len(vectors), train_size, seed)
    sample = vectors if chosen is None else vectors[chosen]
    try:
        index.train(sample)
    except RuntimeError as error:
        raise XMRError(f"training the FAISS index on {len(sample)} vectors failed: {_faiss_message(error)}") from None
    return len(sample)


def add(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add vectors under the given int64 ids."""
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def remove(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove ids; returns how many went. Raises UnsupportedOperation where FAISS cannot remove (e.g. HNSW)."""
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))
    try:
        return int(index.remove_ids(selector))
    except RuntimeError as error:
        raise UnsupportedOperation(
            f"this FAISS index ({describe(index)}) cannot remove vectors: {_faiss_message(error)}; "
            "rebuild the index without those labels instead"
        ) from None


def describe(index: faiss.Index) -> str:
    """Class names from the outer wrapper to the innermost index, e.g. ``IndexIDMap2>IndexHNSWFlat``."""
    return ">".join(type(layer).__name__ for layer in _layers(index))


def _inner(index: faiss.Index) -> faiss.Index | None:
    for attribute in ("index", "base_index"):
        inner = getattr(index, attribute, None)
        if isinstance(inner, faiss.Index):
            return inner
    return None


def search_parameters(index: faiss.Index) -> dict[str, int]:
    """The query-time knobs this index has, with their current values (``efSearch``, ``nprobe``, ...)."""
    knobs: dict[str, int] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        knobs["nprobe"] = int(ivf.nprobe)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):
            knobs["quantizer_efSearch"] = int(quantizer.hnsw.efSearch)
    for layer in _layers(index):
        if hasattr(layer, "hnsw"):
            knobs["efSearch"] = int(layer.hnsw.efSearch)
        if isinstance(layer, faiss.IndexRefine):
            knobs["k_factor_rf"] = int(layer.k_factor)
    return knobs


def set_search_parameters(index: faiss.Index, params: dict[str, int]) -> None:
    """Set query-time knobs; a knob this index does not have is an error naming the knobs it has."""
    known = search_parameters(index)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise XMRError(f"search parameter(s) {unknown} do not apply to {describe(index)}; it has {sorted(known)}")
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if int(value) < 1:
            raise XMRError(f"search parameter {name} must be >= 1, got {value}")
        space.set_index_parameter(index, name, int(value))


def search(index: faiss.Index, queries: np.ndarray, k: int, params: dict[str, int],
           prepared: dict[tuple, faiss.SearchParameters | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (ids, scores) with the given knobs for this call only; missing results are id -1, score -inf.

    Knobs travel as FAISS per-call ``SearchParameters`` (no shared state, no lock); combinations FAISS cannot
    express that way are set on the index under a lock and restored afterwards. ``prepared`` is the caller's
    memo of those parameters per knob setting: building them walks the index's layers through SWIG, which on one
    query costs about half of an HNSW search (measured in ``scripts/bench_index.py``'s single-query p50); the
    caller clears it when the index's own knob values change, since unset knobs are taken from them.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    per_call = _prepared_parameters(index, params, prepared) if params else None
    if not params or per_call is not None:
        scores, ids = index.search(queries, k, params=per_call)
    else:
        with _tuning_lock:  # knobs live on the shared index: restore them before anyone else searches with knobs
            defaults = search_parameters(index)
            set_search_parameters(index, params)
            try:
                scores, ids = index.search(queries, k)
            finally:
                set_search_parameters(index, defaults)
    scores[ids < 0] = -np.inf
    return ids, scores


def _prepared_parameters(index: faiss.Index, params: dict[str, int],
                         prepared: dict[tuple, faiss.SearchParameters | None] | None) -> faiss.SearchParameters | None:
    """``_per_call_parameters``, looked up in (and added to) ``prepared`` when the caller keeps one."""
    if prepared is None:
        return _per_call_parameters(index, params)
    key = tuple(sorted(params.items()))
    if key not in prepared:
        if len(prepared) >= PREPARED_LIMIT:  # a sweep over many settings must not grow it without bound
            prepared.clear()
        prepared[key] = _per_call_parameters(index, params)
    return prepared[key]


def _per_call_parameters(index: faiss.Index, params: dict[str, int]) -> faiss.SearchParameters | None:
    """``SearchParametersIVF(nprobe)`` or ``SearchParametersHNSW(efSearch)`` for a plain IVF or HNSW index, inside
    ``IndexRefineSearchParameters(k_factor)`` when the index refines (the unset knobs keep the index's values)."""
    known = search_parameters(index)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise XMRError(f"search parameter(s) {unknown} do not apply to {describe(index)}; it has {sorted(known)}")
    if any(int(value) < 1 for value in params.values()):
        raise XMRError(f"search parameters must be >= 1, got {params}")
    values = known | {name: int(value) for name, value in params.items()}
    base = set(known) - {"k_factor_rf"}
    if base == {"nprobe"}:
        inner = faiss.SearchParametersIVF(nprobe=values["nprobe"])
    elif base == {"efSearch"}:
        inner = faiss.SearchParametersHNSW(efSearch=values["efSearch"])
    else:
        return None
    if "k_factor_rf" not in known:
        return inner
    outer = faiss.IndexRefineSearchParameters(k_factor=float(values["k_factor_rf"]), base_index_params=inner)
    outer.referenced_inner = inner  # SWIG keeps a raw pointer: hold the inner parameters as long as the outer
    return outer


def _faiss_message(error: RuntimeError) -> str:
    """FAISS errors carry a C++ location prefix; keep the human part."""
    text = str(error).strip()
    return text.split(": ", 2)[-1] if text.startswith("Error in") else text
