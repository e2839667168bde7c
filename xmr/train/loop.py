"""The training loop, shared by every task: a task in, its checkpoints, log entries, best/last weights and outputs out.

Per optimiser step: ``accumulate`` micro-batches, each the task's forward pass (under autocast) and loss (outside
it), then data-parallel gradient averaging, unscaling (fp16), clipping, AdamW over the task's named parameter groups
and the learning-rate schedule (linear warm-up, then linear decay or constant). The loop validates on the task's
schedule and keeps the best weights by the recipe's ``evaluation.metric``, checkpoints every ``checkpoint.every``
steps and on SIGTERM/SIGINT (then raises :class:`TrainingInterrupted`). With ``schedule.max_seconds`` the step
count is fixed after ``TIMED_STEPS`` timed steps: min(the recipe's count, max_seconds / the slowest process's mean
step time), and the learning-rate schedule is stretched to it; the task's work between steps (mining refreshes) and
the validations are paid from the same budget (the final validation is reserved at the length of the last one), so
each such pause shortens the count by its length in steps and the whole stage keeps to ``max_seconds``. Everything
random is seeded from (seed, epoch, batch) or (seed, step), so a run resumed from a checkpoint takes exactly the
steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.errors import XMRError
from xmr.train import checkpoint as ckpt
from xmr.train import distributed
from xmr.train.tasks.base import Task, TaskContext

TIMED_STEPS = 4  # optimiser steps timed (after a first, warm-up one) before schedule.max_seconds fixes the count


class TrainingInterrupted(XMRError):
    """SIGTERM/SIGINT arrived; a checkpoint was written and ``--resume`` continues the run."""


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting (None: plain fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier per step: linear warm-up, then linear decay to zero or constant."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class Loop:
    """Trains one task of a run (see the module docstring); :meth:`run` returns the task's summary."""

    def __init__(self, task: Task, context: TaskContext) -> None:
        self.task, self.context = task, context
        self.recipe, self.processes = context.recipe, context.processes
        self.say = context.say
        self.settings = settings = task.settings()
        self.groups = [group for group in task.parameter_groups() if group.parameters]
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise XMRError(f"{context.task}: parameter group names repeat: {names}")
        self.parameters = [parameter for group in self.groups for parameter in group.parameters]
        self.total_steps = settings.total_steps if self.parameters else 0  # nothing to learn: no steps
        self.optimizer = self.scheduler = None
        self.step_seconds: list[float] = []  # the timed steps of schedule.max_seconds
        self.timing: dict[str, Any] | None = None  # what max_seconds decided
        self.between_seconds = 0.0  # the task's before_step work and the validations, paid from max_seconds too
        self.validation_seconds = 0.0  # the last validation's length: what the final one is expected to take
        if self.parameters:
            self.optimizer = torch.optim.AdamW(
                [{"params": group.parameters, "lr": group.lr,
                  "weight_decay": settings.weight_decay if group.weight_decay is None else group.weight_decay}
                 for group in self.groups])
            self._set_total_steps(self.total_steps)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.rate_factor(step))
        device = self.processes.device
        self.dtype = autocast_dtype(settings.precision, device)
        self.scaler = torch.amp.GradScaler(device.split(":")[0], enabled=self.dtype == torch.float16)
        self.stop_signal: int | None = None

    # ---- the pieces of a step --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        with torch.autocast(self.processes.device.split(":")[0], dtype=self.dtype or torch.float32,
                            enabled=self.dtype is not None):
            yield

    def _optimiser_step(self) -> dict[str, Any]:
        settings, seed = self.settings, self.recipe.seed
        torch.manual_seed(seed * 1_000_003 + self.step)  # dropout masks depend on the step only
        total_loss = 0.0
        for _ in range(settings.accumulate):
            if self.position >= self.epoch_batches:
                self._begin_epoch(self.epoch + 1)
            rng = np.random.default_rng([seed, self.epoch, self.position])
            with self._autocast():
                output = self.task.forward(self.position, rng)
            loss = self.task.loss(output) / settings.accumulate
            self.scaler.scale(loss).backward()
            total_loss += float(loss.detach())
            self.position += 1
        distributed.average_gradients(self.parameters, self.processes)
        self.scaler.unscale_(self.optimizer)
        clip = settings.clip_norm
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, clip if clip else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        rates = dict(zip((group.name for group in self.groups), self.scheduler.get_last_lr(), strict=True))
        return {"loss": total_loss, "grad_norm": float(norm), "lr": rates}

    def _set_total_steps(self, total: int) -> None:
        """The step count and the learning-rate schedule that follows from it (warm-up a fraction of it)."""
        self.total_steps = total
        self.rate_factor = lr_factor(self.settings.lr_schedule, int(self.settings.warmup * total), total)
        if self.scheduler is not None:  # a new count mid-run: the next step's rate follows the new schedule
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                group["lr"] = base * self.rate_factor(self.scheduler.last_epoch)

    def _apply_time_budget(self, seconds: float) -> None:
        """Time the first steps; once ``TIMED_STEPS`` after the first are timed, cap the step count by what
        ``max_seconds`` leaves after the task's between-step work and validations so far, and the final validation
        (never below the steps already taken)."""
        budget = self.settings.max_seconds
        if budget is None:
            return
        if self.timing is None:
            self.step_seconds.append(seconds)
            if len(self.step_seconds) <= TIMED_STEPS:
                return
            per_step = distributed.slowest(float(np.mean(self.step_seconds[1:])), self.processes)
            self.timing = {"max_seconds": budget, "measured_step_seconds": round(per_step, 4),
                           "steps_of_the_schedule": self.total_steps}
        reserve = self.validation_seconds if self.settings.validate_at_end else 0.0
        between = distributed.slowest(self.between_seconds + reserve, self.processes)
        allowed = max(self.step, min(self.timing["steps_of_the_schedule"],
                                     int((budget - between) / self.timing["measured_step_seconds"])))
        if allowed == self.timing.get("steps_allowed"):
            return
        self.timing.update(steps_allowed=allowed, between_step_seconds=round(between, 2))
        self.say(f"{self.context.task}: {self.timing['measured_step_seconds']:.2f} s per step and {between:.0f} s "
                 f"between steps and validating; schedule.max_seconds {budget:.0f} allows {allowed} of "
                 f"{self.timing['steps_of_the_schedule']} steps")
        self._set_total_steps(allowed)

    def _begin_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self.epoch_batches = self.task.begin_epoch(epoch)
        if self.epoch_batches < 1:
            raise XMRError(f"{self.context.task}: epoch {epoch} has no batches")

    # ---- validation and checkpoints -------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Validation metrics into the log; a better ``evaluation.metric`` makes the current weights "best"."""
        tick = time.perf_counter()
        metrics = self.task.validate() if self.processes.main else None
        self.validation_seconds = time.perf_counter() - tick
        self.between_seconds += self.validation_seconds  # paid from max_seconds like between-step work
        if metrics is not None:
            metric = self.recipe.evaluation.metric
            if metric not in metrics:
                raise XMRError(f"evaluation.metric: {metric!r} is not computed; choose one of {sorted(metrics)}")
            self._log({"step": self.step, "validation": metrics})
            self.say(f"{self.context.task} step {self.step}: validation " + "  ".join(
                f"{name} {100 * value:.2f}" for name, value in metrics.items() if name.split("@")[0] in
                ("P", "PSP", "R", "RP")))
            if self.best is None or metrics[metric] > self.best["value"]:
                self.best = {"step": self.step, "value": metrics[metric], "metrics": metrics}
                self.task.save("best")
        distributed.barrier(self.processes)

    def _checkpoint(self) -> None:
        if self.processes.main:
            state = {"step": self.step, "epoch": self.epoch, "position": self.position,
                     "epoch_batches": self.epoch_batches, "best": self.best, "elapsed_s": self.elapsed(),
                     "total_steps": self.total_steps, "timing": self.timing, "between_s": self.between_seconds,
                     "validation_s": self.validation_seconds,
                     "task": self.task.state()}
            weights = ckpt.trainable_weights({group.name: group.parameters for group in self.groups})
            ckpt.save_checkpoint(ckpt.checkpoint_folder(self.context.checkpoints, self.step), weights=weights,
                                 optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                 arrays=self.task.arrays(), state=state)
            ckpt.prune_checkpoints(self.context.checkpoints, self.recipe.checkpoint.keep)
        distributed.barrier(self.processes)

    def _restore(self, folder: Path) -> None:
        saved = ckpt.load_checkpoint(folder)
        ckpt.load_trainable_weights({group.name: group.parameters for group in self.groups}, saved["weights"],
                                    folder)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict({**saved["scheduler"], "lr_lambdas": [None] * len(self.groups)})
        if saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.task.restore(saved["arrays"], saved["task"])
        self.step, self.epoch, self.position = saved["step"], saved["epoch"], saved["position"]
        self.epoch_batches, self.best, self.elapsed_before = saved["epoch_batches"], saved["best"], saved["elapsed_s"]
        self.timing, self.between_seconds = saved.get("timing"), saved.get("between_s", 0.0)
        self.validation_seconds = saved.get("validation_s", 0.0)
        self._set_total_steps(saved.get("total_steps", self.total_steps))  # the count max_seconds fixed, if it did

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _log(self, entry: dict[str, Any]) -> None:
        if self.processes.main:
            self.context.log.write({"task": self.context.task, **entry})

    def _on_signal(self, number: int, frame: Any) -> None:
        self.stop_signal = number

    # ---- the run -----------------------------------------------------------------------------------------------
    def run(self, resume_from: Path | None = None) -> dict[str, Any]:
        """Train from the start, or from checkpoint folder ``resume_from``; returns the task's summary."""
        context, settings = self.context, self.settings
        self.step = self.epoch = self.position = self.epoch_batches = 0
        self.best, self.elapsed_before, self.started = None, 0.0, time.perf_counter()
        if resume_from is not None:
            self._restore(resume_from)
            self.say(f"resuming {context.task} of {context.run} at step {self.step} (epoch {self.epoch}, batch "
                     f"{self.position}) from {resume_from.name}")
        if self.processes.main:
            tasks = list(self.recipe.tasks)
            context.log.rewind(context.task, self.step if resume_from is not None else None,
                               keep=tasks[:tasks.index(context.task)])
        if resume_from is None:
            self._begin_epoch(0)
            if settings.validate_before:
                self._validate()
        self.say(f"{context.task}: {self.total_steps} optimiser steps of {settings.accumulate} micro-batches "
                 f"({settings.batches_per_epoch} per epoch), device {self.processes.device}")
        previous = {number: signal.signal(number, self._on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._steps()
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        return self._finish()

    def _steps(self) -> None:
        from tqdm.auto import tqdm

        every = self.settings.validate_every
        progress = tqdm(total=self.total_steps, initial=self.step, desc=f"{self.recipe.name} {self.context.task}",
                        disable=None if self.processes.main else True)  # None: off when not a terminal
        while self.step < self.total_steps:
            tick = time.perf_counter()
            self.task.before_step(self.step, self.position, self.total_steps - self.step)
            self.between_seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            entry = self._optimiser_step()
            self._apply_time_budget(time.perf_counter() - tick)
            total = progress.total = self.total_steps
            entry.update(step=self.step, epoch=self.epoch, elapsed_s=round(self.elapsed(), 3))
            self._log(entry)
            progress.update(1)
            progress.set_postfix(loss=f"{entry['loss']:.4f}")
            if progress.disable and self.step % max(1, total // 20) == 0:  # progress lines without a terminal
                rates = "  ".join(f"lr {name} {rate:.2e}" for name, rate in entry["lr"].items())
                self.say(f"{self.context.task} step {self.step}/{total}  loss {entry['loss']:.4f}  {rates}  "
                         f"{entry['elapsed_s']:.0f} s")
            if every and self.step % every == 0 and self.step < total:
                self._validate()
            if self.step % self.recipe.checkpoint.every == 0 or self.stop_signal is not None:
                self._checkpoint()
            if self.stop_signal is not None:
                progress.close()
                raise TrainingInterrupted(f"stopped by signal {self.stop_signal} at {self.context.task} step "
                                          f"{self.step}; checkpoint written, continue with --resume")
        progress.close()

    def _finish(self) -> dict[str, Any]:
        train_seconds = self.elapsed()
        if self.processes.main:
            self.task.save("last")
        if self.settings.validate_at_end:
            self._validate()  # the final weights compete for "best" too
        if self.processes.main and self.best is None:  # no validation: the last weights are the result
            self.task.save("best")
        losses = [entry["loss"] for entry in self.context.log.read()
                  if entry.get("task") == self.context.task and "loss" in entry]
        summary = {
            "steps": self.step,
            "epochs": round(self.step * self.settings.accumulate / self.settings.batches_per_epoch, 3),
            "train_seconds": round(train_seconds, 1),
            "steps_per_second": round(self.step / train_seconds, 3) if train_seconds else None,
            "device": self.processes.device,
            "processes": self.processes.world,
            "precision": str(self.dtype or "fp32").replace("torch.", ""),
            "final_loss": losses[-1] if losses else None,
            "best": self.best,
        }
        if self.timing is not None:
            summary["time_budget"] = self.timing
        if self.processes.main:
            summary.update(self.task.finish(self.best))
            self.say(f"{self.context.task}: {self.step} steps in {train_seconds:.0f} s")
        distributed.barrier(self.processes)
        return summary
