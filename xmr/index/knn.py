"""Instance-kNN channel: rank labels by the similarity-weighted votes of the nearest training queries.

kNN-based XMC (e.g. the instance-kNN baselines of Jain et al. and the kNN heads of SiameseXML / DEXA /
"Extreme classification with kNN" style rankers): a query's labels are predicted from the labels of its ``m``
nearest training instances in the encoder's space, score(label) = sum over neighbours j holding it of
``max(s_j, 0) ** power`` / sum over all m neighbours of ``max(s_j, 0) ** power`` (a vote share in [0, 1]), so a
label every close neighbour carries scores near 1 whatever the query. It needs no training beyond encoding the
training split and serves every label that has training data, including the one-instance tail that learned label
vectors underfit.

Folder (``kind: "knn-index"``; the same predictor API as a label index)::

    manifest.json             encoder, representation, knobs (m, power), counts, checksums
    labels.parquet            the label catalogue
    instances.faiss           the training queries' vectors (any FAISS factory; ids = instance rows)
    instance_labels.parquet   column ``labels``: each training instance's labels as catalogue rows
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, load_encoder
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.index import faiss_ops
from xmr.index.folder import open_folder, write_index_folder
from xmr.index.label_index import LABELS_FILE, check_encoder
from xmr.predictor import EncodedPredictor
from xmr.representations import DenseVectors, Representation, as_representation
from xmr.search import SearchResult

INSTANCES_FILE = "instances.faiss"
INSTANCE_LABELS_FILE = "instance_labels.parquet"
KIND = "knn-index"


def sparse_top_k(scores: sp.csr_array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns and values per row of a sparse score matrix, best first; absent slots are -1 / NaN."""
    scores = sp.csr_array(scores)
    scores.sum_duplicates()
    n = scores.shape[0]
    counts = np.diff(scores.indptr)
    width = max(int(counts.max(initial=0)), k)
    slot = np.arange(scores.nnz) - np.repeat(scores.indptr[:-1], counts)
    columns = np.full((n, width), -1, dtype=np.int64)
    values = np.full((n, width), -np.inf, dtype=np.float32)
    owner = np.repeat(np.arange(n), counts)
    columns[owner, slot] = scores.indices
    values[owner, slot] = scores.data
    order = np.lexsort((np.where(columns >= 0, columns, np.iinfo(np.int64).max), -values), axis=1)[:, :k]
    columns, values = np.take_along_axis(columns, order, 1), np.take_along_axis(values, order, 1)
    values[columns < 0] = np.nan
    return columns, values


class InstanceKNNIndex(EncodedPredictor):
    """Labels of the nearest training queries, vote-weighted (see the module docstring). Knobs per call: ``m``
    (neighbours) and ``power`` (how sharply closer neighbours count more)."""

    kind = KIND

    def __init__(self, catalogue: LabelCatalogue, instances: faiss.Index, instance_labels: sp.csr_array,
                 manifest: dict[str, Any], path: Path | None = None, encoder: Encoder | None = None) -> None:
        if instance_labels.shape != (instances.ntotal, len(catalogue)):
            raise IndexFolderError(f"{path or 'knn index'}: {instance_labels.shape} instance labels for "
                                   f"{instances.ntotal} instances and {len(catalogue)} labels")
        self.catalogue = catalogue
        self.internal_ids = np.arange(len(catalogue), dtype=np.int64)
        self.instances = instances
        self.instance_labels = sp.csr_array(instance_labels, dtype=np.float32)
        self.manifest = manifest
        self.path = path
        self._encoder = encoder

    @property
    def representation(self) -> dict[str, Any]:
        return self.manifest["representation"]

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            encoder = load_encoder(self.manifest["encoder"])
            check_encoder(encoder, self.manifest, self.path)
            self._encoder = encoder
        return self._encoder

    def knobs(self) -> dict[str, float]:
        return dict(self.manifest["knobs"])

    def predict_encoded(self, queries: Representation | np.ndarray, k: int = 10, **knobs: Any) -> SearchResult:
        """Top-``k`` labels by neighbour votes; knobs ``m`` and ``power`` override the manifest's."""
        settings = {**self.knobs(), **knobs}
        unknown = set(settings) - {"m", "power"}
        if unknown:
            raise InvalidArgument(f"unknown knob(s) {sorted(unknown)} for a knn index; it has m, power")
        m, power = int(settings["m"]), float(settings["power"])
        if m < 1 or power < 0:
            raise InvalidArgument(f"knn knobs need m >= 1 and power >= 0, got m={m}, power={power}")
        vectors = as_representation(queries, self.representation)
        vectors.check_matches(self.representation, "query representation")
        k = min(int(k), len(self.catalogue))
        neighbours, similarity = faiss_ops.search(self.instances, vectors.values, min(m, self.instances.ntotal), {})
        weights = np.where(neighbours >= 0, np.maximum(similarity, 0.0), 0.0) ** power
        weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
        n = len(neighbours)
        votes = sp.csr_array((weights.ravel().astype(np.float32), (np.repeat(np.arange(n), neighbours.shape[1]),
                              np.where(neighbours >= 0, neighbours, 0).ravel())),
                             shape=(n, self.instances.ntotal)) @ self.instance_labels
        rows, scores = sparse_top_k(votes, k)
        return SearchResult(ids=rows, scores=scores, rows=rows, catalogue=self.catalogue, score="neighbour votes")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": self.manifest["encoder"],
                "representation": self.representation,
                "structure": f"{self.instances.ntotal} training queries, {faiss_ops.describe(self.instances)}",
                "params": self.knobs(), "labels": len(self)}

    def save(self, path: str | Path) -> Path:
        """Write the folder atomically (see the module docstring)."""
        path = Path(path)
        labels = self.instance_labels

        def write_files(folder: Path) -> dict[str, Any]:
            pq.write_table(self.catalogue.to_arrow(), folder / LABELS_FILE)
            faiss.write_index(self.instances, str(folder / INSTANCES_FILE))
            lists = pa.ListArray.from_arrays(pa.array(labels.indptr.astype(np.int64)),
                                             pa.array(labels.indices.astype(np.int64)))
            pq.write_table(pa.table({"labels": lists}), folder / INSTANCE_LABELS_FILE)
            body = {key: value for key, value in self.manifest.items()
                    if key not in ("format", "format_version", "written_at", "files", "manifest_sha256")}
            return {**body, "xmr_version": __version__, "instances": int(self.instances.ntotal)}

        self.manifest = write_index_folder(path, write_files)
        self.path = path
        return path


def build_knn_index(catalogue: LabelCatalogue, vectors: np.ndarray, instance_rows: Sequence[np.ndarray],
                    out: str | Path | None = None, encoder: Encoder | None = None, m: int = 50,
                    power: float = 1.0, factory: str = "Flat") -> InstanceKNNIndex:
    """An instance-kNN index over training query ``vectors`` (row j: instance j) whose labels are ``instance_rows``
    (catalogue rows; rows outside the catalogue are dropped). ``factory``: any FAISS factory (Flat: exact)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) != len(instance_rows) or not len(vectors):
        raise InvalidArgument(f"{len(vectors)} instance vectors for {len(instance_rows)} label lists (need >= 1)")
    n_labels = len(catalogue)
    kept = [np.asarray(rows, dtype=np.int64)[(np.asarray(rows) >= 0) & (np.asarray(rows) < n_labels)]
            for rows in instance_rows]
    indptr = np.concatenate([[0], np.cumsum([len(rows) for rows in kept])])
    indices = np.concatenate(kept) if indptr[-1] else np.zeros(0, dtype=np.int64)
    labels = sp.csr_array((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(kept), n_labels))
    labels.sum_duplicates()
    labels.data[:] = 1.0
    spec = DenseVectors(vectors, normalized=encoder.normalize if encoder is not None else True).spec()
    index = faiss_ops.create(vectors.shape[1], factory, spec["metric"])
    faiss_ops.train(index, vectors)
    faiss_ops.add(index, vectors, np.arange(len(vectors), dtype=np.int64))
    manifest = {"kind": KIND, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "encoder": encoder.identity() if encoder is not None else {"type": "none", **spec},
                "representation": spec, "labels": {"file": LABELS_FILE, "count": n_labels},
                "knobs": {"m": int(m), "power": float(power)}, "factory": factory}
    knn = InstanceKNNIndex(catalogue, index, labels, manifest, encoder=encoder)
    if out is not None:
        knn.save(out)
    return knn


def load_knn_index(path: str | Path, encoder: Encoder | None = None, verify: bool = True,
                   **_options: Any) -> InstanceKNNIndex:
    """Open a folder written by :meth:`InstanceKNNIndex.save` (checksums verified unless ``verify=False``)."""
    path = Path(path)
    manifest = open_folder(path, KIND, verify)
    try:
        catalogue = LabelCatalogue.from_arrow(pq.read_table(path / LABELS_FILE), source=str(path / LABELS_FILE))
        lists = pq.read_table(path / INSTANCE_LABELS_FILE).column("labels").combine_chunks()
        instances = faiss.read_index(str(path / INSTANCES_FILE))
    except (OSError, RuntimeError, KeyError, pa.ArrowException) as error:
        raise IndexFolderError(f"{path}: cannot read the knn index: {error}") from None
    indptr, indices = lists.offsets.to_numpy(), lists.values.to_numpy()
    labels = sp.csr_array((np.ones(len(indices), dtype=np.float32), indices, indptr),
                          shape=(len(indptr) - 1, len(catalogue)))
    knn = InstanceKNNIndex(catalogue, instances, labels, manifest, path=path)
    if encoder is not None:
        check_encoder(encoder, manifest, path)
        knn._encoder = encoder
    return knn
