"""Token-level soft late interaction (UWE / ConTeXT-match), the one scorer that training and the re-rank stage share.

Reference: techwolf-ai/workrb ``src/workrb/models/bi_encoder.py``, ``ConTeXTMatchModel._context_match_score``; UWE
(TechWolf, "Unified Work Embeddings: Contrastive Learning of a Bidirectional Multi-task Ranker", 2025, Sec. 3, the
ConTeXT-match scorer it adopts; Decorte et al., IEEE Access 2025, Eq. 1-2). For a query with real tokens
``h_1..h_L`` (padding masked) and a target vector ``e_t``::

    s(q, t) = sum_l softmax_l(h_l . e_t / T) * cos(h_l, e_t)                                        (1)

Each target attends over the query's tokens with temperature ``T`` and the score is the attention-weighted cosine.
``T -> 0`` puts all weight on the token with the largest dot product (``max_l cos(h_l, e_t)`` for unit tokens: ColBERT
MaxSim with the target as the single-vector side); a large ``T`` gives the mean cosine over the query's tokens.

Targets that keep their token vectors ``g_1..g_M`` (``symmetric=True``) score both ways and average::

    s(q, t) = 1/2 [ mean_m sum_l softmax_l(h_l . g_m / T) cos(h_l, g_m)
                  + mean_l sum_m softmax_m(h_l . g_m / T) cos(h_l, g_m) ]                              (2)

which is (1) for every target token, plus the same with the roles swapped; with ``T -> 0`` and unit tokens it is the
mean of the two length-normalised ColBERT MaxSims (``mean_m max_l`` and ``mean_l max_m``), with a large ``T`` the
mean cosine over all token pairs. With one target token and ``symmetric=False``, (2)'s first half is exactly (1).

PyLate (the field's late-interaction library) is not used: its newest release, 1.6.0, pins
``sentence-transformers==5.3.0`` and ``transformers<=5.3.0`` (xmr runs ST 6.2 / transformers 5.24) and 1.0.0 fails
to import against ST 6.2. Its pieces that would have fit are ``pylate.scores.colbert_scores`` (MaxSim, the ``T -> 0``
limit here, but not the soft ConTeXT-match attention) and its token-vector storage (``pylate.indexes``, PLAID/Voyager);
the index folder stores the ragged float16 tokens itself (``stages.LateInteractionRerank``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def soft_late_interaction(queries: torch.Tensor, query_mask: torch.Tensor, targets: torch.Tensor,
                          target_mask: torch.Tensor, temperature: float, symmetric: bool = False) -> torch.Tensor:
    """Scores (1) or (2) of every query against targets.

    ``queries`` (B, L, D) with bool ``query_mask`` (B, L); ``targets`` either (C, M, D) with ``target_mask`` (C, M),
    scored against every query (training: all pairs, result (B, C)), or (B, C, M, D) with mask (B, C, M), each query's
    own candidates (re-ranking, result (B, C)). Computed in float32.
    """
    if not temperature > 0:
        raise ValueError(f"late-interaction temperature must be positive, got {temperature}")
    queries = queries.float()
    targets = targets.float()
    if targets.dim() == 3:  # the same targets for every query
        targets = targets.unsqueeze(0).expand(len(queries), *targets.shape)
        target_mask = target_mask.unsqueeze(0).expand(len(queries), *target_mask.shape)
    dots = torch.einsum("bld,bcmd->bclm", queries, targets)
    cosines = torch.einsum("bld,bcmd->bclm", functional.normalize(queries, dim=-1),
                           functional.normalize(targets, dim=-1))
    query_real = query_mask[:, None, :, None]  # (B, 1, L, 1)
    target_real = target_mask[:, :, None, :]  # (B, C, 1, M)
    logits = dots / temperature
    over_query = torch.softmax(logits.masked_fill(~query_real, float("-inf")), dim=2)
    per_target_token = (over_query * cosines).sum(dim=2)  # (B, C, M)
    forward = _masked_mean(per_target_token, target_mask, dim=2)
    if not symmetric:
        return forward
    over_target = torch.softmax(logits.masked_fill(~target_real, float("-inf")), dim=3)
    per_query_token = (over_target * cosines).sum(dim=3)  # (B, C, L)
    backward = _masked_mean(per_query_token, query_mask[:, None, :].expand_as(per_query_token), dim=2)
    return (forward + backward) / 2


def pad_ragged(values: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged rows (item ``i`` owns ``values[offsets[i]:offsets[i+1]]``) as a zero-padded (n, M, D) tensor and mask."""
    lengths = offsets[1:] - offsets[:-1]
    n, width = len(lengths), int(lengths.max()) if len(lengths) else 0
    positions = torch.arange(width)
    mask = positions[None, :] < lengths[:, None]
    padded = values.new_zeros((n, width, values.shape[-1]))
    padded[mask] = values
    return padded, mask
