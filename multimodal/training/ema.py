"""An exponential moving average of a model's weights, kept in fp32 beside training.

After every optimiser step ``shadow = decay * shadow + (1 - decay) * weight`` for each
trainable parameter (one fused foreach call over all of them). Averaged weights often
evaluate better than the last ones, and they are a checkpoint of their own: the
trainer writes them as ``checkpoints/step-N/ema/``, a directory every loader reads
(``multimodal.load_model``, ``multimodal classify --checkpoint .../ema``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from multimodal.training.fsdp import full_tensor, like


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (see multimodal/training/ema.py); off unless ``decay`` is set."""

    decay: float | None = None  # e.g. 0.999: the average over about 1 / (1 - decay) steps
    evaluate: bool = True  # evaluate the averaged weights beside the raw ones (results under "ema/...")


class WeightAverage:
    """The exponential moving average of ``model``'s trainable parameters (frozen ones never change)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in trainable]
        with torch.no_grad():
            self.shadow = [p.detach().float().clone() for _, p in trainable]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights."""
        parameters = dict(model.named_parameters())
        current = [parameters[name].detach() for name in self.names]
        if any(p.dtype != torch.float32 for p in current):
            current = [p.float() for p in current]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights by parameter name, whole (gathered from every process when they are sharded)."""
        return {name: full_tensor(shadow) for name, shadow in zip(self.names, self.shadow)}

    def load_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Loads whole averaged weights (from :meth:`state_dict`), sliced like the model's when it is sharded."""
        missing = [name for name in self.names if name not in state]
        if missing:
            raise ValueError(f"{source}: the averaged weights lack {len(missing)} parameters (first: {missing[0]})")
        with torch.no_grad():
            for name, shadow in zip(self.names, self.shadow):
                shadow.copy_(like(state[name], shadow))
