"""The run's metrics log (``log.jsonl``: one JSON object per optimiser step or validation) and its curve plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_FILE = "log.jsonl"
CURVE_FILE = "training_curve.png"


class MetricsLog:
    """Append-only JSONL log; on resume it is cut back to the checkpoint's step so it matches the weights."""

    def __init__(self, run: Path, resume_step: int | None = None) -> None:
        self.path = run / LOG_FILE
        entries = self.read() if resume_step is not None else []
        kept = [entry for entry in entries if entry["step"] <= (resume_step or 0)]
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
        """Training loss (and its moving average) and the validation ``metric`` against the optimiser step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        entries = self.read()
        steps = [entry["step"] for entry in entries if "loss" in entry]
        losses = [entry["loss"] for entry in entries if "loss" in entry]
        evaluations = [(entry["step"], entry["validation"][metric]) for entry in entries
                       if metric in entry.get("validation", {})]
        figure, loss_axis = plt.subplots(figsize=(7, 4))
        loss_axis.plot(steps, losses, color="tab:blue", alpha=0.3, label="loss")
        window = max(1, len(losses) // 20)
        if len(losses) >= window:
            smooth = [sum(losses[i - window + 1:i + 1]) / window for i in range(window - 1, len(losses))]
            loss_axis.plot(steps[window - 1:], smooth, color="tab:blue", label=f"loss ({window}-step mean)")
        loss_axis.set_xlabel("optimiser step")
        loss_axis.set_ylabel("training loss")
        if evaluations:
            metric_axis = loss_axis.twinx()
            metric_axis.plot(*zip(*evaluations, strict=True), "o-", color="tab:orange", label=f"validation {metric}")
            metric_axis.set_ylabel(f"validation {metric}")
            metric_axis.legend(loc="center right")
        loss_axis.legend(loc="upper right")
        figure.tight_layout()
        out = out or self.path.parent / CURVE_FILE
        figure.savefig(out, dpi=110)
        plt.close(figure)
        return out
