"""Recall calibration for ``recipe="auto"``: the smallest ``efSearch``/``nprobe`` that reaches a target recall@k.

Ground truth is exact search of the same representation (FAISS ``knn`` for dense vectors); the sweep and the chosen
value are returned for the manifest, so a user can see why the index searches the way it does.
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


def pseudo_queries(vectors: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """Normalised midpoints of random label pairs: points between labels, like real queries, rather than the labels
    themselves, which every index finds trivially."""
    pairs = np.random.default_rng(seed).integers(len(vectors), size=(min(sample, len(vectors)), 2))
    queries = vectors[pairs[:, 0]] + vectors[pairs[:, 1]]
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` found in the same row of ``found``."""
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)]))


def calibrate(index: LabelIndex, labels: DenseVectors, target_recall: float, queries: np.ndarray | None = None,
              k: int = 10, sample: int = 500, seed: int = 0) -> dict[str, Any]:
    """Set the smallest candidate knob whose recall@k against exact search reaches ``target_recall``; return what
    was measured (knob, value, recall, sweep)."""
    knobs = [name for name in ("nprobe", "efSearch") if name in index.candidates.knobs()]
    if not knobs:
        return {"note": "exact search: nothing to calibrate", "recall_at_10": 1.0}
    vectors = labels.values
    queries = np.ascontiguousarray(pseudo_queries(vectors, sample, seed) if queries is None else queries,
                                   dtype=np.float32)
    depth = min(k, len(vectors))
    _, truth = faiss.knn(queries, vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)
    knob = knobs[0]
    limit = int(faiss.extract_index_ivf(index.candidates.index).nlist) if knob == "nprobe" else 1 << 30
    recall: dict[int, float] = {}
    for value in [value for value in CALIBRATION_VALUES[knob] if value < limit] + [limit] * (knob == "nprobe"):
        recall[value] = recall_at_k(index.search_embeddings(queries, k=depth, **{knob: value}).ids, truth)
        if recall[value] >= target_recall:
            break
    chosen = next((value for value, got in recall.items() if got >= target_recall), max(recall))
    index.set_search_params(**{knob: chosen})
    return {"knob": knob, "value": chosen, f"recall_at_{depth}": recall[chosen], "queries": len(queries),
            "target_reached": recall[chosen] >= target_recall,
            "sweep": {str(value): round(got, 4) for value, got in recall.items()}}
