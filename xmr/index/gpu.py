"""Device search for a label index: its candidate vectors searched on a GPU (a runtime placement, not a folder stage).

FAISS GPU indexes when the installed faiss has GPUs (k <= 2048; IVF ``nprobe`` per call), else exact torch search
over the vectors of a Flat index (any k, fp16/bf16/fp32 storage). The torch copy is made only where it is used: as
the searcher without faiss-gpu, or on the first search deeper than FAISS-GPU allows. Imported only when a user asks
for a device, so CPU-only machines never load CUDA code.
"""

from __future__ import annotations

import threading

import faiss
import numpy as np

from xmr.errors import XMRError
from xmr.index import faiss_ops
from xmr.index.stages.faiss_dense import FaissDenseStage
from xmr.index.torch_exact import TorchExactSearch, cuda_available
from xmr.representations import DenseVectors, Representation

FAISS_GPU_MAX_K = 2048


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu)."""
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


class DeviceSearch:
    """Searches a ``faiss`` candidate stage's vectors on ``device``; same ``search`` contract as the stage."""

    def __init__(self, stage: FaissDenseStage, device: str, dtype: str = "float16") -> None:
        if device.startswith("cuda") and not cuda_available():
            raise XMRError(f"device {device!r}: torch sees no CUDA device")
        self.stage, self.device, self.dtype = stage, device, dtype
        self.flat = stage.flat_vectors()
        self._torch: TorchExactSearch | None = None
        self._lock = threading.Lock()
        self.gpu_index = self.gpu_ids = None
        if device.startswith("cuda") and faiss_gpus() > 0:
            self._to_faiss_gpu()
        elif self.flat is None:
            raise XMRError(f"this faiss has no GPU support (install faiss-gpu, `pip install 'xmr[gpu]'`); without it "
                           f"only exact (Flat) indexes search on {device} with torch, and this one is "
                           f"{stage.structure}")

    @property
    def backend(self) -> str:
        return "faiss-gpu" if self.gpu_index is not None else "torch"

    def _to_faiss_gpu(self) -> None:
        self.resources = faiss.StandardGpuResources()  # kept alive as long as the GPU index
        options = faiss.GpuClonerOptions()
        options.useFloat16 = self.dtype != "float32"
        if self.flat is not None:  # the id map stays on the host: the GPU index holds the bare vectors
            vectors, self.gpu_ids = self.flat
            self.gpu_index = faiss.index_cpu_to_gpu(self.resources, 0, faiss.IndexFlatIP(vectors.shape[1]), options)
            self.gpu_index.add(np.ascontiguousarray(vectors))
            return
        try:
            self.gpu_index = faiss.index_cpu_to_gpu(self.resources, 0, self.stage.index, options)
        except RuntimeError as error:
            raise XMRError(f"FAISS cannot move {self.stage.structure} to the GPU: {error}") from None

    def torch_search(self) -> TorchExactSearch:
        with self._lock:
            if self._torch is None:
                self._torch = TorchExactSearch(*self.flat, device=self.device, dtype=self.dtype)
        return self._torch

    def search(self, queries: Representation, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(queries, DenseVectors):
            raise XMRError(f"device search takes dense vectors, got {queries.kind}")
        unknown = sorted(set(knobs) - set(self.stage.knobs()))
        if unknown:  # the same refusal as on the CPU, never a silent fallback
            raise XMRError(f"search parameter(s) {unknown} do not apply to {self.stage.structure}; it has "
                           f"{sorted(self.stage.knobs())}")
        if self.gpu_index is not None and k <= FAISS_GPU_MAX_K:
            return self._faiss_gpu_search(queries.values, k, knobs)
        if self.flat is not None:
            return self.torch_search().search(queries.values, k)
        return self.stage.search(queries, k, knobs)  # deeper than FAISS-GPU allows on a non-exact index: the CPU

    def _faiss_gpu_search(self, vectors: np.ndarray, k: int, knobs: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersIVF(nprobe=int(knobs["nprobe"])) if "nprobe" in knobs else None
        extra = sorted(set(knobs) - {"nprobe"})
        if extra:
            raise XMRError(f"search parameter(s) {extra} cannot be set per call on the GPU copy of "
                           f"{self.stage.structure}; only nprobe can")
        scores, found = self.gpu_index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
        if self.gpu_ids is not None:
            found = np.where(found >= 0, self.gpu_ids[np.maximum(found, 0)], -1)
        scores[found < 0] = -np.inf
        return found, scores

    @property
    def structure(self) -> str:
        return f"{self.backend} on {self.device} ({faiss_ops.describe(self.stage.index)})"
