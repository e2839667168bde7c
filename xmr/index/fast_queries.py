"""Fast queries: an index folder may carry a static query encoder distilled from its own encoder.

The index keeps its encoder (labels are still encoded, added and checked with it); queries can instead go through
static token embeddings (:mod:`xmr.encoders.static`, made by :func:`xmr.encoders.distill.distill_static`), whose
vectors live in the same space, at a fraction of the cost. The folder holds::

    fast_queries.safetensors      the token table (tensor ``embeddings``), checksummed like every file
    fast_queries.tokenizer.json   its tokenizer
    manifest.json                 section ``fast_queries``: the static encoder's identity (vectors SHA-256, dim,
                                  normalisation, what it was distilled from and how)

A table is attached only if it was distilled from this index's encoder (``distilled_from`` equals the manifest's
encoder) and gives vectors of the index's kind, size and metric; the same checks run when a folder is opened, so a
folder whose section names another teacher is refused. Trade-off measured in ``eval/bench/fast-queries/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.encoders import Encoder, load_encoder
from xmr.errors import IndexFolderError

SECTION = "fast_queries"
FILES = {"vectors": "fast_queries.safetensors", "tokenizer": "fast_queries.tokenizer.json"}


def check_fast_encoder(encoder: Encoder, manifest: Mapping[str, Any], where: Path | str | None) -> None:
    """Refuse a fast query encoder not distilled from this index's encoder, or giving other vectors."""
    from xmr.index.label_index import check_representation

    check_representation(encoder, manifest, where)
    teacher = {key: value for key, value in manifest["encoder"].items()}
    recorded = getattr(encoder, "distilled_from", None)
    if recorded != teacher:
        keys = sorted(key for key in (recorded or {}).keys() | teacher.keys()
                      if (recorded or {}).get(key) != teacher.get(key))
        raise IndexFolderError(f"{where}: the fast query encoder was distilled from another encoder than this "
                               f"index's (differs in: {', '.join(keys) or 'no teacher recorded'}); distil it from "
                               "the index's encoder (xmr fast-queries INDEX --corpus FILE)")


def section(encoder: Encoder) -> dict[str, Any]:
    """The manifest section for ``encoder``: its identity, with the folder's file names."""
    return {"files": list(FILES.values()), "encoder": encoder.identity()}


def open_fast_encoder(path: Path, manifest: Mapping[str, Any]) -> Encoder:
    """The static query encoder stored in an index folder, checked against the index."""
    stored = manifest.get(SECTION)
    if not isinstance(stored, Mapping) or not isinstance(stored.get("encoder"), Mapping):
        raise IndexFolderError(f"{path}: this index has no fast query encoder; add one with "
                               "xmr fast-queries INDEX --corpus FILE")
    config = dict(stored["encoder"]) | {key: str(path / name) for key, name in FILES.items()}
    encoder = load_encoder(config)
    check_fast_encoder(encoder, manifest, path)
    return encoder
