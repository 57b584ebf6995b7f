"""Contrastive training of text, image and audio encoders on streamed shards, with Accelerate.

    python train.py                                  # the demo: spoken and handwritten digits, on CPU
    python train.py --preset small --data.train '[{"shards": "img-{000..099}.tar", "modalities": ["image", "text"]}]'
    python train.py --config run.yaml --optim.lr 3e-4
    accelerate launch --multi_gpu train.py --preset base ...
    python train.py --run_name demo --resume latest  # continue where a run stopped, with its own settings

(also ``python -m multimodal.train`` or ``multimodal-train`` from any directory.)

Reads top to bottom: configuration (a resumed run restores its own), Accelerator,
data and tokenizer, model, optimiser, the loop (with evaluation, checkpoints, and a
checkpoint on SIGTERM or Ctrl-C), the report.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from multimodal import evaluation, preflight, report, sources
from multimodal.checkpoint import (
    RUN_CHECKPOINTS,
    TRAINER_FILE,
    CheckpointError,
    list_checkpoints,
    load_model,
    load_state_checked,
    load_tokenizer as checkpoint_tokenizer,
    read_config,
    save_checkpoint,
    unique_state_dict,
)
from multimodal.config import (
    apply_overrides,
    describe_keys,
    from_dict,
    load_config_file,
    parse_override_args,
    to_dict,
)
from multimodal.data.allocator import retain_freed_memory
from multimodal.data.files import write_text_atomically
from multimodal.data.seeds import stable_int
from multimodal.encoders import Block
from multimodal.ema import WeightAverage
from multimodal.losses import substitute_microbatch
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.precision import native_bf16
from multimodal.presets import PRESETS, preset
from multimodal.pretrained import init_model_config, keep_locked_in_eval, layer_decay_groups, load_pretrained, lock_towers
from multimodal.sharding import (
    average_replicated_gradients,
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_optimizer_state,
    shard_model,
)
from multimodal.threads import apply_plan, plan_threads
from multimodal.truncation import measure_sources, truncation_lines

logger = logging.getLogger("multimodal.train")

TRAINING_STATE_FILE = "training_state.pt"
EMA_DIR = "ema"  # in a training checkpoint: the averaged weights, a checkpoint directory of their own
RUN_CONFIG_FILE = "config.json"
MACHINE_KEY = "machine"  # in a run's config.json: the cores, threads and workers the run chose


# --------------------------------------------------------------------------- configuration


@dataclass
class OptimConfig:
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


@dataclass
class EmaConfig:
    """An exponential moving average of the weights (see multimodal/ema.py); off unless ``decay`` is set."""

    decay: float | None = None  # e.g. 0.999: the average over about 1 / (1 - decay) steps
    evaluate: bool = True  # evaluate the averaged weights beside the raw ones (results under "ema/...")


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: ModelConfig | None = None  # None: the preset's
    data: sources.DataConfig = field(default_factory=sources.DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    # "ddp": every process holds the whole model (DistributedDataParallel); "fsdp": weights, gradients
    # and optimiser state sharded over the processes (FSDP2, see multimodal/sharding.py). An
    # `accelerate config` with distributed_type FSDP selects "fsdp" too.
    distributed: str = "ddp"
    # "auto": bf16 where the CPU or GPU computes it natively (see multimodal/precision.py), else fp32;
    # or "no", "bf16", "fp16", through Accelerate.
    mixed_precision: str = "auto"
    seed: int = 0
    # torch's compute threads in each training process; None: chosen from the cores the process
    # gets, less the loader's workers and cores other work keeps busy (see multimodal/threads.py).
    threads: int | None = None
    output_dir: str = "runs"
    run_name: str | None = None  # None: a time stamp
    log_every: int = 20
    eval_every: int = 0  # steps between evaluations during training; 0: only at the end
    checkpoint_every: int = 400  # steps between checkpoints (the last step, SIGTERM and Ctrl-C always save one)
    keep_last: int = 2  # checkpoints kept; older ones are deleted
    resume: str | None = None  # "latest" or a checkpoint directory: continue that run with its own settings
    # A checkpoint to start from (ours, or converted from open_clip / Hugging Face): the towers it
    # holds come with its architecture, preprocessing, weights and tokenizer; towers only this
    # run's model has start fresh (see multimodal/pretrained.py).
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)  # towers that stay fixed (locked-image tuning, binding)
    freeze_unlocked_blocks: int = 0  # the last blocks (and head) of each frozen tower that still train
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (regional: one compiled block serves the stack)
    tensorboard: bool = False
    wandb: bool = False  # log to Weights & Biases (WANDB_MODE=offline writes the run locally, no network)
    wandb_project: str = "multimodal"
    plot: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; available: {sorted(PRESETS)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'auto', 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")
        if self.distributed == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError("distributed fsdp computes in bf16 or fp32 (mixed_precision bf16, no or auto), not fp16")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or null: chosen from the cores), got {self.threads}")
        if self.data.num_workers is not None and self.data.num_workers < 0:
            raise ValueError(f"data.num_workers must be at least 0 (or null: chosen), got {self.data.num_workers}")
        for name in ("log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_unlocked_blocks < 0:
            raise ValueError(f"freeze_unlocked_blocks must be 0 or more, got {self.freeze_unlocked_blocks}")
        if self.optim.layer_decay is not None and not 0.0 < self.optim.layer_decay <= 1.0:
            raise ValueError(f"optim.layer_decay must be in (0, 1], e.g. 0.75; got {self.optim.layer_decay}")
        if self.optim.accum_steps < 1 or self.optim.steps < 1:
            raise ValueError("optim.steps and optim.accum_steps must be at least 1")
        if self.ema.decay is not None and not 0.0 < self.ema.decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), e.g. 0.999; got {self.ema.decay}")


# What a resumed run may change: how long it runs, what it logs and evaluates, how often it
# saves, where and how it computes. Everything else (model, data, optimiser, seed) is the run's.
RESUMABLE_KEYS = (
    "optim.steps", "log_every", "eval_every", "checkpoint_every", "keep_last", "tensorboard", "wandb", "wandb_project",
    "plot", "mixed_precision", "grad_checkpointing", "compile", "distributed", "threads", "data.num_workers",
    "data.worker_nice",
    "data.eval_batch_size", "data.eval",
    "resume", "output_dir", "run_name",
)


def parse_config(argv: list[str]) -> TrainConfig:
    """``--preset NAME``, ``--config FILE`` (JSON/YAML) and dotted overrides, applied in that order.

    With ``--resume``, the run's saved configuration is the base instead, and the
    settings given may change only ``RESUMABLE_KEYS`` (see :func:`resumed_config`).
    """
    overrides = parse_override_args(argv)
    config = _fresh_config(overrides)
    if config.resume is None:
        return config
    return resumed_config(config, find_resume_checkpoint(config), given=overrides)


def _fresh_config(overrides: dict[str, str]) -> TrainConfig:
    overrides = dict(overrides)
    preset_name = overrides.pop("preset", "tiny")
    config_file = overrides.pop("config", None)
    data = {"preset": preset_name}
    if config_file is not None:
        data.update(load_config_file(config_file))
        # A run's config.json records the threads it chose on its machine: a record, not a setting.
        data.pop(MACHINE_KEY, None)
    # A file's model section changes the preset's model (`image_preprocess: {mean: ...}`
    # alone keeps every encoder); `audio: null` drops one.
    if isinstance(data.get("model"), dict) and data.get("preset") in PRESETS:
        data["model"] = _merged(to_dict(preset(data["preset"])), data["model"])
        for modality in ("image", "audio"):
            if data["model"].get(modality) is None:
                data["model"][f"{modality}_preprocess"] = None
    config = from_dict(TrainConfig, data)
    if config.model is None:
        config.model = preset(config.preset)
    config = apply_overrides(config, overrides)
    if config.init_from is not None and config.resume is None:
        # The checkpoint's towers keep its architecture; what the command line says of them applies on top.
        try:
            preflight.check_checkpoint_dir(config.init_from, "init_from")
        except ValueError as error:
            raise StartError(str(error)) from None  # a wrong path, not a wrong setting: no pointer to --help
        config.model = init_model_config(config.model, config.init_from)
        config = apply_overrides(config, {k: v for k, v in overrides.items() if k.startswith("model.")})
    return config


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied key by key, nested mappings merged, other values replaced."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def resumed_config(given_config: TrainConfig, checkpoint: Path, *, given: dict[str, str]) -> TrainConfig:
    """The configuration a checkpoint was trained with, with the resumable settings of this command line.

    A setting given now that is not resumable must equal the run's (repeating the
    original flags is fine); otherwise the resume is refused, naming each such key.
    """
    saved = read_config(checkpoint).get("train")
    if saved is None:
        raise CheckpointError(f"{checkpoint} holds no training configuration (config.json has no 'train' section)")
    saved = _with_earlier_behaviour(saved)
    run_config = from_dict(TrainConfig, saved, "train")
    run_tree, given_tree = to_dict(run_config), to_dict(given_config)
    explicit = set(given) - {"config"}
    if "config" in given:  # a file given again counts as settings given
        explicit |= set(_flatten(load_config_file(given["config"])))
    changed = sorted(
        key for key in explicit
        if not _is_resumable(key) and _lookup(given_tree, key) != _lookup(run_tree, key)
    )
    if changed:
        details = "; ".join(
            f"{key}: run {json.dumps(_lookup(run_tree, key))}, given {json.dumps(_lookup(given_tree, key))}"
            for key in changed
        )
        raise ValueError(
            f"--resume continues {checkpoint} with its own settings; these cannot change: {details}. "
            f"Resumable: {', '.join(RESUMABLE_KEYS)}. Start a new run (another --run_name) to change the others."
        )
    resumable = {key: _lookup(given_tree, key) for key in explicit if _is_resumable(key)}
    resumable.update(resume=given_config.resume, output_dir=given_config.output_dir, run_name=given_config.run_name)
    return apply_overrides(run_config, resumable)


# Settings added since a run may have started, with the value that keeps what such a run
# trained with (a new default applies to new runs only).
_EARLIER_BEHAVIOUR = {("data", "demo_label_positives"): False}


def _with_earlier_behaviour(saved: dict) -> dict:
    """A saved training configuration with every later-added setting it lacks set to the behaviour it had."""
    saved = json.loads(json.dumps(saved))  # a copy
    for (section, key), value in _EARLIER_BEHAVIOUR.items():
        if isinstance(saved.get(section), dict) and key not in saved[section]:
            saved[section][key] = value
    return saved


def _is_resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS)


def _lookup(tree: dict, dotted: str):
    """The value at ``dotted`` in nested dicts (a whole section for a section's key)."""
    node = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": leaf}; lists are leaves."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


# --------------------------------------------------------------------------- tokenizer and model


def choose_tokenizer(config: TrainConfig, resolved: sources.ResolvedSources, resume_from: Path | None):
    """The tokenizer of the run: the resumed checkpoint's, a file, the init_from checkpoint's, or the demo's."""
    if config.model.text is None:
        return None
    if resume_from is not None:
        return sources.load_tokenizer(resume_from)
    if config.data.tokenizer is not None:
        try:
            return sources.load_tokenizer(config.data.tokenizer)
        except (ValueError, OSError) as error:
            raise ValueError(f"data.tokenizer: {error}") from None
    if config.init_from is not None:
        tokenizer = checkpoint_tokenizer(config.init_from)
        if tokenizer is not None:  # an audio-only checkpoint (AST) has none: the data's then
            return tokenizer
    if resolved.demo is not None:
        return sources.demo_tokenizer(resolved.demo, config.data.tokenizer_vocab_size)
    return None


def fit_text_to_tokenizer(model: ModelConfig, tokenizer) -> ModelConfig:
    """The model config with the text tower's vocabulary size and end-of-text id taken from ``tokenizer``.

    The text tower pools at the end-of-text token, so its id must be the tokenizer's:
    a preset's default (ours: 2; CLIP's: 49407) would otherwise pool at the wrong place
    without a word.
    """
    if model.text is None or tokenizer is None:
        return model
    return apply_overrides(model, {"text.vocab_size": tokenizer.vocab_size, "text.eot_token_id": tokenizer.eot_id})


def _tracker_config(config: TrainConfig) -> dict:
    """The settings as flat scalars, the only values every tracker accepts (lists as JSON text)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in _flatten(to_dict(config)).items()}


def _run_id(run_dir: Path) -> str:
    """A tracker id that stays the same when the run is resumed (a resumed run continues its curves)."""
    return f"{run_dir.name}-{stable_int(str(run_dir.resolve())) % 10**8:08d}"


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` every transformer block in place; returns how many.

    Regional compilation: blocks of one stack share their code, so compiling costs
    about one block per input shape rather than a whole model, and the parts that vary
    (stems, pooling, the loss) stay eager.
    """
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        block.compile()
    return len(blocks)


def build_model(config: TrainConfig, say=print) -> MultimodalModel:
    """The model from its config; the towers ``init_from`` holds; locked towers; gradient checkpointing.

    ``say`` prints what was loaded and locked (the start-up log).
    """
    model_config = config.model
    for modality in model_config.modalities:
        getattr(model_config, modality).transformer.grad_checkpointing = config.grad_checkpointing
    model = MultimodalModel(model_config)
    if config.init_from is not None and config.resume is None:  # a resumed run loads its own weights
        loaded = load_pretrained(model, config.init_from)
        fresh = f"; {', '.join(loaded['fresh'])} start(s) fresh" if loaded["fresh"] else ""
        pairs = f" and the {', '.join(loaded['temperatures'])} temperature(s)" if loaded["temperatures"] else ""
        say(f"init_from {config.init_from}: loaded the {', '.join(loaded['loaded'])} tower(s){pairs}{fresh}")
    if config.freeze:
        locked = lock_towers(model, config.freeze, config.freeze_unlocked_blocks)
        for modality, counts in locked["towers"].items():
            say(f"freeze {modality}: {counts['locked']:,} parameters locked, {counts['trainable']:,} train"
                + (f" (its last {counts['unlocked_blocks']} block(s) and head)" if counts["unlocked_blocks"] else ""))
    if config.compile:
        compile_blocks(model)
    return model


def locked_modalities(config: TrainConfig) -> set[str]:
    """The towers that do not train at all (frozen with no block unlocked)."""
    return set(config.freeze) if config.freeze_unlocked_blocks == 0 else set()


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

    The parameters FSDP keeps whole (scalars, empty tensors; see multimodal/sharding.py)
    get a group of their own: the fused kernel steps a group at once and cannot mix them
    with sharded ones. Grouping by shape alone keeps the optimiser state interchangeable
    between DDP and FSDP runs.
    """
    decay, free, whole = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim == 0 or parameter.numel() == 0:
            whole.append(parameter)
        else:
            (free if is_decay_free(name, parameter) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": free, "weight_decay": 0.0},
              {"params": whole, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=optim.fused)


def cosine_with_warmup(optim: OptimConfig):
    """Learning-rate multiplier at step s: linear warmup, then cosine down to ``min_lr_ratio``."""
    def multiplier(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


# --------------------------------------------------------------------------- one step


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
            rng_states.append(_rng_state())
            with accelerator.autocast():
                features = model(batch)["features"]
            for modality, value in features.items():
                cached.setdefault(modality, []).append(value)
    last = len(micro_batches) - 1
    for index, batch in enumerate(micro_batches):
        _set_rng_state(rng_states[index])
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
    if grad_clip is not None:
        if is_sharded(model):
            clip_grad_norm(model, grad_clip)
        else:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    accelerator.unwrap_model(model).clamp_logit_scales()


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def train_step(accelerator, model, optimizer, scheduler, micro_batches: list[dict],
               grad_clip: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimiser step over ``micro_batches``: gradients, clipping, update, schedule, temperature clamp."""
    loss, per_pair = compute_gradients(accelerator, model, micro_batches)
    optimizer_step(accelerator, model, optimizer, scheduler, grad_clip)
    return loss, per_pair


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- run directory and checkpoints


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / RUN_CHECKPOINTS / f"step-{step:07d}"


def whole_weights(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's weights whole: gathered to the main process when sharded (collective), else its own."""
    return full_model_state(model) if is_sharded(model) else unique_state_dict(model)


def save_training_checkpoint(accelerator, model, optimizer, scheduler, tokenizer, config: TrainConfig,
                             run_dir: Path, step: int, ema: WeightAverage | None = None) -> Path | None:
    """Model + tokenizer + everything needed to resume, written atomically; keeps the last ``keep_last``.

    Every process calls it: under FSDP the weights, the optimiser state and the weight
    average are gathered whole to the main process, which writes the one format every
    run reads (the optimiser state keyed by parameter name). With ``ema`` the averaged
    weights go beside, as a checkpoint directory of their own (``EMA_DIR``).
    """
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    weights = whole_weights(unwrapped)
    optimizer_state = full_optimizer_state(unwrapped, getattr(optimizer, "optimizer", optimizer))
    averaged = ema.state_dict() if ema is not None else None
    path = None
    if accelerator.is_main_process:
        state = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": _rng_state()}
        extra_config = {"train": to_dict(config)}

        def write_training_state(tmp: Path) -> None:
            torch.save(state, tmp / TRAINING_STATE_FILE)
            python_state = random.getstate()
            (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, "python_rng": [python_state[0], list(python_state[1]), python_state[2]]}))
            if averaged is not None:
                save_checkpoint(unwrapped, tmp / EMA_DIR, tokenizer=tokenizer, state={**weights, **averaged},
                                extra_config={**extra_config, "ema": {"decay": ema.decay, "step": step}})

        path = save_checkpoint(unwrapped, checkpoint_dir(run_dir, step), tokenizer=tokenizer, state=weights,
                               extra_config=extra_config, write_extra=write_training_state)
        for old in list_checkpoints(run_dir)[: -config.keep_last]:
            _remove_tree(old)
    accelerator.wait_for_everyone()
    return path


def _remove_tree(path: Path) -> None:
    # Rename first so that a crash half-way never leaves a half-deleted checkpoint under its name.
    doomed = path.with_name(f".{path.name}.deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def find_resume_checkpoint(config: TrainConfig) -> Path:
    """The checkpoint ``--resume`` names: a checkpoint directory, or the latest of the run."""
    if config.resume != "latest":
        path = Path(config.resume)
        if not (path / TRAINER_FILE).is_file():
            raise ValueError(f"--resume {path}: not a training checkpoint ({TRAINER_FILE} is missing)")
        return path
    run_dir = resolve_run_dir(config)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise ValueError(f"--resume latest: no checkpoint under {run_dir / RUN_CHECKPOINTS}")
    return checkpoints[-1]


def resolve_run_dir(config: TrainConfig) -> Path:
    output = Path(config.output_dir)
    if config.resume not in (None, "latest"):
        return Path(config.resume).resolve().parents[1]  # RUN/checkpoints/step-N
    if config.run_name is not None:
        return output / config.run_name
    if config.resume == "latest":
        runs = sorted((p for p in output.glob("*") if list_checkpoints(p)), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ValueError(f"--resume latest: no run with checkpoints under {output}")
        return runs[-1]
    return output / time.strftime("%Y%m%d-%H%M%S")


def check_run_dir_is_free(run_dir: Path) -> None:
    """A new run never takes over the folder of an earlier one that has checkpoints."""
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        raise ValueError(
            f"{run_dir} already holds a run (checkpoints up to {checkpoints[-1].name}); continue it with "
            f"--run_name {run_dir.name} --resume latest, or choose another --run_name"
        )


def load_weights(path: Path, model: nn.Module) -> None:
    """A checkpoint's weights into the (not yet sharded) model, every key and shape checked."""
    load_state_checked(model, load_model(path).state_dict(), str(path))


def load_training_state(path: Path, model, optimizer, scheduler, ema: WeightAverage | None = None) -> int:
    """Restores optimiser, schedule, random states and the weight average; returns the step to continue from.

    The optimiser state is keyed by parameter name, so it loads whatever world size or
    sharding saved it (checkpoints from before that format hold it by position).
    """
    if ema is not None:
        if not (path / EMA_DIR).is_dir():
            raise CheckpointError(f"{path} has no averaged weights ({EMA_DIR}/) to continue ema.decay from")
        ema.load_state_dict(load_model(path / EMA_DIR).state_dict(), str(path / EMA_DIR))
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    state = torch.load(path / TRAINING_STATE_FILE, weights_only=True)
    inner = getattr(optimizer, "optimizer", optimizer)
    if all(isinstance(name, str) for group in state["optimizer"]["param_groups"] for name in group["params"]):
        load_optimizer_state(model, inner, state["optimizer"])
    else:
        inner.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    trainer = json.loads((path / TRAINER_FILE).read_text())
    version, internal, gauss = trainer["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return trainer["step"]


# --------------------------------------------------------------------------- the loop


def make_accelerator(config: TrainConfig, run_dir: Path):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = [name for name, wanted in (("tensorboard", config.tensorboard), ("wandb", config.wandb)) if wanted]
    for tracker in trackers:
        if importlib.util.find_spec(tracker) is None:
            raise ValueError(f"--{tracker} true needs the {tracker} package: pip install -e '.[{tracker}]'")
    # A batch may hold only some modalities (image-text from one source, audio-text from
    # another), so some encoders are unused in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Under FSDP the sharding's precision policy computes in bf16 (see shard_model), not autocast.
    return Accelerator(
        # Without a GPU, say so: otherwise Accelerate under torchrun joins the processes'
        # group but reports one process of its own, and each trains alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if uses_fsdp(config) else resolve_mixed_precision(config.mixed_precision),
        kwargs_handlers=[ddp],
        log_with=trackers or None,
        project_dir=str(run_dir),
    )


def uses_fsdp(config: TrainConfig) -> bool:
    """``--distributed fsdp``, or an Accelerate launch configured for FSDP."""
    return config.distributed == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def resolve_mixed_precision(setting: str) -> str:
    """``"auto"``: bf16 where the hardware computes it natively, else full precision."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "no"


def shared_run_dir(accelerator, config: TrainConfig) -> Path:
    """The run directory chosen by the main process (time stamps could differ across processes)."""
    from accelerate.utils import broadcast_object_list

    holder = [str(resolve_run_dir(config)) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    return Path(holder[0])


def segment_seed(seed: int, step: int) -> int:
    """The data stream restarts at every checkpoint step with a seed derived from it.

    An uninterrupted run and a run resumed from that checkpoint then read exactly the
    same batches from there on, without replaying the stream.
    """
    return (seed * 1_000_003 + step) % 2**31


class StopRequest:
    """SIGTERM (a cluster's preemption) or Ctrl-C: finish the current step, save a checkpoint, exit.

    A second Ctrl-C interrupts at once. With several processes the flag is shared by an
    all-reduce at every step, so all of them stop after the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop (a collective call when there are several)."""
        if accelerator.num_processes == 1:
            return self.signal_number is not None
        flag = torch.tensor([0 if self.signal_number is None else self.signal_number], device=accelerator.device)
        flag = accelerator.reduce(flag, reduction="sum")
        if self.signal_number is None and int(flag.item()):
            self.signal_number = signal.SIGTERM
        return int(flag.item()) > 0


class MetricsLog:
    """metrics.jsonl in the run directory (main process), and the trackers Accelerate was given."""

    def __init__(self, accelerator, run_dir: Path) -> None:
        self.accelerator = accelerator
        self.path = run_dir / "metrics.jsonl"
        self.rows: list[dict] = []

    def write(self, step: int, values: dict) -> None:
        row = {"step": step, **values}
        self.rows.append(row)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        self.accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


@dataclass
class Run:
    """Everything the loop works with, made by :func:`start_run`."""

    config: TrainConfig
    accelerator: object
    run_dir: Path
    data: sources.PreparedData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    start_step: int
    resumed_from: Path | None
    ema: WeightAverage | None = None


def start_run(config: TrainConfig) -> Run:
    """Data, tokenizer, model and optimiser for ``config``, restored from its checkpoint when resuming.

    Everything a user can get wrong (a shard path, a modality, a tokenizer, nothing to
    resume) is checked before the run directory is created, so a failed start leaves
    nothing behind.
    """
    resume_from = find_resume_checkpoint(config) if config.resume is not None else None
    check_run_inputs(config)
    # Chosen before anything starts: the neighbours counted are other work, not this run's loader.
    thread_plan = plan_threads(config.threads, config.data.num_workers, on_gpu=torch.cuda.is_available(),
                               local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    apply_plan(thread_plan)
    if config.data.num_workers is None:
        config.data.num_workers = thread_plan.workers
    if config.data.worker_nice is None:
        config.data.worker_nice = thread_plan.worker_nice
    accelerator = make_accelerator(config, Path(config.output_dir))
    run_dir = shared_run_dir(accelerator, config)
    if resume_from is None:
        check_run_dir_is_free(run_dir)
    preflight.check_output_dir(run_dir)
    seed_everything(config.seed)

    # The evaluation sets given are checked before the demo (if it trains) is built: a typo fails in seconds.
    preflight.check_eval_sets(config.data.eval, config.model)
    resolved = sources.resolve_sources(config.data, config.model, progress=accelerator.is_main_process)
    resolved.train = trained_sources(resolved, locked_modalities(config), accelerator.print)
    # A pretrained image tower keeps the normalisation its weights learned with, whatever the data measure.
    pretrained_image = config.init_from is not None and read_config(config.init_from)["model"].get("image")
    if accelerator.is_main_process and not pretrained_image:
        for warning in sources.normalisation_warnings(resolved, config.model):
            logger.warning(warning)
    tokenizer = choose_tokenizer(config, resolved, resume_from)
    config.model = fit_text_to_tokenizer(config.model, tokenizer)
    if accelerator.is_main_process and resolved.demo is None:
        # What the model's audio window and text context cut of the data, from the first samples of each source.
        for line in truncation_lines(measure_sources(resolved.train, config.model, tokenizer)):
            logger.warning(line)
    data = sources.prepare(config.data, config.model, tokenizer, resolved)
    # Recorded in the run's config and its checkpoints: `multimodal eval` and the classifier
    # then prompt with the templates the run was evaluated with (the demo's, say).
    config.data.eval = list(resolved.eval_sets)
    model = build_model(config, accelerator.print)
    if resume_from is not None:
        load_weights(resume_from, model)
    sharded = uses_fsdp(config) and accelerator.num_processes > 1  # one process: nothing to shard
    if sharded:
        bf16 = resolve_mixed_precision(config.mixed_precision) == "bf16"
        shard_model(model, torch.bfloat16 if bf16 else None)
    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(config.optim))
    ema = WeightAverage(model, config.ema.decay) if config.ema.decay is not None else None
    start_step = 0
    if resume_from is not None:
        start_step = load_training_state(resume_from, model, optimizer, scheduler, ema)
    # The schedule counts optimiser steps, so the scheduler is not handed to Accelerate
    # (which would step it once per process). A sharded model is already distributed:
    # Accelerate would wrap it in DDP.
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a start that failed before its first checkpoint
        record = {**to_dict(config), MACHINE_KEY: dataclasses.asdict(thread_plan)}
        write_text_atomically(run_dir / RUN_CONFIG_FILE, json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if config.tensorboard or config.wandb:
        accelerator.init_trackers(
            config.wandb_project if config.wandb else run_dir.name, config=_tracker_config(config),
            init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir), "resume": "allow", "id": _run_id(run_dir)}},
        )
    accelerator.print(thread_plan.describe())
    if resume_from is not None:
        accelerator.print(f"resumed from {resume_from} at step {start_step}")
    return Run(config, accelerator, run_dir, data, model, optimizer, scheduler, start_step, resume_from, ema)


def check_run_inputs(config: TrainConfig) -> None:
    """The files a new run reads besides its data (checked in resolve_sources): a typo fails in seconds.

    A resumed run reads its weights and tokenizer from its checkpoint instead.
    """
    if config.resume is not None:
        return
    if config.init_from is not None:
        preflight.check_checkpoint_dir(config.init_from, "init_from")
    if config.data.tokenizer is not None:
        preflight.check_tokenizer_path(config.data.tokenizer, "data.tokenizer")
    missing = [m for m in config.freeze if m not in config.model.modalities]
    if missing:
        raise ValueError(f"freeze: this model has no {' or '.join(map(repr, missing))} tower "
                         f"(it has {', '.join(config.model.modalities)})")


def trained_sources(resolved: sources.ResolvedSources, locked: set[str], say=print) -> list[sources.SourceConfig]:
    """The training sources with a tower to train: one whose towers are all locked has nothing to learn.

    Binding audio into a locked image-text model (ImageBind's recipe) leaves the demo's
    image-text source out this way: its batches are not drawn.
    """
    kept = []
    for index, source in enumerate(resolved.train):
        if set(source.modalities) <= locked:
            name = "the demo's" if resolved.demo is not None else f"data.train[{index}]:"
            say(f"{name} {'-'.join(source.modalities)} pairs are not trained: those towers are all frozen")
        else:
            kept.append(source)
    if not kept:
        raise ValueError(f"freeze: every training source's towers are frozen ({', '.join(sorted(locked))}); "
                         "nothing would train")
    return kept


class StartError(ValueError):
    """The run could not start: a setting, a file or the data is wrong (the message says which)."""


def train(config: TrainConfig) -> dict:
    """Runs training as configured; returns the final evaluation results and paths."""
    started = time.time()
    try:
        run = start_run(config)
    except (ValueError, TypeError, OSError) as error:
        raise StartError(str(error)) from error
    accelerator, run_dir = run.accelerator, run.run_dir
    log = MetricsLog(accelerator, run_dir)
    plot = accelerator.is_main_process and config.plot
    try:
        with StopRequest() as stop:
            result = run_loop(run, log, stop)
    except DataError:
        if plot and log.path.is_file():  # the curves up to the failure are worth seeing
            report.plot_curves(log.path, run_dir / "curves.png")
        raise
    result["wall_seconds"] = time.time() - started
    # Gathers' autograd nodes hold the process group; free them before end_training tears
    # it down, or gloo can abort at interpreter exit.
    del run
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if plot and log.path.is_file():
        result["plot"] = str(report.plot_curves(log.path, run_dir / "curves.png"))
    return result


def run_loop(run: Run, log: MetricsLog, stop: StopRequest) -> dict:
    from tqdm.auto import tqdm

    config, accelerator, data, model = run.config, run.accelerator, run.data, run.model
    optim = config.optim
    unwrapped = accelerator.unwrap_model(model)
    samples_per_step = config.data.batch_size * optim.accum_steps * accelerator.num_processes
    # Live in a terminal; in a log file (a cluster job's) a line every 30 s, not one per step.
    progress = tqdm(total=optim.steps, initial=run.start_step, disable=not accelerator.is_main_process,
                    desc="training", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    batches = None
    # A resumed run's latest checkpoint is the one it resumed from until it saves another.
    last_checkpoint, saved_step = run.resumed_from, run.start_step
    tick, window = time.time(), LossWindow()
    waited = 0.0  # seconds of this log window spent waiting for batches

    def save(step: int) -> Path | None:
        return save_training_checkpoint(accelerator, model, run.optimizer, run.scheduler, data.tokenizer, config,
                                        run.run_dir, step, run.ema)

    def evaluate_all(step: int) -> dict:
        results = evaluate(accelerator, evaluation_model(run), data, run.run_dir, step)
        if run.ema is not None and config.ema.evaluate and EVAL_ERROR not in results:
            averaged = evaluate(accelerator, evaluation_model(run, averaged=True), data, run.run_dir, step)
            results.update({f"ema/{key}": value for key, value in averaged.items()})
        return results

    train_mode(model)
    if run.start_step >= optim.steps:
        accelerator.print(f"the run has trained its {optim.steps} steps already (raise --optim.steps to train on); "
                          "evaluating its last checkpoint")
    done = run.start_step
    for step in range(run.start_step, optim.steps):
        if batches is None or (config.checkpoint_every and step % config.checkpoint_every == 0):
            # The loader delivers batches on the accelerator's device.
            loader = data.train_loader(
                seed=segment_seed(config.seed, step),
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
                device=accelerator.device,
            )
            batches = iter(loader)
        fetch_started = time.time()
        try:
            micro_batches = [next(batches) for _ in range(optim.accum_steps)]
        except (ValueError, OSError) as error:
            # The data failed (a source with no valid sample, say). The model is at a clean
            # step boundary: keep it before giving up (one process; with several, the others
            # wait in a collective call and a save would hang).
            progress.close()
            if accelerator.num_processes == 1 and done > saved_step:
                last_checkpoint, saved_step = save(done), done
            kept = f"checkpoint at step {saved_step}: {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
            raise DataError(f"{error} (training stopped after step {done}; {kept})") from error
        waited += time.time() - fetch_started
        loss, per_pair = train_step(accelerator, model, run.optimizer, run.scheduler, micro_batches, optim.grad_clip)
        if run.ema is not None:
            run.ema.update(unwrapped)
        done = step + 1
        window.add(loss, per_pair)
        progress.update(1)
        if done % config.log_every == 0 or done == optim.steps:
            elapsed = time.time() - tick
            loss_value, pair_losses = window.means(accelerator)
            temperatures = {f"temperature/{k}": math.exp(v.item()) for k, v in unwrapped.logit_scales.items()}
            values = {
                "loss": loss_value,
                **{f"loss/{k}": v for k, v in pair_losses.items()},
                "lr": run.scheduler.get_last_lr()[0],
                **temperatures,
                "samples_per_s": window.steps * samples_per_step / max(elapsed, 1e-9),
                # The share of the window the trainer waited for its batches: well above 0,
                # the data pipeline limits training (more workers if cores idle, else cheaper levers).
                "data_wait": min(1.0, waited / max(elapsed, 1e-9)),
                "skipped": data.skipped_total(),
            }
            log.write(done, values)
            # The bar shows the scale of the pairs the window trained (image-audio may never train).
            trained = [temperatures[f"temperature/{pair}"] for pair in pair_losses]
            shown = sum(trained) / len(trained)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{values['lr']:.2e}", scale=f"{shown:.1f}",
                                 sps=f"{values['samples_per_s']:.0f}")
            tick, window, waited = time.time(), LossWindow(), 0.0
        if config.eval_every and done % config.eval_every == 0 and done != optim.steps:
            log.write(done, evaluate_all(done))
            train_mode(model)
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == optim.steps:
            last_checkpoint, saved_step = save(done), done
        if stop.agreed(accelerator):
            if saved_step != done:
                last_checkpoint, saved_step = save(done), done
            break
    progress.close()
    result = {"checkpoint": str(last_checkpoint) if last_checkpoint else None, "run_dir": str(run.run_dir),
              "step": done}
    if stop.signal_number is not None:
        result["stopped_by"] = signal.Signals(stop.signal_number).name
        return result
    results = evaluate_all(done)
    log.write(done, results)
    if EVAL_ERROR in results:
        result[EVAL_ERROR] = results.pop(EVAL_ERROR)
    return {"results": results, **result}


def train_mode(model: nn.Module) -> None:
    """Training mode, with locked towers kept in evaluation mode (their dropout and drop-path off)."""
    model.train()
    keep_locked_in_eval(model)


class LossWindow:
    """The losses of the steps since the last log line, to log their mean.

    Batches alternate between sources (image-text, audio-text), so one step's loss
    read every ``log_every`` steps would draw one source's curve at one point and the
    other's at the next. Sums stay on the device: no synchronisation per step.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.total: torch.Tensor | float = 0.0
        self.pairs: dict[str, list] = {}  # pair -> [sum, steps that trained it]

    def add(self, loss: torch.Tensor, per_pair: dict[str, torch.Tensor]) -> None:
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


class DataError(ValueError):
    """The training data failed during the run (the message says what, and where training stopped)."""


def evaluation_model(run: Run, *, averaged: bool = False) -> MultimodalModel | None:
    """The model evaluation runs on the main process: the trained one, or a whole copy.

    A sharded model cannot run on one process alone, so its weights are gathered (a
    collective call) into a whole copy; so are the averaged weights (``averaged``).
    Other processes get None.
    """
    unwrapped = run.accelerator.unwrap_model(run.model)
    if not averaged and not is_sharded(unwrapped):
        return unwrapped
    if not run.data.eval_sets:  # the same on every process: none of them gathers
        return None
    weights = whole_weights(unwrapped)
    if averaged:
        weights = {**weights, **run.ema.state_dict()}
    if not run.accelerator.is_main_process:
        return None
    copy = MultimodalModel(run.config.model)
    load_state_checked(copy, weights, "the trained weights")
    return copy.to(run.accelerator.device)


EVAL_ERROR = "eval_error"  # in evaluation results: why the evaluation failed (the results are then empty)
EVAL_ERRORS_FILE = "eval-errors.log"  # in the run directory: the tracebacks of failed evaluations


def evaluate(accelerator, model: MultimodalModel | None, data, run_dir: Path, step: int) -> dict:
    """The configured evaluation sets, on the main process (evaluation sets are small).

    An evaluation that fails (a shard deleted mid-run, a set that cannot be read) costs
    its results, not the run: the error is logged in one line, its traceback appended
    to ``eval-errors.log`` in the run directory, and ``{"eval_error": message}`` returned.
    """
    results: dict = {}
    if accelerator.is_main_process and data.eval_sets:
        model.eval()
        try:
            results = evaluation.run_evaluations(model, data.eval_sets, data.tokenizer, device=accelerator.device)
        except Exception as error:  # noqa: BLE001 - whatever failed, training and its checkpoints go on
            message = f"{type(error).__name__}: {error}"
            with open(run_dir / EVAL_ERRORS_FILE, "a") as handle:
                handle.write(f"step {step}\n{traceback.format_exc()}\n")
            logger.error("evaluation at step %d failed: %s (traceback in %s)", step, message,
                         run_dir / EVAL_ERRORS_FILE)
            results = {EVAL_ERROR: message}
    accelerator.wait_for_everyone()
    return results


USAGE = """usage: train.py [--preset NAME] [--config FILE] [--dotted.key VALUE ...]

Trains on the built-in demo data unless data.train is set. Settings apply in
order: the preset (tiny, small, base), then the JSON/YAML file, then each
--dotted.key override (also written --dotted.key=VALUE; lists as JSON).
--resume latest (with --run_name) or --resume CHECKPOINT_DIR continues a run with
its own saved settings; only these may change then: {resumable}.
SIGTERM or Ctrl-C saves a checkpoint at the current step before exiting."""


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        try:
            print_help([arg for arg in argv if arg not in ("-h", "--help")])
        except (ValueError, TypeError, OSError) as error:  # a wrong preset or file beside --help
            print(f"train.py: error: {error}\n(train.py --help alone lists every setting)", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(0)
    # The training step allocates and frees the same activations every step; keeping
    # freed memory in the process spares the page faults of fresh allocations
    # (python -m bench train_step shows the step time with and without).
    retain_freed_memory()
    # A wrong setting, file or data: one line that says which, without a traceback.
    try:
        config = parse_config(argv)
    except StartError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, TypeError, OSError) as error:
        print(f"train.py: error: {error}\n(train.py --help lists every setting)", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        result = train(config)
    except (StartError, DataError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2 if isinstance(error, StartError) else 1) from None
    if int(os.environ.get("RANK", "0")) == 0:
        if "stopped_by" in result:
            print(f"stopped by {result['stopped_by']} after step {result['step']}; checkpoint: {result['checkpoint']}\n"
                  f"continue with: {resume_command(Path(result['run_dir']))}")
        elif EVAL_ERROR in result:
            print(f"train.py: error: the final evaluation failed: {result[EVAL_ERROR]}\n"
                  f"training finished and its checkpoint is kept: {result['checkpoint']}; evaluate it with "
                  f"multimodal eval --checkpoint {result['checkpoint']} ...", file=sys.stderr)
        else:
            print(report.format_results(result["results"]))
            print(f"checkpoint: {result['checkpoint']}")
            print(f"wall time: {result['wall_seconds']:.0f} s")
    if "stopped_by" in result:
        raise SystemExit(128 + int(signal.Signals[result["stopped_by"]]))
    if EVAL_ERROR in result:
        raise SystemExit(1)
    return result


def resume_command(run_dir: Path) -> str:
    """A command that continues the run in ``run_dir`` from any working directory."""
    run_dir = run_dir.absolute()
    return shlex.join([sys.executable, "-m", "multimodal.train", "--output_dir", str(run_dir.parent),
                       "--run_name", run_dir.name, "--resume", "latest"])


def print_help(argv: list[str]) -> None:
    """The usage and every setting with its default, for the preset (and config file) on the command line."""
    overrides = parse_override_args(argv)
    keep = {key: overrides[key] for key in ("preset", "config") if key in overrides}
    config = _fresh_config(keep)
    print(USAGE.format(resumable=", ".join(RESUMABLE_KEYS)))
    print(f"\nsettings and their defaults ({config.preset} preset"
          f"{', ' + keep['config'] if 'config' in keep else ''}):")
    print("\n".join(describe_keys(config)))


if __name__ == "__main__":
    main()
