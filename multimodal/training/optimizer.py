"""The optimiser of a run (AdamW, weight decay on matrices only) and its learning-rate schedule."""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch


@dataclass
class OptimConfig:
    """The optimiser and its schedule: a run's ``optim.*`` settings."""

    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    steps: int = 1200
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0  # max global gradient norm; None: no clipping
    accum_steps: int = 1  # micro-batches per step; negatives span the whole accumulated batch
    fused: bool = True  # AdamW(fused=True) where torch supports it: one kernel for all parameters
    # Layer-wise learning-rate decay for fine-tuning (e.g. 0.75): each block of a tower learns this
    # many times slower than the block above it, the stem slowest; None: one rate for all.
    layer_decay: float | None = None


def is_decay_free(name: str, parameter: torch.Tensor) -> bool:
    """Norms, biases, position and prefix-token embeddings and temperatures get no weight decay."""
    return parameter.ndim < 2 or any(
        part in name for part in ("positions.", "class_token", "prefix_tokens", "logit_scales", "logit_biases")
    )


GROUP_KINDS = ("decay", "free", "whole")  # the optimiser's groups of parameters, in their order


def parameter_group_kind(name: str, parameter: torch.Tensor,
                         decay_free: Callable[[str, torch.Tensor], bool] = is_decay_free) -> str:
    """Which optimiser group a parameter joins: ``"decay"`` (matrices), ``"free"`` (no weight decay, as
    ``decay_free`` says) or ``"whole"`` (scalars and empty tensors, which FSDP keeps whole and the fused
    kernel steps apart)."""
    if parameter.ndim == 0 or parameter.numel() == 0:
        return "whole"
    return "free" if decay_free(name, parameter) else "decay"


def layer_scale(name: str, model: torch.nn.Module, decay: float) -> float:
    """The learning-rate multiplier of parameter ``name`` under layer-wise decay (BEiT, timm's ``layer_decay``).

    Within each tower of depth L, block i (0-based) gets ``decay ** (L - i)`` (the last
    block ``decay``), the stem (embeddings, positions, class and prefix tokens, pre-norm)
    ``decay ** (L + 1)``; the head (final norm, attention pooling, projection) and the
    temperatures get 1, as timm's ``param_groups_layer_decay`` numbers a ViT's layers.
    """
    parts = name.split(".")
    if parts[0] in ("projections", "logit_scales", "logit_biases"):
        return 1.0
    assert parts[0] == "encoders", f"layer decay has no rule for parameter {name}"
    depth = len(model.encoders[parts[1]].trunk.transformer.blocks)
    inside = parts[2:]
    if inside[:3] == ["trunk", "transformer", "blocks"]:
        return decay ** (depth - int(inside[3]))
    if inside[:2] in (["trunk", "norm"], ["trunk", "attention_pool"]):
        return 1.0
    return decay ** (depth + 1)


def layer_decay_groups(
    model: torch.nn.Module,
    base_lr: float,
    decay: float,
    weight_decay: float,
    is_decay_free: Callable[[str, torch.Tensor], bool] = is_decay_free,
) -> list[dict]:
    """Optimiser parameter groups with layer-wise learning rates: ``lr = base_lr * lr_scale`` (see :func:`layer_scale`).

    The grouping of ``build_optimizer`` holds within each scale: matrices with
    ``weight_decay``; what ``is_decay_free(name, parameter)`` names with none; scalars and
    empty tensors (kept whole under FSDP) in groups of their own. Frozen parameters are
    left out. Each group carries its ``lr_scale``; a ``LambdaLR`` multiplies each group's
    initial ``lr``, so the schedule applies to every layer alike.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1] (e.g. 0.75; 1: none), got {decay}")
    groups: dict[tuple[int, float], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        kind = parameter_group_kind(name, parameter, is_decay_free)
        scale = layer_scale(name, model, decay)
        group = groups.setdefault((GROUP_KINDS.index(kind), scale), {
            "params": [], "weight_decay": weight_decay if kind == "decay" else 0.0, "lr": base_lr * scale,
            "lr_scale": scale,
        })
        group["params"].append(parameter)
    # Decay groups first, then decay-free, then whole: build_optimizer's order; within a kind, the head first.
    return [groups[key] for key in sorted(groups, key=lambda key: (key[0], -key[1]))]


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with layer-wise learning rates when ``optim.layer_decay`` is set."""
    if optim.layer_decay is not None and optim.layer_decay != 1.0:
        groups = layer_decay_groups(model, optim.lr, optim.layer_decay, optim.weight_decay)
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=optim.fused)
    return build_uniform_optimizer(model, optim)


def build_uniform_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, in groups that are the same whether the model is sharded or not.

    The parameters FSDP keeps whole (scalars, empty tensors; see multimodal/training/fsdp.py)
    get a group of their own: the fused kernel steps a group at once and cannot mix them
    with sharded ones. Grouping by shape alone keeps the optimiser state interchangeable
    between DDP and FSDP runs.
    """
    members: dict[str, list] = {kind: [] for kind in GROUP_KINDS}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            members[parameter_group_kind(name, parameter)].append(parameter)
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


# A run that starts from a checkpoint (--init_from) takes these where not given, instead of the
# from-scratch 2e-3, 50 and 1200. Measured on the demo (docs/pretrained.md, python -m bench finetune):
# 300 steps on 899 digits of other writers took held-out MNIST from 97.8% to 38.6% at 2e-3, 80.9% at
# 5e-4, 92.9% at 2e-4, 96.1% at 1e-4 and 96.8% at 5e-5, while the target gained 3.9, 4.9, 5.8, 5.7
# and 5.6 points: 5e-5 keeps what the checkpoint knew at nearly the best rate's gain. The warm-up
# hardly mattered there (10 to 150 steps); 1200 steps gained no more (5.5) and forgot more (MNIST 94.1%).
FINE_TUNING_DEFAULTS = {"lr": 5e-5, "warmup_steps": 50, "steps": 300}


def fine_tuning_optim(optim: OptimConfig, given: Iterable[str]) -> OptimConfig:
    """``optim`` with the fine-tuning learning rate, warm-up and length (``FINE_TUNING_DEFAULTS``) where not given.

    ``given``: the dotted keys the user set (``optim.lr``; ``optim`` alone sets them all);
    what the user gave is kept.
    """
    given = set(given)
    chosen = {name: value for name, value in FINE_TUNING_DEFAULTS.items()
              if f"optim.{name}" not in given and "optim" not in given}
    return dataclasses.replace(optim, **chosen)


def rate_text(value: float) -> str:
    """A learning rate as people write it: ``5e-5``, ``0.002`` (``:g`` alone writes ``5e-05``)."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{value:g}")


def fine_tuning_line(optim: OptimConfig, scratch: OptimConfig, fine_tuned: list[str], fresh: list[str]) -> str:
    """The start-up line of a run from a checkpoint: its learning rate, warm-up and length, and where each came from.

    ``scratch``: the from-scratch defaults (``OptimConfig()``), named beside the fine-tuning
    ones; ``fine_tuned``: the checkpoint's towers that train (none: the from-scratch
    defaults apply); ``fresh``: the towers that start fresh and train.
    """
    if not fine_tuned:
        return (f"init_from: every tower that trains starts fresh ({', '.join(fresh)}): lr {rate_text(optim.lr)}, "
                f"{optim.warmup_steps} warm-up steps, {optim.steps} steps in all, as from scratch (no fine-tuning "
                "defaults)")
    also = (f"; the fresh {', '.join(fresh)} tower(s) learn at that rate too (a higher --optim.lr trains them "
            "faster)") if fresh else ""
    described = {"lr": f"lr {rate_text(optim.lr)}", "warmup_steps": f"{optim.warmup_steps} warm-up steps",
                 "steps": f"{optim.steps} steps in all"}
    defaults = [name for name in described if getattr(optim, name) == FINE_TUNING_DEFAULTS[name]]
    if len(defaults) == len(described):
        return (f"fine-tuning from init_from with {', '.join(described.values())}: the fine-tuning defaults (from "
                f"scratch: lr {rate_text(scratch.lr)}, {scratch.warmup_steps} warm-up steps, {scratch.steps} "
                "steps), a lower rate and a shorter run keep what the checkpoint learned (docs/pretrained.md); "
                f"--optim.lr, --optim.warmup_steps and --optim.steps choose others{also}")
    parts = [described[name] + (f" (the fine-tuning default; --optim.{name} chooses another)" if name in defaults
                                else " (given)") for name in described]
    return f"fine-tuning from init_from with {', '.join(parts)}{also}"
