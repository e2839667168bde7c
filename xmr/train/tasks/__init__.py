"""Training methods, one module each, by the name a recipe's ``method:`` gives.

A new method is one new module with a :class:`~xmr.train.tasks.base.Task` subclass and one entry in ``TASKS``; the
loop, the recipe loader and the other tasks do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xmr.methods import registrar
from xmr.train.tasks.base import LoopSettings, ParameterGroup, Task, TaskContext
from xmr.train.tasks.dual_encoder import DualEncoderTask
from xmr.train.tasks.label_vectors import LabelVectorsTask

TASKS: dict[str, type[Task]] = {
    "dual-encoder": DualEncoderTask,
    "label-vectors": LabelVectorsTask,
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator for a method package's task (``xmr/methods.py``): recipes select it with ``method: name``."""
    return registrar(TASKS, name, attribute=None)


def task_chain(method: str, values: dict[str, Any]) -> tuple[list[str], list[str]]:
    """For a recipe's raw ``values``: the tasks whose sections it may have (``method`` and every task it can be
    followed by) and the tasks that run, in order (``method``, then each follower whose recipe key is set)."""
    candidates, chain, task = [method], [method], method
    while TASKS[task].followed_by:
        follower = None
        for key, name in TASKS[task].followed_by.items():
            candidates.append(name)
            if follower is None and values.get(key) is not None:
                follower = name
        if follower is None or follower in chain:
            break
        chain.append(follower)
        task = follower
    return list(dict.fromkeys(candidates)), chain


__all__ = ["TASKS", "LoopSettings", "ParameterGroup", "Task", "TaskContext", "register_task", "task_chain"]
