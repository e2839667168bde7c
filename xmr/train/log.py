"""The run's metrics log (``log.jsonl``: one JSON object per optimiser step or validation, each naming its task)
and its curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"
CURVE_FILE = "training_curve.png"


class MetricsLog:
    """Append-only JSONL log; when a task (re)starts it is cut back to match the weights (:meth:`rewind`)."""

    def __init__(self, run: Path) -> None:
        self.path = run / LOG_FILE

    def rewind(self, task: str, step: int | None, keep: list[str]) -> None:
        """Keep the entries of the finished tasks ``keep`` and, resuming at ``step``, ``task``'s entries up to it."""
        kept = [entry for entry in self.read() if entry.get("task") in keep
                or (step is not None and entry.get("task") == task and entry["step"] <= step)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(entry) + "\n" for entry in kept), encoding="utf-8")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def plot(self, metric: str, out: Path | None = None) -> Path:
        """Per task (one panel each): training loss, its moving average, and the validation ``metric``, against the
        optimiser step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        entries = self.read()
        tasks = list(dict.fromkeys(entry.get("task") for entry in entries)) or [None]
        figure, axes = plt.subplots(len(tasks), 1, figsize=(7, 4 * len(tasks)), squeeze=False)
        for task, loss_axis in zip(tasks, axes[:, 0], strict=True):
            mine = [entry for entry in entries if entry.get("task") == task]
            steps = [entry["step"] for entry in mine if "loss" in entry]
            losses = [entry["loss"] for entry in mine if "loss" in entry]
            evaluations = [(entry["step"], entry["validation"][metric]) for entry in mine
                           if metric in entry.get("validation", {})]
            loss_axis.plot(steps, losses, color="tab:blue", alpha=0.3, label="loss")
            window = max(1, len(losses) // 20)
            if len(losses) >= window:
                smooth = [sum(losses[i - window + 1:i + 1]) / window for i in range(window - 1, len(losses))]
                loss_axis.plot(steps[window - 1:], smooth, color="tab:blue", label=f"loss ({window}-step mean)")
            loss_axis.set_title(task or "")
            loss_axis.set_xlabel("optimiser step")
            loss_axis.set_ylabel("training loss")
            if evaluations:
                metric_axis = loss_axis.twinx()
                metric_axis.plot(*zip(*evaluations, strict=True), "o-", color="tab:orange",
                                 label=f"validation {metric}")
                metric_axis.set_ylabel(f"validation {metric}")
                metric_axis.legend(loc="center right")
            loss_axis.legend(loc="upper right")
        figure.tight_layout()
        out = out or self.path.parent / CURVE_FILE
        figure.savefig(out, dpi=110)
        plt.close(figure)
        return out
