"""Encoder ``uwe-late-interaction``: a sentence-transformers backbone that emits token vectors beside a pooled vector.

Per item, the backbone's last-layer token states of the real tokens (attention mask 1: ``[CLS]``, word pieces,
``[SEP]``; padding dropped) go through an optional linear ``projection`` (``projection_dim``) and are optionally
unit-normalised (``normalize_tokens``): these are the ``h_l`` of ``scoring.py`` (1). The pooled vector is the unit
masked mean of the projected tokens, which without a projection is exactly the MiniLM sentence embedding (mean
pooling + normalise), so the FAISS candidate stage over pooled vectors starts where the dense dual encoder is.

The label (target) side follows the reference scorer (workrb ``ConTeXTMatchModel``: ``encode(targets, mean=True)``):
with ``target="pooled"`` a target is one vector ``e_t``, the mean of its projected token states; with
``target="tokens"`` it keeps all its token vectors (the symmetric score (2)). Queries always keep their tokens, so
the same model serves both directions of a bipartite graph (sentence -> skill and skill -> sentence).

The late-interaction ``temperature`` ``T`` and ``target`` are part of the encoder's identity: the index folder's
re-rank stage records them (``stages.LateInteractionRerank``) and training uses them (``task.UWETask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as functional

from xmr.encoders.base import (
    Encoder,
    Item,
    check_side,
    item_texts,
    register_encoder,
    write_encoder_config,
)
from xmr.encoders.bundled import DEFAULT_TEXT_MODEL
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.errors import EncoderError
from xmr.representations import TokenVectors

PROJECTION_FILE = "projection.safetensors"
TARGETS = ("pooled", "tokens")
DEFAULT_TEMPERATURE = 1.0  # workrb ConTeXTMatchModel's default


@register_encoder("uwe-late-interaction")
class LateInteractionEncoder(Encoder):
    """Token vectors + pooled vector from a sentence-transformers model (see the module docstring)."""

    representation = TokenVectors.kind

    def __init__(self, model: str = DEFAULT_TEXT_MODEL, max_seq_length: int | None = None, query_prompt: str = "",
                 label_prompt: str = "", temperature: float = DEFAULT_TEMPERATURE,
                 target: Literal["pooled", "tokens"] = "pooled", normalize_tokens: bool = False,
                 projection_dim: int | None = None, projection_file: str | None = None, batch_size: int = 32,
                 device: str | None = None) -> None:
        if target not in TARGETS:
            raise EncoderError(f"uwe-late-interaction: target must be one of {TARGETS}, got {target!r}")
        if not temperature > 0:
            raise EncoderError(f"uwe-late-interaction: temperature must be positive, got {temperature}")
        # normalize=False: token states come from the transformer module; pooling is done here
        self.text_encoder = SentenceTransformerEncoder(model, normalize=False, query_prompt=query_prompt,
                                                       label_prompt=label_prompt, max_seq_length=max_seq_length,
                                                       batch_size=batch_size, device=device)
        self.temperature = float(temperature)
        self.target = target
        self.normalize_tokens = bool(normalize_tokens)
        self.normalize = True  # pooled vectors are unit length
        self.batch_size = batch_size
        self.device = device
        hidden = self.text_encoder.dim
        self.projection: torch.nn.Linear | None = None
        if projection_dim is not None:
            self.projection = torch.nn.Linear(hidden, int(projection_dim), bias=False)
            if projection_file is not None:
                from safetensors.torch import load_file

                try:
                    self.projection.load_state_dict(load_file(projection_file))
                except (OSError, RuntimeError) as error:
                    raise EncoderError(f"{projection_file}: cannot load the token projection: {error}") from None
            elif int(projection_dim) == hidden:
                torch.nn.init.eye_(self.projection.weight)  # starts as the identity: pooled = the ST embedding
            else:
                torch.nn.init.orthogonal_(self.projection.weight)
            self.projection.to(self.text_encoder.model.device)
        self.projection_file = projection_file

    @property
    def model_name(self) -> str:
        return self.text_encoder.model_name

    @property
    def dim(self) -> int:
        return self.projection.out_features if self.projection is not None else self.text_encoder.dim

    def representation_spec(self) -> dict[str, Any]:
        return super().representation_spec() | {"normalized": True}

    # ---- token states --------------------------------------------------------------------------------------------
    def _token_states(self, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (optionally unit) token vectors (n, L, D) and the real-token mask (n, L) of one batch."""
        from sentence_transformers.util import batch_to_device

        text = self.text_encoder
        features = text.model.preprocess(texts, prompt=text._prompt(side) or None)
        features = batch_to_device(features, text.model.device)
        states = text.model(features)["token_embeddings"].float()
        mask = features["attention_mask"].bool()
        if self.projection is not None:
            states = self.projection(states)
        return states, mask

    def _sides(self, states: torch.Tensor, mask: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
        """``(tokens, mask, pooled)``: query tokens or the target's tokens / single mean vector, and pooled."""
        weights = mask.unsqueeze(-1).float()
        mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        pooled = functional.normalize(mean, dim=-1)
        if side == "label" and self.target == "pooled":
            tokens, mask = mean.unsqueeze(1), mask.new_ones((len(mean), 1))
        else:
            tokens = states
        if self.normalize_tokens:
            tokens = functional.normalize(tokens, dim=-1)
        return tokens, mask, pooled

    def embed_tokens(self, items: Sequence[Item], side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable ``(tokens (n, L, D), mask (n, L), pooled (n, D))`` for training (``side`` as in encode)."""
        check_side(side)
        self.text_encoder._require_torch("training (embed_tokens)")
        states, mask = self._token_states(item_texts(items, self.model_name), side)
        return self._sides(states, mask, side)

    def encode(self, items: Sequence[Item], side: str) -> TokenVectors:
        """Ragged float16 token vectors and unit float32 pooled vectors; batches sorted by length (little padding)."""
        check_side(side)
        texts = item_texts(items, self.model_name)
        order = np.argsort([-len(text) for text in texts], kind="stable")
        tokens: list[np.ndarray] = [np.zeros((0, self.dim), np.float16)] * len(texts)
        pooled = np.zeros((len(texts), self.dim), dtype=np.float32)
        was_training = self.text_encoder.model.training
        self.train_mode(False)
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    states, mask = self._token_states([texts[row] for row in rows], side)
                    batch_tokens, batch_mask, batch_pooled = self._sides(states, mask, side)
                    batch_tokens = batch_tokens.cpu().numpy().astype(np.float16)
                    lengths = batch_mask.sum(1).cpu().numpy()
                    pooled[rows] = batch_pooled.cpu().numpy()
                    for position, row in enumerate(rows):
                        tokens[row] = batch_tokens[position, :lengths[position]]
        finally:
            self.train_mode(was_training)
        lengths = np.array([len(item) for item in tokens], dtype=np.int64)
        values = np.concatenate(tokens) if tokens else np.zeros((0, self.dim), np.float16)
        return TokenVectors(values, np.concatenate([[0], np.cumsum(lengths)]), pooled, normalized=True)

    # ---- training hooks --------------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        groups = self.text_encoder.parameter_groups()
        if self.projection is not None:
            groups["projection"] = list(self.projection.parameters())
        return groups

    def train_mode(self, training: bool) -> None:
        self.text_encoder.train_mode(training)
        if self.projection is not None:
            self.projection.train(training)

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json``, the backbone in ``model/``, the projection as safetensors."""
        folder = Path(folder)
        self.text_encoder.save(folder)  # writes model/ and its own config, replaced below
        config = self.config() | {"model": "model", "device": None}
        if self.projection is not None:
            from safetensors.torch import save_file

            save_file({key: value.detach().cpu().contiguous() for key, value in self.projection.state_dict().items()},
                      str(folder / PROJECTION_FILE))
            config["projection_file"] = PROJECTION_FILE
        write_encoder_config(folder, config)
        return folder

    def config(self) -> dict[str, Any]:
        text = self.text_encoder
        return {"type": self.type_name, "model": text.model_name, "max_seq_length": text.max_seq_length,
                "query_prompt": text.query_prompt, "label_prompt": text.label_prompt,
                "temperature": self.temperature, "target": self.target, "normalize_tokens": self.normalize_tokens,
                "projection_dim": self.projection.out_features if self.projection is not None else None,
                "projection_file": self.projection_file, "batch_size": self.batch_size, "device": self.device}
