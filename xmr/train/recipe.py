"""Training recipes: YAML files validated into dataclasses, with errors that name the file and the field.

A recipe names its ``method`` (a task in ``xmr.train.tasks.TASKS``, default ``dual-encoder``) and the run-level
keys every recipe has (``name``, ``seed``, ``output``, ``evaluation``, ``checkpoint``); every other top-level key is
a section that the method's task (or a task it hands over to, e.g. ``label_vectors:``) declares as a dataclass.
Loading checks the whole file and reports every problem at once. Recipes bundled with xmr
(``xmr/train/recipes/*.yaml``) load by bare name (``load_recipe("reuters-minilm")``). Relative data paths are
resolved against the current directory, like every other xmr command (override them with ``--set data.train=...``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from xmr.errors import XMRError

BUNDLED = resources.files("xmr.train") / "recipes"


class RecipeError(XMRError, ValueError):
    """A recipe is malformed; the message names the file and the field."""


# ---- sections shared by several tasks ------------------------------------------------------------------------------
@dataclass
class DataSpec:
    train: str  # queries with their labels: xmr JSONL, XMC repository formats, HF datasets folder
    labels: str  # the label catalogue (the label side of training, and the index)
    validation: str | None = None
    validation_size: int = 0  # without a validation file: hold out this many training queries (never trained on)
    max_train: int | None = None  # use at most this many training queries (after the hold-out)
    image_roots: list[str] = field(default_factory=list)  # folders image paths may point into besides the files' own


@dataclass
class OptimizerSpec:
    lr: float = 2e-5
    projection_lr: float = 5e-4  # image/output projections (fused encoders, decoder projections); ViXML's value
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all optimiser steps with linear warm-up
    lr_schedule: Literal["linear", "constant"] = "linear"  # after the warm-up: linear decay to zero, or constant
    clip_norm: float | None = 1.0
    accumulate: int = 1  # micro-batches per optimiser step
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA with bf16 support, else fp32


@dataclass
class ScheduleSpec:
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; overrides epochs (0: keep the encoder, run the index stages only)
    # wall-clock cap: after its first steps the loop times a step and trains min(the steps above, max_seconds / that
    # time) steps, the learning-rate schedule stretched to the new count (xmr train --auto's budget)
    max_seconds: float | None = None


@dataclass
class IndexSpec:
    """The index built at the end from the best encoder: ``runs/NAME/index``."""

    factory: str = "Flat"
    centroid_weight: float = 0.0  # > 0: label vector = normalise(text vector + w * mean of its training queries)


# ---- the keys of every recipe ------------------------------------------------------------------------------------
@dataclass
class EvaluationSpec:
    every: int | None = None  # optimiser steps between validation runs (and always at the end)
    ks: list[int] = field(default_factory=lambda: [1, 3, 5])
    metric: str = "P@1"  # the metric that picks the best checkpoint
    before: bool = True  # also evaluate the untrained model (step 0)


@dataclass
class CheckpointSpec:
    every: int = 100  # optimiser steps; a checkpoint is also written on SIGTERM
    keep: int = 2  # the newest checkpoints kept (at least 1: resume needs one)


@dataclass
class Recipe:
    """A validated recipe: the run-level keys, and ``tasks``: each task of the run (the method first, then the tasks
    it hands over to) with its own validated sections, in the order they run."""

    name: str
    method: str = "dual-encoder"
    seed: int = 0
    output: str = "runs"
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    tasks: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # not a recipe key

    @property
    def run_folder(self) -> Path:
        return Path(self.output) / self.name

    def section(self, key: str) -> Any:
        """A task section by its recipe key (``recipe.section("batching").batch_size``)."""
        for sections in self.tasks.values():
            if key in {item.name for item in dataclasses.fields(sections)}:
                return getattr(sections, key)
        raise KeyError(f"recipe {self.name!r} has no section {key!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every key as the YAML would spell it (sections shared by two tasks appear once)."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.init}
        for sections in self.tasks.values():
            values.update({item.name: getattr(sections, item.name) for item in dataclasses.fields(sections)})
        return {key: _plain(value) for key, value in values.items()}


def _plain(value: Any) -> Any:
    """A section as JSON-ready values: dataclasses (also a list of them, e.g. UWE's ``graphs``) as dicts."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# ---- validation ------------------------------------------------------------------------------------------------------
class _Failed(Exception):
    """A nested spec could not be built; its problems are already recorded."""


def _convert(value: Any, annotation: Any, where: str, problems: list[str]) -> Any:
    """Check ``value`` against a dataclass field annotation, recursing into nested specs (whose problems go to
    ``problems``); a problem with the value itself raises :class:`RecipeError`."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(value, inner, where, problems)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        built = build(annotation, value, where, problems)
        if built is None:
            raise _Failed
        return built
    if annotation is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, str) and value in choices:
            return value
        raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, inner, f"{where}[{position}]", problems) for position, item in enumerate(value)]
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


def build(spec: type, values: dict[str, Any], where: str, problems: list[str]) -> Any:
    """A spec dataclass from a mapping; every unknown key, missing key and bad value is appended to ``problems`` as
    ``field.path: what`` (fields with ``init=False`` are not keys). A bad field takes its default, so that checks
    on the other fields still run; None when a required field is missing or bad."""
    hints = typing.get_type_hints(spec)
    known = {item.name: item for item in dataclasses.fields(spec) if item.init}
    for key in sorted(set(values) - set(known), key=str):
        problems.append(f"{where + '.' if where else ''}{key}: unknown key (known: {', '.join(known)})")
    options, complete = {}, True
    for name, item in known.items():
        path = f"{where}.{name}" if where else name
        required = item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING
        if name not in values:
            if required:
                problems.append(f"{path}: required")
                complete = False
            continue
        try:
            options[name] = _convert(values[name], hints[name], path, problems)
        except RecipeError as error:
            problems.append(str(error))
            complete = complete and not required
        except _Failed:
            complete = complete and not required
    return spec(**options) if complete else None


def resolve_recipe(path: str | Path) -> Path:
    """An existing file, or the bundled recipe of a bare name (``reuters-minilm``: no suffix, no folder)."""
    path = Path(path)
    if path.exists() or path.suffix or len(path.parts) != 1:
        return path
    bundled = BUNDLED / f"{path.name}.yaml"
    if not bundled.is_file():
        names = sorted(entry.name[:-5] for entry in BUNDLED.iterdir() if entry.name.endswith(".yaml"))
        raise RecipeError(f"{path}: no such recipe file, and not a bundled recipe ({', '.join(names)})")
    return Path(str(bundled))


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a YAML recipe (a path, or a bundled recipe's name); ``overrides``
    (``{"schedule.max_steps": 10}``) replace single fields. Every problem is reported in one :class:`RecipeError`."""
    import yaml

    path = resolve_recipe(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RecipeError(f"{path}: cannot read recipe: {error}") from None
    except UnicodeDecodeError as error:
        line = path.read_bytes()[:error.start].count(b"\n") + 1
        raise RecipeError(f"{path}:{line}: not UTF-8 text ({error.reason}); re-save the recipe as UTF-8") from None
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
    problems: list[str] = []
    recipe = _validate(values, problems)
    problems = list(dict.fromkeys(problems))  # a section shared by two tasks reports its problems once
    if len(problems) == 1:
        raise RecipeError(f"{path}: {problems[0]}")
    if problems:
        raise RecipeError(f"{path}: {len(problems)} problems: " + "; ".join(problems))
    return recipe


def _validate(values: dict[str, Any], problems: list[str]) -> Recipe | None:
    """The recipe of ``values``: run-level keys, then each task's sections and checks; problems are collected."""
    from xmr.train.tasks import TASKS, task_chain

    run_keys = [item.name for item in dataclasses.fields(Recipe) if item.init]
    method = values.get("method", "dual-encoder")
    if method not in TASKS:
        from xmr.methods import import_methods

        import_methods()  # a method's own task registers when its package is imported
    if method not in TASKS:
        problems.append(f"method: {method!r} is not a known method (known: {', '.join(sorted(TASKS))})")
        build(Recipe, {key: value for key, value in values.items() if key in run_keys and key != "method"}, "",
              problems)
        return None
    candidates, chain = task_chain(method, values)
    section_keys = list(dict.fromkeys(item.name for task in candidates
                                      for item in dataclasses.fields(TASKS[task].sections)))
    for key in sorted(set(values) - set(run_keys) - set(section_keys), key=str):
        problems.append(f"{key}: unknown key (known: {', '.join(run_keys + section_keys)})")
    recipe = build(Recipe, {key: value for key, value in values.items() if key in run_keys}, "", problems)
    _check_run(recipe, problems, [name for task in chain for name in TASKS[task].selection_metrics])
    for task in chain:
        spec = TASKS[task].sections
        mine = {item.name for item in dataclasses.fields(spec)}
        sections = build(spec, {key: value for key, value in values.items() if key in mine}, "", problems)
        if sections is not None:  # checked even when some fields are bad (they took their defaults)
            problems.extend(TASKS[task].check(sections))
            if recipe is not None:
                recipe.tasks[task] = sections
    return recipe


def _check_run(recipe: Recipe | None, problems: list[str], task_metrics: list[str]) -> None:
    if recipe is None:
        return
    if "/" in recipe.name or recipe.name in ("", ".", ".."):
        problems.append(f"name: {recipe.name!r} must be a plain folder name")
    if recipe.checkpoint.every < 1:
        problems.append("checkpoint.every: must be at least 1")
    if recipe.checkpoint.keep < 1:
        problems.append("checkpoint.keep: must be at least 1 (resume needs a checkpoint)")
    if recipe.evaluation.every is not None and recipe.evaluation.every < 1:
        problems.append("evaluation.every: must be at least 1 (or null: validate at the end only)")
    family, _, k = recipe.evaluation.metric.partition("@")
    ranked = family in ("P", "nDCG", "R", "RP", "PSP", "PSnDCG") and k.isdigit() and int(k) in recipe.evaluation.ks
    summary = family in ("MAP", "MRR", "coverage") and k.isdigit() and int(k) == max(recipe.evaluation.ks, default=0)
    if not (ranked or summary or recipe.evaluation.metric in task_metrics):
        problems.append(f"evaluation.metric: {recipe.evaluation.metric!r} is not computed; use P, nDCG, R, RP, PSP or "
                        f"PSnDCG at one of evaluation.ks {recipe.evaluation.ks} (PSP needs training data), or MAP, "
                        "MRR or coverage at the largest k"
                        + (f", or one of the method's own: {', '.join(task_metrics)}" if task_metrics else ""))
