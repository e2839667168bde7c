"""The one cache root of xmr: ``$XMR_CACHE``, else ``~/.cache/xmr``.

Dequantised model copies (``models/``), image-tower embeddings (``image-embeddings/``), ONNX exports (``onnx/``) and
benchmark embeddings live under it; nothing in it is needed for correctness, so it may be deleted at any time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$XMR_CACHE`` or ``~/.cache/xmr``."""
    configured = os.environ.get("XMR_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "xmr"


def cache_path(*parts: str) -> Path:
    """A path under the cache root, e.g. ``cache_path("models", "smollm2-135m")``."""
    return cache_root().joinpath(*parts)
