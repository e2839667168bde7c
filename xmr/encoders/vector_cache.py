"""Content-addressed cache of encoded text vectors: encode a training split once, reuse it on every rerun.

Encoding the train split with a transformer is the dominant cost of building kNN and label-vector channels on CPU
(tens of minutes for 40k abstracts on two cores), and reruns (benchmarks, ``xmr train --auto`` after a crash) need
exactly the same vectors. The key hashes the encoder's identity (its config minus runtime keys), a fingerprint of
a local model folder's files (retrained weights in the same folder get a new key), the side and every text, so a
hit can only return the vectors the encoder would compute. Files are ``$XMR_CACHE/vectors/<key>.safetensors``,
written atomically; deleting them is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from xmr.encoders.base import DenseEncoder, Item, item_texts
from xmr.io.cache import cache_path

CACHE_FOLDER = "vectors"
FORMAT = 1  # bump to invalidate every cached file
CHUNK = 2048  # items per cache file


def model_fingerprint(encoder: DenseEncoder) -> str:
    """Sizes and mtimes of a local model folder's weight files and its JSON configs ('' for a hub/bundled name)."""
    folder = Path(str(getattr(encoder, "model_name", "")))
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def cache_key(encoder: DenseEncoder, texts: Sequence[str], side: str) -> str:
    """sha256 of (format, encoder identity, model fingerprint, side, texts)."""
    digest = hashlib.sha256(f"xmr-vectors-{FORMAT}\n{side}\n".encode())
    digest.update(json.dumps(encoder.identity(), sort_keys=True, default=str).encode() + b"\n")
    digest.update(model_fingerprint(encoder).encode() + b"\n")
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def encode_cached(encoder: DenseEncoder, items: Sequence[Item], side: str = "query",
                  folder: Path | None = None, chunk: int = CHUNK) -> np.ndarray:
    """``encoder.encode_queries(items)`` (or ``encode_labels``) through the cache: float32 ``(len(items), dim)``.

    Cached per ``chunk`` consecutive items, so an interrupted encoding keeps what it finished and a prefix of a split
    reuses the prefix's chunks."""
    texts = item_texts(items, getattr(encoder, "model_name", encoder.type_name))
    folder = folder or cache_path(CACHE_FOLDER)
    parts = [encode_chunk(encoder, texts[start:start + chunk], side, folder)
             for start in range(0, len(texts), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)


def encode_items_cached(encoder: DenseEncoder, items: Sequence[Item], side: str = "query") -> np.ndarray:
    """:func:`encode_cached` when every item is text only; items with images are encoded directly (the key hashes
    texts, so it cannot tell two images apart)."""
    if all(isinstance(item, str) or (isinstance(item, Mapping) and not {"image", "images"} & set(item))
           for item in items):
        return encode_cached(encoder, items, side)
    return encode_side(encoder, items, side)


def encode_side(encoder: DenseEncoder, items: Sequence[Item], side: str) -> np.ndarray:
    """``encode_queries`` or ``encode_labels`` by ``side``, uncached."""
    return encoder.encode_queries(items) if side == "query" else encoder.encode_labels(items)


def chunk_path(encoder: DenseEncoder, texts: Sequence[str], side: str, folder: Path | None = None) -> Path:
    """Where one chunk of texts is (or would be) cached; ``is_file()`` says whether encoding it is free."""
    return (folder or cache_path(CACHE_FOLDER)) / f"{cache_key(encoder, texts, side)}.safetensors"


def encode_chunk(encoder: DenseEncoder, texts: list[str], side: str, folder: Path | None = None) -> np.ndarray:
    """One chunk: read its file, or encode and write it atomically (a damaged file is encoded again)."""
    path = chunk_path(encoder, texts, side, folder)
    if path.is_file():
        try:
            vectors = load_file(path)["vectors"]
            if vectors.shape == (len(texts), encoder.dim):
                return vectors
        except (OSError, KeyError, ValueError):
            pass
    vectors = encode_side(encoder, texts, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, temporary)
    os.replace(temporary, path)
    return vectors
