"""What the decoder attends to: a sentence-transformers encoder's token states (frozen), its token ids (for the
BiGRU), and its pooled sentence vectors (what the shortlist index searches), from one forward pass per batch.

The paper encodes with a trained BiGRU over GloVe (Sec. 3.1); here the default is the bundled MiniLM's last hidden
states, frozen, so a run computes them once and trains only the decoder. Token states are kept as float16 and, with
``cache=True``, stored under xmr's cache root (``seq2set-token-states/<sha256>.safetensors``, keyed by the
encoder's identity and the texts), so the three models of an experiment share one encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from xmr.encoders.base import Encoder, item_texts
from xmr.errors import EncoderError
from xmr.io.cache import cache_path

CACHE_FOLDER = "seq2set-token-states"


@dataclass
class EncodedTexts:
    """Per text: token ids and mask ``(n, N)``, token states ``(n, N, d)`` float16 (None when not kept) and the
    pooled sentence vector ``(n, d)`` float32."""

    ids: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray
    states: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray | slice) -> EncodedTexts:
        return EncodedTexts(self.ids[rows], self.mask[rows], self.pooled[rows],
                            None if self.states is None else self.states[rows])


def sentence_model(encoder: Encoder):  # noqa: ANN201 (a SentenceTransformer; imported lazily)
    """The sentence-transformers model inside an xmr encoder; other encoders have no token states to give."""
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "preprocess") or getattr(encoder, "backend", "torch") != "torch":
        raise EncoderError(f"the seq2set decoder needs a sentence-transformers encoder on backend 'torch' for its "
                           f"token states, got {type(encoder).__name__}")
    return model


def encode_texts(encoder: Encoder, items: Sequence, keep_states: bool = True, cache: bool = False,
                 batch_size: int = 64) -> EncodedTexts:
    """Token ids, mask, pooled vectors (and states) of ``items`` padded to the encoder's ``max_seq_length``."""
    texts = item_texts(list(items), getattr(encoder, "model_name", "encoder"))
    key = hashlib.sha256(json.dumps([encoder.identity(), keep_states, texts]).encode()).hexdigest()
    path = cache_path(CACHE_FOLDER, f"{key}.safetensors")
    if cache and path.is_file():
        arrays = load_file(path)
        return EncodedTexts(arrays["ids"], arrays["mask"].astype(bool), arrays["pooled"], arrays.get("states"))
    encoded = _forward(encoder, texts, keep_states, batch_size)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"ids": encoded.ids, "mask": encoded.mask.astype(np.uint8), "pooled": encoded.pooled}
        if encoded.states is not None:
            arrays["states"] = encoded.states
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        save_file(arrays, partial)
        os.replace(partial, path)  # readers never see a half-written cache file
    return encoded


@torch.no_grad()
def _forward(encoder: Encoder, texts: list[str], keep_states: bool, batch_size: int) -> EncodedTexts:
    model = sentence_model(encoder)
    length = int(model.max_seq_length)
    dim = encoder.dim
    n = len(texts)
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=bool)
    pooled = np.zeros((n, dim), dtype=np.float32)
    states = np.zeros((n, length, dim), dtype=np.float16) if keep_states else None
    order = np.argsort([-len(text) for text in texts], kind="stable")  # similar lengths pad less
    was_training = model.training
    model.eval()
    prompt = getattr(encoder, "query_prompt", "") or None
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        features = model.preprocess([texts[row] for row in rows], prompt=prompt)
        features = {name: value.to(model.device) if hasattr(value, "to") else value
                    for name, value in features.items()}
        output = model(features)
        width = features["input_ids"].shape[1]
        ids[rows, :width] = features["input_ids"].cpu().numpy()
        mask[rows, :width] = features["attention_mask"].cpu().numpy().astype(bool)
        vectors = output["sentence_embedding"].float()
        if getattr(encoder, "normalize", False):
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        pooled[rows] = vectors.cpu().numpy()
        if states is not None:
            states[rows, :width] = output["token_embeddings"].float().cpu().numpy().astype(np.float16)
    model.train(was_training)
    return EncodedTexts(ids, mask, pooled, states)


def word_vectors(encoder: Encoder) -> np.ndarray:
    """The encoder's input word embeddings (vocabulary x dim): the BiGRU's initial word vectors, in place of the
    paper's GloVe."""
    model = sentence_model(encoder)
    network = getattr(model[0], "model", None) or getattr(model[0], "auto_model", None)
    return network.get_input_embeddings().weight.detach().float().cpu().numpy()
