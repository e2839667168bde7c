"""``label-vectors``: learned label vectors over a frozen encoder's query vectors (``xmr.train.label_vectors``).

Runs after ``dual-encoder`` when a recipe has a ``label_vectors:`` section (on the best encoder it trained), or alone
as ``method: label-vectors`` on the recipe's ``encoder``. Each batch scores its queries against its label columns:
all labels, or the queries' positives plus the ``shortlist`` labels that currently score highest; ``softmax`` is
the decoupled softmax (each positive against the non-positives), ``bce`` the one-vs-all logistic loss, both on
``q . v / temperature``. With ``select_on_validation`` the validation metric is measured before training (epoch 0:
the untrained sum of the fixed parts) and after every epoch, and the best epoch's vectors are kept, so per-label
parts that overfit their few queries never reach the index. The output is ``runs/NAME/index`` of those vectors.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from xmr.catalogue import LabelCatalogue
from xmr.datasets import Instances
from xmr.encoders import Encoder, load_encoder
from xmr.encoders.vector_cache import encode_items_cached
from xmr.evaluation import evaluate
from xmr.index import build_index_from_embeddings
from xmr.io.atomic import write_folder_atomically
from xmr.train.batches import random_plan
from xmr.train.label_vectors import (
    Combiner,
    LabelParts,
    LabelVectorModel,
    Part,
    balanced_clusters,
    combined_vectors,
    label_centroids,
    unit_length,
)
from xmr.train.losses import DecoupledSoftmaxLoss, ModelOutput, OneVsAllBCELoss
from xmr.train.recipe import DataSpec, IndexSpec
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext

VECTORS_FILE = "vectors.safetensors"


@dataclass
class LabelVectorsSpec:
    """The ``label_vectors`` section: which parts, how they combine, and stage 2's own optimiser settings."""

    parts: list[Part] = field(default_factory=lambda: ["text", "centroid", "cluster", "classifier"])
    combine: Combiner = "sum"  # PRIME-style transformer, gated sum or plain sum
    clusters: int | None = None  # label clusters for the free vectors (default: labels / 8)
    loss: Literal["softmax", "bce"] = "softmax"  # decoupled softmax, or one-vs-all
    shortlist: int = 0  # negatives per batch: the top-scoring labels (0: all labels)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0
    temperature: float = 0.05
    select_on_validation: bool = True  # keep the epoch that scores best on evaluation.metric
    max_seconds: float | None = None  # wall-clock cap on the steps and validations (xmr train --auto's share)


@dataclass
class LabelVectorsSections:
    data: DataSpec
    label_vectors: LabelVectorsSpec = field(default_factory=LabelVectorsSpec)
    encoder: Any = "all-MiniLM-L6-v2"  # the frozen encoder (after dual-encoder: the best encoder it trained)
    index: IndexSpec | None = None  # required: the learned vectors are what it indexes


@dataclass
class LabelVectorInputs:
    """What stage 2 learns from: every label's text vector, the training queries' vectors and positives, and the
    validation queries with their vectors (encoded once)."""

    labels: LabelCatalogue
    text: np.ndarray
    queries: np.ndarray
    positives: list[np.ndarray]
    train: Instances | None = None  # the training instances (propensities for PSP@k)
    validation: Instances | None = None
    validation_vectors: np.ndarray | None = None
    encoder: Encoder | None = None  # named in the index manifest (None: the index answers search_embeddings only)


class LabelVectorsTask(Task):
    """Learned label vectors over frozen query vectors (see the module docstring)."""

    sections = LabelVectorsSections
    distributed = False  # seconds of work on frozen vectors: the main process only

    @classmethod
    def check(cls, sections: Any) -> list[str]:
        spec, problems = sections.label_vectors, []
        if sections.index is None:
            problems.append("label_vectors: needs an index section (the learned vectors are written into "
                            "runs/NAME/index)")
        if "text" not in spec.parts or len(set(spec.parts)) != len(spec.parts):
            problems.append(f"label_vectors.parts: {spec.parts} must include 'text', each part once")
        minimum = {"epochs": 0, "batch_size": 1, "shortlist": 0, "clusters": 1}
        problems += [f"label_vectors.{name}: must be at least {least}" for name, least in minimum.items()
                     if getattr(spec, name) is not None and getattr(spec, name) < least]
        if spec.temperature <= 0:
            problems.append("label_vectors.temperature: must be positive")
        if spec.lr < 0:
            problems.append("label_vectors.lr: must be at least 0")
        if spec.weight_decay < 0:
            problems.append("label_vectors.weight_decay: must be at least 0")
        if spec.max_seconds is not None and spec.max_seconds <= 0:
            problems.append("label_vectors.max_seconds: must be positive")
        return problems

    def __init__(self, context: TaskContext) -> None:
        super().__init__(context)
        self.spec: LabelVectorsSpec = context.sections.label_vectors
        self.started = time.perf_counter()
        self.given = given = self.inputs()
        n_labels = len(given.text)
        clusters = balanced_clusters(given.text, self.spec.clusters or max(1, n_labels // 8), context.recipe.seed)
        centroids, counts = label_centroids(given.queries, given.positives, n_labels)
        self.model = LabelVectorModel(LabelParts(given.text, centroids, counts, clusters), self.spec.parts,
                                      self.spec.combine)
        self.queries = torch.from_numpy(np.ascontiguousarray(given.queries, dtype=np.float32))
        loss = {"softmax": DecoupledSoftmaxLoss, "bce": OneVsAllBCELoss}[self.spec.loss]
        self.objective = loss(temperature=self.spec.temperature)
        self.plan: list[np.ndarray] = []

    def inputs(self) -> LabelVectorInputs:
        """Everything encoded once by the frozen encoder (the previous task's best encoder, else ``encoder``),
        through the vector cache: a rerun, or ``xmr train --auto`` that encoded the same splits, encodes nothing.
        Every training instance is encoded, also those without a known label, so the cache's chunks line up with
        the split as others encoded it; the pairs' rows are then picked out (``pairs.kept``)."""
        context = self.context
        data = context.data()
        encoder = load_encoder(context.inputs.get("encoder", context.sections.encoder),
                               device=context.processes.device)
        encoder.train_mode(False)
        validating = self.spec.select_on_validation and data.validation is not None
        queries = encode_items_cached(encoder, data.train.items(), "query")[data.pairs.kept]
        return LabelVectorInputs(
            data.labels, encode_items_cached(encoder, data.labels.items(), "label"), queries,
            data.pairs.positives, data.train, data.validation if validating else None,
            encode_items_cached(encoder, data.validation.items(), "query") if validating else None, encoder)

    # ---- what the loop drives --------------------------------------------------------------------------------
    def settings(self) -> LoopSettings:
        """The section's epochs, batch size, weight decay and ``max_seconds``; constant learning rate, fp32, no
        clipping; validation before training and after every epoch when selecting on validation."""
        batches = math.ceil(len(self.queries) / self.spec.batch_size)
        validating = self.given.validation is not None
        return LoopSettings(batches, max_steps=self.spec.epochs * batches, weight_decay=self.spec.weight_decay,
                            lr_schedule="constant", precision="fp32", validate_every=batches if validating else None,
                            validate_before=validating, validate_at_end=validating,
                            max_seconds=self.spec.max_seconds)

    def parameter_groups(self) -> list[ParameterGroup]:
        learned = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        return [ParameterGroup("label_vectors", learned, self.spec.lr)]

    def begin_epoch(self, epoch: int) -> int:
        self.plan = random_plan(len(self.queries), self.spec.batch_size, self.context.recipe.seed, epoch)
        return len(self.plan)

    def forward(self, position: int, rng: np.random.Generator) -> ModelOutput:
        rows = self.plan[position]
        queries, row_positives = self.queries[rows], [self.given.positives[row] for row in rows]
        n_labels = len(self.given.text)
        columns = torch.arange(n_labels)
        if 0 < self.spec.shortlist < n_labels:
            with torch.no_grad():
                top = (queries @ self.model(columns).T).topk(self.spec.shortlist, dim=1).indices
            columns = torch.unique(torch.cat([top.flatten(), torch.from_numpy(np.concatenate(row_positives))]))
        cells = torch.from_numpy(np.stack([np.isin(columns.numpy(), labels) for labels in row_positives]))
        return ModelOutput(queries, self.model(columns), cells)

    def loss(self, output: ModelOutput) -> torch.Tensor:
        return self.objective(output)

    def validate(self) -> dict[str, float] | None:
        """Metrics of the current combined vectors on the validation queries (their vectors encoded once)."""
        given = self.given
        if given.validation is None:
            return None
        vectors = combined_vectors(self.model)
        index = build_index_from_embeddings(given.labels, vectors, None, encoder=given.encoder,
                                            normalized=unit_length(vectors))
        report = evaluate(index, given.validation, ks=self.context.recipe.evaluation.ks, train=given.train,
                          query_vectors=given.validation_vectors)
        return report["metrics"]

    def save(self, which: str) -> None:
        """``runs/NAME/label-vectors/{best,last}/vectors.safetensors``: the combined ``(labels, dim)`` vectors."""
        vectors = combined_vectors(self.model)
        write_folder_atomically(self.context.run / "label-vectors" / which,
                                lambda folder: save_file({"vectors": vectors}, folder / VECTORS_FILE))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"plan": np.concatenate(self.plan), "plan_sizes": np.array([len(batch) for batch in self.plan])}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:
        self.plan = np.split(arrays["plan"], np.cumsum(arrays["plan_sizes"])[:-1])

    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """``runs/NAME/index`` of the best vectors."""
        context, spec = self.context, self.spec
        vectors = load_file(context.run / "label-vectors" / "best" / VECTORS_FILE)["vectors"]
        out = context.run / "index"
        build_index_from_embeddings(self.given.labels, vectors, out, encoder=self.given.encoder,
                                    factory=context.sections.index.factory, normalized=unit_length(vectors))
        batches = math.ceil(len(self.queries) / spec.batch_size)
        epoch = best["step"] // batches if best is not None else spec.epochs
        kept = f"; validation {context.recipe.evaluation.metric} {100 * best['value']:.2f}" if best else ""
        context.say(f"label vectors ({'+'.join(spec.parts)}, {spec.combine}): epoch {epoch} kept{kept}; index: {out}")
        return {"index": str(out), "index_seconds": round(time.perf_counter() - self.started, 1), "best_epoch": epoch,
                "label_vectors": str(context.run / "label-vectors" / "best")}
