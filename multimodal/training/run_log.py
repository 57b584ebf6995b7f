"""What a run logs: metrics.jsonl and the trackers, and the window of steps each log line sums up."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class MetricsLog:
    """metrics.jsonl in the run directory (main process), and the trackers Accelerate was given."""

    def __init__(self, accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = []

    def write(self, step: int, values: dict) -> None:
        """Appends ``values`` at ``step`` to metrics.jsonl and hands their numbers to the trackers."""
        row = {"step": step, **values}
        self.rows.append(row)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


class LossWindow:
    """The steps since the last log line: their losses, to log their mean, and the time they took.

    Batches alternate between sources (image-text, audio-text), so one step's loss
    read every ``log_every`` steps would draw one source's curve at one point and the
    other's at the next. Sums stay on the device: no synchronisation per step.
    """

    def __init__(self) -> None:
        self.started = time.time()
        self.waited = 0.0  # seconds of the window spent waiting for batches
        self.steps = 0
        self.total: torch.Tensor | float = 0.0
        self.pairs: dict[str, list] = {}  # pair -> [sum, steps that trained it]

    def add(self, loss: torch.Tensor, per_pair: dict[str, torch.Tensor]) -> None:
        """Counts one step's loss and the losses of the pairs it trained."""
        self.steps += 1
        self.total = self.total + loss.detach().float()
        for pair, value in per_pair.items():
            entry = self.pairs.setdefault(pair, [0.0, 0])
            entry[0] = entry[0] + value.detach().float()
            entry[1] += 1

    def means(self, accelerator) -> tuple[float, dict[str, float]]:
        """The window's mean loss (averaged over processes) and each pair's mean over the steps that trained it."""
        total = torch.as_tensor(self.total, dtype=torch.float32, device=accelerator.device) / max(self.steps, 1)
        mean = accelerator.reduce(total, reduction="mean").item()
        return mean, {pair: float(value) / count for pair, (value, count) in self.pairs.items()}
