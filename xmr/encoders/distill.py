"""Distil a sentence-transformers encoder into static token embeddings (model2vec) for fast queries.

Two steps, both model2vec's own code (extra ``fast``: ``model2vec[distill,train]``):

1. ``model2vec.distill.distill_from_model``: every vocabulary token goes through the teacher's transformer once
   and its mean-pooled output becomes that token's vector, SIF-weighted (Minish Lab, *Model2Vec*, 2024). PCA is
   turned off (``pca_dims=None``) so the table stays in the teacher's vector space: the index's label vectors
   (encoded by the teacher, or learned over its query vectors) are then searched by the static query vectors as
   they are.
2. With a ``corpus`` of query-like texts, ``model2vec.train.StaticModelForSimilarity`` fits the table to the
   teacher's vectors of those texts (cosine loss, no head: ``n_layers=0`` keeps the output a plain mean of token
   vectors; early stopping on a held-out tenth). This is tokenlearn's recipe (model2vec's pre-training: regress
   the teacher's sentence vectors), and what brings a *fine-tuned* teacher's space within reach: step 1 alone
   reads each token out of context, which a fine-tuned encoder's sentence vectors are far from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.encoders.sentence_transformer import SentenceTransformerEncoder
from xmr.encoders.static import StaticEmbeddingEncoder
from xmr.errors import EncoderError

INSTALL_HINT = "pip install 'xmr[fast]' (model2vec[distill,train])"


def distill_static(teacher: SentenceTransformerEncoder, folder: str | Path, corpus: Sequence[str] = (),
                   max_epochs: int = 30, learning_rate: float = 1e-3, seed: int = 42,
                   sif_coefficient: float = 1e-4) -> StaticEmbeddingEncoder:
    """A static query encoder distilled from ``teacher`` (and fitted to its vectors of ``corpus``), written to
    ``folder`` (``vectors.safetensors``, ``tokenizer.json``)."""
    if not isinstance(teacher, SentenceTransformerEncoder) or teacher.backend != "torch":
        raise EncoderError(f"fast queries distil a sentence-transformers encoder on backend 'torch', not "
                           f"{getattr(teacher, 'type_name', type(teacher).__name__)!r}")
    try:
        from model2vec.distill import distill_from_model
    except ImportError as error:
        raise EncoderError(f"distilling static embeddings needs model2vec's distill extra ({error}); "
                           f"{INSTALL_HINT}") from None
    transformer = teacher.model[0]
    network = getattr(transformer, "auto_model", None) or getattr(transformer, "model", None)
    hidden = getattr(getattr(network, "config", None), "hidden_size", None)
    if hidden != teacher.dim:
        raise EncoderError(f"model {teacher.model_name!r}: its transformer gives {hidden}-d token states but the "
                           f"encoder {teacher.dim}-d vectors (a projection after pooling); static embeddings "
                           "distil the token states, so they would not be in the index's space")
    static = distill_from_model(network, teacher.model.tokenizer, pca_dims=None, sif_coefficient=sif_coefficient,
                                quantize_to="float32")
    texts = [text for text in corpus if text.strip()]
    recipe: dict[str, Any] = {"method": "model2vec", "pca_dims": None, "sif_coefficient": sif_coefficient,
                              "corpus": len(texts)}
    if texts:
        static, fitted = fit_to_teacher(static, teacher, texts, max_epochs, learning_rate, seed)
        recipe |= fitted
    return StaticEmbeddingEncoder.from_static_model(static, folder, normalize=teacher.normalize,
                                                    distilled_from=teacher.identity(), distillation=recipe)


def fit_to_teacher(static: Any, teacher: SentenceTransformerEncoder, texts: list[str], max_epochs: int,
                   learning_rate: float, seed: int) -> tuple[Any, dict[str, Any]]:
    """model2vec's ``StaticModelForSimilarity`` fitted to the teacher's query vectors of ``texts``."""
    try:
        from model2vec.train import StaticModelForSimilarity
    except ImportError as error:
        raise EncoderError(f"fitting static embeddings needs model2vec's train extra ({error}); "
                           f"{INSTALL_HINT}") from None
    import torch

    targets = torch.from_numpy(teacher.encode_queries(texts))
    student = StaticModelForSimilarity.from_static_model(model=static, n_layers=0, out_dim=teacher.dim,
                                                         normalize=True)
    student.fit(texts, targets, learning_rate=learning_rate, max_epochs=max_epochs, random_seed=seed,
                device="cpu")
    return student.to_static_model(), {"max_epochs": max_epochs, "learning_rate": learning_rate, "seed": seed}
