"""PCA-ITQ: iterative quantisation (Gong, Lazebnik, Gordo & Perronnin, "Iterative Quantization: A Procrustean
Approach to Learning Binary Codes", TPAMI 2013, Sec. 2: PCA to ``bits`` dimensions, then the orthogonal rotation
``R`` that minimises ``||B - V R||^2`` by alternating ``B = sign(V R)`` and an orthogonal Procrustes step), through
FAISS's ``ITQTransform`` (the same transform ``faiss.index_factory(d, "ITQ64,LSH")`` puts before its sign hash).

Two uses: the data-independent-of-pairs baseline text-only hashing must beat (codes of the frozen MiniLM vectors),
and the initialisation of PromptHash's hash heads (``prompthash.init: itq``), so that at step 0 the trained network's
sign codes are the ITQ codes of the tower features and training starts from the towers' geometry instead of a
random projection of a random network.
"""

from __future__ import annotations

import numpy as np

from xmr.errors import XMRError
from xmr.representations import BinaryCodes


def fit_itq(vectors: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(weight (bits, d), bias (bits,))`` such that ``sign(x @ weight.T + bias)`` is FAISS's PCA-ITQ code of ``x``.

    FAISS applies ``A (x - mean) / ||x - mean||`` (``ITQTransform::apply_noalloc``); the positive norm does not change
    a sign, so the affine map ``A x - A mean`` gives the same bits. Each output is scaled to unit standard deviation
    over ``vectors`` (signs unchanged), which puts a ``tanh`` head on it in its working range."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) < 2:
        raise XMRError(f"ITQ needs a (n >= 2, d) array of vectors, got shape {vectors.shape}")
    dim = vectors.shape[1]
    if not 0 < bits <= dim:
        raise XMRError(f"ITQ rotates at most the {dim} dimensions of the vectors; {bits} bits asked")
    if bits > len(vectors):
        raise XMRError(f"PCA to {bits} dimensions needs at least {bits} vectors, got {len(vectors)}")
    transform = faiss.ITQTransform(dim, bits, True)
    transform.train(vectors)
    weight = faiss.vector_to_array(transform.pca_then_itq.A).reshape(bits, dim).astype(np.float32)
    bias = -weight @ faiss.vector_to_array(transform.mean).astype(np.float32)
    scale = (vectors @ weight.T + bias).std(axis=0) + 1e-12
    return weight / scale[:, None], bias / scale


def itq_codes(vectors: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> BinaryCodes:
    """The sign codes of ``vectors`` under a :func:`fit_itq` map."""
    return BinaryCodes.from_signs(np.asarray(vectors, dtype=np.float32) @ weight.T + bias)
