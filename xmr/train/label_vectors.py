"""Learned label vectors on top of a (frozen) dual encoder, served by the same MIPS index.

A label's vector combines parts: its text embedding, the centroid of its training queries' embeddings (ViXML PRIME,
Sec. 3.4), a free vector shared by its label cluster (NGAME/DEXA auxiliary vectors over balanced k-means clusters of
the label embeddings), and a per-label classifier vector (NGAME's one-vs-all classifiers, trained with shortlisted
negatives). Parts are combined by a plain sum, a gated sum (one learned gate per part and dimension), or a PRIME-style
small Transformer over the parts. Training sees frozen query embeddings only, so it takes seconds; the result is one
``(labels, dim)`` matrix written into an ordinary index folder. Labels without training queries keep their text
embedding exactly, so zero-shot labels are served as before.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as functional

from xmr.train.losses import decoupled_log_probs

PARTS = ("text", "centroid", "cluster", "classifier")
COMBINERS = ("sum", "gated", "transformer")


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
            raise ValueError(f"label_vectors.parts: {use} must include 'text' and come from {list(PARTS)}")
        if combine not in COMBINERS:
            raise ValueError(f"label_vectors.combine: {combine!r} is not one of {list(COMBINERS)}")
        self.use, self.combine = list(use), combine
        n_labels, dim = parts.text.shape
        self.register_buffer("text", torch.from_numpy(parts.text))
        self.register_buffer("centroid", torch.from_numpy(parts.centroid))
        self.register_buffer("cluster", torch.from_numpy(parts.cluster))
        self.register_buffer("has_queries", torch.from_numpy(parts.counts > 0))
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
        stacked = self.parts(labels)
        if self.combine == "sum":
            vectors = stacked.sum(dim=1)
        elif self.combine == "gated":
            vectors = (2 * torch.sigmoid(self.gates) * stacked).sum(dim=1)
        else:  # PRIME-style: a Transformer reads the parts; its pooled output is added to their sum
            vectors = stacked.sum(dim=1) + self.out(self.mixer(stacked).mean(dim=1))
        return torch.where(self.has_queries[labels, None], vectors, self.text[labels])  # zero-shot labels: text only


@dataclass
class LabelVectorFit:
    """What stage 2 did: mean loss per epoch, the validation score after each epoch (index 0: before training) and
    the epoch whose parameters the model holds at the end (0: the untrained sum of the fixed parts)."""

    losses: list[float]
    validation: list[float]
    best_epoch: int


def train_label_vectors(model: LabelVectorModel, query_vectors: np.ndarray, positives: list[np.ndarray], *,
                        loss: str = "softmax", shortlist: int = 0, epochs: int = 20, batch_size: int = 256,
                        lr: float = 1e-2, weight_decay: float = 0.0, temperature: float = 0.05, seed: int = 0,
                        validate: Callable[[np.ndarray], float] | None = None) -> LabelVectorFit:
    """Fit the learned parts on frozen query vectors.

    Each batch scores its queries against its shortlist: the queries' positives plus the ``shortlist`` labels that
    currently score highest (all labels when ``shortlist`` is 0 or covers them). ``softmax`` is the decoupled
    softmax (each positive against the non-positives), ``bce`` one-vs-all logistic loss on ``q . v / temperature``.
    ``validate`` scores combined vectors (higher is better) before training and after every epoch; the model ends
    with the best-scoring parameters, so per-label parts that overfit their few queries never reach the index.
    """
    if loss not in ("softmax", "bce"):
        raise ValueError(f"label_vectors.loss: {loss!r} is not softmax or bce")
    generator = torch.Generator().manual_seed(seed)
    queries = torch.from_numpy(np.ascontiguousarray(query_vectors, dtype=np.float32))
    n_labels = model.text.shape[0]
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    scores = [validate(combined_vectors(model))] if validate else []
    if not parameters:
        return LabelVectorFit([], scores, 0)
    best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    all_labels = torch.arange(n_labels)
    history = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(queries), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            row_positives = [positives[row] for row in rows.tolist()]
            columns = all_labels
            if 0 < shortlist < n_labels:
                with torch.no_grad():
                    top = (queries[rows] @ model(all_labels).T).topk(shortlist, dim=1).indices
                columns = torch.unique(torch.cat([top.flatten(), torch.from_numpy(np.concatenate(row_positives))]))
            logits = queries[rows] @ model(columns).T / temperature
            cells = torch.from_numpy(np.stack([np.isin(columns.numpy(), labels) for labels in row_positives]))
            if loss == "bce":
                value = functional.binary_cross_entropy_with_logits(logits, cells.float())
            else:
                has = cells.any(dim=1)
                log_probs = decoupled_log_probs(logits[has], cells[has])
                value = -((log_probs * cells[has]).sum(dim=1) / cells[has].sum(dim=1)).mean()
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total, batches = total + float(value.detach()), batches + 1
        history.append(total / batches)
        if validate:
            scores.append(validate(combined_vectors(model)))
            if scores[-1] > scores[best_epoch]:
                best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
    if validate:
        model.load_state_dict(best_state)
    else:
        best_epoch = epochs
    return LabelVectorFit(history, scores, best_epoch)


@torch.no_grad()
def combined_vectors(model: LabelVectorModel) -> np.ndarray:
    """The ``(labels, dim)`` float32 matrix to index."""
    return model(torch.arange(model.text.shape[0])).numpy().astype(np.float32)
