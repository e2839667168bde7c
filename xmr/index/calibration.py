"""Recall calibration for ``recipe="auto"``: the smallest ``efSearch``/``nprobe`` that reaches a target recall@k.

Ground truth is exact search of the same representation (FAISS ``knn`` for dense vectors); the sweep and the chosen
value are returned for the manifest, so a user can see why the index searches the way it does.

Without the user's queries the knob is calibrated on two families of pseudo-queries and must reach the target on
both, because each index type fails on a different one (``eval/bench/calibration``): midpoints of random label pairs
sit between labels, where greedy graph search (HNSW) stops early, and labels moved off the label manifold (as far
from their label as labels are from their nearest neighbour, in a random direction) have neighbours spread over
many IVF cells. Either family alone was optimistic for the other index type by 2 to 13 points of recall.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from xmr.representations import DenseVectors

if TYPE_CHECKING:
    from xmr.index.label_index import LabelIndex

CALIBRATION_VALUES = {"efSearch": [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
                      "nprobe": [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096]}


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def midpoint_queries(vectors: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """Normalised midpoints of random label pairs: points between labels (hard for graph search)."""
    pairs = np.random.default_rng(seed).integers(len(vectors), size=(min(sample, len(vectors)), 2))
    return unit_rows(vectors[pairs[:, 0]] + vectors[pairs[:, 1]])


def off_manifold_queries(vectors: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """Random labels ``v`` moved to ``c v + sqrt(1 - c^2) u`` (``u`` a random unit direction orthogonal to ``v``),
    ``c`` the mean cosine of a sampled label to its nearest other label: off the label manifold, with neighbours
    spread over many IVF cells (hard for cell probing). On 50k PyPI labels real queries sit at cosine 0.649 to their
    nearest label, the labels at 0.646 to theirs."""
    rng = np.random.default_rng(seed)
    base = unit_rows(np.asarray(vectors[rng.integers(len(vectors), size=min(sample, len(vectors)))]))
    similarity, _ = faiss.knn(base, np.ascontiguousarray(vectors, dtype=np.float32), min(2, len(vectors)),
                              metric=faiss.METRIC_INNER_PRODUCT)
    cosine = float(np.clip(np.mean(similarity[:, -1]), 0.2, 0.95))  # duplicates and near-empty catalogues aside
    away = rng.normal(size=base.shape).astype(np.float32)
    away = unit_rows(away - np.sum(away * base, axis=1, keepdims=True) * base)
    return unit_rows(cosine * base + np.sqrt(1 - cosine ** 2) * away)


PSEUDO_QUERIES = {"midpoints": midpoint_queries, "off-manifold": off_manifold_queries}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` found in the same row of ``found``."""
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def calibrate(index: LabelIndex, labels: DenseVectors, target_recall: float, queries: np.ndarray | None = None,
              k: int = 10, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """Set the smallest candidate knob whose recall@k against exact search reaches ``target_recall`` on ``queries``
    (or on every pseudo-query family: the lowest family recall counts); return what was measured (knob, value,
    recall, the sweep per family)."""
    knobs = [name for name in ("nprobe", "efSearch") if name in index.candidates.knobs()]
    if not knobs:
        return {"note": "exact search: nothing to calibrate", "recall_at_10": 1.0}
    vectors = labels.values
    families = {"queries": queries} if queries is not None else {
        name: make(vectors, sample, seed) for name, make in PSEUDO_QUERIES.items()}
    depth = min(k, len(vectors))
    truths = {}
    for name, rows in families.items():
        families[name] = np.ascontiguousarray(rows, dtype=np.float32)
        truths[name] = faiss.knn(families[name], vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)[1]
    knob = knobs[0]
    limit = int(faiss.extract_index_ivf(index.candidates.index).nlist) if knob == "nprobe" else 1 << 30
    sweep: dict[str, dict[int, float]] = {name: {} for name in families}
    recall: dict[int, float] = {}
    for value in [value for value in CALIBRATION_VALUES[knob] if value < limit] + [limit] * (knob == "nprobe"):
        for name, rows in families.items():
            found = index.search_embeddings(rows, k=depth, **{knob: value}).ids
            sweep[name][value] = recall_at_k(found, truths[name])
        recall[value] = min(family[value] for family in sweep.values())
        if recall[value] >= target_recall:
            break
    chosen = next((value for value, got in recall.items() if got >= target_recall), max(recall))
    index.set_search_params(**{knob: chosen})
    return {"knob": knob, "value": chosen, f"recall_at_{depth}": recall[chosen],
            "queries": {name: len(rows) for name, rows in families.items()},
            "target_reached": recall[chosen] >= target_recall,
            "sweep": {name: {str(value): round(got, 4) for value, got in family.items()}
                      for name, family in {"lowest": recall, **sweep}.items()}}
