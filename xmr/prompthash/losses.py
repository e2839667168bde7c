"""PromptHash's objective (the paper's hashing, alignment and reconstruction losses; reference ``train_asym.py``:
``hash_loss_group``, ``bayesian_loss``, ``quantization_loss_2``, ``global_prompt_alignment_loss``,
``local_prompt_alignment_loss``, the reconstruction terms of ``compute_loss``), with the reference's default
weights (``utils/get_args.py``).

Per code length ``K`` (weight 1; the auxiliary long code weight ``mu``), with the memory banks ``F`` (image codes)
and ``G`` (text codes) of every training item, refreshed as batches pass, ``S[i, j] = 1`` when items ``i`` and
``j`` share a label, and ``Theta = 0.5 * bank @ codes.T``::

    pairwise likelihood  L(bank, h) = mean(log(1 + exp(Theta)) - S * Theta)
                         (balanced: the mean over S = 1 plus the mean over S = 0, HashNet's weighting)
    intra                intra * (L(F, f) + L(G, g));   inter: inter * (L(F, g) + L(G, f))
    quantisation         quan * (||f - B||^2 + ||g - B||^2) / (batch * K),   B = sign(F + G) refreshed per epoch
    global alignment     lambda * global * InfoNCE(image, text; tau 0.07)
    local alignment      lambda * local * InfoNCE(image, prompt; tau * 1 / (1 + JS(softmax image || softmax prompt)))
    reconstruction       mu * recon * ||decoder_K(h_K) - B_long||^2 / batch, per short code and modality
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from xmr.prompthash.model import HashOutput


@dataclass
class LossWeights:
    """The reference's defaults (``get_args.py``)."""

    intra: float = 0.005  # --hyper-cls-intra
    inter: float = 5.0  # --hyper-cls-inter
    quantization: float = 1.0  # --hyper-quan
    global_alignment: float = 5.0  # --hyper-global
    local_alignment: float = 5.0  # --hyper-local
    alignment: float = 1.0  # --hyper-lambda
    reconstruction: float = 0.005  # --hyper-recon
    mu: float = 20.0  # weight of the auxiliary long code's terms
    tau_global: float = 0.07
    tau_local: float = 0.07
    balanced: bool = False  # the pairwise likelihood weights similar and dissimilar pairs equally (HashNet)

    def to_dict(self) -> dict:
        return asdict(self)


def label_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = 1`` where label rows ``first[i]`` and ``second[j]`` (multi-hot) share a label (calc_neighbor)."""
    return (first @ second.T > 0).float()


def sparse_label_similarity(labels: scipy.sparse.csr_matrix, rows: np.ndarray) -> torch.Tensor:
    """:func:`label_similarity` of every item against items ``rows``, ``(items, len(rows))``, from a sparse
    ``(items, labels)`` incidence matrix: the dense product costs ``items x labels x batch`` per step (14 GFLOP for
    8,000 ESCO items over 13,896 skills at batch 128), the sparse one touches the shared labels only."""
    shared = (labels @ labels[rows].T).tocoo()
    similarity = torch.zeros(labels.shape[0], len(rows))
    keep = shared.data > 0
    similarity[torch.from_numpy(shared.row[keep]).long(), torch.from_numpy(shared.col[keep]).long()] = 1.0
    return similarity


def pairwise_likelihood(bank: torch.Tensor, codes: torch.Tensor, similarity: torch.Tensor,
                        balanced: bool = False) -> torch.Tensor:
    """Negative log-likelihood of the label-sharing similarities ``(len(bank), len(codes))`` (DCMH-style): the mean
    over all pairs, or with ``balanced`` the mean over similar pairs plus the mean over dissimilar ones (HashNet's
    weighted maximum likelihood, Cao et al. 2017, Eq. 5: ``w = |S| / |S1|`` or ``|S| / |S0|``). With thousands of
    single-label items a pair shares a label with probability ~1e-4, so the plain mean barely sees the positives
    and mostly asks every code to disagree with every other."""
    theta = (0.5 * bank @ codes.T).clamp(-64, 64)
    loss = F.softplus(theta) - similarity * theta
    if not balanced:
        return torch.mean(loss)
    similar = similarity > 0
    parts = [loss[mask].mean() for mask in (similar, ~similar) if mask.any()]
    return sum(parts)


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows (item i's two views are each other's positive)."""
    scores = first @ second.T / temperature
    targets = torch.arange(len(first), device=first.device)
    return 0.5 * (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets))


def js_divergence(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence of the softmax distributions of two feature batches (batch mean)."""
    p, q = F.softmax(first, dim=-1), F.softmax(second, dim=-1)
    m = 0.5 * (p + q)
    return 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))


def local_alignment(image: torch.Tensor, prompt: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with the temperature scaled by the affinity ``1 / (1 + JS)`` (a number, as ``.item()`` makes it in
    the reference: the scale carries no gradient)."""
    affinity = 1.0 / (1.0 + float(js_divergence(image, prompt).detach()))
    return info_nce(image, prompt, temperature * affinity)


class MemoryBank:
    """Continuous image and text codes of every training item per code length, and ``B = sign(F + G)``.

    Rows start random (as the reference's ``torch.randn`` buffers); :meth:`update` writes a batch's detached codes,
    :meth:`refresh` recomputes ``B`` (once per epoch)."""

    def __init__(self, items: int, bits: list[int], seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.image = {b: torch.randn(items, b, generator=generator) for b in bits}
        self.text = {b: torch.randn(items, b, generator=generator) for b in bits}
        self.binary: dict[int, torch.Tensor] = {}
        self.refresh()

    def fill(self, image: dict[int, torch.Tensor], text: dict[int, torch.Tensor]) -> None:
        """Every row at once (e.g. the initial network's codes of all items, instead of random rows), then ``B``."""
        for bits in self.image:
            self.image[bits] = image[bits].detach().float().cpu().clone()
            self.text[bits] = text[bits].detach().float().cpu().clone()
        self.refresh()

    def update(self, rows: torch.Tensor, output: HashOutput) -> None:
        for bits in self.image:
            self.image[bits][rows] = output.image[bits].detach().float().cpu()
            self.text[bits][rows] = output.text[bits].detach().float().cpu()

    def refresh(self) -> None:
        self.binary = {bits: torch.sign(self.image[bits] + self.text[bits]) for bits in self.image}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for bits in self.image:
            out[f"bank_image_{bits}"] = self.image[bits].numpy()
            out[f"bank_text_{bits}"] = self.text[bits].numpy()
            out[f"bank_binary_{bits}"] = self.binary[bits].numpy()
        return out

    def restore(self, arrays: dict[str, np.ndarray]) -> None:
        for bits in self.image:
            self.image[bits] = torch.from_numpy(np.array(arrays[f"bank_image_{bits}"]))
            self.text[bits] = torch.from_numpy(np.array(arrays[f"bank_text_{bits}"]))
            self.binary[bits] = torch.from_numpy(np.array(arrays[f"bank_binary_{bits}"]))


def prompthash_loss(output: HashOutput, rows: torch.Tensor, similarity: torch.Tensor, bank: MemoryBank,
                    short_bits: list[int], auxiliary_bits: int, weights: LossWeights) -> dict[str, torch.Tensor]:
    """Every term by name (their sum is the loss). ``bank`` must already hold this batch's codes (the reference
    writes them before computing the loss); ``similarity`` is ``S`` of every training item against the batch,
    ``(items, batch)`` (:func:`label_similarity` or :func:`sparse_label_similarity`)."""
    device = output.image_features.device
    similarity = similarity.to(device)
    terms: dict[str, torch.Tensor] = {}
    for bits in [*short_bits, auxiliary_bits]:
        weight = weights.mu if bits == auxiliary_bits else 1.0
        f, g = output.image[bits], output.text[bits]
        image_bank, text_bank = bank.image[bits].to(device), bank.text[bits].to(device)
        target = bank.binary[bits][rows.cpu()].to(device)
        likelihood = lambda b, h: pairwise_likelihood(b, h, similarity, weights.balanced)  # noqa: E731
        terms[f"intra_{bits}"] = weight * weights.intra * (likelihood(image_bank, f) + likelihood(text_bank, g))
        terms[f"inter_{bits}"] = weight * weights.inter * (likelihood(image_bank, g) + likelihood(text_bank, f))
        terms[f"quantization_{bits}"] = weight * weights.quantization * (
            F.mse_loss(f, target, reduction="sum") + F.mse_loss(g, target, reduction="sum")) / len(f) / bits
    terms["global_alignment"] = weights.alignment * weights.global_alignment * info_nce(
        output.image_features, output.text_features, weights.tau_global)
    if output.prompt_features is not None and weights.local_alignment > 0:
        terms["local_alignment"] = weights.alignment * weights.local_alignment * local_alignment(
            output.image_features, output.prompt_features, weights.tau_local)
    long_target = bank.binary[auxiliary_bits][rows.cpu()].to(device)
    for bits in short_bits:
        for side, recon in (("image", output.image_recon[bits]), ("text", output.text_recon[bits])):
            terms[f"recon_{side}_{bits}"] = weights.mu * weights.reconstruction * F.mse_loss(
                recon, long_target, reduction="sum") / len(recon)
    return terms
