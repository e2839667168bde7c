"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint folder ``checkpoints/TASK/step-NNNNNNN/`` holds the trainable weights, the optimiser's tensors and
settings, the learning-rate schedule, the gradient scaler, the task's arrays (its batch plan, mined negatives ...)
and the loop's and the task's position. The folder is written as a temporary sibling and renamed when complete
(``xmr.io.atomic``), so a folder with a ``trainer.json`` is always whole; a run killed mid-write leaves only a
temporary folder, ignored on resume.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from xmr.errors import XMRError
from xmr.io.atomic import write_folder_atomically

STATE_FILE = "trainer.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
ARRAYS_FILE = "arrays.safetensors"
PREFIX = "step-"


def trainable_weights(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """``group.position`` -> tensor for every trainable parameter (construction order is deterministic)."""
    return {f"{group}.{position}": parameter.detach().cpu().contiguous()
            for group, parameters in groups.items() for position, parameter in enumerate(parameters)}


def load_trainable_weights(groups: dict[str, list[torch.nn.Parameter]], tensors: dict[str, torch.Tensor],
                           where: Path) -> None:
    """Copy a checkpoint's tensors into the parameters (same groups, sizes and order, else an error naming it)."""
    expected = trainable_weights(groups)
    if set(expected) != set(tensors) or any(expected[key].shape != tensors[key].shape for key in expected):
        raise XMRError(f"{where}: the checkpoint's weights do not fit this recipe's model (start again with "
                       "--restart)")
    with torch.no_grad():
        for group, parameters in groups.items():
            for position, parameter in enumerate(parameters):
                parameter.copy_(tensors[f"{group}.{position}"])


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for parameter_id, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{parameter_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{parameter_id}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], settings: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(settings["scalars"].items()):
        parameter_id, name = key.split(".", 1)
        state.setdefault(int(parameter_id), {})[name] = value
    return {"state": state, "param_groups": settings["param_groups"]}


def save_checkpoint(folder: Path, *, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
                    arrays: dict[str, np.ndarray], state: dict[str, Any]) -> Path:
    """Write one complete checkpoint folder atomically."""

    def write(tmp: Path) -> None:
        save_file(weights, tmp / WEIGHTS_FILE)
        optimizer_tensors, optimizer_settings = _split_optimizer(optimizer.state_dict())
        save_file(optimizer_tensors, tmp / OPTIMIZER_TENSORS)
        save_numpy({name: np.ascontiguousarray(array) for name, array in arrays.items()}, tmp / ARRAYS_FILE)
        scheduler_state = {key: value for key, value in scheduler.state_dict().items() if key != "lr_lambdas"}
        body = {**state, "optimizer": optimizer_settings, "scheduler": scheduler_state,
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
        (tmp / STATE_FILE).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")

    write_folder_atomically(folder, write)
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote: ``weights``, ``optimizer`` (a state dict), ``arrays``, the rest."""
    body = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    body["weights"] = load_file(folder / WEIGHTS_FILE)
    body["optimizer"] = _join_optimizer(load_file(folder / OPTIMIZER_TENSORS), body["optimizer"])
    body["arrays"] = load_numpy(folder / ARRAYS_FILE)
    return body


def checkpoint_folder(checkpoints: Path, step: int) -> Path:
    """``checkpoints/step-NNNNNNN`` (zero-padded, so names sort by step)."""
    return checkpoints / f"{PREFIX}{step:07d}"


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint in a checkpoints folder, if any."""
    folders = [folder for folder in checkpoints.glob(f"{PREFIX}*") if (folder / STATE_FILE).is_file()]
    return max(folders, key=lambda folder: folder.name) if folders else None


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoint folders (``keep`` 0 deletes them all)."""
    folders = sorted(folder for folder in checkpoints.glob(f"{PREFIX}*") if folder.is_dir())
    for folder in folders[:max(0, len(folders) - keep)]:
        shutil.rmtree(folder, ignore_errors=True)
