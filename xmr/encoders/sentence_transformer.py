"""Text bi-encoder backed by sentence-transformers (any ST model: hub name, local folder or bundled)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from xmr.encoders.base import Encoder, Item, item_texts, quiet_weight_loading, register_encoder
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL, canonical_model_name, resolve_model_location
from xmr.errors import EncoderError

PROGRESS_THRESHOLD = 2048  # show a progress bar for encode calls at least this long


@register_encoder("sentence-transformers")
class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model; prompts are prepended to queries and labels respectively.

    sentence-transformers batches inputs sorted by length (little padding waste) under ``torch.inference_mode``.
    """

    def __init__(
        self,
        model: str = DEFAULT_TEXT_MODEL,
        normalize: bool = True,
        query_prompt: str = "",
        label_prompt: str = "",
        max_seq_length: int | None = None,
        batch_size: int = 64,
        device: str | None = None,
        show_progress: bool | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = canonical_model_name(model)
        self.normalize = normalize
        self.query_prompt = query_prompt
        self.label_prompt = label_prompt
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress
        self.trust_remote_code = trust_remote_code
        location = resolve_model_location(model)
        try:
            with quiet_weight_loading():
                self.model = SentenceTransformer(location, device=device, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise EncoderError(f"cannot load sentence-transformers model {model!r} from {location}: {error}") from None
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self._dim = int(dimension())

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, items: Sequence[Item], prompt: str) -> np.ndarray:
        texts = item_texts(items, self.model_name)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        show = self.show_progress
        if show is None:  # long runs on a terminal only; logs and CI stay readable
            show = len(texts) >= PROGRESS_THRESHOLD and sys.stderr.isatty()
        vectors = self.model.encode(
            texts,
            prompt=prompt or None,
            batch_size=self.batch_size,
            show_progress_bar=show,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.query_prompt)

    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, self.label_prompt)

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "dim": self.dim,
            "normalize": self.normalize,
            "query_prompt": self.query_prompt,
            "label_prompt": self.label_prompt,
            "max_seq_length": self.max_seq_length,
            "batch_size": self.batch_size,
            "device": self.device,
            "show_progress": self.show_progress,
            "trust_remote_code": self.trust_remote_code,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SentenceTransformerEncoder:
        options = dict(config)
        expected_dim = options.pop("dim", None)
        encoder = super().from_config(options)
        if expected_dim is not None and expected_dim != encoder.dim:
            raise EncoderError(
                f"model {encoder.model_name!r} gives {encoder.dim}-d vectors, config says {expected_dim}"
            )
        return encoder  # type: ignore[return-value]
