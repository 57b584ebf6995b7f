"""Train step (forward of both towers, loss, backward, optimiser step): the trainer's own step against open_clip's.

Both sides build the same architecture from random weights: a text tower and a ViT
image tower with CLIP's layout (ln_pre on images, no patch-embedding bias, GELU, causal
text with end-of-text pooling, projections without bias), compared in fp32 and in bf16.

* open_clip's default step: ``open_clip.model.CLIP`` with ``ClipLoss`` and the default
  (for-loop) ``AdamW``, no gradient clipping; in bf16, ``torch.autocast("cpu",
  dtype=torch.bfloat16)`` around forward and loss.
* ours: exactly what ``train.py`` runs for one step, ``multimodal.training.step.train_step``:
  the trainer's optimiser (``build_optimizer``: fused AdamW, no decay on norms, biases,
  positions and temperatures), its schedule, gradient clipping at 1.0, temperature
  clamping, and its precision through Accelerate (``--mixed_precision no`` or ``bf16``,
  which is autocast). The process keeps freed memory as ``train.py`` does (both sides
  run in it).
* in bf16 also a candidate recipe the trainer does not use: bf16 weights with fp32
  master weights (``Bf16MasterWeights``), printed for comparison only.
* with ``--compile``, also the trainer's step with ``--compile true`` (``torch.compile``
  per block, ``multimodal.training.model_setup.compile_blocks``); its first step, which compiles, is
  timed apart and printed as the compile time.

Each precision runs in a process of its own (Accelerate fixes the precision once per
process). Throughput is samples/s; model-FLOPs utilisation is the step's matmul FLOPs
(counted by torch's FLOP counter on our model) per second over the square-matmul peak
measured in the same process for that dtype.

Run: ``python -m bench.bench_train_step [--quick] [--rounds N] [--configs small vit_b_32] [--precisions fp32 bf16]
[--compile]``.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.common import Comparison, alternate, bf16_supported, count_flops, machine_summary, matmul_peaks, noise_note
from multimodal.data.pipeline.allocator import retain_freed_memory
from multimodal.interop.open_clip import open_clip_model_config
from multimodal.model import MultimodalModel

LEARNING_RATE = 5e-4
WEIGHT_DECAY = 0.2
BETAS = (0.9, 0.98)
EPS = 1e-6


@dataclass(frozen=True)
class StepConfig:
    """One architecture, built identically by both implementations."""

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    context_length: int
    text_width: int
    text_depth: int
    text_heads: int
    batch_size: int
    vocab_size: int = 49408


CONFIGS = {
    "tiny": StepConfig("tiny", 64, 32, 16, 64, 2, 2, 16, 64, 2, 2, batch_size=8, vocab_size=1000),
    "small": StepConfig("small", 256, 96, 16, 256, 6, 4, 32, 256, 6, 4, batch_size=64),
    "vit_b_32": StepConfig("vit_b_32", 512, 224, 32, 768, 12, 12, 77, 512, 12, 8, batch_size=32),
}

# bf16 targets from the project's performance goals: our step over open_clip's default bf16 step.
TARGETS = {"small": 2.0, "vit_b_32": 1.8}


def our_model(c: StepConfig) -> MultimodalModel:
    """Text + image ``MultimodalModel`` with open_clip's architecture, as the shipped converter maps its ``CLIP``."""
    with torch.device("meta"):  # shapes only, no memory: the converter reads the architecture from them
        shapes = open_clip_model(c).state_dict()
    return MultimodalModel(open_clip_model_config(shapes, activation="gelu", model_config=open_clip_config(c)))


def open_clip_config(c: StepConfig) -> dict:
    """The architecture as an open_clip model config (the layout of its ``ViT-B-32.json``)."""
    vision = dict(
        image_size=c.image_size, patch_size=c.patch_size, width=c.vision_width, layers=c.vision_depth,
        head_width=c.vision_width // c.vision_heads,
    )
    text = dict(
        context_length=c.context_length, vocab_size=c.vocab_size, width=c.text_width, heads=c.text_heads,
        layers=c.text_depth,
    )
    return {"embed_dim": c.embed_dim, "vision_cfg": vision, "text_cfg": text}


def open_clip_model(c: StepConfig) -> nn.Module:
    """open_clip's ``CLIP`` with the same architecture, random weights."""
    from open_clip.model import CLIP

    config = open_clip_config(c)
    return CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"])


def make_batch(c: StepConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random images and captions of random length, end-of-text id = vocab_size - 1 (open_clip pools the argmax id)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(c.batch_size, 3, c.image_size, c.image_size, generator=generator)
    text = torch.randint(1, c.vocab_size - 1, (c.batch_size, c.context_length), generator=generator)
    lengths = torch.randint(2, c.context_length + 1, (c.batch_size,), generator=generator)
    positions = torch.arange(c.context_length)[None, :]
    text[positions == (lengths - 1)[:, None]] = c.vocab_size - 1
    text[positions >= lengths[:, None]] = 0
    return {"image": images, "text": text}


class Bf16MasterWeights:
    """The bf16 training recipe: bf16 weights and activations, fp32 master weights in a fused AdamW.

    Every parameter with at least one dimension is cast to bf16 in the model (float
    buffers too), so forward and backward run in bf16 with no per-op casts and bf16
    gradients. The optimiser steps an fp32 copy of those parameters (taken before the
    cast, so no precision is lost) using the gradients upcast to fp32; the bf16 weights
    are then refreshed from the masters, so updates far below bf16's resolution still
    accumulate. Scalar parameters (the logit scales and biases, which the loss
    exponentiates) stay fp32 in the model and are stepped directly. Inputs must be cast
    to bf16 by the caller (images, log-mel frames); token ids stay integers.
    """

    def __init__(self, model: nn.Module, **adamw: object) -> None:
        self.model = model
        self.low_precision: list[nn.Parameter] = []
        self.masters: list[torch.Tensor] = []
        full_precision: list[nn.Parameter] = []
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 0 or not parameter.is_floating_point():
                    full_precision.append(parameter)
                    continue
                master = parameter.detach().clone().float()
                master.grad = torch.zeros_like(master)
                self.masters.append(master)
                parameter.data = parameter.data.to(torch.bfloat16)
                self.low_precision.append(parameter)
            for module in model.modules():
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer.is_floating_point():
                        setattr(module, name, buffer.to(torch.bfloat16))
        self.optimizer = torch.optim.AdamW(self.masters + full_precision, fused=True, **adamw)

    @torch.no_grad()
    def step(self) -> None:
        """Upcasts the bf16 gradients into the masters, steps, refreshes the bf16 weights, clears gradients."""
        with_grad = [i for i, p in enumerate(self.low_precision) if p.grad is not None]
        torch._foreach_copy_([self.masters[i].grad for i in with_grad], [self.low_precision[i].grad for i in with_grad])
        for i, parameter in enumerate(self.low_precision):
            if parameter.grad is None:
                self.masters[i].grad.zero_()
        self.optimizer.step()
        torch._foreach_copy_(self.low_precision, self.masters)
        self.model.zero_grad(set_to_none=True)


def open_clip_step(model: nn.Module, batch: dict, precision: str) -> Callable[[], None]:
    """open_clip's default step: ClipLoss, default AdamW; autocast bf16 around forward and loss for bf16."""
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)
    images, text = batch["image"], batch["text"]

    def step() -> None:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            image_features, text_features, logit_scale = model(images, text)
            loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step


def candidate_master_weights_step(model: MultimodalModel, batch: dict) -> Callable[[], None]:
    """The candidate recipe (``Bf16MasterWeights``), stepped like open_clip's default (no clipping, no schedule)."""
    trainer = Bf16MasterWeights(model, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS)
    batch = {"image": batch["image"].bfloat16(), "text": batch["text"]}

    def step() -> None:
        loss, _ = model.loss(model(batch))
        loss.backward()
        trainer.step()
        model.clamp_logit_scales()

    return step


def trainer_step(accelerator, model: MultimodalModel, batch: dict) -> Callable[[], None]:
    """What ``train.py`` runs for one step of ``model`` on ``batch``, with the process's Accelerator."""
    from multimodal.training.optimizer import build_optimizer, cosine_with_warmup
    from multimodal.training.step import train_step
    from multimodal.training.optimizer import OptimConfig

    optim = OptimConfig(lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, betas=BETAS, eps=EPS, steps=10**9,
                        warmup_steps=0)
    optimizer = build_optimizer(model, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(optim))
    prepared, optimizer = accelerator.prepare(model, optimizer)

    def step() -> None:
        train_step(accelerator, prepared, optimizer, scheduler, [batch], optim.grad_clip)

    return step


COMPILED = "ours --compile true"


def compiled_trainer_step(accelerator, c: StepConfig, batch: dict) -> tuple[Callable[[], None], float]:
    """The trainer's step with its blocks compiled, and the seconds its first (compiling) step took."""
    from multimodal.training.model_setup import compile_blocks

    model = our_model(c)
    compile_blocks(model)
    step = trainer_step(accelerator, model, batch)
    started = time.perf_counter()
    step()
    return step, time.perf_counter() - started


def compare(c: StepConfig, precision: str, rounds: int, peaks: dict[torch.dtype, float],
            accelerator, compiled: bool = False) -> tuple[Comparison, str]:
    """Alternating timed steps of both implementations; prints a table, returns the comparison and ours."""
    torch.manual_seed(0)
    batch = make_batch(c)
    runners = {
        "open_clip": open_clip_step(open_clip_model(c), batch, precision),
        "ours (train.py)": trainer_step(accelerator, our_model(c), batch),
    }
    if precision == "bf16":
        runners["candidate bf16 masters"] = candidate_master_weights_step(our_model(c), batch)
    # The first call of each runner, under the FLOP counter, is its warm-up.
    flops = {name: count_flops(runner) for name, runner in runners.items()}
    compile_seconds = None
    if compiled:  # warmed up by its compiling step (the FLOP counter does not see into compiled code)
        runners[COMPILED], compile_seconds = compiled_trainer_step(accelerator, c, batch)
    comparison = alternate(runners, rounds=rounds, warmup=0)
    model_flops = flops["ours (train.py)"]
    peak = peaks[torch.float32 if precision == "fp32" else torch.bfloat16]
    print(f"\n{c.name} {precision}: batch {c.batch_size}, {model_flops / 1e9:.1f} GFLOP per step "
          f"(open_clip counted {flops['open_clip'] / 1e9:.1f}), matmul peak {peak:.0f} GFLOP/s")
    for name in runners:
        utilisation = model_flops / comparison.median(name) / 1e9 / peak
        print(f"  {comparison.describe(name, c.batch_size, 'samples/s')}  MFU {utilisation:5.1%}  "
              f"x{comparison.ratio('open_clip', name):.2f} vs open_clip")
    if compile_seconds is not None:
        print(f"  {COMPILED}: its first step, which compiles the blocks, took {compile_seconds:.1f} s")
    print(f"  {noise_note(comparison)}")
    return comparison, "ours (train.py)"


def run_precision(names: Sequence[str], precision: str, rounds: int, quick: bool, compiled: bool = False) -> list[str]:
    """Every configuration in ``precision``, in this process; returns the summary parts."""
    from accelerate import Accelerator

    retain_freed_memory()  # as train.py does for its process
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if precision == "bf16" else "no")
    peaks = matmul_peaks(sizes=(512,) if quick else (1024, 2048))
    print("matmul peak: " + ", ".join(f"{str(d).removeprefix('torch.')} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    parts = []
    for name in names:
        comparison, ours = compare(CONFIGS[name], precision, rounds, peaks, accelerator, compiled)
        ratio = comparison.ratio("open_clip", ours)
        target = f" (target {TARGETS[name]}x)" if precision == "bf16" and name in TARGETS and not quick else ""
        part = f"{name} {precision} x{ratio:.2f}{target}"
        if compiled:
            part += f", compiled x{comparison.ratio('open_clip', COMPILED):.2f}"
        parts.append(part)
    return parts


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny configuration, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds (default 5, quick 1)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="also the trainer's step with --compile true")
    args = parser.parse_args(argv)
    names = args.configs or (["tiny"] if args.quick else ["small", "vit_b_32"])
    rounds = args.rounds or (1 if args.quick else 5)
    precisions = [p for p in args.precisions if p == "fp32" or bf16_supported()]
    print(f"train step: {machine_summary()}")
    if len(precisions) == 1:
        parts = run_precision(names, precisions[0], rounds, args.quick, args.compile)
    else:  # one process per precision; each prints its table and, last, its summary parts
        parts = []
        for precision in precisions:
            command = [sys.executable, "-m", "bench.bench_train_step", "--precisions", precision, "--configs", *names,
                       "--rounds", str(rounds), *(["--quick"] if args.quick else []),
                       *(["--compile"] if args.compile else [])]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            lines = done.stdout.rstrip().splitlines()
            print("\n".join(lines[1:-1]))  # its machine line repeats ours
            parts.append(lines[-1].split("speed-up: ", 1)[1])
    summary = "train_step: train.py's step vs open_clip default, median per-round speed-up: " + "; ".join(parts)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
