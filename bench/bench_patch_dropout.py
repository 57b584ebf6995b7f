"""Patch dropout: image-tower train step at drop rates 0, 0.5 and 0.75, side by side.

What one step is: forward of the image tower and its projection, the InfoNCE loss
against fixed unit text features (no text tower, so the figure is the image tower's own
speed-up), backward, and a fused AdamW step over the tower, projection and temperature;
fp32, in training mode (patch dropout only acts there). The rates share one model and
optimiser and take turns, one step each per round with the order reversed every other
round (``bench.common.alternate``); each figure is the median over rounds, each
speed-up the median of per-round ratios against rate 0.

Towers: the ``small`` preset's (96 px, 16 px patches, width 256, 6 blocks; batch 64)
and ViT-B/32 (the ``base`` preset's: 224 px, 32 px patches, width 768, 12 blocks;
batch 32); ``--quick`` runs the ``tiny`` preset's tower once (a smoke run).

Run: ``python -m bench.bench_patch_dropout [--quick] [--rounds N] [--configs small vit_b_32]``.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Comparison, alternate, machine_summary, noise_note
from multimodal.encoders import VisionConfig, VisionEncoder
from multimodal.losses import contrastive_loss
from multimodal.presets import preset

RATES = (0.0, 0.5, 0.75)
# (preset whose image tower is measured, batch size, embedding dimension)
CONFIGS = {"tiny": ("tiny", 8, 128), "small": ("small", 64, 256), "vit_b_32": ("base", 32, 512)}
TARGETS = {("vit_b_32", 0.5): 1.7}  # the speed-up the project aims for


class ImageTowerStep:
    """One image tower with a projection and temperature, trained against fixed text features at a settable rate."""

    def __init__(self, config: VisionConfig, batch_size: int, embed_dim: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.tower = VisionEncoder(config).train()
        self.projection = nn.Linear(self.tower.width, embed_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(2.659))  # ln(1 / 0.07), as the model starts
        generator = torch.Generator().manual_seed(seed)
        size = config.image_size
        self.images = torch.randn(batch_size, config.in_channels, size, size, generator=generator)
        self.text = F.normalize(torch.randn(batch_size, embed_dim, generator=generator), dim=-1)
        parameters = [*self.tower.parameters(), *self.projection.parameters(), self.log_scale]
        self.optimizer = torch.optim.AdamW(parameters, lr=5e-4, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6, fused=True)

    def tokens_per_sample(self, rate: float) -> int:
        """Tokens the block stack sees per image at ``rate``."""
        self.tower.patch_dropout.rate = rate
        with torch.no_grad():
            x, _ = self.tower.patch_dropout(self.tower.embed(self.images[:1]))
        return x.shape[1]

    def runner(self, rate: float) -> Callable[[], None]:
        """A call that runs one train step at patch dropout ``rate``."""
        def step() -> None:
            self.tower.patch_dropout.rate = rate
            image = F.normalize(self.projection(self.tower(self.images)), dim=-1)
            loss, _ = contrastive_loss(
                {"image": image, "text": self.text}, log_scales={"text_image": self.log_scale}, pairs=[("text", "image")]
            )
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

        return step


def compare(name: str, rounds: int) -> Comparison:
    """Alternating timed steps at every rate for one tower; prints a table."""
    preset_name, batch_size, embed_dim = CONFIGS[name]
    config = dataclasses.replace(preset(preset_name, modalities=("image",)).image, patch_dropout=0.0)
    bench = ImageTowerStep(config, batch_size, embed_dim)
    labels = {rate: f"patch_dropout {rate:g}" for rate in RATES}
    tokens = {rate: bench.tokens_per_sample(rate) for rate in RATES}
    comparison = alternate({labels[rate]: bench.runner(rate) for rate in RATES}, rounds=rounds, warmup=1)
    t = config.transformer
    print(f"\n{name}: {config.image_size} px, {config.patch_size} px patches, width {t.width}, {t.depth} blocks, "
          f"batch {batch_size}, fp32")
    for rate in RATES:
        print(f"  {comparison.describe(labels[rate], batch_size, 'samples/s')}  {tokens[rate]:4d} tokens  "
              f"x{comparison.ratio(labels[0.0], labels[rate]):.2f} vs 0")
    print(f"  {noise_note(comparison)}")
    return comparison


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny tower, one round (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timed rounds (default 5, quick 1)")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    args = parser.parse_args(argv)
    names = args.configs or (["tiny"] if args.quick else ["small", "vit_b_32"])
    rounds = args.rounds or (1 if args.quick else 5)
    print(f"patch dropout: {machine_summary()}")
    parts = []
    for name in names:
        comparison = compare(name, rounds)
        for rate in RATES[1:]:
            ratio = comparison.ratio(f"patch_dropout {RATES[0]:g}", f"patch_dropout {rate:g}")
            target = f" (target {TARGETS[name, rate]}x)" if (name, rate) in TARGETS else ""
            parts.append(f"{name} {rate:g} x{ratio:.2f}{target}")
    summary = "patch_dropout: image-tower fp32 train step, median per-round speed-up over 0: " + "; ".join(parts)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
