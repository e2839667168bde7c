"""Learned label vectors on top of a (frozen) dual encoder, served by the same MIPS index.

A label's vector combines parts: its text embedding, the centroid of its training queries' embeddings (ViXML PRIME,
Sec. 3.4), a free vector shared by its label cluster (NGAME/DEXA auxiliary vectors over balanced k-means clusters of
the label embeddings), and a per-label classifier vector (NGAME's one-vs-all classifiers, trained with shortlisted
negatives). Parts are combined by a plain sum, a gated sum (one learned gate per part and dimension), or a PRIME-style
small Transformer over the parts. Training (the ``label-vectors`` task, ``xmr.train.tasks.label_vectors``) sees
frozen query embeddings only, so it takes seconds; the result is one ``(labels, dim)`` matrix written into an
ordinary index folder. Labels without training queries keep their text embedding exactly, so zero-shot labels are
served as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from xmr.train.recipe import RecipeError

Part = Literal["text", "centroid", "cluster", "classifier"]
Combiner = Literal["sum", "gated", "transformer"]
PARTS: tuple[str, ...] = get_args(Part)
COMBINERS: tuple[str, ...] = get_args(Combiner)


def label_centroids(query_vectors: np.ndarray, positives: list[np.ndarray], n_labels: int) -> tuple[np.ndarray,
                                                                                                     np.ndarray]:
    """Unit-length mean of each label's training query vectors, and how many queries each label has."""
    sums = np.zeros((n_labels, query_vectors.shape[1]), dtype=np.float64)
    counts = np.zeros(n_labels, dtype=np.int64)
    for row, labels in enumerate(positives):
        sums[labels] += query_vectors[row]
        counts[labels] += 1
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32), counts


def centroid_enriched(text: np.ndarray, centroids: np.ndarray, counts: np.ndarray, weight: float) -> np.ndarray:
    """``normalise(text + weight * centroid)`` for labels with training queries; the text vector for the others."""
    enriched = text.copy()
    has = counts > 0
    enriched[has] += weight * centroids[has]
    enriched[has] /= np.maximum(np.linalg.norm(enriched[has], axis=1, keepdims=True), 1e-12)
    return enriched.astype(np.float32)


def balanced_clusters(vectors: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = 10) -> np.ndarray:
    """Cluster id per row from recursive balanced 2-means on cosine similarity (NGAME's ``b_kmeans_dense``): each
    split orders the rows by (similarity to centre 1 - similarity to centre 0) and cuts them into equal halves."""
    rng = np.random.default_rng(seed)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    groups = [np.arange(len(vectors))]
    while len(groups) < n_clusters:
        largest = max(range(len(groups)), key=lambda position: len(groups[position]))
        rows = groups.pop(largest)
        if len(rows) < 2:
            groups.append(rows)
            break
        centres = unit[rng.choice(rows, size=2, replace=False)]
        for _ in range(iterations):
            order = np.argsort(unit[rows] @ centres[1] - unit[rows] @ centres[0], kind="stable")
            halves = rows[order[:len(rows) // 2]], rows[order[len(rows) // 2:]]
            centres = np.stack([unit[half].mean(axis=0) for half in halves])
        groups.extend(halves)
    assignment = np.empty(len(vectors), dtype=np.int64)
    for cluster, rows in enumerate(groups):
        assignment[rows] = cluster
    return assignment


@dataclass
class LabelParts:
    """The fixed inputs: text embeddings, centroids, query counts and cluster ids of every label."""

    text: np.ndarray
    centroid: np.ndarray
    counts: np.ndarray
    cluster: np.ndarray


class LabelVectorModel(torch.nn.Module):
    """Combined label vectors ``V = combine(parts)``; learned: cluster free vectors, classifier vectors, gates or the
    small Transformer. Learned parts start at zero (the sum starts as text + centroid)."""

    def __init__(self, parts: LabelParts, use: list[str], combine: str, heads: int = 4) -> None:
        super().__init__()
        unknown = sorted(set(use) - set(PARTS))
        if unknown or "text" not in use:
            raise RecipeError(f"label_vectors.parts: {use} must include 'text' and come from {list(PARTS)}")
        if combine not in COMBINERS:
            raise RecipeError(f"label_vectors.combine: {combine!r} is not one of {list(COMBINERS)}")
        self.use, self.combine = list(use), combine
        n_labels, dim = parts.text.shape
        self.register_buffer("text", torch.from_numpy(parts.text))
        self.register_buffer("centroid", torch.from_numpy(parts.centroid))
        self.register_buffer("cluster", torch.from_numpy(parts.cluster))
        self.register_buffer("has_queries", torch.from_numpy(parts.counts > 0))
        fixed = parts.text + parts.centroid if "centroid" in use else parts.text
        self.register_buffer("fixed_sum", torch.from_numpy(fixed), persistent=False)  # the sum's fixed parts, once
        n_clusters = int(parts.cluster.max()) + 1
        self.free = torch.nn.Parameter(torch.zeros(n_clusters, dim)) if "cluster" in use else None
        self.classifier = torch.nn.Parameter(torch.zeros(n_labels, dim)) if "classifier" in use else None
        if combine == "gated":
            self.gates = torch.nn.Parameter(torch.zeros(len(use), dim))  # sigmoid(0) * 2 = 1: starts as the sum
        if combine == "transformer":
            layer = torch.nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                                     batch_first=True)
            self.mixer = torch.nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
            self.out = torch.nn.Linear(dim, dim)
            torch.nn.init.zeros_(self.out.weight)
            torch.nn.init.zeros_(self.out.bias)

    def parts(self, labels: torch.Tensor) -> torch.Tensor:
        """``(len(labels), parts, dim)``; a label without queries has a zero centroid."""
        values = {"text": self.text[labels], "centroid": self.centroid[labels]}
        if self.free is not None:
            values["cluster"] = self.free[self.cluster[labels]]
        if self.classifier is not None:
            values["classifier"] = self.classifier[labels]
        return torch.stack([values[name] for name in self.use], dim=1)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.combine == "sum":  # part by part: stacking (labels, parts, dim) first was 1.5x slower at 27k labels
            vectors = self.fixed_sum[labels]
            if self.free is not None:
                vectors = vectors + self.free[self.cluster[labels]]
            if self.classifier is not None:
                vectors = vectors + self.classifier[labels]
            return torch.where(self.has_queries[labels, None], vectors, self.text[labels])
        stacked = self.parts(labels)
        if self.combine == "gated":
            vectors = (2 * torch.sigmoid(self.gates) * stacked).sum(dim=1)
        else:  # PRIME-style: a Transformer reads the parts; its pooled output is added to their sum
            vectors = stacked.sum(dim=1) + self.out(self.mixer(stacked).mean(dim=1))
        return torch.where(self.has_queries[labels, None], vectors, self.text[labels])  # zero-shot labels: text only


def unit_length(vectors: np.ndarray) -> bool:
    """Whether every row is unit length (what an index records as ``normalized``)."""
    return bool(np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3))


@torch.no_grad()
def combined_vectors(model: LabelVectorModel) -> np.ndarray:
    """The ``(labels, dim)`` float32 matrix to index."""
    return model(torch.arange(model.text.shape[0])).numpy().astype(np.float32)
