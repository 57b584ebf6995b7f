"""The GPU check: what a session with an H100/H200 runs first, in a few minutes (``make bench-gpu``).

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. the train step of a ViT-B/16 CLIP (image 224 px in 16 px patches, width 768 x 12
   blocks; text 77 tokens, width 512 x 12 blocks) at batch 256 in bf16: open_clip's
   default step (autocast, ClipLoss, AdamW) against the trainer's own step
   (``multimodal.training.step.train_step`` under Accelerate's bf16, fused AdamW, clipping),
   eager and compiled per block (``--compile true``), at patch dropout 0 and 0.5; each
   with its model-FLOPs utilisation against the GPU's dense bf16 peak (989 TFLOP/s on
   H100/H200 SXM) and samples/s, alternating side by side;
3. image and text embedding throughput (bf16 weights against open_clip's autocast);
4. the loader handing uint8 batches to the GPU (224 px JPEGs, normalised on the GPU).

Every section prints as it finishes, so a run cut short still reports what it did.
``--quick`` runs every section on the CPU with a tiny architecture (a smoke run the
test suite makes, so the script never rots). Figures are measured here, never asserted.

Run: ``python -m bench.bench_gpu [--quick] [--rounds N] [--skip-tests]``.
"""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.bench_train_step import CONFIGS, StepConfig, make_batch, open_clip_model, open_clip_step, our_model
from bench.common import alternate, count_flops, machine_summary, noise_note

DENSE_BF16_PEAK = 989e12  # H100 / H200 SXM, FLOP/s, without sparsity
VIT_B_16 = StepConfig("vit_b_16", 512, 224, 16, 768, 12, 12, 77, 512, 12, 8, batch_size=256)
ROOT = Path(__file__).resolve().parents[1]


def synchronized(step: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``step`` timed to its end on the device (CUDA runs asynchronously)."""
    def run() -> None:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def run_gpu_tests() -> str:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=ROOT,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    print("\n".join(lines[-15:]))
    return lines[-1] if lines else f"pytest exited {done.returncode}"


def train_steps(config: StepConfig, device: torch.device, rounds: int, compile_blocks: bool) -> str:
    """open_clip's and the trainer's steps, eager (and compiled), patch dropout 0 and 0.5."""
    from accelerate import Accelerator

    from bench.bench_train_step import trainer_step
    from multimodal.training import model_setup

    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16")
    batch = {k: v.to(device) for k, v in make_batch(config).items()}
    runners: dict[str, Callable[[], None]] = {}
    flops: dict[str, float] = {}
    for rate in (0.0, 0.5):
        theirs = open_clip_model(dataclasses.replace(config)).to(device)
        theirs.visual.patch_dropout = _open_clip_patch_dropout(rate)
        runners[f"open_clip pd{rate}"] = open_clip_step(theirs, batch, "bf16")
        for compiled in (False, True) if compile_blocks else (False,):
            ours = our_model(config).to(device)
            ours.encoders["image"].patch_dropout.rate = rate
            if compiled:
                model_setup.compile_blocks(ours)
            runners[f"ours{' compiled' if compiled else ''} pd{rate}"] = trainer_step(accelerator, ours, batch)
    for name, runner in list(runners.items()):
        runners[name] = synchronized(runner, device)
        started = time.perf_counter()
        flops[name] = count_flops(runner)  # also the warm-up (and the compilation)
        print(f"  warm-up {name}: {time.perf_counter() - started:.1f} s", flush=True)
    comparison = alternate(runners, rounds=rounds, warmup=1)
    peak = DENSE_BF16_PEAK if device.type == "cuda" else float("nan")
    print(f"\ntrain step {config.name}, batch {config.batch_size}, bf16 on {device}:")
    for name in runners:
        reference = f"open_clip pd{name.rsplit('pd', 1)[1]}"
        print(f"  {comparison.describe(name, config.batch_size, 'samples/s')}  "
              f"MFU {flops[name] / comparison.median(name) / peak:6.1%}  x{comparison.ratio(reference, name):.2f} "
              f"vs {reference}")
    print(f"  {noise_note(comparison)}")
    best = min((n for n in runners if n.startswith("ours") and n.endswith("pd0.0")), key=comparison.median)
    return (f"{best}: MFU {flops[best] / comparison.median(best) / peak:.1%}, "
            f"x{comparison.ratio('open_clip pd0.0', best):.2f} open_clip's samples/s")


def _open_clip_patch_dropout(rate: float) -> torch.nn.Module:
    from open_clip.transformer import PatchDropout

    return PatchDropout(rate) if rate > 0 else torch.nn.Identity()


def embedding_throughput(config: StepConfig, device: torch.device, rounds: int) -> str:
    theirs = open_clip_model(config).to(device).eval()
    ours = our_model(config).to(device, torch.bfloat16).eval()
    batch = {k: v.to(device) for k, v in make_batch(config).items()}
    images16 = batch["image"].to(torch.bfloat16)

    def autocast(fn):
        def run():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                fn()
        return run

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    runners = {
        "open_clip images": autocast(lambda: theirs.encode_image(batch["image"], normalize=True)),
        "ours images": no_grad(lambda: ours.encode("image", images16)),
        "open_clip texts": autocast(lambda: theirs.encode_text(batch["text"], normalize=True)),
        "ours texts": no_grad(lambda: ours.encode("text", batch["text"])),
    }
    runners = {name: synchronized(runner, device) for name, runner in runners.items()}
    comparison = alternate(runners, rounds=rounds, warmup=2)
    print(f"\nembeddings {config.name}, batch {config.batch_size}, bf16 on {device}:")
    for name in runners:
        print(f"  {comparison.describe(name, config.batch_size, 'items/s')}")
    return (f"images x{comparison.ratio('open_clip images', 'ours images'):.2f}, "
            f"texts x{comparison.ratio('open_clip texts', 'ours texts'):.2f} open_clip's")


def loader_to_device(device: torch.device, num_images: int, batch_size: int, num_workers: int) -> str:
    """Our loader delivering normalised images on ``device`` from 224 px JPEG shards."""
    from torchvision.io import encode_jpeg

    from multimodal.data import SourceSpec, make_loader
    from multimodal.data.preprocess.preprocess_config import ImagePreprocessConfig
    from multimodal.data.writing.writer import SampleSource, write_shards

    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        samples = [
            SampleSource(key=f"{i:06d}", caption="a picture",
                         media={"jpg": encode_jpeg((torch.rand(3, 224, 224, generator=generator) * 255).to(torch.uint8),
                                                   quality=90).numpy().tobytes()})
            for i in range(num_images)
        ]
        result = write_shards(samples, Path(folder) / "shards", max_samples_per_shard=max(1, num_images // 8))
        source = SourceSpec(result.splits["all"].spec, modalities=["image"])
        loader = make_loader([source], batch_size=batch_size, train=False, num_workers=num_workers,
                             preprocess={"image": ImagePreprocessConfig(image_size=224)}, device=device)
        started, seen = time.perf_counter(), 0
        for batch in loader:
            seen += batch["image"].shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = seen / (time.perf_counter() - started)
    line = f"loader: {seen} images of 224 px to {device} as uint8, {num_workers} workers: {rate:,.0f} images/s"
    print(f"\n{line}")
    return line


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every section on the CPU, tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds (default 5, quick 1)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the gpu-marked tests")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    rounds = args.rounds or (1 if args.quick else 5)
    print(f"gpu check: {machine_summary()}; device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (the loss) as open_clip runs them
    parts = []
    if not args.skip_tests and not args.quick:
        parts.append(f"gpu tests: {run_gpu_tests()}")
    config = CONFIGS["tiny"] if args.quick else VIT_B_16
    parts.append(f"train step: {train_steps(config, device, rounds, compile_blocks=not args.quick)}")
    parts.append(f"embeddings: {embedding_throughput(config, device, rounds)}")
    parts.append(loader_to_device(device, 64 if args.quick else 4096, 16 if args.quick else 256,
                                  0 if args.quick else 12))
    summary = "gpu: " + "; ".join(parts)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
