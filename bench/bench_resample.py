"""Resampling 10 s clips to 16 kHz: ours (``multimodal.data.preprocess.audio_features.resample``) against ``torchaudio.functional.resample``.

One row per input rate, common (11,025 / 22,050 / 44,100 / 48,000 Hz) and odd
(11,127 / 22,254 Hz, whose ratio to 16 kHz does not reduce), both sides timed in
alternation in one run. ``torchaudio.functional.resample`` builds its sinc kernel on
every call, ``orig/gcd x new/gcd`` taps; ours caches it per rate pair and, for rates
whose ratio does not reduce, runs a close ratio with a small reduced input rate (see
``multimodal.data.preprocess.audio_features.resampling_ratio``), so every row should cost about the same.
Both run on one thread, as in a data loader worker.

Run: ``python -m bench.bench_resample [--quick] [--rounds N]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torchaudio

from bench.common import alternate, machine_summary, noise_note, parse_args
from multimodal.data.preprocess.audio_features import resample, resampling_ratio

TARGET_RATE = 16000
RATES = (11025, 11127, 22050, 22254, 44100, 48000)


def clip(sample_rate: int, seconds: float) -> torch.Tensor:
    """A mono clip (samples,): a tone plus a little noise, seeded."""
    generator = torch.Generator().manual_seed(sample_rate)
    time_axis = torch.arange(int(seconds * sample_rate)) / sample_rate
    return 0.5 * torch.sin(2 * torch.pi * 440.0 * time_axis) + 0.01 * torch.randn(time_axis.shape, generator=generator)


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    # Resampling runs in the data loader's workers, which torch gives one thread each;
    # timing it with more measures thread hand-offs of a millisecond-long call instead.
    torch.set_num_threads(1)
    seconds = 2.0 if args.quick else 10.0
    rounds = args.rounds or (1 if args.quick else 5)
    print(f"resample: {machine_summary()}")
    print(f"{seconds:g} s clips to {TARGET_RATE} Hz, {rounds} alternating round(s) per rate")
    rows = []
    for rate in RATES:
        wave = clip(rate, seconds)
        runners = {
            f"ours {rate}": lambda wave=wave, rate=rate: resample(wave, rate, TARGET_RATE),
            f"torchaudio {rate}": lambda wave=wave, rate=rate: torchaudio.functional.resample(wave, rate, TARGET_RATE),
        }
        comparison = alternate(runners, rounds=rounds, warmup=1)
        ours, theirs = comparison.median(f"ours {rate}"), comparison.median(f"torchaudio {rate}")
        reduced = resampling_ratio(rate, TARGET_RATE)
        print(f"  {rate:>6} Hz (runs at {reduced[0]}:{reduced[1]}): ours {1 / ours:8.1f} clips/s, "
              f"torchaudio {1 / theirs:8.1f} clips/s, x{comparison.ratio(f'torchaudio {rate}', f'ours {rate}'):.1f}  "
              f"({noise_note(comparison)})")
        rows.append((rate, 1 / ours, 1 / theirs))
    slowest = min(rows, key=lambda row: row[1])
    summary = (
        f"resample: {seconds:g} s clips to 16 kHz, clips/s ours/torchaudio: "
        + ", ".join(f"{rate} {ours:.0f}/{theirs:.1f}" for rate, ours, theirs in rows)
        + f"; ours slowest at {slowest[0]} Hz ({slowest[1]:.0f} clips/s)"
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
