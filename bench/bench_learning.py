"""Learning per step beside open_clip's own trainer: the same towers, recipe and shards; loss and zero-shot per seed.

Both trainers train the ``tiny`` preset's image and text towers in the form open_clip
builds them: a ViT patch stem without bias, a norm before the image blocks, the CLIP
tokenizer, 16 tokens. The parameter counts are checked to be equal before anything
trains. The recipe is the same too: batch 128, AdamW (lr 2e-3, betas 0.9 / 0.98,
eps 1e-6, weight decay 0.1), 50 warm-up steps then cosine to 0, gradients clipped at 1,
fp32, two loader workers, on the demo's image-text shards (built if missing). The seeds
run one after the other, each trainer a process of its own, their order reversed every
other seed.

Printed per seed and as medians over the seeds: the mean training loss over the last
third of the steps (lower at the same step is learning faster per step), zero-shot top-1
on the demo's 1,000 held-out MNIST digits (the demo's three image templates, the class
embeddings averaged over them, each side with its own code), and the median samples
per second each trainer logs. The two loaders draw different samples in a different
order, and open_clip's order is not repeatable from its seed: read the spread over the
seeds, never one pair.

Run: ``python -m bench.bench_learning [--quick] [--rounds SEEDS] [--steps N]``
(``--quick``: one seed of 30 steps, a smoke run). Needs the ``test`` extra
(``open_clip_torch``, which ships ``open_clip_train``).
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import busy_neighbours, machine_summary
from multimodal.data.demo.dataset import CLASS_NAMES, ZERO_SHOT_TEMPLATES, build_demo
from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
from multimodal.presets import tiny

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench-learning-tiny"
# The recipe both trainers run, each given it in its own flags.
BATCH_SIZE = 128
LR = 2e-3
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.98)
EPS = 1e-6
GRAD_CLIP = 1.0
WARMUP_STEPS = 50

# The tiny preset's image and text towers as an open_clip model config.
OPEN_CLIP_CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 32, "mlp_ratio": 2.0, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2, "mlp_ratio": 2.0},
}
# The same towers as train.py overrides of the tiny preset (the vocabulary comes from the tokenizer).
OUR_MODEL_OVERRIDES = (
    "--model.text.context_length", "16",
    "--model.image.stem", "patch", "--model.image.patch_bias", "false", "--model.image.pre_norm", "true",
    "--model.audio", "null", "--model.audio_preprocess", "null",
)
# The tiny preset's image statistics, which our side uses by default, given to open_clip.
IMAGE_MEAN = tiny().image_preprocess.mean
IMAGE_STD = tiny().image_preprocess.std

_OPEN_CLIP_MAIN = """
import sys, open_clip
from bench.bench_learning import patch_open_clip_shard_reader
patch_open_clip_shard_reader()
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


@dataclass
class Run:
    """One trainer's run of one seed."""

    losses: list[float]
    samples_per_second: float
    zero_shot: float


def patch_open_clip_shard_reader() -> None:
    """Lets open_clip_train 3.3 read webdataset 1.x shards.

    Its grouping of tar members expects every item of webdataset's expander to name a
    file; webdataset 1.x ends each shard with an empty item, so the expander is told not to.
    """
    import open_clip_train.data
    from webdataset.tariterators import tar_file_expander

    open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)


def write_open_clip_config(directory: Path) -> Path:
    """Writes the model config where ``open_clip.add_model_config`` finds it; returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{MODEL_NAME}.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
    return directory


def warmup_steps(steps: int) -> int:
    """The recipe's warm-up, shortened to a third of a short run."""
    return min(WARMUP_STEPS, steps // 3)


def loss_window(steps: int) -> int:
    """How many final steps the loss figure averages: the last third, at least one."""
    return max(1, math.ceil(steps / 3))


def our_config_args(tokenizer: Path) -> list[str]:
    return [*OUR_MODEL_OVERRIDES, "--data.tokenizer", str(tokenizer)]


def check_same_architecture(config_dir: Path, tokenizer: Path) -> int:
    """Both sides' parameter count; raises if they differ (then the comparison would not be like for like)."""
    import open_clip

    from multimodal.training.model_setup import build_model
    from multimodal.training.train_config import parse_config

    open_clip.add_model_config(config_dir)
    theirs = open_clip.create_model(MODEL_NAME)
    config = parse_config([*our_config_args(tokenizer), "--model.text.vocab_size",
                           str(OPEN_CLIP_CONFIG["text_cfg"]["vocab_size"])])
    ours = build_model(config)
    counts = [sum(p.numel() for p in model.parameters()) for model in (theirs, ours)]
    if counts[0] != counts[1]:
        raise RuntimeError(f"open_clip's model has {counts[0]:,} parameters and ours {counts[1]:,}: not the same towers")
    return counts[0]


def open_clip_command(workdir: Path, config_dir: Path, shards: str, seed: int, steps: int) -> list[str]:
    return [
        sys.executable, "-c", _OPEN_CLIP_MAIN, str(config_dir),
        "--model", MODEL_NAME, "--train-data", shards, "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(steps * BATCH_SIZE), "--epochs", "1", "--batch-size", str(BATCH_SIZE),
        "--lr", str(LR), "--wd", str(WEIGHT_DECAY), "--beta1", str(BETAS[0]), "--beta2", str(BETAS[1]),
        "--eps", str(EPS), "--warmup", str(warmup_steps(steps)), "--grad-clip-norm", str(GRAD_CLIP),
        "--precision", "fp32",
        "--workers", "2", "--seed", str(seed), "--log-every-n-steps", "1",
        "--image-mean", *map(str, IMAGE_MEAN), "--image-std", *map(str, IMAGE_STD),
        "--logs", str(workdir / "open_clip"), "--name", f"seed{seed}", "--report-to", "", "--save-frequency", "1",
        "--device", "cpu",
    ]


def our_command(workdir: Path, tokenizer: Path, shards: str, seed: int, steps: int) -> list[str]:
    source = {"shards": shards, "modalities": ["image", "text"]}
    return [
        sys.executable, str(ROOT / "train.py"), *our_config_args(tokenizer),
        "--data.train", json.dumps([source]), "--data.batch_size", str(BATCH_SIZE), "--data.num_workers", "2",
        "--optim.lr", str(LR), "--optim.weight_decay", str(WEIGHT_DECAY), "--optim.betas", json.dumps(BETAS),
        "--optim.eps", str(EPS), "--optim.warmup_steps", str(warmup_steps(steps)), "--optim.grad_clip", str(GRAD_CLIP),
        "--optim.steps", str(steps), "--mixed_precision", "no", "--seed", str(seed), "--log_every", "1",
        "--checkpoint_every", "0", "--plot", "false",
        "--output_dir", str(workdir / "ours"), "--run_name", f"seed{seed}",
    ]


_OPEN_CLIP_STEP = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s,.*?Contrastive_loss: ([\d.]+)")


def open_clip_log(text: str) -> tuple[list[float], list[float]]:
    """(per-step losses, per-step samples/s) from open_clip_train's ``out.log`` logged every step."""
    steps = _OPEN_CLIP_STEP.findall(text)
    return [float(loss) for _, loss in steps], [float(speed) for speed, _ in steps]


def our_log(metrics_jsonl: str) -> tuple[list[float], list[float]]:
    """(per-step losses, per-step samples/s) from train.py's ``metrics.jsonl`` logged every step."""
    rows = [json.loads(line) for line in metrics_jsonl.splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row]
    return [row["loss"] for row in rows], [row["samples_per_s"] for row in rows]


def tail_mean(losses: Sequence[float]) -> float:
    """Mean of the last third of the steps (at least one)."""
    return statistics.fmean(losses[-loss_window(len(losses)):])


def held_out_digits(spec: str) -> tuple[list[Image.Image], torch.Tensor]:
    """The demo's held-out MNIST digits as RGB images and their labels."""
    images, labels = [], []
    for url in expand_shards(spec):
        problems = []
        for sample in read_shard(url, problems):
            images.append(Image.open(io.BytesIO(sample["png"])).convert("RGB"))
            labels.append(json.loads(sample["json"])["label"])
        if problems:
            raise RuntimeError(f"cannot read {url}: {problems[0]}")
    return images, torch.tensor(labels)


def open_clip_zero_shot(checkpoint: Path, config_dir: Path, images, labels: torch.Tensor) -> float:
    import open_clip

    open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME, pretrained=str(checkpoint), image_mean=tuple(IMAGE_MEAN), image_std=tuple(IMAGE_STD))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    model.eval()
    templates = ZERO_SHOT_TEMPLATES["image"]
    with torch.no_grad():
        classes = torch.stack([
            F.normalize(model.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1).mean(0)
            for name in CLASS_NAMES
        ])
        features = model.encode_image(torch.stack([preprocess(image) for image in images]))
        scores = F.normalize(features, dim=-1) @ F.normalize(classes, dim=-1).T
    return 100 * (scores.argmax(1) == labels).float().mean().item()


def our_zero_shot(checkpoint: Path, images, labels: torch.Tensor) -> float:
    from multimodal.apps.api import ZeroShotClassifier

    classifier = ZeroShotClassifier(checkpoint, CLASS_NAMES, ZERO_SHOT_TEMPLATES["image"], modality="image",
                                    precision="fp32")
    probabilities = torch.as_tensor(classifier.predict_proba(images))
    return 100 * (probabilities.argmax(1) == labels).float().mean().item()


def run(command: list[str], what: str) -> None:
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{what} failed (exit code {finished.returncode}):\n{finished.stderr[-3000:]}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed of 30 steps (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="seeds to run, 0 .. N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="training steps a run (default 150)")
    parser.add_argument("--neighbours", type=int, default=0,
                        help="busy single-core processes running beside both trainers, as on a shared machine")
    args = parser.parse_args(argv)
    seeds = range(args.rounds or (1 if args.quick else 3))
    steps = args.steps or (30 if args.quick else 150)

    from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer

    print(machine_summary() + (f"; {args.neighbours} busy neighbour process(es)" if args.neighbours else ""))
    demo = build_demo()
    shards = demo.shards("image-train")
    images, labels = held_out_digits(demo.shards("image-val"))
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as name:
        workdir = Path(name)
        config_dir = write_open_clip_config(workdir / "open_clip_config")
        tokenizer = ClipTokenizer.from_bpe_file().save(workdir / "clip-tokenizer.json")
        parameters = check_same_architecture(config_dir, tokenizer)
        print(f"both: {parameters:,} parameters, {steps} steps of batch {BATCH_SIZE}, fp32; "
              f"loss = mean over the last {loss_window(steps)} steps")
        print(f"{'seed':>4}  {'open_clip loss':>14}  {'ours':>6}  {'open_clip zero-shot':>19}  {'ours':>6}  "
              f"{'open_clip samples/s':>19}  {'ours':>6}")
        results: dict[str, list[Run]] = {"open_clip": [], "ours": []}
        with busy_neighbours(args.neighbours):  # none unless --neighbours
            for seed in seeds:
                order = ["open_clip", "ours"] if seed % 2 == 0 else ["ours", "open_clip"]
                for side in order:
                    if side == "open_clip":
                        command = open_clip_command(workdir, config_dir, shards, seed, steps)
                        run(command, f"open_clip_train, seed {seed}")
                        log = workdir / "open_clip" / f"seed{seed}"
                        losses, speeds = open_clip_log((log / "out.log").read_text())
                        checkpoint = log / "checkpoints" / "epoch_1.pt"
                        accuracy = open_clip_zero_shot(checkpoint, config_dir, images, labels)
                    else:
                        run(our_command(workdir, tokenizer, shards, seed, steps), f"train.py, seed {seed}")
                        run_dir = workdir / "ours" / f"seed{seed}"
                        losses, speeds = our_log((run_dir / "metrics.jsonl").read_text())
                        checkpoint = run_dir / "checkpoints" / f"step-{steps:07d}"
                        accuracy = our_zero_shot(checkpoint, images, labels)
                    if len(losses) != steps:
                        raise RuntimeError(f"{side}, seed {seed}: {len(losses)} logged steps, expected {steps}")
                    results[side].append(Run(losses, statistics.median(speeds[len(speeds) // 10:]), accuracy))
                theirs, ours = results["open_clip"][-1], results["ours"][-1]
                print(f"{seed:>4}  {tail_mean(theirs.losses):>14.3f}  {tail_mean(ours.losses):>6.3f}  "
                      f"{theirs.zero_shot:>18.1f}%  {ours.zero_shot:>5.1f}%  "
                      f"{theirs.samples_per_second:>19.0f}  {ours.samples_per_second:>6.0f}", flush=True)

    def median(side: str, value) -> float:
        return statistics.median(value(r) for r in results[side])

    loss_gap = statistics.median(tail_mean(o.losses) - tail_mean(t.losses)
                                 for o, t in zip(results["ours"], results["open_clip"]))
    count = len(results["ours"])
    print(f"learning: {count} seed{'s' if count != 1 else ''} of {steps} steps; loss over the last third "
          f"open_clip {median('open_clip', lambda r: tail_mean(r.losses)):.3f}, "
          f"ours {median('ours', lambda r: tail_mean(r.losses)):.3f} (median per-seed gap {loss_gap:+.3f}); "
          f"zero-shot MNIST open_clip {median('open_clip', lambda r: r.zero_shot):.1f}%, "
          f"ours {median('ours', lambda r: r.zero_shot):.1f}%; samples/s "
          f"{median('ours', lambda r: r.samples_per_second) / median('open_clip', lambda r: r.samples_per_second):.2f}x "
          f"open_clip's")


if __name__ == "__main__":
    main()
