"""The image tower: an open_clip model giving one pooled, L2-normalised vector per image (ViXML's image encoder).

Any open_clip architecture works (``ViT-B-32``, ``ViT-SO400M-14-SigLIP``, ...): ``pretrained`` is an open_clip tag
(downloaded by open_clip when online) or a local checkpoint file; without it the tower is randomly initialised
from ``seed`` (tests, wiring). Embeddings are cached per tower in a Parquet file keyed by the image's SHA-256, so
rebuilding an index never re-runs the tower on an unchanged image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from xmr.errors import EncoderError

log = logging.getLogger(__name__)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class ImageTower:
    """open_clip visual encoder with a content-addressed embedding cache."""

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
        identity = json.dumps(self.config(), sort_keys=True)
        self._cache_key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        root = Path(cache_dir or os.environ.get("XMR_CACHE", Path.home() / ".cache" / "xmr"))
        self.cache_path = root / "image-embeddings" / f"{self._cache_key}.parquet"
        self._cache: dict[str, np.ndarray] | None = None

    def config(self) -> dict[str, Any]:
        return {"model": self.model_name, "pretrained": self.pretrained, "seed": self.seed}

    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = {}
            if self.cache_path.is_file():
                table = pq.read_table(self.cache_path)
                vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
                self._cache = dict(zip(table.column("sha256").to_pylist(), vectors, strict=True))
        return self._cache

    def _save_cache(self) -> None:
        cache = self._load_cache()
        table = pa.table({"sha256": list(cache), "vector": [vector.tolist() for vector in cache.values()]})
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_path.with_suffix(f".tmp-{os.getpid()}")
        pq.write_table(table, partial)
        os.replace(partial, self.cache_path)

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
        cache = self._load_cache()
        output = np.zeros((len(paths), self.dim), dtype=np.float32)
        found = np.zeros(len(paths), dtype=bool)
        pending: dict[str, list[int]] = {}
        pending_paths: dict[str, Path] = {}
        for row, name in enumerate(paths):
            path = Path(name)
            try:
                digest = _file_digest(path)
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
                cache[digest] = vector
                output[pending[digest]] = vector
            self._save_cache()
        return output, found
