"""The image tower: an open_clip model giving one pooled, L2-normalised vector per image (ViXML's image encoder).

Any open_clip architecture works (``ViT-B-32``, ``ViT-SO400M-14-SigLIP``, ...): ``pretrained`` is an open_clip tag
(downloaded by open_clip when online) or a local checkpoint file; without it the tower is randomly initialised
from ``seed`` (tests, wiring). Embeddings are cached per tower, keyed by the image's SHA-256, in an append-only
Parquet cache (:mod:`xmr.encoders.embedding_cache`) under ``image-embeddings/`` of xmr's cache root, so rebuilding an
index never re-runs the tower on an unchanged image, and processes embedding at once all keep their entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.catalogue import MAX_IMAGE_BYTES
from xmr.encoders.embedding_cache import EmbeddingCache
from xmr.errors import EncoderError
from xmr.io.atomic import sha256_file
from xmr.io.cache import cache_root

log = logging.getLogger(__name__)


def check_image_file(path: Path) -> None:
    """Read only regular files of at most ``MAX_IMAGE_BYTES`` (never a device such as /dev/zero, which would hang)."""
    if path.exists() and not path.is_file():
        raise EncoderError(f"image {path}: not a regular file")
    if path.is_file() and path.stat().st_size > MAX_IMAGE_BYTES:
        raise EncoderError(f"image {path}: {path.stat().st_size} bytes, more than the {MAX_IMAGE_BYTES} an image may "
                           "have")


class ImageTower:
    """open_clip visual encoder with a content-addressed embedding cache (under ``cache_dir`` instead of xmr's cache
    root when given)."""

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = None, seed: int = 0,
                 device: str | None = None, batch_size: int = 32, cache_dir: str | None = None) -> None:
        try:
            import open_clip
        except ImportError:
            raise EncoderError("image encoders need the vision extra: pip install 'xmr[vision]'") from None
        self.model_name, self.pretrained, self.seed = model, pretrained, seed
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # an untrained tower is the same random network on every load
                clip, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained, device=self.device)
        except RuntimeError as error:
            raise EncoderError(
                f"cannot create open_clip model {model!r} (pretrained={pretrained!r}): {error}"
            ) from None
        self.clip = clip.eval()
        self.dim = int(self.clip.visual.output_dim)
        self._cache_key = hashlib.sha256(json.dumps(self._cache_identity(), sort_keys=True).encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir else cache_root()
        self.cache = EmbeddingCache(root / "image-embeddings" / self._cache_key, self.dim)

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained, "seed": self.seed}

    def _cache_identity(self) -> dict[str, Any]:
        """What the cached vectors depend on: the config, and for a local checkpoint file also its content (a
        checkpoint retrained in place at the same path must not be answered from the old weights' entries)."""
        identity = self.config()
        if self.pretrained and Path(self.pretrained).is_file():
            identity["pretrained_sha256"] = sha256_file(Path(self.pretrained))
        return identity

    @torch.inference_mode()
    def _run(self, paths: list[Path]) -> np.ndarray:
        from PIL import Image

        vectors = []
        for start in range(0, len(paths), self.batch_size):
            pixels = torch.stack([self.preprocess(Image.open(path).convert("RGB"))
                                  for path in paths[start:start + self.batch_size]]).to(self.device)
            vectors.append(torch.nn.functional.normalize(self.clip.encode_image(pixels).float(), dim=-1).cpu())
        return torch.cat(vectors).numpy()

    def embed(self, paths: Sequence[str], skip_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Vectors ``(n, dim)`` and a boolean mask of images found.

        A missing or unreadable file is an error naming it, or (``skip_missing``) a warning and a zero row.
        """
        cache = self.cache.load()
        output = np.zeros((len(paths), self.dim), dtype=np.float32)
        found = np.zeros(len(paths), dtype=bool)
        pending: dict[str, list[int]] = {}
        pending_paths: dict[str, Path] = {}
        for row, name in enumerate(paths):
            path = Path(name)
            try:
                check_image_file(path)
                digest = sha256_file(path)
            except OSError as error:
                if not skip_missing:
                    raise EncoderError(f"image {path}: cannot read it ({error.strerror})") from None
                log.warning("skipping image %s: %s", path, error.strerror)
                continue
            found[row] = True
            if digest in cache:
                output[row] = cache[digest]
            else:
                pending.setdefault(digest, []).append(row)
                pending_paths[digest] = path
        if pending:
            digests = list(pending)
            try:
                vectors = self._run([pending_paths[digest] for digest in digests])
            except (OSError, ValueError) as error:  # PIL: not an image
                raise EncoderError(f"image file could not be decoded: {error}") from None
            for digest, vector in zip(digests, vectors, strict=True):
                output[pending[digest]] = vector
            self.cache.add(dict(zip(digests, vectors, strict=True)))
        return output, found
