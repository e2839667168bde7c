"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint folder ``checkpoints/step-NNNNNNN/`` holds the trainable weights, the optimiser's tensors and
settings, the learning-rate schedule, the gradient scaler, the epoch's batch plan and mined negatives, and the
position in the data. ``trainer.json`` is written last inside a temporary folder that is then renamed, so a folder
with that name is always complete; a run killed mid-write leaves only a temporary folder, ignored on resume.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from xmr.index.folder import swap_into_place

STATE_FILE = "trainer.json"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
ARRAYS_FILE = "arrays.safetensors"
PREFIX = "step-"


def write_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` into a temporary sibling folder, then rename it to ``out`` (replacing an old ``out``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def trainable_weights(groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """``group.position`` -> tensor for every trainable parameter (construction order is deterministic)."""
    return {f"{group}.{position}": parameter.detach().cpu().contiguous()
            for group, parameters in groups.items() for position, parameter in enumerate(parameters)}


def load_trainable_weights(groups: dict[str, list[torch.nn.Parameter]], tensors: dict[str, torch.Tensor],
                           where: Path) -> None:
    expected = trainable_weights(groups)
    if set(expected) != set(tensors) or any(expected[key].shape != tensors[key].shape for key in expected):
        raise ValueError(f"{where}: the checkpoint's weights do not fit this recipe's encoder")
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

    return write_atomically(folder, write)


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Everything :func:`save_checkpoint` wrote: ``weights``, ``optimizer`` (a state dict), ``arrays``, the rest."""
    body = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    body["weights"] = load_file(folder / WEIGHTS_FILE)
    body["optimizer"] = _join_optimizer(load_file(folder / OPTIMIZER_TENSORS), body["optimizer"])
    body["arrays"] = load_numpy(folder / ARRAYS_FILE)
    return body


def checkpoint_folder(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{PREFIX}{step:07d}"


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    folders = [folder for folder in (run / "checkpoints").glob(f"{PREFIX}*") if (folder / STATE_FILE).is_file()]
    return max(folders, key=lambda folder: folder.name) if folders else None


def prune_checkpoints(run: Path, keep: int) -> None:
    folders = sorted(folder for folder in (run / "checkpoints").glob(f"{PREFIX}*") if folder.is_dir())
    for folder in folders[:-keep]:
        shutil.rmtree(folder, ignore_errors=True)
