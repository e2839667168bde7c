"""Exact inner-product search with torch, chunked so it never holds a queries x labels score matrix.

For GPU users without faiss-gpu (and for k above FAISS-GPU's 2048 limit): label vectors live on the device in
fp16/bf16/fp32; each block of queries is scored against one block of labels at a time and a running top-k is merged,
so memory is ``query_block x (label_block + k)`` whatever the catalogue size. torch is imported only when used, so
CPU-only installs never touch CUDA code paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xmr.errors import XMRError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float16", "bfloat16")


class TorchExactSearch:
    """Top-k by inner product over ``vectors`` (row i has id ``ids[i]``) on ``device``."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray, device: str = "cuda", dtype: str = "float16",
                 query_block: int = 4096, label_block: int = 1 << 18) -> None:
        import torch

        if dtype not in DTYPES:
            raise XMRError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        self.query_block, self.label_block = query_block, label_block
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device, self.dtype)
        self.ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of shape ``(n, k)``, best first; slots past the catalogue hold id -1 and score -inf."""
        import torch

        found_ids = np.full((len(queries), k), -1, dtype=np.int64)
        found_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        depth = min(k, len(self))
        if depth == 0:
            return found_ids, found_scores
        with torch.inference_mode():
            for start in range(0, len(queries), self.query_block):
                block = torch.from_numpy(np.ascontiguousarray(queries[start:start + self.query_block],
                                                              dtype=np.float32)).to(self.device, self.dtype)
                scores, rows = self._block_top_k(block, depth)
                found_ids[start:start + len(block), :depth] = self.ids[rows].cpu().numpy()
                found_scores[start:start + len(block), :depth] = scores.float().cpu().numpy()
        return found_ids, found_scores

    def _block_top_k(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Running top-k over label blocks: merge each block's top-k with the best so far."""
        import torch

        best_scores = best_rows = None
        for start in range(0, len(self), self.label_block):
            scores = queries @ self.vectors[start:start + self.label_block].T
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            rows = top.indices + start
            if best_scores is not None:
                merged = torch.cat([best_scores, top.values], dim=1)
                pick = merged.topk(min(k, merged.shape[1]), dim=1)
                best_scores, best_rows = pick.values, torch.cat([best_rows, rows], dim=1).gather(1, pick.indices)
            else:
                best_scores, best_rows = top.values, rows
        return best_scores, best_rows


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (imports torch; call only when a device was asked for)."""
    import torch

    return bool(torch.cuda.is_available())
