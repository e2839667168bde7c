"""Pooling token states into one vector per sequence, correct under left and right padding."""

from __future__ import annotations

import torch

from xmr.errors import EncoderError

POOLINGS = ("mean", "last_token")


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over the sequence: padding positions contribute nothing."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the last real token of each sequence (the rightmost mask position equal to 1)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def check_pooling(method: str) -> None:
    """Refuse an unknown pooling name (an :class:`EncoderError`: the CLI prints one line)."""
    if method not in POOLINGS:
        raise EncoderError(f"unknown pooling {method!r}; choose one of {POOLINGS}")


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """One vector per sequence by ``method`` (one of :data:`POOLINGS`)."""
    check_pooling(method)
    return mean_pool(hidden, mask) if method == "mean" else last_token_pool(hidden, mask)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded sequence sees the same positions as unpadded."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)
