"""Encoders: queries and labels to vectors. ``load_encoder`` builds any registered encoder from a name or config."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.encoders.base import (
    ENCODER_FILE,
    ENCODER_TYPES,
    FOLDER_PATH_KEYS,
    DenseEncoder,
    Encoder,
    Item,
    item_texts,
    register_encoder,
)
from xmr.encoders.bundled import BUNDLED_DECODER_ZERO_SHOT, BUNDLED_DECODERS, DEFAULT_TEXT_MODEL
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.errors import EncoderError

# encoder types whose modules load torch at import: imported on first use, so `import xmr` stays light
LAZY_TYPES = {
    "decoder-llm": ("xmr.encoders.decoder", "DecoderEncoder"),
    "fused": ("xmr.encoders.fusion", "FusedEncoder"),
    "static-embeddings": ("xmr.encoders.static", "StaticEmbeddingEncoder"),
    "sentence-transformers-student": ("xmr.encoders.student", "StudentEncoder"),
}

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "DecoderEncoder",
    "DenseEncoder",
    "ENCODER_TYPES",
    "Encoder",
    "FusedEncoder",
    "Item",
    "SentenceTransformerEncoder",
    "encoder_class",
    "encoder_config",
    "item_texts",
    "load_encoder",
    "register_encoder",
]


def load_encoder(spec: str | Path | Mapping[str, Any] | Encoder = DEFAULT_TEXT_MODEL, **options: Any) -> Encoder:
    """Build an encoder from a config dict, a ``.json`` config file, an encoder folder, or a model name.

    An encoder folder holds ``xmr_encoder.json`` (paths in it are relative to the folder). A bare name or model
    folder means a sentence-transformers model (``all-MiniLM-L6-v2`` resolves offline to the bundled copy);
    ``smollm2-135m`` is the bundled decoder LLM. ``options`` override config keys (e.g. ``batch_size=128``).
    """
    if isinstance(spec, Encoder):
        if options:
            raise EncoderError("options cannot be applied to an already built encoder")
        return spec
    config = encoder_config(spec) | options
    return encoder_class(config.get("type")).from_config(config)


def encoder_config(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The config ``load_encoder(spec)`` would build from, without building anything."""
    if isinstance(spec, Mapping):
        return dict(spec)
    if str(spec).endswith(".json") and Path(spec).is_file():
        return _read_config(Path(spec))
    if (Path(spec) / ENCODER_FILE).is_file():
        folder = Path(spec)
        config = _read_config(folder / ENCODER_FILE)
        for key in FOLDER_PATH_KEYS:
            value = config.get(key)
            if isinstance(value, str) and (folder / value).exists():
                config[key] = str((folder / value).resolve())
        return config
    if str(spec) in BUNDLED_DECODERS:
        return {"type": "decoder-llm", "model": str(spec), **BUNDLED_DECODER_ZERO_SHOT.get(str(spec), {})}
    return {"type": SentenceTransformerEncoder.type_name, "model": str(spec)}


def encoder_class(type_name: Any) -> type[Encoder]:
    """The registered class of an encoder type (lazy types are imported on first use)."""
    if type_name in LAZY_TYPES and type_name not in ENCODER_TYPES:
        importlib.import_module(LAZY_TYPES[type_name][0])  # registers the class
    if type_name not in ENCODER_TYPES:
        from xmr.methods import import_methods

        import_methods()  # a method's own encoder types register when its package is imported
    if type_name not in ENCODER_TYPES:
        raise EncoderError(f"unknown encoder type {type_name!r}; known: {sorted(set(ENCODER_TYPES) | set(LAZY_TYPES))}")
    return ENCODER_TYPES[type_name]


def __getattr__(name: str) -> Any:
    """``DecoderEncoder`` and ``FusedEncoder`` import torch-heavy modules only when first used."""
    for module, class_name in LAZY_TYPES.values():
        if name == class_name:
            return getattr(importlib.import_module(module), class_name)
    raise AttributeError(f"module 'xmr.encoders' has no attribute {name!r}")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EncoderError(f"{path}: bad JSON in encoder config (line {error.lineno}): {error.msg}") from None
