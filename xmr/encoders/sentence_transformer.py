"""Text bi-encoder backed by sentence-transformers (any ST model: hub name, local folder or bundled)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xmr.encoders.base import ENCODER_FILE, Encoder, Item, item_texts, quiet_weight_loading, register_encoder
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL, canonical_model_name, resolve_model_location
from xmr.errors import EncoderError

if TYPE_CHECKING:
    import torch

PROGRESS_THRESHOLD = 2048  # show a progress bar for encode calls at least this long
MODEL_FOLDER = "model"  # where save() puts the (fine-tuned) sentence-transformers model inside an encoder folder


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

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        from sentence_transformers.util import batch_to_device

        prompt = self.query_prompt if side == "query" else self.label_prompt
        features = self.model.preprocess([prompt + text for text in item_texts(items, self.model_name)])
        vectors = self.model(batch_to_device(features, self.model.device))["sentence_embedding"].float()
        if self.normalize:
            import torch.nn.functional as functional

            vectors = functional.normalize(vectors, dim=-1)
        return vectors

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"encoder": [parameter for parameter in self.model.parameters() if parameter.requires_grad]}

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json`` and the model (weights as safetensors) in ``model/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with quiet_weight_loading():
            self.model.save(str(folder / MODEL_FOLDER), create_model_card=False)
        config = self.config() | {"model": MODEL_FOLDER, "device": None}
        (folder / ENCODER_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder

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

