"""Training recipes: YAML files validated into dataclasses, with errors that name the file and the field.

A recipe names the data, the encoder (any ``load_encoder`` spec), the loss, negatives, batching, optimiser and
schedule, evaluation, checkpoints and the index to build at the end. Relative data paths are resolved against the
current directory (recipes are run from the repository root, like every other xmr command).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmr.errors import XMRError


class RecipeError(XMRError, ValueError):
    """A recipe is malformed; the message names the file and the field."""


@dataclass
class DataSpec:
    train: str  # queries with their labels: xmr JSONL, XMC repository formats, HF datasets folder
    labels: str  # the label catalogue (the label side of training, and the index)
    validation: str | None = None
    validation_size: int = 0  # without a validation file: hold out this many training queries (never trained on)
    max_train: int | None = None  # use at most this many training queries (after the hold-out)


@dataclass
class LoraSpec:
    """LoRA adapter for decoder encoders (peft); defaults are ViXML's run script (rank 256, alpha 256, attention and
    MLP projections; it sets no dropout)."""

    r: int = 256
    alpha: int = 256
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"])


@dataclass
class LossSpec:
    name: str = "multi-positive-infonce"  # or decoupled-softmax, ohnm-triplet
    options: dict[str, Any] = field(default_factory=dict)  # the loss's own parameters (temperature, k, margins ...)


@dataclass
class MinedSpec:
    """ANCE-style hard negatives: top labels of each training query in an index of the current label vectors."""

    per_query: int = 2  # hard negatives added to the batch per query
    depth: int = 20  # how many top non-positive labels to keep per query at each refresh
    refresh_every: int = 200  # optimiser steps between refreshes (and one before the first step)
    factory: str = "Flat"


@dataclass
class NegativesSpec:
    all_labels_up_to: int = 0  # catalogues of at most this many labels: every label is a column of every batch
    mined: MinedSpec | None = None
    positive_sampling: str = "uniform"  # or "inverse-propensity" (ViXML: A=0.6, B=2.6) for one-positive losses
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
class OptimizerSpec:
    lr: float = 2e-5
    projection_lr: float = 5e-4  # image/output projections (fused encoders, decoder projections); ViXML's value
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all optimiser steps with linear warm-up; then linear decay to zero
    clip_norm: float | None = 1.0
    accumulate: int = 1  # micro-batches per optimiser step
    precision: str = "auto"  # auto (bf16 on CUDA with bf16 support, else fp32), fp32, bf16, fp16


@dataclass
class ScheduleSpec:
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; overrides epochs (0: keep the encoder, run the index stages only)


@dataclass
class EvaluationSpec:
    every: int | None = None  # optimiser steps between validation runs (and always at the end)
    ks: list[int] = field(default_factory=lambda: [1, 3, 5])
    metric: str = "P@1"  # the metric that picks the best checkpoint
    before: bool = True  # also evaluate the untrained encoder (step 0)


@dataclass
class CheckpointSpec:
    every: int = 100  # optimiser steps; a checkpoint is also written on SIGTERM
    keep: int = 2


@dataclass
class IndexSpec:
    """The index built at the end from the best encoder: ``runs/NAME/index``."""

    factory: str = "Flat"
    centroid_weight: float = 0.0  # > 0: label vector = normalise(text vector + w * mean of its training queries)


@dataclass
class LabelVectorsSpec:
    """Second stage: learned label vectors over the trained encoder's frozen query vectors (see label_vectors.py)."""

    parts: list[str] = field(default_factory=lambda: ["text", "centroid", "cluster", "classifier"])
    combine: str = "sum"  # sum, gated, transformer (PRIME-style)
    clusters: int | None = None  # label clusters for the free vectors (default: labels / 8)
    loss: str = "softmax"  # decoupled softmax, or bce (one-vs-all)
    shortlist: int = 0  # negatives per batch: the top-scoring labels (0: all labels)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0
    temperature: float = 0.05
    select_on_validation: bool = True  # keep the epoch that scores best on evaluation.metric


@dataclass
class Recipe:
    name: str
    data: DataSpec
    encoder: Any = "all-MiniLM-L6-v2"  # any load_encoder spec: name, alias, config mapping, encoder folder
    seed: int = 0
    output: str = "runs"
    lora: LoraSpec | None = None
    loss: LossSpec = field(default_factory=LossSpec)
    negatives: NegativesSpec = field(default_factory=NegativesSpec)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    index: IndexSpec | None = None
    label_vectors: LabelVectorsSpec | None = None  # needs an index section: the learned vectors are what it indexes

    @property
    def run_folder(self) -> Path:
        return Path(self.output) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a dataclass field annotation, recursing into nested specs."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(value, inner, where)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return build(annotation, value, where)
    if annotation is Any:
        return value
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, inner, f"{where}[{position}]") for position, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 2e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, annotation) and not (annotation is int and isinstance(value, bool)):
        return value
    raise RecipeError(f"{where}: expected {annotation.__name__}, got {value!r}")


def build(spec: type, values: dict[str, Any], where: str) -> Any:
    """A spec dataclass from a mapping; unknown or missing keys are errors naming the field path."""
    hints = typing.get_type_hints(spec)
    known = {item.name: item for item in dataclasses.fields(spec)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        path = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecipeError(f"{path}: unknown key (known: {', '.join(known)})")
    options = {}
    for name, item in known.items():
        path = f"{where}.{name}" if where else name
        if name in values:
            options[name] = _convert(values[name], hints[name], path)
        elif item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{path}: required")
    return spec(**options)


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe; ``overrides`` (``{"schedule.max_steps": 10}``) replace single fields."""
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RecipeError(f"{path}: cannot read recipe: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}:{line} bad YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(values, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of fields, got {type(values).__name__}")
    for dotted, value in (overrides or {}).items():
        target = values
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    try:
        recipe = build(Recipe, values, "")
    except RecipeError as error:
        raise RecipeError(f"{path}: {error}") from None
    _check(recipe, path)
    return recipe


def _check(recipe: Recipe, path: Path) -> None:
    problems = []
    if recipe.negatives.positive_sampling not in ("uniform", "inverse-propensity"):
        problems.append(f"negatives.positive_sampling: {recipe.negatives.positive_sampling!r} is not uniform or "
                        "inverse-propensity")
    if recipe.optimizer.precision not in ("auto", "fp32", "bf16", "fp16"):
        problems.append(f"optimizer.precision: {recipe.optimizer.precision!r} is not auto, fp32, bf16 or fp16")
    for name in ("batch_size",):
        if getattr(recipe.batching, name) < 1:
            problems.append(f"batching.{name}: must be at least 1")
    if recipe.optimizer.accumulate < 1:
        problems.append("optimizer.accumulate: must be at least 1")
    if recipe.checkpoint.every < 1:
        problems.append("checkpoint.every: must be at least 1")
    if recipe.schedule.max_steps is not None and recipe.schedule.max_steps < 0:
        problems.append("schedule.max_steps: must be at least 0")
    if recipe.schedule.max_steps is None and recipe.schedule.epochs <= 0:
        problems.append("schedule.epochs: must be positive (or set schedule.max_steps)")
    if recipe.label_vectors is not None and recipe.index is None:
        problems.append("label_vectors: needs an index section (the learned vectors are written into runs/NAME/index)")
    if "/" in recipe.name or recipe.name in ("", ".", ".."):
        problems.append(f"name: {recipe.name!r} must be a plain folder name")
    if problems:
        raise RecipeError(f"{path}: {problems[0]}")
