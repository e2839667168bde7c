"""Sparse lexical channel: TF-IDF label prototypes (Rocchio one-vs-rest) plus label-text matching.

Each label is one sparse TF-IDF vector: the unit-length mean of its training queries' TF-IDF vectors (the Rocchio
prototype, a linear one-vs-rest scorer with no fitting) plus ``text_weight`` times its own label text's TF-IDF
vector, renormalised; a label without training data is its text alone. A query scores ``cosine(query, prototype)``.
It catches exact rare words (product codes, names, technical terms) that a small dense encoder blurs, which is where
linear XMC on TF-IDF is strong. Vectorising is scikit-learn's ``TfidfVectorizer`` (sublinear tf, 1-2 grams,
``min_df`` 2: the peers' features), rebuilt from the stored vocabulary and idf.

Folder (``kind: "lexical-index"``)::

    manifest.json           vectorizer settings, text_weight, counts, checksums
    labels.parquet          the label catalogue
    vocabulary.parquet      columns ``term``, ``idf`` (feature j = row j)
    prototypes.safetensors  the ``(labels, features)`` CSR matrix: ``indptr``, ``indices``, ``data``
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders.base import Item, item_texts
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.index.folder import open_folder, write_index_folder
from xmr.index.label_index import LABELS_FILE
from xmr.predictor import Predictor, as_items
from xmr.search import SearchResult

KIND = "lexical-index"
VOCABULARY_FILE = "vocabulary.parquet"
PROTOTYPES_FILE = "prototypes.safetensors"
VECTORIZER = {"sublinear_tf": True, "ngram_range": [1, 2], "min_df": 2}
BATCH = 256  # queries scored per dense (batch, labels) block: memory stays bounded at any label count


def make_vectorizer(settings: dict[str, Any]) -> TfidfVectorizer:
    return TfidfVectorizer(sublinear_tf=settings["sublinear_tf"], ngram_range=tuple(settings["ngram_range"]),
                           min_df=settings["min_df"], dtype=np.float32)


class LexicalIndex(Predictor):
    """Cosine between a query's TF-IDF vector and each label's prototype (see the module docstring)."""

    kind = KIND

    def __init__(self, catalogue: LabelCatalogue, vectorizer: TfidfVectorizer, prototypes: sp.csr_array,
                 manifest: dict[str, Any], path: Path | None = None) -> None:
        if prototypes.shape != (len(catalogue), len(vectorizer.vocabulary_)):
            raise IndexFolderError(f"{path or 'lexical index'}: prototypes {prototypes.shape} for "
                                   f"{len(catalogue)} labels and {len(vectorizer.vocabulary_)} features")
        self.catalogue = catalogue
        self.vectorizer = vectorizer
        self.prototypes = sp.csr_array(prototypes)
        self.transposed = sp.csc_array(self.prototypes.T)
        self.manifest = manifest
        self.path = path

    def predict(self, items: Sequence[Item] | Item, k: int = 10, **options: Any) -> SearchResult:
        if options:
            raise InvalidArgument(f"a lexical index has no knobs, got {sorted(options)}")
        texts = item_texts(as_items(items), KIND)
        k = min(int(k), len(self.catalogue))
        queries = sp.csr_array(self.vectorizer.transform(texts))
        rows = np.full((len(texts), k), -1, dtype=np.int64)
        scores = np.full((len(texts), k), np.nan, dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            block = (queries[start:start + BATCH] @ self.transposed).toarray()
            top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else np.tile(
                np.arange(block.shape[1]), (len(block), 1))
            values = np.take_along_axis(block, top, 1)
            order = np.lexsort((top, -values), axis=1)  # ties: lower row first, like the other channels
            rows[start:start + BATCH] = np.take_along_axis(top, order, 1)
            scores[start:start + BATCH] = np.take_along_axis(values, order, 1)
        return SearchResult(ids=rows, scores=scores, rows=rows, catalogue=self.catalogue, score="tf-idf cosine")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": None,
                "structure": f"TF-IDF prototypes, {self.prototypes.shape[1]} features",
                "params": {"text_weight": self.manifest["text_weight"]}, "labels": len(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.__getitem__)

        def write_files(folder: Path) -> dict[str, Any]:
            pq.write_table(self.catalogue.to_arrow(), folder / LABELS_FILE)
            pq.write_table(pa.table({"term": terms, "idf": self.vectorizer.idf_.astype(np.float32)}),
                           folder / VOCABULARY_FILE)
            save_file({"indptr": self.prototypes.indptr.astype(np.int64),
                       "indices": self.prototypes.indices.astype(np.int64),
                       "data": self.prototypes.data.astype(np.float32)}, folder / PROTOTYPES_FILE)
            body = {key: value for key, value in self.manifest.items()
                    if key not in ("format", "format_version", "written_at", "files", "manifest_sha256")}
            return {**body, "xmr_version": __version__}

        self.manifest = write_index_folder(path, write_files)
        self.path = path
        return path


def build_lexical_index(catalogue: LabelCatalogue, texts: Sequence[str], instance_rows: Sequence[np.ndarray],
                        out: str | Path | None = None, text_weight: float = 0.5) -> LexicalIndex:
    """Fit TF-IDF on the training ``texts`` and the label texts, and build each label's prototype from the
    training instances holding it (``instance_rows``: catalogue rows per text) plus its own text."""
    if len(texts) != len(instance_rows):
        raise InvalidArgument(f"{len(texts)} training texts for {len(instance_rows)} label lists")
    if text_weight < 0:
        raise InvalidArgument(f"text_weight must be at least 0, got {text_weight}")
    vectorizer = make_vectorizer(VECTORIZER)
    vectorizer.fit([*texts, *catalogue.texts])
    documents = normalize(vectorizer.transform(texts))
    n_labels = len(catalogue)
    owners = np.repeat(np.arange(len(instance_rows)), [len(rows) for rows in instance_rows])
    columns = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in instance_rows]) if len(owners) else \
        np.zeros(0, dtype=np.int64)
    keep = (columns >= 0) & (columns < n_labels)
    membership = sp.csr_array((np.ones(int(keep.sum()), dtype=np.float32), (columns[keep], owners[keep])),
                              shape=(n_labels, len(texts)))
    prototypes = normalize(sp.csr_array(membership @ documents)) + text_weight * normalize(
        vectorizer.transform(list(catalogue.texts)))
    manifest = {"kind": KIND, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "encoder": None, "vectorizer": VECTORIZER, "text_weight": float(text_weight),
                "labels": {"file": LABELS_FILE, "count": n_labels}, "training_texts": len(texts)}
    index = LexicalIndex(catalogue, vectorizer, sp.csr_array(normalize(prototypes)).astype(np.float32), manifest)
    if out is not None:
        index.save(out)
    return index


def load_lexical_index(path: str | Path, verify: bool = True, **_options: Any) -> LexicalIndex:
    """Open a folder written by :meth:`LexicalIndex.save`."""
    path = Path(path)
    manifest = open_folder(path, KIND, verify)
    try:
        catalogue = LabelCatalogue.from_arrow(pq.read_table(path / LABELS_FILE), source=str(path / LABELS_FILE))
        vocabulary = pq.read_table(path / VOCABULARY_FILE)
        arrays = load_file(path / PROTOTYPES_FILE)
    except (OSError, KeyError, ValueError, pa.ArrowException) as error:
        raise IndexFolderError(f"{path}: cannot read the lexical index: {error}") from None
    terms = vocabulary.column("term").to_pylist()
    vectorizer = make_vectorizer(manifest["vectorizer"])
    vectorizer.vocabulary_ = {term: position for position, term in enumerate(terms)}
    vectorizer.idf_ = vocabulary.column("idf").to_numpy().astype(np.float32)
    prototypes = sp.csr_array((arrays["data"], arrays["indices"], arrays["indptr"]), shape=(len(catalogue), len(terms)))
    return LexicalIndex(catalogue, vectorizer, prototypes, manifest, path=path)
