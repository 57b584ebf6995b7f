"""The optimiser of a run (AdamW, weight decay on matrices only) and its learning-rate schedule."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from multimodal.pretrained import GROUP_KINDS, layer_decay_groups, parameter_group_kind

if TYPE_CHECKING:
    from multimodal.run_config import OptimConfig


def is_decay_free(name: str, parameter: torch.Tensor) -> bool:
    """Norms, biases, position and prefix-token embeddings and temperatures get no weight decay."""
    return parameter.ndim < 2 or any(
        part in name for part in ("positions.", "class_token", "prefix_tokens", "logit_scales", "logit_biases")
    )


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with layer-wise learning rates when ``optim.layer_decay`` is set."""
    if optim.layer_decay is not None and optim.layer_decay != 1.0:
        groups = layer_decay_groups(model, optim.lr, optim.layer_decay, optim.weight_decay, is_decay_free)
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=optim.fused)
    return build_uniform_optimizer(model, optim)


def build_uniform_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, in groups that are the same whether the model is sharded or not.

    The parameters FSDP keeps whole (scalars, empty tensors; see multimodal/fsdp.py)
    get a group of their own: the fused kernel steps a group at once and cannot mix them
    with sharded ones. Grouping by shape alone keeps the optimiser state interchangeable
    between DDP and FSDP runs.
    """
    members: dict[str, list] = {kind: [] for kind in GROUP_KINDS}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            members[parameter_group_kind(name, parameter, is_decay_free)].append(parameter)
    groups = [{"params": members[kind], "weight_decay": optim.weight_decay if kind == "decay" else 0.0}
              for kind in GROUP_KINDS if members[kind]]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=optim.fused)


def cosine_with_warmup(optim: OptimConfig):
    """Learning-rate multiplier at step s: linear warmup, then cosine down to ``min_lr_ratio``."""
    def multiplier(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
