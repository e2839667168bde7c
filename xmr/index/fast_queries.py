"""Fast queries: an index folder may carry a cheaper query encoder whose vectors live in its encoder's space.

The index keeps its encoder (labels are still encoded, added and checked with it); queries can instead go through
one of three query encoders made from it (``xmr fast-queries INDEX --method ...``), at a fraction of the cost:

- ``static``: static token embeddings (:mod:`xmr.encoders.static`, made by :func:`xmr.encoders.distill.distill_static`,
  fitted to the encoder's vectors of a corpus): no transformer at query time. The folder holds::

      fast_queries.safetensors      the token table (tensor ``embeddings``), checksummed like every file
      fast_queries.tokenizer.json   its tokenizer

- ``onnx-int8``: the index's own sentence-transformers encoder on ONNX Runtime with int8 weights
  (:mod:`xmr.encoders.onnx_runtime`), optionally truncating queries at a shorter ``max_seq_length``. Nothing is
  stored in the folder: the export is derived from the encoder's model and cached beside it.
- ``student``: a layer-reduced copy of the encoder distilled on a corpus to give its query vectors from fewer tokens
  (:mod:`xmr.encoders.student`), run on ONNX Runtime int8. The folder holds ``fast_queries.student.safetensors``
  (its weights); the rest is the encoder's model, and the export is cached outside the folder.

Section ``fast_queries`` of the manifest records the method and the query encoder's identity. A query encoder is
attached only if it was made from this index's encoder (a static table's ``distilled_from`` equals the manifest's
encoder; an ONNX variant differs from it only in backend, quantisation and query length) and gives vectors of the
index's kind, size and metric; the same checks run when a folder is opened, so a folder whose section names
another encoder is refused. Trade-off measured in ``eval/bench/fast-queries/``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.encoders import Encoder, load_encoder
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.encoders.static import StaticEmbeddingEncoder
from xmr.encoders.student import StudentEncoder
from xmr.errors import EncoderError, IndexFolderError

SECTION = "fast_queries"
FILES = {"vectors": "fast_queries.safetensors", "tokenizer": "fast_queries.tokenizer.json"}  # static
STUDENT_FILES = {"weights": "fast_queries.student.safetensors"}
METHODS = ("static", "onnx-int8", "student")
VARIANT_KEYS = ("backend", "quantize", "max_seq_length")  # what an ONNX query variant may change in the encoder


def onnx_int8_queries(encoder: Encoder, max_seq_length: int | None = None) -> SentenceTransformerEncoder:
    """The index's encoder on ONNX Runtime int8 (method ``onnx-int8``), reading at most ``max_seq_length`` tokens
    per query (None: the encoder's own length)."""
    if not isinstance(encoder, SentenceTransformerEncoder) or encoder.backend != "torch":
        raise EncoderError(f"onnx-int8 fast queries run a sentence-transformers encoder on backend 'torch', not "
                           f"{getattr(encoder, 'type_name', type(encoder).__name__)!r}")
    length = {"max_seq_length": max_seq_length} if max_seq_length else {}
    return load_encoder(encoder.config() | {"backend": "onnx", "quantize": "int8"} | length)


def method_of(encoder: Encoder) -> str:
    if isinstance(encoder, StaticEmbeddingEncoder):
        return "static"
    if isinstance(encoder, StudentEncoder):
        return "student"
    if isinstance(encoder, SentenceTransformerEncoder) and (encoder.backend, encoder.quantize) == ("onnx", "int8"):
        return "onnx-int8"
    raise EncoderError(f"a fast query encoder is static embeddings, an ONNX int8 sentence-transformers encoder or "
                       f"a distilled student, not {getattr(encoder, 'type_name', type(encoder).__name__)!r}")


def source_differences(encoder: Encoder, manifest: Mapping[str, Any]) -> list[str] | None:
    """The identity keys in which the encoder ``encoder`` was made from differs from the index's (None: none
    recorded)."""
    teacher = dict(manifest["encoder"])
    if method_of(encoder) in ("static", "student"):
        recorded = getattr(encoder, "distilled_from", None)
        if recorded is None:
            return None
        source = dict(recorded)
    else:
        source = {key: value for key, value in encoder.identity().items() if key not in VARIANT_KEYS}
        teacher = {key: value for key, value in teacher.items() if key not in VARIANT_KEYS}
    return sorted(key for key in source.keys() | teacher.keys() if source.get(key) != teacher.get(key))


def check_fast_encoder(encoder: Encoder, manifest: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse a fast query encoder not made from this index's encoder, or giving other vectors."""
    from xmr.index.label_index import check_representation

    check_representation(encoder, manifest, where)
    differences = source_differences(encoder, manifest)
    if differences != []:
        raise IndexFolderError(f"{where}: the fast query encoder was made from another encoder than this index's "
                               f"(differs in: {', '.join(differences or []) or 'no source recorded'}); make it "
                               "from the index's encoder (xmr fast-queries INDEX)")
    if isinstance(encoder, StudentEncoder) and encoder.weights_path is None:
        raise IndexFolderError(f"{where}: the student has no trained weights; distil one (xmr fast-queries INDEX "
                               "--method student --corpus FILE)")


def files_of(method: str) -> dict[str, str]:
    """The folder's files for a method, by the config key that names each."""
    return {"static": FILES, "student": STUDENT_FILES}.get(method, {})


def section(encoder: Encoder) -> dict[str, Any]:
    """The manifest section for ``encoder``: its method and identity, with the folder's file names."""
    method = method_of(encoder)
    return {"method": method, "files": list(files_of(method).values()), "encoder": encoder.identity()}


def write_fast_files(encoder: Encoder, folder: Path) -> None:
    """The files the folder keeps for ``encoder`` (a static table, a student's weights; nothing for an ONNX
    variant)."""
    method = method_of(encoder)
    if method == "static":
        encoder.write_files(folder, FILES["vectors"], FILES["tokenizer"])
    elif method == "student":
        shutil.copyfile(encoder.weights_path, folder / STUDENT_FILES["weights"])


def open_fast_encoder(path: Path, manifest: Mapping[str, Any]) -> Encoder:
    """The fast query encoder an index folder records, checked against the index."""
    stored = manifest.get(SECTION)
    if not isinstance(stored, Mapping) or not isinstance(stored.get("encoder"), Mapping):
        raise IndexFolderError(f"{path}: this index has no fast query encoder; add one with xmr fast-queries INDEX")
    method = stored.get("method", "static")  # folders written before ONNX variants existed hold static tables
    if method not in METHODS:
        raise IndexFolderError(f"{path}: manifest field fast_queries.method is {method!r}, not one of "
                               f"{', '.join(METHODS)}")
    config = dict(stored["encoder"]) | {key: str(path / name) for key, name in files_of(method).items()}
    encoder = load_encoder(config)
    check_fast_encoder(encoder, manifest, path)
    return encoder
