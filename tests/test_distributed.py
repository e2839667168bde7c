"""Data-parallel training: two gloo processes on CPU compute the same loss and gradients as one process."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as multiprocessing

from xmr.train import distributed
from xmr.train.losses import ModelOutput, MultiPositiveInfoNCE

QUERIES, LABELS, DIM = 6, 5, 4


def problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, DIM)
    query_inputs, label_inputs = torch.randn(QUERIES, DIM), torch.randn(LABELS, DIM)
    positives = torch.zeros(QUERIES, LABELS, dtype=torch.bool)
    positives[torch.arange(QUERIES), torch.arange(QUERIES) % LABELS] = True
    positives[0, 3] = True
    return model, query_inputs, label_inputs, positives


def loss_and_grads(processes: distributed.Processes):
    model, query_inputs, label_inputs, positives = problem()
    query_share, query_sizes = distributed.shard(QUERIES, processes)
    label_share, label_sizes = distributed.shard(LABELS, processes)
    queries = distributed.gather_with_grad(model(query_inputs[query_share]), query_sizes, processes)
    labels = distributed.gather_with_grad(model(label_inputs[label_share]), label_sizes, processes)
    loss = MultiPositiveInfoNCE(temperature=0.5)(ModelOutput(queries, labels, positives))
    loss.backward()
    distributed.average_gradients(list(model.parameters()), processes)
    return loss.detach(), [parameter.grad.clone() for parameter in model.parameters()]


def worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    processes = distributed.start(device="cpu")
    loss, grads = loss_and_grads(processes)
    results[rank] = (loss, grads)
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_match_one():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    single_loss, single_grads = loss_and_grads(distributed.Processes())
    with multiprocessing.Manager() as manager:
        results = manager.dict()
        multiprocessing.spawn(worker, args=(2, port, results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        loss, grads = results[rank]
        assert torch.allclose(loss, single_loss, atol=1e-6)
        for grad, expected in zip(grads, single_grads, strict=True):
            assert torch.allclose(grad, expected, atol=1e-6)
