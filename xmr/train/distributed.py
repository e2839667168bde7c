"""Data-parallel training across processes (``accelerate launch`` or ``torchrun``): one process per device.

Each process encodes its share of a global batch; embeddings are gathered WITH gradients so every process scores
the global query x label matrix (the in-batch negatives of all devices), and gradients are averaged afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


def start(device: str | None = None) -> Processes:
    """Join the process group that ``accelerate launch``/``torchrun`` describe in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world == 1:
        return Processes(0, 1, device or ("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    return Processes(dist.get_rank(), dist.get_world_size(), f"cuda:{local_rank}" if cuda else "cpu")


def shard(count: int, processes: Processes) -> tuple[slice, list[int]]:
    """This process's contiguous share of ``count`` rows, and every process's share size."""
    sizes = [len(part) for part in torch.arange(count).tensor_split(processes.world)]
    start = sum(sizes[:processes.rank])
    return slice(start, start + sizes[processes.rank]), sizes


def gather_with_grad(tensor: torch.Tensor, sizes: list[int], processes: Processes) -> torch.Tensor:
    """Concatenate every process's rows (shares of ``sizes``, rank order); gradients flow back to each process's own
    rows. Shares may differ by a row: they are padded for the collective and trimmed after."""
    if processes.world == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    widest = max(sizes)
    padded = torch.cat([tensor, tensor.new_zeros((widest - len(tensor), *tensor.shape[1:]))]) \
        if len(tensor) < widest else tensor
    parts = all_gather(padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)], dim=0)


def average_gradients(parameters: list[torch.nn.Parameter], processes: Processes) -> None:
    """Average gradients across processes (each process computed the same global loss)."""
    if processes.world == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)  # gloo has no AVG
            parameter.grad /= processes.world


def barrier(processes: Processes) -> None:
    if processes.world > 1:
        dist.barrier()


def slowest(seconds: float, processes: Processes) -> float:
    """The largest of every process's ``seconds`` (so a wall-clock budget gives every process the same step count)."""
    if processes.world == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64,
                         device=processes.device if processes.device.startswith("cuda") else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())
