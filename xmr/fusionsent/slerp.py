"""Parameter fusion of the two bodies: per-tensor spherical linear interpolation (FusionSent, Sec. 3.3).

FusionSent merges the SetFit body and the label-embedding body into one body by SLERP of every parameter tensor
(reference code ``fusionsent/merging_methods.py``, after mergekit): both tensors are flattened and normalised, the
angle between them gives the weights ``sin((1 - t) theta) / sin theta`` and ``sin(t theta) / sin theta`` applied to
the *unnormalised* tensors, and nearly parallel tensors (``|cos theta| > 0.9995``) fall back to linear
interpolation, where SLERP is numerically unstable and equal to it in the limit. ``t = 0`` returns the first body,
``t = 1`` the second. Integer buffers (e.g. position ids) are copied from the first body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from xmr.errors import InvalidArgument

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, first: torch.Tensor, second: torch.Tensor, dot_threshold: float = DOT_THRESHOLD,
          eps: float = EPS) -> torch.Tensor:
    """SLERP between two tensors of one shape (computed in float64, returned in ``first``'s dtype)."""
    if first.shape != second.shape:
        raise InvalidArgument(f"slerp: shapes differ, {tuple(first.shape)} vs {tuple(second.shape)}")
    a, b = first.detach().double(), second.detach().double()
    norm_a, norm_b = a.norm(), b.norm()
    unit_a = a / norm_a if norm_a > eps else a
    unit_b = b / norm_b if norm_b > eps else b
    dot = float((unit_a * unit_b).sum())
    if abs(dot) > dot_threshold or norm_a <= eps or norm_b <= eps:
        fused = (1 - t) * a + t * b
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        fused = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
    return fused.to(first.dtype)


def slerp_state_dicts(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor],
                      t: float = 0.5) -> dict[str, torch.Tensor]:
    """Every floating-point tensor of two state dicts of the same architecture fused by :func:`slerp`."""
    if not 0.0 <= t <= 1.0:
        raise InvalidArgument(f"slerp: t must be in [0, 1], got {t}")
    if set(first) != set(second):
        raise InvalidArgument(f"slerp: the bodies have different parameters: {sorted(set(first) ^ set(second))[:5]}")
    return {name: slerp(t, tensor, second[name]) if tensor.is_floating_point() else tensor.clone()
            for name, tensor in first.items()}
