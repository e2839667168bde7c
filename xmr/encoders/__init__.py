"""Encoders: queries and labels to vectors. ``load_encoder`` builds any registered encoder from a name or config."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmr.encoders.base import ENCODER_TYPES, Encoder, Item, item_texts, register_encoder
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.errors import EncoderError

__all__ = [
    "DEFAULT_TEXT_MODEL",
    "ENCODER_TYPES",
    "Encoder",
    "Item",
    "SentenceTransformerEncoder",
    "item_texts",
    "load_encoder",
    "register_encoder",
]


def load_encoder(spec: str | Path | Mapping[str, Any] | Encoder = DEFAULT_TEXT_MODEL, **options: Any) -> Encoder:
    """Build an encoder from a config dict, a ``.json`` config file, or a model name / local folder.

    A bare name or folder means a sentence-transformers model; ``all-MiniLM-L6-v2`` resolves offline to the
    bundled copy. ``options`` override config keys (e.g. ``batch_size=128``, ``device="cuda"``).
    """
    if isinstance(spec, Encoder):
        if options:
            raise EncoderError("options cannot be applied to an already built encoder")
        return spec
    if isinstance(spec, Mapping):
        config = dict(spec)
    elif str(spec).endswith(".json") and Path(spec).is_file():
        try:
            config = json.loads(Path(spec).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise EncoderError(f"{spec}: bad JSON in encoder config (line {error.lineno}): {error.msg}") from None
    else:
        config = {"type": SentenceTransformerEncoder.type_name, "model": str(spec)}
    config.update(options)
    type_name = config.get("type")
    if type_name not in ENCODER_TYPES:
        raise EncoderError(f"unknown encoder type {type_name!r}; known: {sorted(ENCODER_TYPES)}")
    return ENCODER_TYPES[type_name].from_config(config)
