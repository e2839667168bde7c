"""Predictor kind ``classifier-head``: a frozen encoder (FusionSent's fused body) and a multi-label linear head.

``predict`` encodes the queries, scores every label by its head probability (``sigmoid(w_l . x + b_l)``), returns
the top ``k`` labels (P@k, PSP@k) and each query's label set: the labels at or above their tuned threshold (the top
label when none is, with ``at_least_one``), for micro/macro/example F1 in :func:`xmr.evaluation.evaluate`.

The folder (written atomically, checksummed, opened by :func:`xmr.load_predictor`)::

    manifest.json      kind "classifier-head", encoder identity, representation, labels, head settings,
                       files (the top-level files) and encoder_files (every file of encoder/), with SHA-256
    labels.parquet     the label catalogue
    head.safetensors   weights (L, d), bias (L,), thresholds (L,)
    encoder/           an ordinary xmr encoder folder (``xmr.load_encoder`` opens it, ``xmr build`` indexes with it)

:func:`head_label_index` serves the head's weight rows as label vectors in an ordinary label index over the same
encoder (ranking by ``w_l . x``, i.e. without the bias).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from xmr._version import __version__
from xmr.catalogue import LabelCatalogue
from xmr.encoders import Encoder, encoder_config, load_encoder
from xmr.errors import IndexFolderError, InvalidArgument
from xmr.fusionsent.head import label_sets, probabilities
from xmr.index.folder import read_manifest, verify_files, write_index_folder
from xmr.index.label_index import asks_for_remote_code
from xmr.io.atomic import recover, sha256_file
from xmr.predictor import EncodedPredictor
from xmr.representations import DenseVectors, Representation
from xmr.search import SearchResult

KIND = "classifier-head"
LABELS_FILE = "labels.parquet"
HEAD_FILE = "head.safetensors"
ENCODER_FOLDER = "encoder"


class ClassifierHead(EncodedPredictor):
    """A frozen dense encoder plus per-label logistic weights and thresholds (see the module docstring)."""

    kind = KIND

    def __init__(self, catalogue: LabelCatalogue, encoder: Encoder, weights: np.ndarray, bias: np.ndarray,
                 thresholds: np.ndarray, at_least_one: bool = True, path: Path | None = None,
                 info: dict[str, Any] | None = None) -> None:
        n_labels = len(catalogue)
        if weights.shape != (n_labels, encoder.dim) or bias.shape != (n_labels,) or thresholds.shape != (n_labels,):
            raise InvalidArgument(f"classifier head: weights {weights.shape}, bias {bias.shape}, thresholds "
                                  f"{thresholds.shape} do not fit {n_labels} labels of a {encoder.dim}-d encoder")
        self.catalogue, self.encoder = catalogue, encoder
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.thresholds = np.ascontiguousarray(thresholds, dtype=np.float32)
        self.at_least_one = at_least_one
        self.internal_ids = np.arange(n_labels, dtype=np.int64)
        self.path = path
        self.info = dict(info or {})

    def probabilities(self, queries: Representation | np.ndarray) -> np.ndarray:
        """Per-label probabilities ``(n, L)`` of encoded queries."""
        vectors = queries.values if isinstance(queries, DenseVectors) else np.asarray(queries, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.encoder.dim:
            raise InvalidArgument(f"classifier head: queries of shape {vectors.shape}, expected "
                                  f"(n, {self.encoder.dim})")
        return probabilities(vectors, self.weights, self.bias)

    def predict_encoded(self, queries: Representation | np.ndarray, k: int = 10, **knobs: Any) -> SearchResult:
        """Top-``k`` labels by probability, and the thresholded label sets; the head has no knobs."""
        if knobs:
            raise InvalidArgument(f"a classifier head has no search knobs, got {sorted(knobs)}")
        probs = self.probabilities(queries)
        k = max(0, min(int(k), probs.shape[1]))
        rows = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(probs, rows, axis=1)
        return SearchResult(self.internal_ids[rows], scores, rows, self.catalogue, score="probability",
                            sets=label_sets(probs, self.thresholds, self.at_least_one))

    def describe(self) -> dict[str, Any]:
        distinct = np.unique(self.thresholds)
        threshold = f"threshold {distinct[0]:.3f}" if len(distinct) == 1 else "per-label thresholds"
        return {"kind": self.kind, "path": str(self.path) if self.path else None, "encoder": self.encoder.identity(),
                "representation": self.encoder.representation_spec(),
                "structure": f"one-vs-rest logistic head, {threshold}", "params": {}, "labels": len(self),
                **({"head": self.info} if self.info else {})}

    def save(self, out: str | Path) -> Path:
        """Write the predictor folder atomically (see the module docstring)."""
        out = Path(out)
        table = self.catalogue.to_arrow()

        def write_files(folder: Path) -> dict[str, Any]:
            pq.write_table(table, folder / LABELS_FILE)
            save_file({"weights": self.weights, "bias": self.bias, "thresholds": self.thresholds},
                      folder / HEAD_FILE)
            self.encoder.save(folder / ENCODER_FOLDER)
            encoder_files = {str(path.relative_to(folder)): {"sha256": sha256_file(path),
                                                             "bytes": path.stat().st_size}
                             for path in sorted((folder / ENCODER_FOLDER).rglob("*")) if path.is_file()}
            return {"kind": KIND, "xmr_version": __version__, "encoder": self.encoder.identity(),
                    "encoder_folder": ENCODER_FOLDER, "representation": self.encoder.representation_spec(),
                    "labels": {"file": LABELS_FILE, "source": self.catalogue.source, "count": len(self.catalogue)},
                    "head": {"file": HEAD_FILE, "activation": "sigmoid", "at_least_one": self.at_least_one,
                             **self.info},
                    "encoder_files": encoder_files}

        write_index_folder(out, write_files)
        self.path = out
        return out


def load_classifier_head(path: str | Path, verify: bool = True, device: str | None = None,
                         trust_remote_code: bool = False, **_: Any) -> ClassifierHead:
    """Open a ``classifier-head`` folder; every file (the encoder's too) is checked against the manifest
    (``verify=False``: sizes only). An encoder config that sets ``trust_remote_code`` is refused unless the caller
    passes ``trust_remote_code=True`` (as for label indexes: the folder never decides whether code runs). Other
    options of :func:`xmr.load_predictor` (``mmap``) do not apply to a head and are ignored."""
    path = Path(path)
    recover(path)
    manifest = read_manifest(path)
    if manifest.get("kind") != KIND:
        raise IndexFolderError(f"{path}: a {manifest.get('kind', 'label-index')!r} folder, not a {KIND}")
    for name in ("head", "labels", "encoder_files", "representation"):
        if not isinstance(manifest.get(name), dict):
            raise IndexFolderError(f"{path}: manifest field {name!r} is missing; a {KIND} manifest needs it")
    verify_files(path, {"files": manifest["files"], "labels": manifest["labels"],
                        "stages": [{"files": [manifest["head"].get("file", HEAD_FILE)]}]}, checksums=verify)
    for name, entry in manifest["encoder_files"].items():
        file = path / name
        if not file.is_file() or file.stat().st_size != entry.get("bytes"):
            raise IndexFolderError(f"{file}: missing or resized (listed in the manifest's encoder_files)")
        if verify and sha256_file(file) != entry.get("sha256"):
            raise IndexFolderError(f"{file}: checksum mismatch, the encoder was modified")
    try:
        table = pq.read_table(path / manifest["labels"].get("file", LABELS_FILE))
        head = load_file(path / manifest["head"].get("file", HEAD_FILE))
    except (OSError, pa.ArrowException, ValueError) as error:
        raise IndexFolderError(f"{path}: cannot read the head or the labels: {error}") from None
    catalogue = LabelCatalogue.from_arrow(table, source=str(path / LABELS_FILE))
    encoder_folder = path / manifest.get("encoder_folder", ENCODER_FOLDER)
    if asks_for_remote_code(encoder_config(encoder_folder)) and not trust_remote_code:
        raise IndexFolderError(f"{path}: its encoder config sets trust_remote_code, which would run Python code from "
                               "the model folder; allow it (trust_remote_code=True) only if you trust its source")
    encoder = load_encoder(encoder_folder, device=device)
    encoder.train_mode(False)
    info = {key: value for key, value in manifest["head"].items() if key not in ("file", "activation",
                                                                                 "at_least_one")}
    return ClassifierHead(catalogue, encoder, head["weights"], head["bias"], head["thresholds"],
                          bool(manifest["head"].get("at_least_one", True)), path=path, info=info)


def head_label_index(head: ClassifierHead, out: str | Path | None = None, factory: str = "Flat") -> Any:
    """A label index whose label vectors are the head's weight rows (inner product with the query vector, the
    head's logit without its bias), over the head's encoder: ``xmr query``/``xmr eval`` take it like any index."""
    from xmr.index import build_index_from_embeddings

    return build_index_from_embeddings(head.catalogue, head.weights, out, encoder=head.encoder, factory=factory,
                                       normalized=False)

