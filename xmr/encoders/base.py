"""The encoder interface every xmr encoder implements, and the registry that rebuilds encoders from configs.

An encoder turns queries and labels into one :mod:`~xmr.representations` type, declared by ``representation``:
dense vectors (:class:`DenseEncoder`, searched by inner product), binary hash codes (Hamming) or token vectors
(late interaction). ``encode(items, side)`` is the one entry point index stages use; :meth:`representation_spec`
is what an index folder records and checks on load.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from xmr.errors import EncoderError, UnsupportedOperation
from xmr.methods import registrar
from xmr.representations import REPRESENTATIONS, DenseVectors, Representation

if TYPE_CHECKING:
    import torch

# A query or label: plain text, or a mapping with "text" and optionally "image"/"images" (paths).
Item = str | Mapping[str, Any]

ENCODER_TYPES: dict[str, type[Encoder]] = {}
ENCODER_FILE = "xmr_encoder.json"  # the config inside an encoder folder (trained or saved encoders)
# config paths that are relative to that folder
FOLDER_PATH_KEYS = ("model", "adapter", "projection_file", "text", "vectors", "tokenizer", "weights")
SIDES = ("query", "label")


def register_encoder(type_name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: make ``load_encoder({"type": type_name, ...})`` build this class."""
    return registrar(ENCODER_TYPES, type_name)


class Encoder(ABC):
    """Maps queries and labels to a representation; ``config()`` is enough to rebuild an identical encoder."""

    type_name: ClassVar[str]
    representation: ClassVar[str] = DenseVectors.kind  # a key of representations.REPRESENTATIONS
    modalities: ClassVar[frozenset[str]] = frozenset({"text"})  # what an item may carry that the encoder reads
    # Config keys that change speed or placement but never the vectors; ignored when comparing encoders.
    runtime_keys: ClassVar[frozenset[str]] = frozenset({"batch_size", "device", "show_progress"})

    normalize: bool = False

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of each output vector (bits, for binary codes)."""

    @property
    def metric(self) -> str:
        return REPRESENTATIONS[self.representation].metric

    @abstractmethod
    def encode(self, items: Sequence[Item], side: str) -> Representation:
        """The representation of queries (``side="query"``) or labels (``side="label"``), row i = item i."""

    def representation_spec(self) -> dict[str, Any]:
        """What :meth:`encode` returns (kind, metric, size), as an index manifest records it; the same keys as the
        representation's own ``spec()`` (binary encoders report ``bits``)."""
        return {"kind": self.representation, "metric": self.metric, "dim": self.dim}

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description, with ``"type"``; ``load_encoder(config)`` rebuilds the encoder."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Encoder:
        """Rebuild from :meth:`config`; unknown keys are an error naming them."""
        options = {key: value for key, value in config.items() if key != "type"}
        try:
            return cls(**options)
        except TypeError as error:
            raise EncoderError(f"encoder config for type {cls.type_name!r} is invalid: {error}") from None

    # ---- training (``xmr.train``): encoders that can learn implement these ------------------------------------
    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable vectors for ``side`` ("query" or "label"), ``(len(items), dim)`` on the model's device."""
        raise UnsupportedOperation(f"encoder type {self.type_name!r} cannot be trained")

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Trainable parameters by group (``"encoder"``, ``"projection"``), each may get its own learning rate."""
        raise UnsupportedOperation(f"encoder type {self.type_name!r} cannot be trained")

    def train_mode(self, training: bool) -> None:
        """Switch dropout etc. on (``True``) for training or off for encoding."""
        raise UnsupportedOperation(f"encoder type {self.type_name!r} cannot be trained")

    def save(self, folder: str | Path) -> Path:
        """Write an encoder folder (``xmr_encoder.json`` + weights) that ``load_encoder(folder)`` rebuilds."""
        raise UnsupportedOperation(f"encoder type {self.type_name!r} cannot be saved as a folder")

    def identity(self) -> dict[str, Any]:
        """The part of the config that determines the vectors (what an index must match)."""
        return {key: value for key, value in self.config().items() if key not in self.runtime_keys}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity()})"


class DenseEncoder(Encoder):
    """An encoder of float32 ``(n, dim)`` vectors; ``encode_queries``/``encode_labels`` give the bare arrays."""

    @abstractmethod
    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors for queries, float32 ``(len(items), dim)``."""

    @abstractmethod
    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        """Vectors for labels, float32 ``(len(items), dim)``."""

    def representation_spec(self) -> dict[str, Any]:
        return super().representation_spec() | {"normalized": bool(self.normalize)}

    def encode(self, items: Sequence[Item], side: str) -> DenseVectors:
        check_side(side)
        vectors = self.encode_queries(items) if side == "query" else self.encode_labels(items)
        return DenseVectors(vectors, normalized=bool(self.normalize))


def write_encoder_config(folder: Path, config: Mapping[str, Any]) -> None:
    """Write an encoder folder's ``xmr_encoder.json`` (the config ``load_encoder`` reads back)."""
    (folder / ENCODER_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def check_side(side: str) -> None:
    if side not in SIDES:
        raise EncoderError(f"side must be 'query' or 'label', got {side!r}")


def item_texts(items: Sequence[Item], encoder_name: str) -> list[str]:
    """Texts of items for a text-only encoder; an item without text is an error naming its position."""
    if isinstance(items, str):
        raise EncoderError("encode a list of items, not a single string")
    texts = []
    for position, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            continue
        text = item.get("text") if isinstance(item, Mapping) else None
        if not isinstance(text, str):
            has_image = isinstance(item, Mapping) and ("image" in item or "images" in item)
            reason = "has an image but no text" if has_image else "has no text"
            raise EncoderError(f"item {position} {reason}; encoder {encoder_name!r} encodes text only")
        texts.append(text)
    return texts


@contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """Hide transformers' per-load "Loading weights" bar (noise on every query); restore the user's setting."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
