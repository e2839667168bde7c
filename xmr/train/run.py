"""A training run: a recipe in, ``runs/NAME`` out, its tasks trained one after the other through the loop.

The run folder holds ``recipe.json`` (``--resume`` refuses a changed recipe), ``log.jsonl`` and its curve,
``checkpoints/TASK/``, ``stages/TASK.json`` (written when a task's outputs are complete: ``--resume`` skips it)
and ``summary.json``. One process tree owns a run folder at a time (a lock next to it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from xmr.errors import XMRError
from xmr.io.atomic import write_text_atomically
from xmr.train import distributed
from xmr.train.checkpoint import latest_checkpoint
from xmr.train.log import MetricsLog
from xmr.train.loop import Loop
from xmr.train.recipe import Recipe, load_recipe
from xmr.train.tasks import TASKS
from xmr.train.tasks.base import TaskContext

RECIPE_FILE = "recipe.json"
SUMMARY_FILE = "summary.json"
STAGES = "stages"
SUMMARY_OUTPUTS = ("index", "index_seconds")  # a later task's final index replaces an earlier one in the summary


def train(recipe: Recipe | str | Path, resume: bool = False, restart: bool = False,
          say: Callable[[str], None] = print, device: str | None = None) -> dict[str, Any]:
    """Run a recipe (a :class:`Recipe`, a path or a bundled recipe's name); returns the run summary (also written to
    ``runs/NAME/summary.json``): the method's summary, each later task's under its name. ``device`` overrides the
    default (CUDA when available) of a single-process run."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    processes = distributed.start(device)
    say = say if processes.main else (lambda message: None)
    run = recipe.run_folder
    lock = lock_run_folder(run) if processes.main else None
    # a folder this call makes (or remakes with --restart); only such a folder is removed again on a refusal
    fresh = not resume and (restart or not (run.exists() and any(run.iterdir())))
    try:
        _prepare_folder(recipe, processes, resume, restart)
        log, loaded, inputs, stages = MetricsLog(run), {}, {}, {}
        for name in recipe.tasks:
            done = run / STAGES / f"{name}.json"
            if resume and done.is_file():
                stages[name] = json.loads(done.read_text(encoding="utf-8"))
                say(f"{name}: finished before, skipped")
            else:
                stages[name] = _run_task(recipe, name, processes, log, say, inputs, loaded, resume)
                if processes.main:
                    write_text_atomically(done, json.dumps(stages[name], indent=2) + "\n")
                distributed.barrier(processes)
            inputs.update(stages[name])
        summary = {"recipe": recipe.name, "method": recipe.method, **stages[recipe.method]}
        for name, stage in stages.items():
            if name != recipe.method:
                summary[name] = stage
                summary.update({key: stage[key] for key in SUMMARY_OUTPUTS if key in stage})
        if processes.main:
            (run / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            log.plot(recipe.evaluation.metric)
        return summary
    except XMRError:
        if fresh and processes.main and _holds_nothing_trained(run):
            shutil.rmtree(run, ignore_errors=True)  # refused before any step: the same command may simply run again
        raise
    finally:
        if lock is not None:
            lock.close()


def _holds_nothing_trained(run: Path) -> bool:
    """True when a run folder has no checkpoint and no finished task (a run refused while it read its data)."""
    checkpoints = run / "checkpoints"
    return not (run / STAGES).exists() and not (checkpoints.exists() and any(checkpoints.rglob("*")))


def _run_task(recipe: Recipe, name: str, processes: distributed.Processes, log: MetricsLog,
              say: Callable[[str], None], inputs: dict[str, Any], loaded: dict, resume: bool) -> dict[str, Any]:
    """Build task ``name`` and train it through the loop (a task that is not distributed: in the main process)."""
    task_class = TASKS[name]
    if not task_class.distributed:
        if not processes.main:
            return {}
        processes = distributed.Processes(device=processes.device)
    context = TaskContext(recipe, name, processes, log, say, dict(inputs), loaded)
    started = time.perf_counter()
    torch.manual_seed(recipe.seed)  # initial weights (LoRA, projections, learned parts) follow from the seed
    task = task_class(context)
    summary = Loop(task, context).run(latest_checkpoint(context.checkpoints) if resume else None)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def lock_run_folder(run: Path) -> IO[str]:
    """One process tree per run folder: a second ``xmr train`` on it (or a --restart under a live run) is refused.
    The lock lives next to the folder and dies with the process, so ``kill -9`` leaves none behind; close the
    returned file to release it."""
    import fcntl

    run.parent.mkdir(parents=True, exist_ok=True)
    handle = open(run.parent / f".{run.name}.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise XMRError(f"{run} is in use by another xmr train process") from None
    return handle


def _prepare_folder(recipe: Recipe, processes: distributed.Processes, resume: bool, restart: bool) -> None:
    run, recipe_json = recipe.run_folder, recipe.to_dict()
    stored = run / RECIPE_FILE
    if resume:
        if not stored.is_file():
            raise XMRError(f"{run}: nothing to resume (no {RECIPE_FILE}); run without --resume")
        if json.loads(stored.read_text(encoding="utf-8")) != json.loads(json.dumps(recipe_json)):
            raise XMRError(f"{run}: the recipe changed since the run started; resume needs the same recipe "
                           "(or start again with --restart)")
        return
    if run.exists() and any(run.iterdir()):
        if not restart:
            raise XMRError(f"{run} already exists: continue it with --resume or start over with --restart")
        if processes.main:
            shutil.rmtree(run)
    distributed.barrier(processes)
    if processes.main:
        run.mkdir(parents=True, exist_ok=True)
        stored.write_text(json.dumps(recipe_json, indent=2) + "\n", encoding="utf-8")
