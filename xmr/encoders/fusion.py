"""ViXML early fusion: each image becomes ONE token in the text encoder's input embeddings.

ViXML (Ortego et al., Sec. 3.2 "multi-modal", reference code ``HFTransformerInputLayer``): an image tower gives one
pooled vector per image; a learned ``Linear(image_dim, hidden_size)`` maps it to a token embedding that is placed in
``inputs_embeds`` next to the word embeddings, with an attention-mask entry per image (masked when missing). For
BERT-like sentence-transformers the image tokens come first, then ``[CLS] text [SEP]``, mean pooled; for decoder
LLMs the sequence is ``template(text) + image_prefix + image tokens + EOS`` ("This product text: ... and its image:
<img> </s>"), pooled like the text-only decoder. Items without an image take the text encoder's own path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.encoders.base import ENCODER_FILE, DenseEncoder, Encoder, Item, register_encoder
from xmr.encoders.decoder import DecoderEncoder
from xmr.encoders.image import ImageTower
from xmr.encoders.pooling import mean_pool, pool, position_ids
from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
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
    """A text encoder (sentence-transformers or decoder LLM) that also reads up to ``max_images`` images per item."""

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
        if not isinstance(self.text_encoder, (SentenceTransformerEncoder, DecoderEncoder)):
            raise EncoderError(f"fusion needs a sentence-transformers or decoder-llm text encoder, "
                               f"got {self.text_encoder.type_name!r}")
        self.tower = ImageTower(**dict(image or {}), device=device)
        self.max_images = max_images
        self.image_prefix = image_prefix
        self.skip_missing_images = skip_missing_images
        self.batch_size = batch_size
        self.normalize = self.text_encoder.normalize
        if isinstance(self.text_encoder, SentenceTransformerEncoder):
            transformer, pooling = self.text_encoder.model[0], self.text_encoder.model[1]
            if getattr(pooling, "pooling_mode", "mean") != "mean":
                raise EncoderError("fusion with sentence-transformers needs a mean-pooling model")
            self.network = transformer.auto_model
        else:
            self.network = self.text_encoder.backbone
        hidden = int(self.network.config.hidden_size)
        self.device = next(self.network.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # an untrained projection is the same map on every load
            self.projection = torch.nn.Linear(self.tower.dim, hidden)
        self.projection_file = str(Path(projection_file).resolve()) if projection_file else None
        if self.projection_file:
            from safetensors.torch import load_file

            self.projection.load_state_dict(load_file(self.projection_file))
        self.projection = self.projection.to(self.device).eval()

    @property
    def dim(self) -> int:
        return self.text_encoder.dim

    # ---- sequences with image slots ---------------------------------------------------------------------------
    def _decoder_sequence(self, text: str, images: int, template: str) -> list[int]:
        encoder: DecoderEncoder = self.text_encoder  # type: ignore[assignment]
        ids = encoder.token_ids([text], template)[0]
        if encoder.append_eos:
            ids = ids[:-1]
        if images:
            ids = ids + encoder.tokenizer(self.image_prefix, add_special_tokens=False)["input_ids"] + [-1] * images
        return ids + ([encoder.tokenizer.eos_token_id] if encoder.append_eos else [])

    def _bert_sequence(self, text: str, images: int, prompt: str) -> list[int]:
        encoder: SentenceTransformerEncoder = self.text_encoder  # type: ignore[assignment]
        room = encoder.max_seq_length - images
        ids = encoder.model.tokenizer(prompt + text, truncation=True, max_length=room)["input_ids"]
        return [-1] * images + ids

    @torch.inference_mode()
    def _embed_fused(self, sequences: list[list[int]], image_vectors: list[np.ndarray]) -> np.ndarray:
        """Vectors of sequences whose ``-1`` slots take the projected image vectors, in order."""
        return self._forward_fused(sequences, image_vectors).cpu().numpy()

    def _forward_fused(self, sequences: list[list[int]], image_vectors: list[np.ndarray]) -> torch.Tensor:
        """As :meth:`_embed_fused`, keeping the autograd graph (training)."""
        width = max(len(sequence) for sequence in sequences)
        embed_tokens = self.network.get_input_embeddings()
        left = isinstance(self.text_encoder, DecoderEncoder) and self.text_encoder.padding_side == "left"
        inputs = torch.zeros((len(sequences), width, embed_tokens.embedding_dim), device=self.device,
                             dtype=embed_tokens.weight.dtype)
        mask = torch.zeros((len(sequences), width), dtype=torch.long, device=self.device)
        for row, (sequence, vectors) in enumerate(zip(sequences, image_vectors, strict=True)):
            ids = torch.tensor(sequence, device=self.device)
            slots = ids < 0
            rows = embed_tokens(ids.clamp(min=0))
            if slots.any():
                projected = self.projection(torch.from_numpy(vectors).to(self.device))
                rows[slots] = projected.to(rows.dtype)
            span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
            inputs[row, span] = rows
            mask[row, span] = 1
        if isinstance(self.text_encoder, DecoderEncoder):
            hidden = self.network(inputs_embeds=inputs, attention_mask=mask, position_ids=position_ids(mask))
            pooled = pool(hidden.last_hidden_state, mask, self.text_encoder.pooling)
            return self.text_encoder.finish(pooled)
        hidden = self.network(inputs_embeds=inputs, attention_mask=mask).last_hidden_state
        pooled = mean_pool(hidden, mask).float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled

    def _item_images(self, parts: list[tuple[str, list[str]]]) -> list[np.ndarray]:
        """Image-tower vectors of each item's readable images (at most ``max_images``; may be none)."""
        paths = [path for _, images in parts for path in images[: self.max_images]]
        vectors, found = self.tower.embed(paths, skip_missing=self.skip_missing_images) if paths else (None, None)
        kept_per_item, cursor = [], 0
        for _, images in parts:
            count = len(images[: self.max_images])
            kept_per_item.append(vectors[cursor:cursor + count][found[cursor:cursor + count]] if count
                                 else np.zeros((0, self.tower.dim), dtype=np.float32))
            cursor += count
        return kept_per_item

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable vectors; text-only items take the same fused path with no image slots."""
        parts = [item_parts(item) for item in items]
        images = self._item_images(parts)
        sequences = [self._sequence(text, len(kept), side) for (text, _), kept in zip(parts, images, strict=True)]
        return self._forward_fused(sequences, images)

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"encoder": self.text_encoder.parameter_groups()["encoder"],
                "projection": list(self.projection.parameters())}

    def train_mode(self, training: bool) -> None:
        self.text_encoder.train_mode(training)
        self.projection.train(training)

    def _encode(self, items: Sequence[Item], side: str) -> np.ndarray:
        parts = [item_parts(item) for item in items]
        output = np.zeros((len(parts), self.dim), dtype=np.float32)
        text_rows, fused_rows, fused_images = [], [], []
        for row, kept in enumerate(self._item_images(parts)):
            if len(kept):
                fused_rows.append(row)
                fused_images.append(kept)
            else:
                text_rows.append(row)
        if text_rows:
            encode = self.text_encoder.encode_queries if side == "query" else self.text_encoder.encode_labels
            texts = [parts[row][0] for row in text_rows]
            if any(not text for text in texts):
                raise EncoderError("an image-only item has no readable image and no text")
            output[text_rows] = encode(texts)
        for start in range(0, len(fused_rows), self.batch_size):
            rows = fused_rows[start:start + self.batch_size]
            images = fused_images[start:start + self.batch_size]
            sequences = [self._sequence(parts[row][0], len(kept), side) for row, kept in zip(rows, images, strict=True)]
            output[rows] = self._embed_fused(sequences, images)
        return output

    def _sequence(self, text: str, images: int, side: str) -> list[int]:
        encoder = self.text_encoder
        if isinstance(encoder, DecoderEncoder):
            template = encoder.query_template if side == "query" else encoder.label_template
            return self._decoder_sequence(text, images, template)
        prompt = encoder.query_prompt if side == "query" else encoder.label_prompt
        return self._bert_sequence(text, images, prompt)

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
        import json

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config()
        save_file({k: v.contiguous().cpu() for k, v in self.projection.state_dict().items()}, folder / PROJECTION_FILE)
        config["projection_file"] = PROJECTION_FILE
        self.text_encoder.save(folder / TEXT_FOLDER)
        config["text"] = TEXT_FOLDER
        (folder / ENCODER_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return folder
