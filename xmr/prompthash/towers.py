"""The two towers PromptHash hashes from (the paper's CLIP encoders and text affinity prompts; reference
``hash_model.py``: ``PromptHash``, ``VLPromptLearner``), and the text affinity prompt.

* :class:`ClipTowers`: an open_clip model, frozen except its last ``unfreeze_last`` residual blocks of each tower
  (the reference unfreezes blocks 10 and 11 of ViT-B-16's image and text towers). ``pretrained`` is an open_clip
  tag or checkpoint; without one the towers are random from ``seed`` (no CLIP weights exist offline; the bundled
  ``prompthash-tiny-clip`` config is such a small random model).
* :class:`TextTowers`: a frozen sentence-transformers model (the bundled MiniLM; ``model`` is a name or an xmr
  encoder config) for text-only hashing: its query vectors take the image slot, its label vectors the text slot.

Both build the affinity prompt of an item from its label names, ``"This is an image containing {names}"`` (the
reference's ``ctx_init``; ``"This is a text about {names}"`` for text towers), and add learnable context vectors
(one per token position, initialised N(0, 0.02) as ``VLPromptLearner``) to the prompt's token embeddings before
the text transformer, so the prompt feature is learned while the tower stays frozen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmr.encoders.embedding_cache import EmbeddingCache
from xmr.errors import EncoderError
from xmr.io.cache import cache_root

CLIP_CONFIGS = resources.files("xmr.prompthash") / "clip_configs"
IMAGE_PROMPT = "This is an image containing {}"
TEXT_PROMPT = "This is a text about {}"
CACHE_CHUNK = 2048  # texts encoded between cache writes


def prompt_text(template: str, names: Sequence[str]) -> str:
    return template.format(", ".join(names))


class ClipTowers(nn.Module):
    """open_clip image and text towers with a learnable prompt context."""

    kind = "open_clip"
    prompt_template = IMAGE_PROMPT

    def __init__(self, model: str = "prompthash-tiny-clip", pretrained: str | None = None, seed: int = 0,
                 unfreeze_last: int = 2) -> None:
        super().__init__()
        import open_clip

        open_clip.add_model_config(Path(str(CLIP_CONFIGS)))
        self.settings = {"kind": self.kind, "model": model, "pretrained": pretrained, "seed": seed,
                         "unfreeze_last": unfreeze_last}
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.clip, _, self.preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained)
        except RuntimeError as error:
            raise EncoderError(f"cannot create open_clip model {model!r} (pretrained={pretrained!r}): "
                               f"{error}") from None
        self.tokenizer = open_clip.get_tokenizer(model)
        self.clip.requires_grad_(False)
        for tower in (self.clip.visual.transformer, self.clip.transformer):
            for block in list(tower.resblocks)[len(tower.resblocks) - unfreeze_last:] if unfreeze_last else []:
                block.requires_grad_(True)
        width = self.clip.token_embedding.weight.shape[1]
        self.ctx = nn.Parameter(torch.randn(self.clip.positional_embedding.shape[0], width) * 0.02)
        self.features = int(self.clip.visual.output_dim)

    def pixels(self, paths: Sequence[str]) -> torch.Tensor:
        """Preprocessed image tensors (the tower's own transform)."""
        from PIL import Image

        try:
            return torch.stack([self.preprocess(Image.open(path).convert("RGB")) for path in paths])
        except (OSError, ValueError) as error:
            raise EncoderError(f"image could not be read: {error}") from None

    def tokens(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(pixels), dim=-1)

    def text(self, tokens: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """open_clip's ``encode_text`` with ``context`` added to the token embeddings (the affinity prompt)."""
        clip = self.clip
        x = clip.token_embedding(tokens)
        if context is not None:
            x = x + context[None, : x.shape[1]]
        x = clip.transformer(x + clip.positional_embedding, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)
        x = x[torch.arange(len(x)), tokens.argmax(dim=-1)]  # the end-of-text token (the largest id), as CLIP pools
        x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        return F.normalize(x, dim=-1)

    def prompt(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens, self.ctx)

    def trainable_tower_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if p.requires_grad and name != "ctx"]


class TextTowers(nn.Module):
    """A frozen sentence-transformers model for both sides of text-only hashing, with a learnable prompt context."""

    kind = "sentence-transformers"
    prompt_template = TEXT_PROMPT

    def __init__(self, model: str | dict[str, Any] = "all-MiniLM-L6-v2", max_prompt_tokens: int = 48) -> None:
        super().__init__()
        from xmr.encoders import load_encoder

        self.settings = {"kind": self.kind, "model": model, "max_prompt_tokens": max_prompt_tokens}
        self.encoder = load_encoder(model, device="cpu")
        self.st = self.encoder.model  # the SentenceTransformer
        self.st.requires_grad_(False)
        self.max_prompt_tokens = max_prompt_tokens
        self.features = int(self.encoder.dim)
        width = self.st[0].auto_model.get_input_embeddings().weight.shape[1]
        self.ctx = nn.Parameter(torch.randn(max_prompt_tokens, width) * 0.02)
        identity = hashlib.sha256(json.dumps(self.encoder.identity(), sort_keys=True).encode()).hexdigest()[:16]
        self.cache = EmbeddingCache(cache_root() / "prompthash-text" / identity, self.features)

    def encode(self, texts: Sequence[str], side: str) -> np.ndarray:
        """The frozen tower's unit vectors (what the hash net takes), through a content-addressed cache under
        xmr's cache root (the spine's :class:`~xmr.encoders.embedding_cache.EmbeddingCache`, keyed by the tower's
        identity, the side and the text), so training, validation and evaluation encode each text once."""
        keys = [hashlib.sha256(f"{side}\0{text}".encode()).hexdigest() for text in texts]
        known = self.cache.load()
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        first = {key: text for key, text in zip(keys, texts, strict=True)}
        for start in range(0, len(missing), CACHE_CHUNK):  # cached chunk by chunk: a killed run keeps its progress
            chunk = missing[start:start + CACHE_CHUNK]
            vectors = self.encoder.encode([first[key] for key in chunk], side).values
            self.cache.add(dict(zip(chunk, vectors, strict=True)))
            known.update(zip(chunk, vectors, strict=True))
        return np.stack([known[key] for key in keys]) if keys else np.zeros((0, self.features), np.float32)

    def tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.st.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_prompt_tokens,
                                 return_tensors="pt")

    def prompt(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled, unit-length output with the context added to the token embeddings."""
        bert = self.st[0].auto_model
        embeddings = bert.get_input_embeddings()(tokens["input_ids"])
        embeddings = embeddings + self.ctx[None, : embeddings.shape[1]]
        hidden = bert(inputs_embeds=embeddings, attention_mask=tokens["attention_mask"]).last_hidden_state
        mask = tokens["attention_mask"][..., None].to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def trainable_tower_parameters(self) -> list[nn.Parameter]:
        return []


def build_towers(settings: dict[str, Any]) -> ClipTowers | TextTowers:
    """Towers from their ``settings`` (what an encoder config's ``towers`` holds)."""
    options = {key: value for key, value in settings.items() if key != "kind"}
    kinds = {ClipTowers.kind: ClipTowers, TextTowers.kind: TextTowers}
    if settings.get("kind") not in kinds:
        raise EncoderError(f"towers.kind must be one of {sorted(kinds)}, got {settings.get('kind')!r}")
    try:
        return kinds[settings["kind"]](**options)
    except TypeError as error:
        raise EncoderError(f"towers config is invalid: {error}") from None
