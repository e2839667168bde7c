"""What ViXML early fusion needs from a text encoder: token ids with image slots, and vectors from input embeddings.

:class:`~xmr.encoders.fusion.FusedEncoder` builds each item's token sequence with :meth:`FusableText.fusion_tokens`,
looks the ids up with :meth:`FusableText.input_embeddings`, puts projected image vectors into the
:data:`IMAGE_SLOT` positions, and hands the batch to :meth:`FusableText.embed_inputs`. The text encoder runs its
own model and its own pooling/projection/normalisation there, so a fused item without images gets exactly the text
encoder's vector, in training as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

IMAGE_SLOT = -1  # a token id that stands for one image token


@dataclass(frozen=True)
class FusionTokens:
    """One item's token ids, :data:`IMAGE_SLOT` where an image token goes.

    ``pool_skip`` leading positions are left out of pooling (a sentence-transformers pooling with
    ``include_prompt=False``, instructor-style); 0 when pooling reads every token.
    """

    ids: list[int]
    pool_skip: int = 0


@runtime_checkable
class FusableText(Protocol):
    """A text encoder that early fusion can feed image tokens to (sentence-transformers, decoder LLMs)."""

    def fusion_tokens(self, text: str, side: str, images: int, image_prefix: str) -> FusionTokens:
        """Token ids of ``text`` (with the ``side``'s prompt or template) and ``images`` image slots, laid out as
        ViXML does for this kind of model; ``images=0`` gives the ids the encoder's own text path uses."""

    def input_embeddings(self) -> torch.nn.Embedding:
        """The model's token-embedding module (its ``embedding_dim`` is the width an image token must have)."""

    def embed_inputs(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                     pool_skip: Sequence[int]) -> torch.Tensor:
        """Final vectors ``(batch, dim)`` (pooled, projected, normalised as the encoder's own output) from right-padded
        input embeddings ``(batch, length, hidden)``, keeping the autograd graph."""
