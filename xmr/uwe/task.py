"""Task ``uwe``: many-to-many InfoNCE on late-interaction scores, both directions, over a mixture of graphs.

UWE (TechWolf 2025, Sec. 3): for each bipartite graph, a batch of queries and the targets they link to are scored by
the soft late interaction (``scoring.py`` (1), or (2) with ``target: tokens``); the loss is the many-to-many InfoNCE
of the spine (``xmr.train.losses.MultiPositiveInfoNCE``: every edge contrasted with the query's non-linked targets
and with the target's non-linked queries, other positives left out of each denominator), so a trained model ranks
targets for a query and queries for a target. Several graphs are mixed in one run (``graphs.py``): each micro-batch
comes from one graph drawn by weight, and the one model serves every graph afterwards.

xmr's addition (``loss.pooled_weight``, off by default): the same InfoNCE on the pooled vectors, so the FAISS
candidate stage that feeds the re-rank learns as well (the paper scores every target with the late interaction).

Outputs: ``runs/NAME/encoder`` (best; ``last`` beside it) and ``runs/NAME/index``, the first graph's target space
(pooled FAISS + ``late-interaction`` re-rank, ``index.py``), which ``xmr eval`` scores like any index; the graphs
named in ``index.graphs`` get their own folder under ``runs/NAME/targets/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from xmr.encoders import load_encoder
from xmr.errors import XMRError
from xmr.evaluation import evaluate
from xmr.train.losses import ModelOutput, make_loss
from xmr.train.recipe import OptimizerSpec, RecipeError, ScheduleSpec
from xmr.train.tasks import register_task
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext
from xmr.train.tasks.dual_encoder import optimizer_problems, schedule_problems, truncation
from xmr.uwe.encoder import LateInteractionEncoder
from xmr.uwe.graphs import GraphSpec, graph_batch, load_graphs, mixture_plan
from xmr.uwe.index import DEFAULT_RERANK, build_uwe_index
from xmr.uwe.scoring import soft_late_interaction


@dataclass
class UWELossSpec:
    name: str = "multi-positive-infonce"  # a loss of xmr.train.losses.LOSSES over the late-interaction scores
    options: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.05})  # UWE's InfoNCE temperature
    pooled_weight: float = 0.0  # > 0: plus this times the same loss on the pooled vectors (the candidate stage)


@dataclass
class UWEBatchingSpec:
    batch_size: int = 32  # queries per micro-batch (all from one graph)
    train_max_length: int | None = None  # truncate texts while training (encoding keeps the encoder's length)
    all_labels_up_to: int = 0  # graphs with at most this many targets: every target is a column of every batch


@dataclass
class UWEIndexSpec:
    factory: str = "Flat"  # FAISS factory over the pooled vectors
    rerank: int = DEFAULT_RERANK  # late-interaction re-rank depth K (a per-call knob afterwards)
    graphs: list[str] = field(default_factory=list)  # further graphs whose target spaces get a folder


@dataclass
class UWESections:
    graphs: list[GraphSpec]
    validation: str | None = None  # queries against the first graph's targets (never trained on)
    validation_size: int = 0  # without a validation file: hold out this many of the first graph's queries
    encoder: Any = field(default_factory=lambda: {"type": "uwe-late-interaction", "model": "all-MiniLM-L6-v2"})
    loss: UWELossSpec = field(default_factory=UWELossSpec)
    batching: UWEBatchingSpec = field(default_factory=UWEBatchingSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    index: UWEIndexSpec = field(default_factory=UWEIndexSpec)


@register_task("uwe")
class UWETask(Task):
    """Bidirectional multi-task contrastive training on late-interaction scores (see the module docstring)."""

    sections = UWESections
    distributed = False

    @classmethod
    def check(cls, sections: UWESections) -> list[str]:
        problems = []
        try:
            make_loss(sections.loss.name, sections.loss.options)
        except RecipeError as error:
            problems.append(str(error))
        if not sections.graphs:
            problems.append("graphs: at least one graph")
        names = [graph.name for graph in sections.graphs]
        if len(set(names)) != len(names):
            problems.append(f"graphs: names must differ, got {names}")
        problems += [f"graphs[{position}].weight: must be positive" for position, graph in enumerate(sections.graphs)
                     if not graph.weight > 0]
        problems += [f"graphs[{position}].positives_per_query: must be at least 1"
                     for position, graph in enumerate(sections.graphs)
                     if graph.positives_per_query is not None and graph.positives_per_query < 1]
        problems += [f"index.graphs: {name!r} is not a graph" for name in sections.index.graphs if name not in names]
        if sections.loss.pooled_weight < 0:
            problems.append("loss.pooled_weight: must be at least 0")
        if sections.batching.batch_size < 1:
            problems.append("batching.batch_size: must be at least 1")
        if sections.index.rerank < 1:
            problems.append("index.rerank: must be at least 1")
        if sections.schedule.max_steps is None and sections.schedule.epochs <= 0:
            problems.append("schedule.epochs: must be positive (or set schedule.max_steps)")
        return problems + schedule_problems(sections.schedule) + optimizer_problems(sections.optimizer)

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec: UWESections = context.sections
        self.graphs, holdout = load_graphs(self.spec.graphs, self.spec.validation_size, context.recipe.seed,
                                           context.say)
        if self.spec.validation is not None:
            from xmr.datasets import read_instances

            holdout = read_instances(self.spec.validation)
        self.validation = holdout
        self.encoder = load_encoder(self.spec.encoder, device=context.processes.device)
        if not isinstance(self.encoder, LateInteractionEncoder):
            raise XMRError(f"encoder: the uwe task trains a uwe-late-interaction encoder, got "
                           f"{self.encoder.type_name!r}")
        self.encoder.train_mode(True)
        self.objective = make_loss(self.spec.loss.name, self.spec.loss.options)
        self.plan_graphs = np.zeros(0, dtype=np.int64)
        self.plan: list[np.ndarray] = []

    def settings(self) -> LoopSettings:
        batches = sum(math.ceil(len(graph.pairs) / self.spec.batching.batch_size) for graph in self.graphs)
        return LoopSettings.from_sections(self.spec.optimizer, self.spec.schedule, self.context.recipe.evaluation,
                                          batches)

    def parameter_groups(self) -> list[ParameterGroup]:
        rates = {"encoder": self.spec.optimizer.lr, "projection": self.spec.optimizer.projection_lr}
        return [ParameterGroup(name, parameters, rates[name])
                for name, parameters in self.encoder.parameter_groups().items()]

    def begin_epoch(self, epoch: int) -> int:
        self.plan_graphs, self.plan = mixture_plan(self.graphs, self.spec.batching.batch_size,
                                                   self.context.recipe.seed, epoch)
        return len(self.plan)

    def forward(self, position: int, rng: np.random.Generator) -> tuple[ModelOutput, ModelOutput | None]:
        """Late-interaction scores of one graph's batch (and, with ``pooled_weight``, pooled inner products)."""
        graph = self.graphs[int(self.plan_graphs[position])]
        pairs = graph.pairs
        batch = graph_batch(graph, self.plan[position], rng,
                            all_labels=len(pairs.labels) <= self.spec.batching.all_labels_up_to)
        targets = pairs.labels.items()
        with truncation(self.encoder, self.spec.batching.train_max_length):
            queries, query_mask, query_pooled = self.encoder.embed_tokens(
                [pairs.queries[row] for row in batch.queries], "query")
            labels, label_mask, label_pooled = self.encoder.embed_tokens([targets[c] for c in batch.columns],
                                                                         "label")
        symmetric, temperature = self.encoder.target == "tokens", self.encoder.temperature

        def late_interaction(query: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return soft_late_interaction(query, query_mask, label, label_mask, temperature, symmetric)

        positives = torch.from_numpy(batch.positives).to(queries.device)
        anchors = torch.from_numpy(batch.anchors).to(queries.device)
        scored = ModelOutput(queries, labels, positives, anchors, similarity=late_interaction)
        pooled = (ModelOutput(query_pooled, label_pooled, positives, anchors)
                  if self.spec.loss.pooled_weight > 0 else None)
        return scored, pooled

    def loss(self, output: tuple[ModelOutput, ModelOutput | None]) -> torch.Tensor:
        scored, pooled = output
        loss = self.objective(scored)
        if pooled is not None:
            loss = loss + self.spec.loss.pooled_weight * self.objective(pooled)
        return loss

    def validate(self) -> dict[str, float] | None:
        """Metrics of the current model on the validation queries, pooled candidates + late-interaction re-rank."""
        if self.validation is None:
            return None
        self.encoder.train_mode(False)
        try:
            index = build_uwe_index(self.graphs[0].pairs.labels, self.encoder, None, self.spec.index.rerank,
                                    self.spec.index.factory)
            report = evaluate(index, self.validation, ks=self.context.recipe.evaluation.ks)
        finally:
            self.encoder.train_mode(True)
        return report["metrics"]

    def save(self, which: str) -> None:
        self.save_encoder_folder(self.encoder, which)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"plan_graphs": self.plan_graphs, "plan": np.concatenate(self.plan),
                "plan_sizes": np.array([len(batch) for batch in self.plan])}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.plan_graphs = arrays["plan_graphs"]
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """The best encoder's folder, ``runs/NAME/index`` (first graph) and ``runs/NAME/targets/<graph>``."""
        run, spec = self.context.run, self.spec.index
        encoder = load_encoder(run / "encoder", device=self.context.processes.device)
        outputs: dict[str, Any] = {"encoder": str(run / "encoder"), "index": str(run / "index")}
        build_uwe_index(self.graphs[0].pairs.labels, encoder, run / "index", spec.rerank, spec.factory)
        by_name = {graph.name: graph for graph in self.graphs}
        for name in spec.graphs:
            folder = run / "targets" / name
            build_uwe_index(by_name[name].pairs.labels, encoder, folder, spec.rerank, spec.factory)
            outputs[f"targets/{name}"] = str(folder)
        self.context.say(f"UWE index of the trained encoder: {run / 'index'}")
        return outputs
