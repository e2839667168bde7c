"""``fusionsent``: two contrastively fine-tuned copies of a sentence encoder, fused by SLERP, and a multi-label head.

FusionSent (Hahn, Rettinger, ... "Efficient Few-shot Learning for Multi-label Classification of Scientific
Documents with Many Classes", 2024; reference code sebischair/FusionSent ``fusionsent/trainer.py``):

1. Body 1, the SetFit branch (Sec. 3.1): text pairs, positive when the texts share a label, trained with
   sentence-transformers' ``CosineSimilarityLoss`` (the cosine of the two embeddings regressed onto 1 / 0), pairs
   from :class:`xmr.fusionsent.pairs.TextPairSampler` (unique / oversampling / undersampling, never all n^2 pairs).
2. Body 2, the label branch (Sec. 3.2): (text, label text) pairs, positive for the text's labels, sampled
   negatives otherwise, trained with sentence-transformers' ``ContrastiveLoss`` (cosine distance) at the recipe's
   ``margin`` (the reference never passes its ``margins`` setting to the loss).
3. Fusion (Sec. 3.3): per-tensor SLERP of the two bodies at ``t`` (:mod:`xmr.fusionsent.slerp`); the fused body is
   an ordinary encoder folder, ``runs/NAME/encoder``, so it also retrieves (``xmr build``).
4. Head (Sec. 3.4): the fused body frozen, one-vs-rest logistic regression on the multi-hot targets, thresholds
   tuned on validation (:mod:`xmr.fusionsent.head`); ``runs/NAME/predictor`` is a ``classifier-head`` predictor
   folder that ``xmr eval`` scores (P@k, PSP@k and set F1).

Both bodies train in the one spine loop, each micro-batch holding ``batch_size`` pairs of each branch and the loss
being the sum of the two branch losses. The bodies share no parameter and AdamW is per-parameter, so this is two
independent fine-tunings run side by side (with ``optimizer.clip_norm`` null; a clip norm would be taken over both
bodies together). setfit's own ``Trainer`` is not used for body 1: its ``ContrastiveDataset`` enumerates every pair
with ``np.triu_indices`` (quadratic memory), and the spine loop gives checkpoints, exact resume and logging; the
``setfit`` package is the peer the evidence script compares against. ``shots: k`` trains on a k-per-label sample of
the training split (:func:`xmr.fusionsent.pairs.few_shot_rows`). "Best" bodies are chosen (only when
``evaluation.every`` is set) on the validation queries held out of train, never on the reported split; the head's
thresholds are tuned on the same held-out queries and its weights fitted on the training texts only.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from xmr import metrics as m
from xmr.encoders import Encoder, load_encoder
from xmr.evaluation import evaluate
from xmr.fusionsent.head import fit_head, label_sets, multi_hot, probabilities, tune_thresholds
from xmr.fusionsent.pairs import TextPairSampler, few_shot_rows, label_pair_count, label_pairs
from xmr.fusionsent.predictor import ClassifierHead
from xmr.fusionsent.slerp import slerp_state_dicts
from xmr.io.atomic import write_folder_atomically
from xmr.train.batches import TrainingPairs
from xmr.train.recipe import DataSpec, OptimizerSpec, ScheduleSpec
from xmr.train.tasks import register_task
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext
from xmr.train.tasks.dual_encoder import optimizer_problems, schedule_problems, truncation

BODIES = ("setfit", "label")  # the branches, and their folders under runs/NAME/bodies/{best,last}/


@dataclass
class HeadSpec:
    """The multi-label head: logistic regression strength, threshold tuning, and the non-empty-set rule."""

    # inverse L2 strengths (scikit-learn's C) tried; the one with the best validation micro-F1 is kept (the first
    # one without validation). Few examples per label on unit-length embeddings need a weak penalty: at C = 1 the
    # bias dominates and every article gets the most frequent topics (what setfit's default head does).
    c: list[float] = field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0])
    threshold: Literal["global", "per-label"] = "global"  # tuned on validation for micro-F1 / each label's F1
    at_least_one: bool = True  # a query whose labels all fall below threshold gets its top label


@dataclass
class FusionSentSpec:
    """The ``fusionsent`` section: few-shot sampling, both branches' pairs and losses, fusion, head."""

    shots: int | None = None  # k examples per label drawn from the training split (None: all of it)
    shots_seed: int = 0
    pair_sampling: Literal["unique", "oversampling", "undersampling"] = "oversampling"  # SetFit's default
    label_sampling: Literal["undersampling", "oversampling"] = "undersampling"
    max_pairs: int | None = 2000  # pairs per branch and epoch (the compute budget); None: the strategy's count
    batch_size: int = 16  # pairs per branch and micro-batch
    margin: float = 0.5  # ContrastiveLoss margin (cosine distance) of the label branch
    t: float = 0.5  # SLERP factor: 0 = the SetFit body, 1 = the label body
    # "setfit" / "label": train that branch alone (an ablation; no fusion, runs/NAME/encoder is that body)
    branches: Literal["both", "setfit", "label"] = "both"
    train_max_length: int | None = 64  # truncate texts while training (encoding keeps the encoder's length)
    branch_predictors: bool = False  # also write runs/NAME/branches/{setfit,label}: each body alone + its head
    # null: no head, the run's output is the encoder only (for catalogues too large for one regression per label)
    head: HeadSpec | None = field(default_factory=HeadSpec)


@dataclass
class FusionSentSections:
    data: DataSpec
    encoder: Any = "all-MiniLM-L6-v2"  # the base body both branches start from
    fusionsent: FusionSentSpec = field(default_factory=FusionSentSpec)
    optimizer: OptimizerSpec = field(default_factory=lambda: OptimizerSpec(clip_norm=None))
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)


def fuse(first: Encoder, second: Encoder, t: float) -> Encoder:
    """A copy of ``first`` whose parameters are the SLERP of both encoders' at ``t``."""
    fused = copy.deepcopy(first)
    fused.model.load_state_dict(slerp_state_dicts(first.model.state_dict(), second.model.state_dict(), t))
    fused.train_mode(False)
    return fused


@register_task("fusionsent")
class FusionSentTask(Task):
    """FusionSent (see the module docstring)."""

    sections = FusionSentSections
    distributed = False

    @classmethod
    def check(cls, sections: FusionSentSections) -> list[str]:
        spec, problems = sections.fusionsent, []
        if spec.shots is not None and spec.shots < 1:
            problems.append("fusionsent.shots: must be at least 1 (or null: the whole training split)")
        if spec.max_pairs is not None and spec.max_pairs < 2:
            problems.append("fusionsent.max_pairs: must be at least 2 (or null)")
        if spec.batch_size < 1:
            problems.append("fusionsent.batch_size: must be at least 1")
        if not 0.0 <= spec.t <= 1.0:
            problems.append("fusionsent.t: the SLERP factor is in [0, 1]")
        if spec.margin <= 0:
            problems.append("fusionsent.margin: must be positive")
        if spec.head is not None and (not spec.head.c or min(spec.head.c) <= 0):
            problems.append("fusionsent.head.c: one or more positive values")
        return problems + schedule_problems(sections.schedule) + optimizer_problems(sections.optimizer)

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec: FusionSentSpec = context.sections.fusionsent
        data = context.data()
        self.data, self.labels = data, data.labels
        self.label_items = self.labels.items()
        pairs = data.pairs
        rows = (few_shot_rows(pairs.positives, len(self.labels), self.spec.shots, self.spec.shots_seed)
                if self.spec.shots else np.arange(len(pairs)))
        self.texts = [pairs.queries[row] for row in rows]
        self.positives = [pairs.positives[row] for row in rows]
        device = context.processes.device
        self.names = BODIES if self.spec.branches == "both" else (self.spec.branches,)
        self.bodies = {name: load_encoder(context.sections.encoder, device=device) for name in self.names}
        for body in self.bodies.values():
            body.train_mode(True)
        from sentence_transformers.sentence_transformer.losses import ContrastiveLoss, CosineSimilarityLoss

        self.losses = {}
        if "setfit" in self.bodies:
            self.losses["setfit"] = CosineSimilarityLoss(self.bodies["setfit"].model)
        if "label" in self.bodies:
            self.losses["label"] = ContrastiveLoss(self.bodies["label"].model, margin=self.spec.margin)
        self.sampler = TextPairSampler(self.positives, len(self.labels)) if "setfit" in self.bodies else None
        self.text_pairs = self.label_pairs = np.zeros((0, 3), dtype=np.int64)
        context.say(f"fusionsent: {len(self.texts)} training texts"
                    + (f" ({self.spec.shots} per label, seed {self.spec.shots_seed})" if self.spec.shots else "")
                    + (f"; {self.sampler.n_positive} positive / {self.sampler.n_negative} negative text pairs exist"
                       if self.sampler else "")
                    + ("" if self.spec.branches == "both" else f"; the {self.spec.branches} branch alone"))

    def _epoch_sizes(self) -> tuple[int, int]:
        """Text pairs and (text, label) pairs per epoch (0 for a branch that does not train)."""
        spec = self.spec
        text = sum(self.sampler.sizes(spec.pair_sampling)) if self.sampler else 0
        label = (label_pair_count(self.positives, len(self.labels), spec.label_sampling)
                 if "label" in self.bodies else 0)
        cap = spec.max_pairs if spec.max_pairs is not None else max(text, label)
        return min(text, cap), min(label, cap)

    # ---- what the loop drives --------------------------------------------------------------------------------
    def settings(self) -> LoopSettings:
        """The common optimizer/schedule sections; an epoch is as many micro-batches as the larger branch needs;
        validation (and "best" selection) only when ``evaluation.every`` is set."""
        sections, evaluation = self.context.sections, self.context.recipe.evaluation
        batches = math.ceil(max(self._epoch_sizes()) / self.spec.batch_size)
        settings = LoopSettings.from_sections(sections.optimizer, sections.schedule, evaluation, batches)
        settings.validate_at_end = evaluation.every is not None
        return settings

    def parameter_groups(self) -> list[ParameterGroup]:
        lr = self.context.sections.optimizer.lr
        return [ParameterGroup(f"{name}_body", body.parameter_groups()["encoder"], lr)
                for name, body in self.bodies.items()]

    def begin_epoch(self, epoch: int) -> int:
        rng = np.random.default_rng([self.context.recipe.seed, epoch, 15])
        spec = self.spec
        text_size, label_size = self._epoch_sizes()
        if text_size:
            self.text_pairs = self.sampler.sample(spec.pair_sampling, text_size, rng)
        if label_size:
            self.label_pairs = label_pairs(self.positives, len(self.labels), spec.label_sampling, label_size, rng)
        return math.ceil(max(len(self.text_pairs), len(self.label_pairs)) / spec.batch_size)

    def _slice(self, pairs: np.ndarray, position: int) -> np.ndarray:
        """Micro-batch ``position`` of an epoch's pairs (a branch with fewer pairs starts over)."""
        size = self.spec.batch_size
        return pairs[np.arange(position * size, (position + 1) * size) % len(pairs)]

    def forward(self, position: int, rng: np.random.Generator) -> list[torch.Tensor]:
        """The SetFit-branch and label-branch losses of one micro-batch (those of the branches that train)."""
        length, losses = self.spec.train_max_length, []
        if "setfit" in self.bodies:
            text, setfit = self._slice(self.text_pairs, position), self.bodies["setfit"]
            with truncation(setfit, length):
                first = setfit.embed([self.texts[row] for row in text[:, 0]], "query")
                second = setfit.embed([self.texts[row] for row in text[:, 1]], "query")
            targets = torch.from_numpy(text[:, 2]).float().to(first.device)
            losses.append(self.losses["setfit"].compute_loss_from_embeddings([first.float(), second.float()],
                                                                               targets))
        if "label" in self.bodies:
            label, label_body = self._slice(self.label_pairs, position), self.bodies["label"]
            with truncation(label_body, length):
                texts = label_body.embed([self.texts[row] for row in label[:, 0]], "query")
                names = label_body.embed([self.label_items[row] for row in label[:, 1]], "label")
            targets = torch.from_numpy(label[:, 2]).float().to(texts.device)
            losses.append(self.losses["label"].compute_loss_from_embeddings([texts.float(), names.float()],
                                                                              targets))
        return losses

    def loss(self, output: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(output).sum()

    def body(self, bodies: dict[str, Encoder]) -> Encoder:
        """The run's output body: the SLERP of both bodies, or the one branch that trained."""
        if self.spec.branches == "both":
            return fuse(bodies["setfit"], bodies["label"], self.spec.t)
        return bodies[self.spec.branches]

    def validate(self) -> dict[str, float] | None:
        """Ranking and set metrics of fused body + head on the held-out validation queries (none without a head)."""
        if self.data.validation is None or self.spec.head is None:
            return None
        try:
            head = self.head(self.body(self.bodies))
            report = evaluate(head, self.data.validation, ks=self.context.recipe.evaluation.ks,
                              train=self.data.train)
        finally:
            for body in self.bodies.values():
                body.train_mode(True)
        return {**report["metrics"], **report["set_metrics"]}

    def save(self, which: str) -> None:
        """``runs/NAME/bodies/{best,last}/{setfit,label}``: both bodies as ordinary encoder folders."""

        def write(folder: Any) -> None:
            for name, body in self.bodies.items():
                body.save(folder / name)

        write_folder_atomically(self.context.run / "bodies" / which, write)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"text_pairs": self.text_pairs, "label_pairs": self.label_pairs}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.text_pairs, self.label_pairs = arrays["text_pairs"], arrays["label_pairs"]

    # ---- the head and the outputs ------------------------------------------------------------------------------
    def head(self, body: Encoder) -> ClassifierHead:
        """``body`` frozen, a one-vs-rest logistic head on the training texts for each ``head.c``; thresholds tuned
        on the validation queries, and the ``c`` whose tuned head has the best validation micro-F1 kept."""
        spec, started, n_labels = self.spec.head, time.perf_counter(), len(self.labels)
        body.train_mode(False)
        features, targets = body.encode_queries(self.texts), multi_hot(self.positives, n_labels)
        held = (TrainingPairs.from_instances(self.data.validation, self.labels)
                if self.data.validation is not None else None)
        held_features = body.encode_queries(held.queries) if held is not None else None
        best: tuple[float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for c in spec.c if held is not None else spec.c[:1]:
            weights, bias = fit_head(features, targets, c=c, seed=self.context.recipe.seed)
            thresholds, score = np.full(n_labels, 0.5, dtype=np.float32), float("nan")
            if held is not None:
                probs = probabilities(held_features, weights, bias)
                truth = multi_hot(held.positives, n_labels)
                thresholds = tune_thresholds(probs, truth, spec.threshold, spec.at_least_one)
                chosen = label_sets(probs, thresholds, spec.at_least_one)
                score = m.set_metrics(chosen, [np.flatnonzero(row) for row in truth])["micro_f1"]
            if best is None or score > best[1]:
                best = (c, score, weights, bias, thresholds)
        c, score, weights, bias, thresholds = best
        info = {"fitted_on": len(self.texts), "c": c, "validation_micro_f1": None if held is None else score,
                "threshold": spec.threshold, "thresholds_tuned_on": None if held is None else len(held),
                "fit_seconds": round(time.perf_counter() - started, 1)}
        return ClassifierHead(self.labels, body, weights, bias, thresholds, spec.at_least_one, info=info)

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """``runs/NAME/encoder`` (the fused body), ``runs/NAME/predictor`` (fused body + head) and, with
        ``branch_predictors``, ``runs/NAME/branches/{setfit,label}`` (each body + its own head)."""
        run, device, started = self.context.run, self.context.processes.device, time.perf_counter()
        bodies = {name: load_encoder(run / "bodies" / "best" / name, device=device) for name in self.names}
        fused = self.body(bodies)
        write_folder_atomically(run / "encoder", fused.save)
        outputs: dict[str, Any] = {"encoder": str(run / "encoder"), "train_texts": len(self.texts),
                                   "t": self.spec.t, "trained_branches": self.spec.branches}
        if self.spec.head is not None:
            head = self.head(fused)
            head.save(run / "predictor")
            outputs.update(predictor=str(run / "predictor"), threshold=float(np.median(head.thresholds)))
        if self.spec.branch_predictors and self.spec.head is not None and len(bodies) > 1:
            outputs["branches"] = {}
            for name, body in bodies.items():
                self.head(body).save(run / "branches" / name)
                outputs["branches"][name] = str(run / "branches" / name)
        outputs["head_seconds"] = round(time.perf_counter() - started, 1)
        self.context.say(f"fusionsent: body {run / 'encoder'}"
                         + (f", predictor {run / 'predictor'}" if self.spec.head is not None else ""))
        return outputs
