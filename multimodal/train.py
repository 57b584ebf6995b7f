"""Contrastive training of text, image and audio encoders on streamed shards, with Accelerate.

    python train.py                                  # the demo: spoken and handwritten digits, on CPU
    python train.py --preset small --data.train '[{"shards": "img-{000..099}.tar", "modalities": ["image", "text"]}]'
    python train.py --config run.yaml --optim.lr 3e-4
    accelerate launch --multi_gpu train.py --preset base ...
    python train.py --run_name demo --resume latest  # continue where a run stopped

Reads top to bottom: configuration, Accelerator, model and tokenizer, data, optimiser,
the loop (with evaluation and checkpoints), the report.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from multimodal.data.allocator import retain_freed_memory
from multimodal.checkpoint import (
    RUN_CHECKPOINTS,
    TRAINER_FILE,
    list_checkpoints,
    load_model,
    load_state_checked,
    save_checkpoint,
)
from multimodal.config import (
    apply_overrides,
    describe_keys,
    from_dict,
    load_config_file,
    parse_override_args,
    to_dict,
)
from multimodal.losses import substitute_microbatch
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.precision import native_bf16
from multimodal.presets import PRESETS, preset
from multimodal import evaluation, report, sources

TRAINING_STATE_FILE = "training_state.pt"


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
    fused: bool = True  # AdamW(fused=True) where torch supports it: several times faster on CPU


@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: ModelConfig | None = None  # None: the preset's
    data: sources.DataConfig = field(default_factory=sources.DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # "auto": bf16 where the CPU or GPU computes it natively (2-3x faster here), else fp32;
    # or "no", "bf16", "fp16", through Accelerate.
    mixed_precision: str = "auto"
    seed: int = 0
    output_dir: str = "runs"
    run_name: str | None = None  # None: a time stamp
    log_every: int = 20
    eval_every: int = 0  # steps between evaluations during training; 0: only at the end
    checkpoint_every: int = 400  # steps between checkpoints (the last step always saves one)
    keep_last: int = 2  # checkpoints kept; older ones are deleted
    resume: str | None = None  # "latest" or a checkpoint directory
    init_from: str | None = None  # a checkpoint whose weights start training (fine-tuning)
    freeze: list[str] = field(default_factory=list)  # modalities whose encoder stays fixed (locked-image tuning)
    grad_checkpointing: bool = False
    tensorboard: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; available: {sorted(PRESETS)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'auto', 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        for name in ("log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.optim.accum_steps < 1 or self.optim.steps < 1:
            raise ValueError("optim.steps and optim.accum_steps must be at least 1")


def parse_config(argv: list[str]) -> TrainConfig:
    """``--preset NAME``, ``--config FILE`` (JSON/YAML) and dotted overrides, applied in that order."""
    overrides = parse_override_args(argv)
    preset_name = overrides.pop("preset", "tiny")
    config_file = overrides.pop("config", None)
    data = {"preset": preset_name}
    if config_file is not None:
        data.update(load_config_file(config_file))
    config = from_dict(TrainConfig, data)
    if config.model is None:
        config.model = preset(config.preset)
    return apply_overrides(config, overrides)


# --------------------------------------------------------------------------- model and optimiser


def build_model(config: TrainConfig, vocab_size: int | None) -> MultimodalModel:
    """The model from its config; weights from ``init_from``; frozen towers; gradient checkpointing."""
    model_config = config.model
    if model_config.text is not None and vocab_size is not None and model_config.text.vocab_size != vocab_size:
        model_config = apply_overrides(model_config, {"text.vocab_size": vocab_size})
        config.model = model_config
    for modality in model_config.modalities:
        getattr(model_config, modality).transformer.grad_checkpointing = config.grad_checkpointing
    model = MultimodalModel(model_config)
    if config.init_from is not None:
        source = load_model(config.init_from)
        load_state_checked(model, source.state_dict(), f"init_from={config.init_from}")
    for modality in config.freeze:
        if modality not in model.encoders:
            raise ValueError(f"freeze: unknown modality {modality!r}; this model has {model.modalities}")
        for parameter in list(model.encoders[modality].parameters()) + list(model.projections[modality].parameters()):
            parameter.requires_grad_(False)
    return model


def is_decay_free(name: str, parameter: torch.Tensor) -> bool:
    """Norms, biases, position and prefix-token embeddings and temperatures get no weight decay."""
    return parameter.ndim < 2 or any(
        part in name for part in ("positions.", "class_token", "prefix_tokens", "logit_scales", "logit_biases")
    )


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    decay, free = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (free if is_decay_free(name, parameter) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": free, "weight_decay": 0.0}]
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
        return loss.detach(), per_pair

    cached: dict[str, list[torch.Tensor]] = {}
    rng_states = []
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
                loss, per_pair = unwrapped.loss({**outputs, "features": features})
            accelerator.backward(loss)
    return loss.detach(), per_pair


def optimizer_step(accelerator, model, optimizer, scheduler, grad_clip: float | None) -> None:
    if grad_clip is not None:
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / RUN_CHECKPOINTS / f"step-{step:07d}"


def save_training_checkpoint(accelerator, model, optimizer, scheduler, tokenizer, config: TrainConfig,
                             run_dir: Path, step: int) -> Path | None:
    """Model + tokenizer + everything needed to resume, written atomically; keeps the last ``keep_last``."""
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state()}

        def write_training_state(tmp: Path) -> None:
            torch.save(state, tmp / TRAINING_STATE_FILE)
            python_state = random.getstate()
            (tmp / TRAINER_FILE).write_text(json.dumps({"step": step, "python_rng": [python_state[0], list(python_state[1]), python_state[2]]}))

        path = save_checkpoint(
            accelerator.unwrap_model(model), checkpoint_dir(run_dir, step), tokenizer=tokenizer,
            extra_config={"train": to_dict(config)},
            write_extra=write_training_state,
        )
        for old in list_checkpoints(run_dir)[: -config.keep_last]:
            _remove_tree(old)
    accelerator.wait_for_everyone()
    return path


def _remove_tree(path: Path) -> None:
    import shutil

    # Rename first so that a crash half-way never leaves a half-deleted checkpoint under its name.
    doomed = path.with_name(f".{path.name}.deleting")
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def find_resume_checkpoint(config: TrainConfig) -> Path | None:
    if config.resume is None:
        return None
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
    if config.run_name is not None:
        return output / config.run_name
    if config.resume == "latest":
        runs = sorted((p for p in output.glob("*") if list_checkpoints(p)), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise ValueError(f"--resume latest: no run with checkpoints under {output}")
        return runs[-1]
    return output / time.strftime("%Y%m%d-%H%M%S")


def load_training_state(path: Path, model, optimizer, scheduler) -> int:
    """Restores weights, optimiser, schedule and random states; returns the step to continue from."""
    source = load_model(path)
    load_state_checked(model, source.state_dict(), str(path))
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    state = torch.load(path / TRAINING_STATE_FILE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
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

    if config.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard true needs the tensorboard package: pip install -e '.[tensorboard]'")
    # A batch may hold only some modalities (image-text from one source, audio-text from
    # another), so some encoders are unused in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(
        mixed_precision=resolve_mixed_precision(config.mixed_precision),
        kwargs_handlers=[ddp],
        log_with="tensorboard" if config.tensorboard else None,
        project_dir=str(run_dir),
    )


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


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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


def train(config: TrainConfig) -> dict:
    """Runs training as configured; returns the final evaluation results and paths."""
    started = time.time()
    run_dir_guess = Path(config.output_dir)
    accelerator = make_accelerator(config, run_dir_guess)
    run_dir = shared_run_dir(accelerator, config)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)

    # Data first: the tokenizer fixes the text encoder's vocabulary size.
    data = sources.prepare(config.data, config.model, init_from=config.init_from, progress=accelerator.is_main_process)
    resume_from = find_resume_checkpoint(config)
    model = build_model(config, data.tokenizer.vocab_size if data.tokenizer is not None else None)
    if accelerator.is_main_process:
        (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(config.optim))
    start_step = 0
    if resume_from is not None:
        start_step = load_training_state(resume_from, model, optimizer, scheduler)
        accelerator.print(f"resumed from {resume_from} at step {start_step}")
    # The schedule counts optimiser steps, so the scheduler is not handed to Accelerate
    # (which would step it once per process).
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.tensorboard:
        accelerator.init_trackers(run_dir.name, config={"preset": config.preset, "lr": config.optim.lr})

    log = MetricsLog(accelerator, run_dir)
    result = run_loop(accelerator, model, optimizer, scheduler, data, config, run_dir, start_step, log)
    result["wall_seconds"] = time.time() - started
    accelerator.end_training()
    if accelerator.num_processes > 1:
        # Gathers' autograd nodes hold the process group; free them before tearing it down,
        # or gloo can abort at interpreter exit.
        del model, optimizer
        gc.collect()
        accelerator.wait_for_everyone()
        torch.distributed.destroy_process_group()
    if accelerator.is_main_process and config.plot:
        result["plot"] = str(report.plot_curves(log.path, run_dir / "curves.png"))
    return result


def run_loop(accelerator, model, optimizer, scheduler, data, config: TrainConfig, run_dir: Path,
             start_step: int, log: MetricsLog) -> dict:
    from tqdm.auto import tqdm

    optim = config.optim
    unwrapped = accelerator.unwrap_model(model)
    samples_per_step = config.data.batch_size * optim.accum_steps * accelerator.num_processes
    progress = tqdm(total=optim.steps, initial=start_step, disable=not accelerator.is_main_process,
                    desc="training", dynamic_ncols=True)
    batches = None
    last_checkpoint = None
    tick, window_steps = time.time(), 0
    model.train()
    for step in range(start_step, optim.steps):
        if batches is None or (config.checkpoint_every and step % config.checkpoint_every == 0):
            loader = data.train_loader(
                seed=segment_seed(config.seed, step),
                rank=accelerator.process_index,
                world_size=accelerator.num_processes,
                device=accelerator.device,
            )
            batches = iter(loader)
        micro_batches = [to_device(next(batches), accelerator.device) for _ in range(optim.accum_steps)]
        loss, per_pair = compute_gradients(accelerator, model, micro_batches)
        optimizer_step(accelerator, model, optimizer, scheduler, optim.grad_clip)
        done = step + 1
        window_steps += 1
        progress.update(1)
        if done % config.log_every == 0 or done == optim.steps:
            elapsed = time.time() - tick
            loss_value = accelerator.reduce(loss.float(), reduction="mean").item()
            temperatures = {f"temperature/{k}": math.exp(v.item()) for k, v in unwrapped.logit_scales.items()}
            values = {
                "loss": loss_value,
                **{f"loss/{k}": float(v) for k, v in per_pair.items()},
                "lr": scheduler.get_last_lr()[0],
                **temperatures,
                "samples_per_s": window_steps * samples_per_step / max(elapsed, 1e-9),
                "skipped": data.skipped_total(),
            }
            log.write(done, values)
            # The bar shows the scale of the pairs this batch trained (image-audio may never train).
            trained = [temperatures[f"temperature/{pair}"] for pair in per_pair]
            shown = sum(trained) / len(trained)
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{values['lr']:.2e}", scale=f"{shown:.1f}",
                                 sps=f"{values['samples_per_s']:.0f}")
            tick, window_steps = time.time(), 0
        if config.eval_every and done % config.eval_every == 0 and done != optim.steps:
            log.write(done, evaluate(accelerator, unwrapped, data))
            model.train()
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or done == optim.steps:
            last_checkpoint = save_training_checkpoint(
                accelerator, model, optimizer, scheduler, data.tokenizer, config, run_dir, done
            )
    progress.close()
    results = evaluate(accelerator, unwrapped, data)
    log.write(optim.steps, results)
    return {"results": results, "checkpoint": str(last_checkpoint) if last_checkpoint else None, "run_dir": str(run_dir)}


def evaluate(accelerator, model: MultimodalModel, data) -> dict:
    """The configured evaluation sets, on the main process (evaluation sets are small)."""
    results: dict = {}
    if accelerator.is_main_process and data.eval_sets:
        model.eval()
        results = evaluation.run_evaluations(model, data.eval_sets, data.tokenizer, device=accelerator.device)
    accelerator.wait_for_everyone()
    return results


USAGE = """usage: train.py [--preset NAME] [--config FILE] [--dotted.key VALUE ...]

Trains on the built-in demo data unless data.train is set. Settings apply in
order: the preset (tiny, small, base), then the JSON/YAML file, then each
--dotted.key override (also written --dotted.key=VALUE; lists as JSON)."""


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE)
        print("\nsettings and their defaults (tiny preset):")
        print("\n".join(describe_keys(parse_config([]))))
        raise SystemExit(0)
    try:
        config = parse_config(argv)
    except (ValueError, TypeError, OSError) as error:  # a wrong key, value or file: say which, without a traceback
        print(f"train.py: {error}\n(train.py --help lists every setting)", file=sys.stderr)
        raise SystemExit(2) from None
    # The training step allocates and frees the same activations every step; keeping
    # freed memory in the process spares ~35,000 page faults per step of the small
    # preset (8-10% of its CPU step time measured on 2 cores).
    retain_freed_memory()
    result = train(config)
    if result.get("results") is not None and int(os.environ.get("RANK", "0")) == 0:
        print(report.format_results(result["results"]))
        print(f"checkpoint: {result['checkpoint']}")
        print(f"wall time: {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
