"""The selective scan of Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
Algorithm 2, the S6 layer: zero-order-hold discretisation of ``A``, the simplified step for ``B``; the semantics of
mamba-ssm's ``selective_scan_ref`` in ``mamba_ssm/ops/selective_scan_interface.py``) in plain PyTorch, plus
mamba-ssm's fused CUDA kernel when it is installed and the inputs live on a GPU.

For every batch row ``b``, channel ``d`` and state ``n``::

    h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t        (discretised A-bar, simplified B-bar)
    y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t;   y_t *= silu(z_t) when z is given

:func:`selective_scan` evaluates this in chunks of ``chunk`` steps: inside a chunk every ``h_t`` is a sum over
``s <= t`` weighted by ``exp(sum_{r=s+1..t} delta_r A)``, computed from a cumulative sum of ``delta * A`` whose
differences are never positive (so no overflow), and the state is carried from chunk to chunk. It has the
reference kernel's argument order (``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``);
:func:`selective_scan_loop` is the naive step-by-step recurrence the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cuda_kernel():  # mamba-ssm's kernel, or None (not installed: the CPU path is the default everywhere)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   chunk: int = 32) -> torch.Tensor:
    """``y`` ``(batch, dim, length)`` for ``u, delta`` ``(batch, dim, length)``, ``A`` ``(dim, state)``,
    ``B, C`` ``(batch, state, length)``, ``D`` ``(dim,)``, ``z`` ``(batch, dim, length)``."""
    if u.is_cuda and (kernel := _cuda_kernel()) is not None:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    delta = _delta(delta, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for start in range(0, length, chunk):
        stop = min(start + chunk, length)
        dA = delta[:, :, start:stop, None] * A[None, :, None, :]  # (b, d, T, n), <= 0 for stable A
        cum = dA.cumsum(dim=2)
        dBu = (delta[:, :, start:stop] * u[:, :, start:stop])[..., None] * B[:, None, :, start:stop].transpose(2, 3)
        steps = stop - start
        later = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()  # [t, s]: s <= t
        gaps = cum[:, :, :, None, :] - cum[:, :, None, :, :]  # (b, d, t, s, n): sum of dA over (s, t]
        weights = torch.exp(gaps.masked_fill(~later[None, None, :, :, None], float("-inf")))
        h = torch.einsum("bdtsn,bdsn->bdtn", weights, dBu) + torch.exp(cum) * state[:, :, None, :]
        outputs.append(torch.einsum("bdtn,bnt->bdt", h, C[:, :, start:stop]))
        state = h[:, :, -1]
    return _output(torch.cat(outputs, dim=2), u, D, z)


def selective_scan_loop(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                        D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                        delta_bias: torch.Tensor | None = None, delta_softplus: bool = False) -> torch.Tensor:
    """The recurrence one step at a time (the definition :func:`selective_scan` must match)."""
    delta = _delta(delta, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    return _output(torch.stack(ys, dim=2), u, D, z)


def _delta(delta: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    if bias is not None:
        delta = delta + bias[None, :, None]
    return F.softplus(delta) if softplus else delta


def _output(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + D[None, :, None] * u
    return y * F.silu(z) if z is not None else y
