"""The training losses against hand-computed values, and the property they share: other positives are not negatives."""

import math

import pytest
import torch

from xmr.train.losses import (
    DecoupledSoftmaxLoss,
    ModelOutput,
    MultiPositiveInfoNCE,
    OHNMTripletLoss,
    OneVsAllBCELoss,
    make_loss,
)

SCORES = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.4]])
POSITIVES = torch.tensor([[True, True, False], [False, True, False]])


def scored(scores: torch.Tensor, positives: torch.Tensor = POSITIVES, anchors=None) -> ModelOutput:
    """A model output whose score matrix is ``scores``: the label side is the identity, so inner products are it."""
    return ModelOutput(scores, torch.eye(scores.shape[1]), positives, anchors)


def decoupled(logits: list[float], positive: int, negatives: list[int]) -> float:
    """-log(e^{s_p} / (e^{s_p} + sum_n e^{s_n}))"""
    return -(logits[positive] - math.log(math.exp(logits[positive]) + sum(math.exp(logits[n]) for n in negatives)))


def test_infonce_query_to_label_matches_hand_computation():
    t = 0.5
    logits = (SCORES / t).tolist()
    pairs = [decoupled(logits[0], 0, [2]), decoupled(logits[0], 1, [2]), decoupled(logits[1], 1, [0, 2])]
    loss = MultiPositiveInfoNCE(temperature=t, symmetric=False)(scored(SCORES))
    assert loss.item() == pytest.approx(sum(pairs) / 3, rel=1e-5)


def test_infonce_symmetric_adds_label_to_query_direction():
    t = 0.5
    columns = (SCORES / t).T.tolist()
    label_to_query = [decoupled(columns[0], 0, [1]), decoupled(columns[1], 0, []), decoupled(columns[1], 1, [])]
    query_only = MultiPositiveInfoNCE(temperature=t, symmetric=False)(scored(SCORES)).item()
    both = MultiPositiveInfoNCE(temperature=t)(scored(SCORES)).item()
    assert both == pytest.approx((query_only + sum(label_to_query) / 3) / 2, rel=1e-5)


def test_decoupled_softmax_averages_per_query():
    t = 0.5
    logits = (SCORES / t).tolist()
    first = (decoupled(logits[0], 0, [2]) + decoupled(logits[0], 1, [2])) / 2
    second = decoupled(logits[1], 1, [0, 2])
    loss = DecoupledSoftmaxLoss(temperature=t)(scored(SCORES))
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)


@pytest.mark.parametrize("loss", [MultiPositiveInfoNCE(), DecoupledSoftmaxLoss(), OHNMTripletLoss(k=2)])
def test_other_positives_are_never_negatives(loss):
    """Query 0 has positives 0 and 1; raising positive 1's score must not raise the loss of anchor 0."""
    anchors = torch.tensor([0, 1])
    scores = SCORES.clone().requires_grad_(True)
    loss(scored(scores, POSITIVES, anchors)).backward()
    if isinstance(loss, OHNMTripletLoss):  # the anchor is 0: column 1 is neither the anchor nor a negative
        assert scores.grad[0, 1] == 0
    else:
        assert scores.grad[0, 1] <= 0  # a positive's gradient only pushes its score up
    assert scores.grad[0, 0] <= 0 and scores.grad[0, 2] >= 0


def test_ohnm_dynamic_margin_hand_computed():
    scores = torch.tensor([[0.5, 0.45, 0.0, 0.52]])
    positives = torch.tensor([[True, False, False, False]])
    triplet = OHNMTripletLoss(k=2, margin_min=0.1, margin_max=0.3, aggressive=False)
    loss = triplet(scored(scores, positives, torch.tensor([0])))
    # hardest negatives 0.52 and 0.45; margins clamp(|0.5-0.52|)=0.1 and clamp(0.05)=0.1
    expected = max(0, 0.52 - 0.5 + 0.1) + max(0, 0.45 - 0.5 + 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ohnm_aggressive_weights_violators_by_softmax():
    scores = torch.tensor([[0.5, 0.45, 0.0, 0.52]])
    positives = torch.tensor([[True, False, False, False]])
    loss = OHNMTripletLoss(k=3, aggressive=True, tau=0.1)(scored(scores, positives, torch.tensor([0])))
    hinge = torch.tensor([0.52 - 0.5 + 0.1, 0.45 - 0.5 + 0.1])  # the 0.0 negative does not violate its 0.3 margin
    weights = torch.softmax(torch.tensor([0.52, 0.45]) / 0.1, dim=0)
    assert loss.item() == pytest.approx(float((hinge * weights).sum()), rel=1e-4)


def test_losses_fall_when_positives_score_higher():
    for name in ("multi-positive-infonce", "decoupled-softmax", "ohnm-triplet", "one-vs-all-bce"):
        loss = make_loss(name, {})
        close = torch.tensor([[0.5, 0.3, 0.45], [0.4, 0.5, 0.45]])  # negatives inside the triplet margin
        anchors = torch.tensor([0, 1])
        better = loss(scored(close + 0.1 * POSITIVES, POSITIVES, anchors))
        assert better < loss(scored(close, POSITIVES, anchors)), name


def test_unknown_loss_and_option_are_named():
    with pytest.raises(ValueError, match="unknown loss 'softmax'"):
        make_loss("softmax", {})
    with pytest.raises(ValueError, match="temprature"):
        make_loss("decoupled-softmax", {"temprature": 0.1})


def test_one_vs_all_bce_hand_computed():
    t = 0.5
    expected = [-math.log(1 / (1 + math.exp(-s / t))) if positive else -math.log(1 - 1 / (1 + math.exp(-s / t)))
                for row, cells in zip(SCORES.tolist(), POSITIVES.tolist(), strict=True)
                for s, positive in zip(row, cells, strict=True)]
    assert OneVsAllBCELoss(temperature=t)(scored(SCORES)).item() == pytest.approx(sum(expected) / 6, rel=1e-5)


def test_losses_score_with_the_outputs_similarity():
    """A late-interaction output: token embeddings and MaxSim (ColBERT) instead of one vector per side."""
    torch.manual_seed(0)
    query_tokens, label_tokens = torch.randn(2, 4, 8), torch.randn(3, 5, 8)

    def maxsim(queries: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.einsum("qid,ljd->qlij", queries, labels).amax(dim=3).sum(dim=2)

    output = ModelOutput(query_tokens, label_tokens, POSITIVES, similarity=maxsim)
    assert output.scores.shape == (2, 3)
    loss = DecoupledSoftmaxLoss(temperature=0.5)
    assert loss(output).item() == pytest.approx(loss(scored(maxsim(query_tokens, label_tokens))).item(), rel=1e-6)
    assert ModelOutput(SCORES, torch.eye(3), POSITIVES).scores.equal(SCORES)  # default: the inner product
