"""ViXML early fusion: each image becomes ONE token in the text encoder's input embeddings.

ViXML (Ortego et al., Sec. 3.2 "multi-modal", reference code ``HFTransformerInputLayer``): an image tower gives one
pooled vector per image; a learned ``Linear(image_dim, hidden_size)`` maps it to a token embedding that is placed in
``inputs_embeds`` next to the word embeddings, with an attention-mask entry per image (masked when missing). For
BERT-like sentence-transformers the image tokens come first, then ``[CLS] text [SEP]``; for decoder LLMs the sequence
is ``template(text) + image_prefix + image tokens + EOS`` ("This product text: ... and its image: <img> </s>"). The
layout and the pooling are the text encoder's (:mod:`xmr.encoders.fusable`), and every item, with or without images,
takes the same forward in training (:meth:`FusedEncoder.embed`) and at inference (:meth:`FusedEncoder.encode`), so a
text-only item gets exactly the text encoder's vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.encoders.base import (
    DenseEncoder,
    Encoder,
    Item,
    check_side,
    register_encoder,
    write_encoder_config,
)
from xmr.encoders.fusable import IMAGE_SLOT, FusableText, FusionTokens
from xmr.encoders.image import ImageTower
from xmr.errors import EncoderError

PROJECTION_FILE = "image_projection.safetensors"
TEXT_FOLDER = "text"


def item_parts(item: Item) -> tuple[str, list[str]]:
    """(text, image paths) of a query or label; text may be empty for an image-only item."""
    if isinstance(item, str):
        return item, []
    if not isinstance(item, Mapping):
        raise EncoderError(f"an item must be a string or a mapping, got {type(item).__name__}")
    images = list(item.get("images") or [])
    if item.get("image"):
        images.insert(0, item["image"])
    text = item.get("text") or ""
    if not text and not images:
        raise EncoderError(f"item {dict(item)!r} has neither text nor an image")
    return text, [str(path) for path in images]


@register_encoder("fused")
class FusedEncoder(DenseEncoder):
    """A text encoder (any :class:`~xmr.encoders.fusable.FusableText`: sentence-transformers, decoder LLM) that
    also reads up to ``max_images`` images per item."""

    modalities = frozenset({"text", "image"})

    def __init__(
        self,
        text: Mapping[str, Any] | str,
        image: Mapping[str, Any] | None = None,
        max_images: int = 1,
        image_prefix: str = " and its image:",
        projection_file: str | None = None,
        skip_missing_images: bool = False,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:
        from xmr.encoders import load_encoder

        self.text_encoder = load_encoder(text)
        if not isinstance(self.text_encoder, FusableText):
            raise EncoderError(f"fusion needs a text encoder that takes input embeddings (sentence-transformers or "
                               f"decoder-llm), got {self.text_encoder.type_name!r}")
        self.tower = ImageTower(**dict(image or {}), device=device)
        self.max_images = max_images
        self.image_prefix = image_prefix
        self.skip_missing_images = skip_missing_images
        self.batch_size = batch_size
        self.normalize = self.text_encoder.normalize
        embeddings = self.text_encoder.input_embeddings()
        self.device = embeddings.weight.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an untrained projection is the same map on every load
            self.projection = torch.nn.Linear(self.tower.dim, embeddings.embedding_dim)
        self.projection_file = str(Path(projection_file).resolve()) if projection_file else None
        if self.projection_file:
            from safetensors.torch import load_file

            self.projection.load_state_dict(load_file(self.projection_file))
        self.projection = self.projection.to(self.device).eval()

    @property
    def dim(self) -> int:
        return self.text_encoder.dim

    def _prepare(self, items: Sequence[Item], side: str) -> tuple[list[FusionTokens], list[np.ndarray]]:
        """Each item's token sequence (one slot per readable image, at most ``max_images``) and image vectors."""
        check_side(side)
        if isinstance(items, str):
            raise EncoderError("encode a list of items, not a single string")
        parts = [item_parts(item) for item in items]
        paths = [path for _, images in parts for path in images[: self.max_images]]
        vectors, found = self.tower.embed(paths, skip_missing=self.skip_missing_images) if paths else (None, None)
        no_images = np.zeros((0, self.tower.dim), dtype=np.float32)
        sequences, item_images, cursor = [], [], 0
        for position, (text, images) in enumerate(parts):
            count = len(images[: self.max_images])
            kept = vectors[cursor:cursor + count][found[cursor:cursor + count]] if count else no_images
            cursor += count
            if not text and not len(kept):
                raise EncoderError(f"item {position} is image-only and none of its images could be read")
            sequences.append(self.text_encoder.fusion_tokens(text, side, len(kept), self.image_prefix))
            item_images.append(kept)
        return sequences, item_images

    def _forward(self, sequences: list[FusionTokens], images: list[np.ndarray]) -> torch.Tensor:
        """Vectors of right-padded sequences whose image slots take the projected image vectors, in order; the one
        forward of training and inference."""
        width = max(len(sequence.ids) for sequence in sequences)
        ids = torch.zeros((len(sequences), width), dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, :len(sequence.ids)] = torch.tensor(sequence.ids)
            mask[row, :len(sequence.ids)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        slots = ids == IMAGE_SLOT
        inputs = self.text_encoder.input_embeddings()(ids.clamp(min=0))
        if slots.any():
            projected = self.projection(torch.from_numpy(np.concatenate(images)).to(self.device))
            inputs = inputs.masked_scatter(slots.unsqueeze(-1), projected.to(inputs.dtype))
        return self.text_encoder.embed_inputs(inputs, mask, [sequence.pool_skip for sequence in sequences])

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable vectors: :meth:`encode`'s forward as one batch, keeping the autograd graph."""
        return self._forward(*self._prepare(items, side))

    def _encode(self, items: Sequence[Item], side: str) -> np.ndarray:
        """Vectors in batches of ``batch_size`` sorted by length (little padding), under ``torch.inference_mode``."""
        sequences, images = self._prepare(items, side)
        output = np.zeros((len(sequences), self.dim), dtype=np.float32)
        order = np.argsort([-len(sequence.ids) for sequence in sequences], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            with torch.inference_mode():
                vectors = self._forward([sequences[row] for row in rows], [images[row] for row in rows])
            output[rows] = vectors.cpu().numpy()
        return output

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """The text encoder's groups (a decoder's own projection included), the image projection in "projection"."""
        groups = {name: list(parameters) for name, parameters in self.text_encoder.parameter_groups().items()}
        groups.setdefault("projection", []).extend(self.projection.parameters())
        return groups

    def train_mode(self, training: bool) -> None:
        self.text_encoder.train_mode(training)
        self.projection.train(training)

    def encode_queries(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, "query")

    def encode_labels(self, items: Sequence[Item]) -> np.ndarray:
        return self._encode(items, "label")

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "text": self.text_encoder.config(),
            "image": self.tower.config(),
            "max_images": self.max_images,
            "image_prefix": self.image_prefix,
            "projection_file": self.projection_file,
            "skip_missing_images": self.skip_missing_images,
            "batch_size": self.batch_size,
            "device": None,
        }

    runtime_keys = Encoder.runtime_keys | {"skip_missing_images"}

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        identity["text"] = self.text_encoder.identity()
        return identity

    def save(self, folder: str | Path) -> Path:
        """An encoder folder: ``xmr_encoder.json``, the image projection, and the text encoder's own folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config()
        save_file({k: v.contiguous().cpu() for k, v in self.projection.state_dict().items()}, folder / PROJECTION_FILE)
        config["projection_file"] = PROJECTION_FILE
        self.text_encoder.save(folder / TEXT_FOLDER)
        config["text"] = TEXT_FOLDER
        write_encoder_config(folder, config)
        return folder
