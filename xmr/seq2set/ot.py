"""The optimal-transport half of the OTSeq2Set loss: cosine costs and the IPOT plan (Sec. 3.3 of the paper).

OTSeq2Set (Cao et al., "An Optimal Transport Enhanced Sequence-to-Set Model for Extreme Multi-label Text
Classification") adds ``lambda * D_ot`` to the bipartite-matching NLL: the predicted sequence of *soft* label
embeddings (each step's probabilities times the label embedding table) is transported onto the gold label
embeddings with cost ``1 - cos`` (Eq. 8-10), and the plan comes from IPOT (Xie et al., "A Fast Proximal Point
Method for Computing Exact Wasserstein Distance", UAI 2019) with beta 1, 50 iterations, one inner step and uniform
marginals. Reference code: caojie54/OTSeq2Set ``model/loss.py`` (``cos_distance``, ``ipot``, ``ipot_WD``; the
configuration ``ipot_E_non_empty: true`` transports onto the non-empty gold labels only, as here).

POT (``ot``) has no IPOT solver (its Sinkhorn is the entropic, not the proximal-point, iteration), so the plan is
computed here in batched torch; the tests check it against POT's exact ``ot.emd``.
"""

from __future__ import annotations

import torch


def cosine_cost(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(source_i, target_j)`` for ``(b, m, d)`` and ``(b, n, d)`` -> ``(b, m, n)`` (``cos_distance``)."""
    dots = source @ target.transpose(1, 2)
    norms = source.norm(dim=2, keepdim=True) * target.norm(dim=2, keepdim=True).transpose(1, 2)
    return 1 - dots / norms.clamp_min(eps)


@torch.no_grad()
def ipot_plan(cost: torch.Tensor, target_mask: torch.Tensor | None = None, beta: float = 1.0,
              iterations: int = 50, inner: int = 1) -> torch.Tensor:
    """IPOT transport plans ``(b, m, n)`` for costs ``(b, m, n)`` with uniform marginals ``1/m`` and ``1/n_b``.

    ``target_mask`` (bool ``(b, n)``) marks the real target columns of each row (gold sets differ in size): masked
    columns get zero mass, so each plan's column marginal is uniform over its own ``n_b`` targets. The proximal
    point iteration ``Q = exp(-C/beta) * T``, then Sinkhorn-like scalings of ``Q`` (Algorithm 1 of Xie et al.),
    converges to the exact OT plan as ``iterations`` grow, unlike entropic Sinkhorn; the last scaling makes the
    target marginal exact, the source marginal approaches ``1/m``. No gradient flows through the
    plan (the paper treats it as a constant, as the reference does under ``torch.no_grad``).
    """
    cost = cost.detach().double()
    batch, m, n = cost.shape
    if target_mask is None:
        target_mask = torch.ones(batch, n, dtype=torch.bool, device=cost.device)
    columns = target_mask.double()  # (b, n)
    counts = columns.sum(dim=1, keepdim=True).clamp_min(1)  # n_b
    kernel = torch.exp(-cost / beta) * columns[:, None, :]
    plan = torch.ones_like(cost) * columns[:, None, :]
    right = (columns / counts)[:, :, None]  # (b, n, 1)
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner):
            left = 1.0 / ((q @ right) * m)  # (b, m, 1)
            right = columns[:, :, None] / ((q.transpose(1, 2) @ left) * counts[:, :, None]).clamp_min(1e-300)
        plan = left * q * right.transpose(1, 2)
    return plan.to(torch.float32)


def ot_distance(predicted: torch.Tensor, gold: torch.Tensor, gold_mask: torch.Tensor, beta: float = 1.0,
                iterations: int = 50) -> torch.Tensor:
    """Mean over the batch of ``sum(C * T)``: the OT distance of the predicted soft embeddings ``(b, m, d)`` to the
    gold label embeddings ``(b, n, d)`` (``gold_mask`` marks real golds); gradients flow through ``C`` only."""
    cost = cosine_cost(predicted.float(), gold.float())
    plan = ipot_plan(cost, gold_mask, beta, iterations)
    return (cost * plan).sum(dim=(1, 2)).mean()
