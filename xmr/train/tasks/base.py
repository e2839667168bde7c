"""What a training method provides to the loop (:class:`Task`), and what the loop gives it (:class:`TaskContext`).

The loop (``xmr.train.loop``) owns everything every method shares: optimiser steps, accumulation, precision,
clipping, the learning-rate schedule, checkpoints and exact resume, signals, validation with best-model selection,
logging and data-parallel gradient averaging. A task owns the rest: its recipe sections, its parameter groups and
their learning rates, its batches, forward pass and loss, its validation metrics, what "best" and "last" mean, its
extra checkpoint state and its final outputs. Compare open_clip's ``task/`` classes and sentence-transformers'
per-family trainers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from xmr.train.data import TrainingData
from xmr.train.distributed import Processes
from xmr.train.log import MetricsLog
from xmr.train.recipe import EvaluationSpec, OptimizerSpec, Recipe, ScheduleSpec


@dataclass
class ParameterGroup:
    """Parameters trained together at one learning rate (``weight_decay`` None: the loop's setting)."""

    name: str
    parameters: list[torch.nn.Parameter]
    lr: float
    weight_decay: float | None = None


@dataclass
class LoopSettings:
    """How the loop drives a task: how long, how each step is taken, when to validate."""

    batches_per_epoch: int  # micro-batches in an epoch (the last one may be smaller)
    epochs: float = 1.0
    max_steps: int | None = None  # optimiser steps; overrides epochs
    accumulate: int = 1  # micro-batches per optimiser step
    weight_decay: float = 0.0
    warmup: float = 0.0  # fraction of all steps with linear warm-up
    lr_schedule: str = "linear"  # after the warm-up: "linear" decay to zero, or "constant"
    clip_norm: float | None = None
    precision: str = "fp32"  # auto, fp32, bf16, fp16
    validate_every: int | None = None  # optimiser steps
    validate_before: bool = False  # step 0
    validate_at_end: bool = True  # the final weights compete for "best" too
    max_seconds: float | None = None  # wall-clock cap on the steps (the loop times its first steps)

    @classmethod
    def from_sections(cls, optimizer: OptimizerSpec, schedule: ScheduleSpec, evaluation: EvaluationSpec,
                      batches_per_epoch: int) -> LoopSettings:
        """Settings from the common ``optimizer``, ``schedule`` and ``evaluation`` sections."""
        return cls(batches_per_epoch, schedule.epochs, schedule.max_steps, optimizer.accumulate,
                   optimizer.weight_decay, optimizer.warmup, optimizer.lr_schedule, optimizer.clip_norm,
                   optimizer.precision, evaluation.every, evaluation.before and bool(evaluation.every),
                   max_seconds=schedule.max_seconds)

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(self.batches_per_epoch / self.accumulate)))


@dataclass
class TaskContext:
    """A task's view of its run: the recipe and its own sections, the processes, the log, the outputs of the tasks
    that ran before it (``inputs``, e.g. ``{"encoder": "runs/NAME/encoder"}``) and the run's data."""

    recipe: Recipe
    task: str  # the task's name in ``TASKS``
    processes: Processes
    log: MetricsLog
    say: Callable[[str], None] = print
    inputs: dict[str, Any] = field(default_factory=dict)
    loaded: dict[str, TrainingData] = field(default_factory=dict)  # shared by the run's tasks: data read once

    @property
    def sections(self) -> Any:
        return self.recipe.tasks[self.task]

    @property
    def run(self) -> Path:
        return self.recipe.run_folder

    @property
    def checkpoints(self) -> Path:
        return self.run / "checkpoints" / self.task

    def data(self) -> TrainingData:
        """The run's training data from this task's ``data`` section (read once for all the run's tasks)."""
        spec = self.sections.data
        key = repr(spec)
        if key not in self.loaded:
            self.loaded[key] = TrainingData.load(spec, self.recipe.seed, self.say)
        return self.loaded[key]


class Task(ABC):
    """One training method. ``sections`` is a dataclass whose fields are the recipe keys the task reads (validated
    when the recipe loads, with :meth:`check` for what types cannot say); ``followed_by`` maps a recipe key to the
    task that runs after this one when that key is set (``{"label_vectors": "label-vectors"}``). A task that is not
    ``distributed`` runs in the main process only. ``selection_metrics`` names metrics beyond the ranking ones
    that :meth:`validate` returns, which a recipe's ``evaluation.metric`` may then select by.

    Per optimiser step the loop calls :meth:`before_step`, then per micro-batch :meth:`forward` (under autocast)
    and :meth:`loss` (outside it); at epoch boundaries :meth:`begin_epoch`; :meth:`validate` on its schedule,
    :meth:`save` ``("best")`` when the metric improves and ``("last")`` at the end, then :meth:`finish`.
    Everything random must follow from (seed, epoch, batch), from the ``rng`` the loop passes, or from the
    checkpointed :meth:`arrays` and :meth:`state`, so that a resumed run takes exactly the same steps.
    """

    sections: ClassVar[type]
    followed_by: ClassVar[dict[str, str]] = {}
    distributed: ClassVar[bool] = True
    selection_metrics: ClassVar[tuple[str, ...]] = ()  # validate()'s own metrics evaluation.metric may name

    def __init__(self, context: TaskContext) -> None:
        self.context = context

    @classmethod
    def check(cls, sections: Any) -> list[str]:
        """Problems with the task's validated sections that their types cannot express (``field.path: what``)."""
        return []

    @abstractmethod
    def settings(self) -> LoopSettings:
        """How long to train and how (called once, after the task is built)."""

    @abstractmethod
    def parameter_groups(self) -> list[ParameterGroup]:
        """The trainable parameters by named group, each with its learning rate; the same order on every call."""

    @abstractmethod
    def begin_epoch(self, epoch: int) -> int:
        """Plan epoch ``epoch``'s micro-batches (deterministic from the seed and the epoch); returns their number."""

    def before_step(self, step: int, position: int, steps_left: int) -> None:  # noqa: B027 (an optional hook)
        """Work before optimiser step ``step``, whose first micro-batch is ``position`` of the current epoch's plan,
        with ``steps_left`` steps to go counting this one (e.g. refreshing the mined negatives of the coming
        batches, or not when too few steps are left to use them)."""

    @abstractmethod
    def forward(self, position: int, rng: np.random.Generator) -> Any:
        """The model's output on micro-batch ``position`` of the current epoch (usually a ``ModelOutput``)."""

    @abstractmethod
    def loss(self, output: Any) -> torch.Tensor:
        """The scalar loss of a :meth:`forward` output."""

    def validate(self) -> dict[str, float] | None:
        """Validation metrics of the current weights (higher is better), or None without validation data."""
        return None

    @abstractmethod
    def save(self, which: str) -> None:
        """Keep the current weights as ``"best"`` or ``"last"`` (main process only)."""

    def save_encoder_folder(self, encoder: Any, which: str) -> None:
        """``runs/NAME/encoder`` (best) or ``runs/NAME/last``: an ordinary encoder folder, written atomically (what
        :meth:`save` does for tasks that train one encoder)."""
        from xmr.io.atomic import write_folder_atomically

        write_folder_atomically(self.context.run / ("encoder" if which == "best" else "last"), encoder.save)

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays a checkpoint must hold to resume exactly (the epoch's plan, mined negatives ...)."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state a checkpoint must hold besides :meth:`arrays`."""
        return {}

    def restore(self, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> None:  # noqa: B027 (optional)
        """Take back what :meth:`arrays` and :meth:`state` returned when the checkpoint was written."""

    @abstractmethod
    def finish(self, best: dict[str, Any] | None) -> dict[str, Any]:
        """Write the final outputs (main process only) and return them for the summary and the next tasks."""
