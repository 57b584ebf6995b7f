"""A training run: everything its loop and its evaluations work with, made by ``trainer.start_run``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from multimodal.training.data_sources import PreparedData
from multimodal.training.ema import WeightAverage
from multimodal.training.train_config import TrainConfig


@dataclass
class Run:
    """Everything the loop works with, made by :func:`multimodal.training.trainer.start_run`."""

    config: TrainConfig
    accelerator: object
    run_dir: Path
    data: PreparedData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    start_step: int
    resumed_from: Path | None
    ema: WeightAverage | None = None
