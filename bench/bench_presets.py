"""Presets: parameter counts and one forward+backward of all three towers and the loss.

Batch 32 with text, images and audio clips at each preset's full length (tiny: 1 s,
small and base: 10.24 s, i.e. 1,214 audio tokens), fp32 and bf16 autocast; the median
of the timed rounds after one warm-up.

Run: ``python -m bench.bench_presets [--quick] [--rounds N]``.
"""
from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

import torch

from bench.common import machine_summary, parse_args, time_call
from multimodal.model import MultimodalModel
from multimodal.presets import preset

BATCH = 32


def random_batch(model: MultimodalModel, batch_size: int) -> dict:
    config = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, config.text.vocab_size, (batch_size, config.text.context_length), generator=generator)
    ids[:, -1] = config.text.eot_token_id
    size = config.image.image_size
    return {
        "text": ids,
        "image": torch.randn(batch_size, 3, size, size, generator=generator),
        "audio": torch.randn(batch_size, config.audio.max_frames, config.audio.num_mel_bins, generator=generator),
    }


def forward_backward(model: MultimodalModel, batch: dict, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss(model(batch))
    loss.backward()
    model.zero_grad(set_to_none=True)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    rounds = args.rounds or (2 if args.quick else 4)
    names = ("tiny",) if args.quick else ("tiny", "small")
    print(f"presets: {machine_summary()}")
    summary = []
    for name in names:
        torch.manual_seed(0)
        model = MultimodalModel(preset(name))
        counts = {m: sum(p.numel() for p in encoder.parameters()) for m, encoder in model.encoders.items()}
        print(f"{name}: {model.num_parameters():,} parameters (" + ", ".join(f"{m} {n:,}" for m, n in counts.items()) + ")")
        batch = random_batch(model, BATCH)
        for bf16 in (False, True):
            forward_backward(model, batch, bf16)  # warm-up
            times = [time_call(lambda: forward_backward(model, batch, bf16)) for _ in range(rounds)]
            label = "bf16" if bf16 else "fp32"
            median = statistics.median(times)
            print(f"  {label}: forward+backward of batch {BATCH} (text, image, audio) median {1000 * median:.0f} ms")
            summary.append(f"{name} {label} {1000 * median:.0f} ms")
    line = f"presets: forward+backward, batch {BATCH}, three towers: " + "; ".join(summary)
    print(line)
    return line


if __name__ == "__main__":
    main(sys.argv[1:])
