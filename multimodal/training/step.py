"""One optimiser step: the contrastive loss's gradients over the micro-batches, then the update.

:func:`train_step` joins the two: what the trainer's loop (and ``python -m bench train_step``) runs.
"""
from __future__ import annotations

import contextlib

import torch

from multimodal.losses import substitute_microbatch
from multimodal.training.random_state import rng_state, set_rng_state
from multimodal.training.fsdp import average_replicated_gradients, clip_grad_norm, is_sharded


def compute_gradients(accelerator, model, micro_batches: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
    """Accumulates into ``.grad`` the gradients of the contrastive loss over all micro-batches.

    With several micro-batches the loss still sees the whole accumulated batch as
    negatives (open_clip's --accum-freq): a first pass caches every micro-batch's
    features without gradients; then each micro-batch is recomputed with gradients and
    put in place of its cached rows. The random state is restored before each
    recomputation so that dropout and drop-path match the first pass. Returns the loss.
    """
    unwrapped = accelerator.unwrap_model(model)
    if len(micro_batches) == 1:
        with accelerator.autocast():
            outputs = model(micro_batches[0])
            loss, per_pair = unwrapped.loss(outputs)
        accelerator.backward(loss)
        average_replicated_gradients(unwrapped)
        return loss.detach(), per_pair

    cached: dict[str, list[torch.Tensor]] = {}
    rng_states = []
    # Labels of the whole accumulated batch, when the source reads them (positives by label).
    groups = torch.cat([batch["label"] for batch in micro_batches]) if "label" in micro_batches[0] else None
    with torch.no_grad():
        for batch in micro_batches:
            rng_states.append(rng_state())
            with accelerator.autocast():
                features = model(batch)["features"]
            for modality, value in features.items():
                cached.setdefault(modality, []).append(value)
    last = len(micro_batches) - 1
    for index, batch in enumerate(micro_batches):
        set_rng_state(rng_states[index])
        sync = contextlib.nullcontext() if index == last else accelerator.no_sync(model)
        with sync:
            with accelerator.autocast():
                outputs = model(batch)
                features = substitute_microbatch(cached, outputs["features"], index)
                # The temperatures' gradient is the same in every pass: take it once.
                if index != last:
                    outputs = {
                        "log_scales": {k: v.detach() for k, v in outputs["log_scales"].items()},
                        "biases": {k: v.detach() for k, v in outputs["biases"].items()},
                    }
                outputs = {**outputs, "features": features}
                if groups is not None:
                    outputs["groups"] = groups
                loss, per_pair = unwrapped.loss(outputs)
            accelerator.backward(loss)
    average_replicated_gradients(unwrapped)  # only under FSDP: the temperatures it leaves whole
    return loss.detach(), per_pair


def optimizer_step(accelerator, model, optimizer, scheduler, grad_clip: float | None) -> None:
    """Clips the gradients' global norm (unless ``grad_clip`` is None), updates, steps the schedule, clamps the temperatures."""
    if grad_clip is not None:
        if is_sharded(model):
            clip_grad_norm(model, grad_clip)
        else:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    accelerator.unwrap_model(model).clamp_logit_scales()


def train_step(accelerator, model, optimizer, scheduler, micro_batches: list[dict],
               grad_clip: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimiser step over ``micro_batches``: gradients, clipping, update, schedule, temperature clamp."""
    loss, per_pair = compute_gradients(accelerator, model, micro_batches)
    optimizer_step(accelerator, model, optimizer, scheduler, grad_clip)
    return loss, per_pair
