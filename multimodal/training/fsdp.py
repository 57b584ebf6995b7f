"""Fully sharded data parallel training (FSDP2, ``torch.distributed.fsdp.fully_shard``) of a MultimodalModel.

``--distributed fsdp`` shards every transformer block, every encoder's remaining
weights (stems, positions, norms) and every projection over the processes: each holds
a slice of the weights, gradients and optimiser state, gathers a module's weights just
before it runs and frees them after. With bf16 the gathered weights are bf16 while
the stored slices (the optimiser's master weights) stay fp32, and gradients are
reduced in fp32.

The temperatures (0-dimensional parameters, which ``fully_shard`` cannot slice) and
empty parameters stay whole on every process; their gradients are averaged by :func:`average_replicated_gradients`
after each backward, as DDP would.

Checkpoints keep the one directory format whatever trained them: :func:`full_model_state`
and the optimiser's full state (parameter names as keys) are gathered to the main
process, so a run saved under FSDP resumes under DDP or another world size, and
``load_model`` reads it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from multimodal.encoders import Block

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_model(model: nn.Module, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Shards ``model`` in place: each Block, then each encoder and projection around its blocks.

    ``compute_dtype`` (bf16): the dtype weights are gathered in for forward and
    backward; gradients are reduced and outputs returned in fp32 either way, so the
    loss is computed in fp32.
    """
    # Inside an encoder activations stay in the compute dtype from block to block; what
    # leaves an encoder or a projection is fp32.
    inner = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    outer = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, output_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mp_policy=inner)
    # Empty parameters (the text tower's zero prefix positions) hold nothing to slice or reduce.
    empty = {p for p in model.parameters() if p.numel() == 0}
    for container in (model.encoders, model.projections):
        for module in container.values():
            fully_shard(module, mp_policy=outer, ignored_params=empty)
    return model


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def average_replicated_gradients(model: nn.Module) -> None:
    """Averages over processes the gradients of the parameters FSDP leaves whole (the temperatures).

    Nothing to do for a model that is not sharded: DDP has averaged every gradient already.
    """
    if not is_sharded(model) or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    gradients = [p.grad for p in model.parameters()
                 if not isinstance(p, DTensor) and p.grad is not None and p.numel() > 0]
    if gradients:
        flat = torch.cat([g.reshape(-1) for g in gradients])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for gradient, averaged in zip(gradients, flat.split([g.numel() for g in gradients])):
            gradient.copy_(averaged.view_as(gradient))


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, on the CPU of the main process (empty elsewhere). Collective: call on every process."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser state keyed by parameter name, whole (main process). Collective when sharded."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads a state from :func:`full_optimizer_state` (any world size, sharded or not), slicing it as needed.

    Raises ``CheckpointError`` naming the parameters when the saved optimiser held other
    parameters than ``optimizer`` does.
    """
    from multimodal.checkpoint import CheckpointError

    saved = {name for group in state["param_groups"] for name in group["params"]}
    # Each group's parameter names, in the order of the optimiser's own groups.
    current_groups = [group["params"] for group in get_optimizer_state_dict(model, optimizer)["param_groups"]]
    current = {name for names in current_groups for name in names}
    if saved != current:
        raise CheckpointError(
            "the checkpoint's optimiser state is for other parameters: missing "
            f"{sorted(current - saved)[:5]}, not in this model {sorted(saved - current)[:5]}"
        )
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True, strict=False))
    # A parameter listed in the saved groups without a state of its own had not received a
    # gradient yet (the temperature of a modality pair no batch held, for example). AdamW
    # creates state on the first step that gives it one; loading filled in a zero state
    # (with a step count), so drop it to continue exactly as the saved run would have.
    for group, names in zip(optimizer.param_groups, current_groups, strict=True):
        for parameter, name in zip(group["params"], names, strict=True):
            if name not in state["state"]:
                optimizer.state.pop(parameter, None)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (collective); any other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def like(full: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``full`` sliced as ``reference`` is (a sharded parameter), or as it is."""
    if isinstance(reference, DTensor):
        return distribute_tensor(full.to(reference.device, reference.dtype), reference.device_mesh, reference.placements)
    return full


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scales every gradient so that their global norm is at most ``max_norm``; returns the norm before.

    The sharded gradients' squares are summed over each process's slice and then over
    the processes (the slices are disjoint); the whole ones (temperatures) are the same
    everywhere and count once. ``torch.nn.utils.clip_grad_norm_`` cannot mix the two kinds.
    """
    sharded = [p.grad.to_local() for p in model.parameters() if isinstance(p, DTensor) and p.grad is not None]
    whole = [p.grad for p in model.parameters() if not isinstance(p, DTensor) and p.grad is not None]
    squares = torch.zeros((), dtype=torch.float32)
    if sharded:
        squares = torch.stack([g.float().pow(2).sum() for g in sharded]).sum()
    if dist.is_initialized():
        dist.all_reduce(squares)
    if whole:
        squares = squares + torch.stack([g.float().pow(2).sum() for g in whole]).sum().to(squares.device)
    total = squares.sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(sharded + whole, scale.to(sharded[0].device if sharded else "cpu"))
    return total
