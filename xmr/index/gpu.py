"""GPU search for a LabelIndex: FAISS GPU indexes when the installed faiss has GPUs, else exact torch search.

Imported only when a user asks for a device (``LabelIndex.to_device``), so CPU-only machines never load CUDA code.
FAISS-GPU answers k <= 2048; deeper searches go to the torch path (exact indexes) or to the CPU index.
"""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from xmr.errors import XMRError
from xmr.index import faiss_ops
from xmr.index.exact import TorchExactSearch, cuda_available

FAISS_GPU_MAX_K = 2048
Searcher = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def device_searcher(index: faiss.Index, device: str, dtype: str = "float16") -> Searcher:
    """A ``(queries, k) -> (ids, scores)`` function that searches ``index``'s vectors on ``device``."""
    flat = faiss_ops.flat_vectors(index)
    if device.startswith("cuda") and not cuda_available():
        raise XMRError(f"device {device!r}: torch sees no CUDA device")
    exact = TorchExactSearch(*flat, device=device, dtype=dtype) if flat is not None else None
    if device.startswith("cuda") and faiss_gpus() > 0:
        return _faiss_gpu_searcher(index, flat, dtype, exact)
    if exact is None:
        raise XMRError(f"this faiss has no GPU support (install faiss-gpu, `pip install 'xmr[gpu]'`); without it only "
                       f"exact (Flat) indexes search on {device} with torch, and this one is "
                       f"{faiss_ops.describe(index)}")
    return exact.search


def _faiss_gpu_searcher(index: faiss.Index, flat: tuple[np.ndarray, np.ndarray] | None, dtype: str,
                        exact: TorchExactSearch | None) -> Searcher:
    resources = faiss.StandardGpuResources()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = dtype != "float32"
    if flat is not None:  # the id map stays on the host: the GPU index holds the bare vectors
        vectors, ids = flat
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatIP(vectors.shape[1]), options)
        gpu_index.add(np.ascontiguousarray(vectors))
    else:
        try:
            gpu_index = faiss.index_cpu_to_gpu(resources, 0, index, options)
        except RuntimeError as error:
            raise XMRError(f"FAISS cannot move {faiss_ops.describe(index)} to the GPU: {error}") from None
        ids = None

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k > FAISS_GPU_MAX_K:
            return exact.search(queries, k) if exact is not None else faiss_ops.search(index, queries, k, {})
        scores, found = gpu_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if ids is not None:
            found = np.where(found >= 0, ids[np.maximum(found, 0)], -1)
        scores[found < 0] = -np.inf
        return found, scores

    search.resources = resources  # keep the GPU memory pool alive as long as the searcher
    return search
