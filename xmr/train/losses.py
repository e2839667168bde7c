"""Contrastive losses over what a model scored in a batch, aware of many positives per query.

Every loss takes a :class:`ModelOutput`: the batch's query and label representations, ``positives`` (bool, queries x
label columns: column j is a true label of query i), ``anchors`` (one sampled positive column per query, used by
losses that contrast a single positive) and the ``similarity`` that turns representations into the score matrix
(default the inner product of one vector per side; a late-interaction model passes token embeddings and its own
similarity). A query's other positives are never treated as its negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import torch
import torch.nn.functional as functional

from xmr.train.recipe import RecipeError

MASKED = -1e4  # a logit that contributes nothing to a logsumexp, yet keeps gradients finite (unlike -inf)


def inner_product(queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``queries @ labels.T`` in float32 (cosine when both sides are unit length)."""
    return queries.float() @ labels.float().T


@dataclass
class ModelOutput:
    """One micro-batch as a model saw it; ``scores`` (queries x label columns) is ``similarity(query, label)``."""

    query: torch.Tensor
    label: torch.Tensor
    positives: torch.Tensor  # bool (queries, label columns)
    anchors: torch.Tensor | None = None  # column of each query's sampled positive
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = inner_product

    @cached_property
    def scores(self) -> torch.Tensor:
        return self.similarity(self.query, self.label)


def decoupled_log_probs(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """``log(e^{s_p} / (e^{s_p} + sum_{n not in P} e^{s_n}))`` for every cell, row-wise (positives only are used)."""
    negatives = torch.logsumexp(logits.masked_fill(positives, MASKED), dim=1, keepdim=True)
    return logits - torch.logaddexp(logits, negatives)


def positive_temperature(temperature: float, loss: str) -> float:
    """A softmax temperature, refused unless positive (a negative one ranks the negatives first)."""
    if not temperature > 0:
        raise RecipeError(f"loss.options: {loss}: temperature must be positive, got {temperature}")
    return temperature


class MultiPositiveInfoNCE(torch.nn.Module):
    """Many-to-many InfoNCE of UWE (TechWolf, "Unified Work Embeddings", 2025, Sec. 3: symmetric InfoNCE per bipartite
    graph, temperature 0.05): every positive (query, label) pair is contrasted with the query's non-positive labels
    (query -> label) and with the label's non-positive queries (label -> query); both directions average over all
    positive pairs and the loss is their mean. Other positives stay out of each denominator."""

    one_positive_per_query: ClassVar[bool] = False

    def __init__(self, temperature: float = 0.05, symmetric: bool = True) -> None:
        super().__init__()
        self.temperature = positive_temperature(temperature, type(self).__name__)
        self.symmetric = symmetric

    def forward(self, output: ModelOutput) -> torch.Tensor:
        logits, positives = output.scores.float() / self.temperature, output.positives
        query_to_label = -decoupled_log_probs(logits, positives)[positives].mean()
        if not self.symmetric:
            return query_to_label
        label_to_query = -decoupled_log_probs(logits.T, positives.T)[positives.T].mean()
        return (query_to_label + label_to_query) / 2


class DecoupledSoftmaxLoss(torch.nn.Module):
    """DEXML decoupled softmax (Gupta et al., "Dual-encoders for Extreme Multi-label Classification", ICLR 2024, Eq. 4):
    ``-1/B sum_i 1/|P_i| sum_{p in P_i} log(e^{s_ip/t} / (e^{s_ip/t} + sum_{n not in P_i} e^{s_in/t}))``, query ->
    label only; each positive's denominator excludes the other positives. Temperature 0.05 as in DEXML's configs."""

    one_positive_per_query: ClassVar[bool] = False

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = positive_temperature(temperature, type(self).__name__)

    def forward(self, output: ModelOutput) -> torch.Tensor:
        positives = output.positives
        log_probs = decoupled_log_probs(output.scores.float() / self.temperature, positives)
        per_query_positives = positives.sum(dim=1)
        has_positive = per_query_positives > 0
        per_query = (log_probs * positives).sum(dim=1)[has_positive] / per_query_positives[has_positive]
        return -per_query.mean()


class OHNMTripletLoss(torch.nn.Module):
    """Online hard-negative triplet loss of NGAME / ViXML (ViXML ``ATripletMarginLossOHNMDM``; Ortego et al. 2025,
    Sec. 3.3): one positive per query (``anchors``), its ``k`` highest-scoring in-batch non-positives, hinge
    ``relu(s_n - s_p + m)`` with the dynamic margin ``m = clamp(|s_p - s_n|, margin_min, margin_max)`` (detached);
    ``aggressive`` weights the violating negatives by ``softmax(s_n / tau)``. Reduction: sum over negatives, mean over
    queries (ViXML's ``custom``). Defaults are ViXML's run scripts: k=10, margin 0.1-0.3, aggressive, tau=0.1."""

    one_positive_per_query: ClassVar[bool] = True

    def __init__(self, k: int = 10, margin_min: float = 0.1, margin_max: float = 0.3, aggressive: bool = True,
                 tau: float = 0.1) -> None:
        super().__init__()
        if not 0 <= margin_min <= margin_max:
            raise RecipeError(f"loss.options: ohnm-triplet: margins need 0 <= margin_min <= margin_max, got "
                              f"{margin_min} and {margin_max}")
        if k < 1 or tau <= 0:
            raise RecipeError(f"loss.options: ohnm-triplet: k must be at least 1 and tau positive, got {k} and {tau}")
        self.k, self.margin_min, self.margin_max = k, margin_min, margin_max
        self.aggressive, self.tau = aggressive, tau

    def forward(self, output: ModelOutput) -> torch.Tensor:
        scores, positives, anchors = output.scores.float(), output.positives, output.anchors
        has_positive = positives.any(dim=1)
        scores, positives = scores[has_positive], positives[has_positive]
        if anchors is None:  # a uniformly drawn positive column per query
            anchors = torch.multinomial(positives.float(), 1).squeeze(1)
        else:
            anchors = anchors[has_positive]
        positive_scores = scores.gather(1, anchors[:, None])
        k = min(self.k, scores.shape[1])
        hardest = scores.masked_fill(positives, MASKED).topk(k, dim=1).indices
        negative_scores = scores.gather(1, hardest)
        is_negative = ~positives.gather(1, hardest)  # rows with fewer than k negatives
        margin = (positive_scores - negative_scores).abs().detach().clamp(self.margin_min, self.margin_max)
        loss = functional.relu(negative_scores - positive_scores + margin) * is_negative
        if self.aggressive:
            violating = negative_scores.masked_fill(loss == 0, MASKED / 100)
            loss = loss * torch.softmax(violating / self.tau, dim=1)
        return loss.sum(dim=1).mean()


class OneVsAllBCELoss(torch.nn.Module):
    """One-vs-all logistic loss (the one-vs-all label classifiers of NGAME, Dahiya et al., WSDM 2023): every cell is a
    binary problem on ``s / temperature``, positives against every scored non-positive; mean over cells."""

    one_positive_per_query: ClassVar[bool] = False

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = positive_temperature(temperature, type(self).__name__)

    def forward(self, output: ModelOutput) -> torch.Tensor:
        return functional.binary_cross_entropy_with_logits(output.scores.float() / self.temperature,
                                                           output.positives.float())


LOSSES: dict[str, type[torch.nn.Module]] = {
    "multi-positive-infonce": MultiPositiveInfoNCE,
    "decoupled-softmax": DecoupledSoftmaxLoss,
    "ohnm-triplet": OHNMTripletLoss,
    "one-vs-all-bce": OneVsAllBCELoss,
}


def make_loss(name: str, options: dict[str, Any]) -> torch.nn.Module:
    """A loss by recipe name with its options; unknown names or options are errors naming them."""
    if name not in LOSSES:
        raise RecipeError(f"loss.name: unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](**options)
    except TypeError as error:
        raise RecipeError(f"loss.options: {name!r}: {error}") from None
