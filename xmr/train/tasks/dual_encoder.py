"""``dual-encoder``: contrastive fine-tuning of one encoder tower for queries and labels.

Batches are random or NGAME clustered query batches; a batch's label columns are its queries' positives (or one
sampled positive each), ANCE-mined hard negatives and/or every label of a small catalogue. Queries and label
columns are embedded (each process its share, gathered with gradients) and scored by the recipe's multi-positive
loss. Optional LoRA adapters on a decoder backbone; fused encoders also train their projection (its own learning
rate). "Best" is the encoder folder ``runs/NAME/encoder``, "last" ``runs/NAME/last``; the final output is
``runs/NAME/index`` of the best encoder (optionally centroid-enriched), unless ``label_vectors:`` hands the run over
to the ``label-vectors`` task, which writes the index instead.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from xmr.encoders import Encoder, load_encoder
from xmr.errors import XMRError
from xmr.evaluation import evaluate
from xmr.index import build_index_from_embeddings
from xmr.train import distributed, label_vectors
from xmr.train.batches import clustered_plan, make_batch, random_plan
from xmr.train.losses import ModelOutput, make_loss
from xmr.train.mining import mine_hard_negatives
from xmr.train.recipe import DataSpec, IndexSpec, OptimizerSpec, RecipeError, ScheduleSpec
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext


@dataclass
class LoraSpec:
    """LoRA adapter for decoder encoders (peft); defaults are ViXML's run script and model code (rank 256, alpha 256,
    attention and MLP projections, no dropout, rank-stabilised scaling: ``use_rslora=True`` in its utils.py, so the
    update is scaled by alpha/sqrt(r) = 16 rather than alpha/r = 1; Kalajdzievski 2023)."""

    r: int = 256
    alpha: int = 256
    dropout: float = 0.0
    rslora: bool = True
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])


@dataclass
class LossSpec:
    name: str = "multi-positive-infonce"  # or decoupled-softmax, ohnm-triplet (xmr.train.losses.LOSSES)
    options: dict[str, Any] = field(default_factory=dict)  # the loss's own parameters (temperature, k, margins ...)


@dataclass
class MinedSpec:
    """ANCE-style hard negatives: top labels of each training query in an index of the current label vectors.

    A refresh mines the queries of the batches up to the next refresh (and a new epoch's plan triggers one); once
    mined, a refresh that would serve fewer than half of ``refresh_every`` remaining steps is skipped (the last
    steps keep the negatives they have), so a run capped by ``max_seconds`` does not pay for one it cannot use."""

    per_query: int = 2  # hard negatives added to the batch per query
    depth: int = 20  # how many top non-positive labels to keep per query at each refresh
    refresh_every: int = 200  # optimiser steps between refreshes (and one before the first step)
    factory: str = "Flat"
    cached_first: bool = False  # the refresh before step 0 reads the label vectors through the vector cache (only
    # for encoders whose untrained weights are fully given by their config or folder, e.g. a sentence-transformer)


@dataclass
class NegativesSpec:
    all_labels_up_to: int = 0  # catalogues of at most this many labels: every label is a column of every batch
    mined: MinedSpec | None = None
    positive_sampling: Literal["uniform", "inverse-propensity"] = "uniform"  # one-positive losses (ViXML: A, B)
    propensity: list[float] = field(default_factory=lambda: [0.6, 2.6])


@dataclass
class ClusteredSpec:
    """NGAME negative-aware batching: batches are cut from k-means clusters of the current query embeddings."""

    cluster_size: int = 8
    max_cluster_size: int = 64
    recluster_every: int = 1  # epochs; the cluster size doubles at each recluster (curriculum)
    start_epoch: int = 1  # epoch 0 uses random batches (untrained embeddings cluster poorly)


@dataclass
class BatchingSpec:
    batch_size: int = 32  # queries per micro-batch and process
    clustered: ClusteredSpec | None = None
    train_max_length: int | None = None  # truncate texts to this many tokens while training (encoding keeps its own)


@dataclass
class DualEncoderSections:
    data: DataSpec
    encoder: Any = "all-MiniLM-L6-v2"  # any load_encoder spec: name, alias, config mapping, encoder folder
    lora: LoraSpec | None = None
    loss: LossSpec = field(default_factory=LossSpec)
    negatives: NegativesSpec = field(default_factory=NegativesSpec)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    index: IndexSpec | None = None


def _text_model(encoder: Encoder) -> Any:
    """The object whose truncation length training may shorten (ST model, decoder encoder)."""
    return getattr(encoder, "text_encoder", encoder)


@contextlib.contextmanager
def truncation(encoder: Encoder, length: int | None) -> Iterator[None]:
    """Texts are cut to ``length`` tokens inside the block (training), and to the encoder's own length after."""
    model = _text_model(encoder)
    attribute, holder = ("max_length", model) if hasattr(model, "max_length") else ("max_seq_length", model.model)
    saved = getattr(holder, attribute)
    if length is not None:
        setattr(holder, attribute, length)
    try:
        yield
    finally:
        setattr(holder, attribute, saved)


def optimizer_problems(optimizer: Any) -> list[str]:
    """Range problems of the ``optimizer`` section: a negative rate or clip norm would train backwards (a rate of 0
    freezes that group, e.g. the encoder while an image projection trains)."""
    problems = [f"optimizer.{name}: must be at least 0" for name in ("lr", "projection_lr")
                if getattr(optimizer, name) < 0]
    if optimizer.weight_decay < 0:
        problems.append("optimizer.weight_decay: must be at least 0")
    if optimizer.clip_norm is not None and optimizer.clip_norm <= 0:
        problems.append("optimizer.clip_norm: must be positive (or null: no clipping)")
    if not 0 <= optimizer.warmup <= 1:
        problems.append("optimizer.warmup: a fraction of the steps, from 0 to 1")
    return problems


def schedule_problems(schedule: Any) -> list[str]:
    """Range problems of the ``schedule`` section (``max_steps: 0`` is allowed: the index stages only)."""
    if schedule.max_steps is not None and schedule.max_steps < 0:
        return ["schedule.max_steps: must be at least 0"]
    if schedule.max_steps is None and schedule.epochs <= 0:
        return ["schedule.epochs: must be positive (or set schedule.max_steps)"]
    if schedule.max_seconds is not None and schedule.max_seconds <= 0:
        return ["schedule.max_seconds: must be positive"]
    return []


class DualEncoderTask(Task):
    """Contrastive dual-encoder fine-tuning (see the module docstring)."""

    sections = DualEncoderSections
    followed_by = {"label_vectors": "label-vectors"}

    @classmethod
    def check(cls, sections: DualEncoderSections) -> list[str]:
        problems = []
        try:
            make_loss(sections.loss.name, sections.loss.options)
        except RecipeError as error:
            problems.append(str(error))
        at_least_one = {"batching.batch_size": sections.batching.batch_size,
                        "optimizer.accumulate": sections.optimizer.accumulate}
        if sections.negatives.mined is not None:
            at_least_one.update({f"negatives.mined.{name}": getattr(sections.negatives.mined, name)
                                 for name in ("per_query", "depth", "refresh_every")})
        if sections.batching.clustered is not None:
            at_least_one.update({f"batching.clustered.{name}": getattr(sections.batching.clustered, name)
                                 for name in ("cluster_size", "max_cluster_size", "recluster_every")})
        problems += [f"{path}: must be at least 1" for path, value in at_least_one.items() if value < 1]
        if len(sections.negatives.propensity) != 2:
            problems.append("negatives.propensity: two numbers, A and B")
        return problems + schedule_problems(sections.schedule) + optimizer_problems(sections.optimizer)

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec: DualEncoderSections = context.sections
        data = context.data()
        self.data, self.pairs, self.labels = data, data.pairs, data.labels
        self.label_items = self.labels.items()
        self.encoder = load_encoder(self.spec.encoder, device=context.processes.device)
        if self.spec.lora is not None:
            self._add_lora()
        self.encoder.train_mode(True)
        self.objective = make_loss(self.spec.loss.name, self.spec.loss.options)
        negatives = self.spec.negatives
        self.positive_weights = (self.pairs.label_weights(*negatives.propensity)
                                 if negatives.positive_sampling == "inverse-propensity" else None)
        self.global_batch = self.spec.batching.batch_size * context.processes.world
        self.plan: list[np.ndarray] = []
        self.hard_negatives: np.ndarray | None = None
        self.query_vectors: np.ndarray | None = None  # for clustered batches, from the last recluster
        self.mined_at: int | None = None
        self.mine_pending = False  # a new epoch's plan: its queries have no mined negatives yet
        context.say(f"dual-encoder: batches of {self.global_batch} queries, loss {self.spec.loss.name}")

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        text = _text_model(self.encoder)
        if not hasattr(text, "backbone"):
            raise XMRError("lora: LoRA adapters are for decoder-llm encoders (or fused ones over a decoder)")
        spec = self.spec.lora
        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, use_rslora=spec.rslora,
                            target_modules=spec.target_modules)
        text.backbone = get_peft_model(text.backbone, config)

    # ---- what the loop drives --------------------------------------------------------------------------------
    def settings(self) -> LoopSettings:
        spec = self.spec
        return LoopSettings.from_sections(spec.optimizer, spec.schedule, self.context.recipe.evaluation,
                                          math.ceil(len(self.pairs) / self.global_batch))

    def parameter_groups(self) -> list[ParameterGroup]:
        """The encoder's groups: ``encoder`` at ``optimizer.lr``, ``projection`` at ``optimizer.projection_lr``."""
        rates = {"encoder": self.spec.optimizer.lr, "projection": self.spec.optimizer.projection_lr}
        groups = self.encoder.parameter_groups()
        unknown = sorted(set(groups) - set(rates))
        if unknown:
            raise XMRError(f"encoder: parameter groups {unknown} have no learning rate in the optimizer section")
        return [ParameterGroup(name, parameters, rates[name]) for name, parameters in groups.items()]

    def begin_epoch(self, epoch: int) -> int:
        self.mine_pending = self.spec.negatives.mined is not None
        clustered, seed = self.spec.batching.clustered, self.context.recipe.seed
        if clustered is None or epoch < clustered.start_epoch:
            self.plan = random_plan(len(self.pairs), self.global_batch, seed, epoch)
            return len(self.plan)
        reclusters = (epoch - clustered.start_epoch) // clustered.recluster_every
        size = min(clustered.cluster_size * 2 ** reclusters, clustered.max_cluster_size)
        if (epoch - clustered.start_epoch) % clustered.recluster_every == 0 or self.query_vectors is None:
            self.encoder.train_mode(False)
            self.query_vectors = self.encoder.encode_queries(self.pairs.queries)
            self.encoder.train_mode(True)
        self.context.say(f"epoch {epoch}: NGAME clustered batches, cluster size {size}")
        self.plan = clustered_plan(self.query_vectors, size, self.global_batch, seed, epoch)
        return len(self.plan)

    def before_step(self, step: int, position: int, steps_left: int) -> None:
        mined = self.spec.negatives.mined
        if mined is None or self.mined_at == step or not (step % mined.refresh_every == 0 or self.mine_pending):
            return
        if self.mined_at is not None and steps_left < mined.refresh_every / 2:
            return
        steps = min(mined.refresh_every - step % mined.refresh_every, steps_left)
        window = self.plan[position:position + steps * self.spec.optimizer.accumulate]
        if not window:
            return
        self.encoder.train_mode(False)
        started = time.perf_counter()
        cached = None
        if mined.cached_first and step == 0:
            from xmr.encoders.vector_cache import encode_cached

            cached = encode_cached(self.encoder, self.label_items, "label")
        rows = np.unique(np.concatenate(window))
        self.hard_negatives = mine_hard_negatives(self.encoder, self.pairs, mined.depth, mined.factory, rows=rows,
                                                  label_vectors=cached)
        self.encoder.train_mode(True)
        self.mined_at, self.mine_pending = step, False
        self.context.say(f"step {step}: mined {mined.depth} hard negatives for {len(rows)} queries "
                         f"in {time.perf_counter() - started:.1f} s")

    def forward(self, position: int, rng: np.random.Generator) -> ModelOutput:
        negatives, processes = self.spec.negatives, self.context.processes
        batch = make_batch(self.pairs, self.plan[position], rng, one_positive=self.objective.one_positive_per_query,
                           all_labels=len(self.labels) <= negatives.all_labels_up_to,
                           positive_weights=self.positive_weights, hard_negatives=self.hard_negatives,
                           negatives_per_query=negatives.mined.per_query if negatives.mined else 0)
        query_share, query_sizes = distributed.shard(len(batch.queries), processes)
        label_share, label_sizes = distributed.shard(len(batch.columns), processes)
        with truncation(self.encoder, self.spec.batching.train_max_length):
            queries = self.encoder.embed([self.pairs.queries[row] for row in batch.queries[query_share]], "query")
            labels = self.encoder.embed([self.label_items[column] for column in batch.columns[label_share]],
                                        "label")
        queries = distributed.gather_with_grad(queries.float(), query_sizes, processes)
        labels = distributed.gather_with_grad(labels.float(), label_sizes, processes)
        return ModelOutput(queries, labels, torch.from_numpy(batch.positives).to(queries.device),
                           torch.from_numpy(batch.anchors).to(queries.device))

    def loss(self, output: ModelOutput) -> torch.Tensor:
        return self.objective(output)

    def validate(self) -> dict[str, float] | None:
        """Metrics of the current encoder on the validation queries, through ``xmr.evaluation``."""
        if self.data.validation is None:
            return None
        self.encoder.train_mode(False)
        try:
            index = build_index_from_embeddings(self.labels, self.encoder.encode_labels(self.label_items), None,
                                                encoder=self.encoder)
            report = evaluate(index, self.data.validation, ks=self.context.recipe.evaluation.ks,
                              train=self.data.train)
        finally:
            self.encoder.train_mode(True)
        return report["metrics"]

    def save(self, which: str) -> None:
        """``runs/NAME/encoder`` (best) or ``runs/NAME/last``: ordinary encoder folders."""
        self.save_encoder_folder(self.encoder, which)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {"plan": np.concatenate(self.plan), "plan_sizes": np.array([len(batch) for batch in self.plan])}
        if self.hard_negatives is not None:
            arrays["hard_negatives"] = self.hard_negatives
        if self.query_vectors is not None:
            arrays["query_vectors"] = self.query_vectors
        return arrays

    def state(self) -> dict[str, Any]:
        return {"mined_at": self.mined_at, "mine_pending": self.mine_pending}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])
        self.hard_negatives = arrays.get("hard_negatives")
        self.query_vectors = arrays.get("query_vectors")
        self.mined_at = state["mined_at"]
        self.mine_pending = state.get("mine_pending", False)

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """The best encoder's folder, and its index unless the label-vectors task follows (it writes the index)."""
        run = self.context.run
        outputs: dict[str, Any] = {"encoder": str(run / "encoder")}
        if self.spec.index is not None and "label-vectors" not in self.context.recipe.tasks:
            started = time.perf_counter()
            outputs["index"] = str(self._build_index())
            outputs["index_seconds"] = round(time.perf_counter() - started, 1)
        return outputs

    def _build_index(self) -> Any:
        """``runs/NAME/index`` of the best encoder: label text vectors, optionally centroid-enriched."""
        spec, out = self.spec.index, self.context.run / "index"
        encoder = load_encoder(self.context.run / "encoder", device=self.context.processes.device)
        encoder.train_mode(False)
        vectors = encoder.encode_labels(self.label_items)
        if spec.centroid_weight > 0:
            query_vectors = encoder.encode_queries(self.pairs.queries)
            centroids, counts = label_vectors.label_centroids(query_vectors, self.pairs.positives, len(self.labels))
            vectors = label_vectors.centroid_enriched(vectors, centroids, counts, spec.centroid_weight)
        build_index_from_embeddings(self.labels, vectors, out, encoder=encoder, factory=spec.factory,
                                    normalized=label_vectors.unit_length(vectors))
        self.context.say(f"index of the trained encoder: {out}")
        return out
