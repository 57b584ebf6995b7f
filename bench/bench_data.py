"""Data pipeline throughput: our image loader against bare webdataset + decode_jpeg; the audio filterbank.

Images: JPEG shards (smooth random fields with noise, quality 90) are written to a
temporary directory, once at 224 px (the size the targets name: the evaluation
transform then resizes nothing) and once at 256 px (a resize of the shortest side
to 224, bicubic and antialiased, in every sample). "bare" is
``webdataset.WebDataset(urls).map(decode_jpeg).batched(B)`` in a DataLoader:
reading and decoding only, uint8 out, never touched by the consumer. "ours" is
:func:`multimodal.data.pipeline.loader.make_loader` in evaluation mode: decode, crop, collate, the
caption read too, and the batch normalised to float in the main process. "ours
uint8" is the same with ``normalize_images=False``: what the CPU does when
training on a GPU, where the loader hands uint8 images to the device and they are
normalised there. "ours train" adds RandomResizedCrop (a resize in every sample).
All run with 1 and 2 DataLoader workers, alternately, whole passes over the shards
(worker start-up included), and print samples/s, CPU time per sample (all
processes) and ours / bare.

Audio: Kaldi log-mel filterbanks (128 bins, 25 ms / 10 ms) of 10 s clips at 16 kHz:
``torchaudio.compliance.kaldi.fbank`` per clip against :func:`multimodal.data.preprocess.audio_features.fbank` (plus
normalisation), one thread, freed memory kept in the process for both
(:func:`multimodal.data.pipeline.allocator.retain_freed_memory`); then our whole audio loader (WAV decode, fbank, collation)
with 2 workers, in clips/s.

Run: ``python -m bench.bench_data [--quick] [--rounds N]``. Prints figures, asserts nothing.
"""
from __future__ import annotations

import io
import math
import resource
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
import webdataset
from torch.utils.data import DataLoader
from torchvision.io import decode_jpeg, encode_jpeg

from bench.common import alternate, machine_summary, noise_note, parse_args
from multimodal.data.pipeline.allocator import retain_freed_memory
from multimodal.data.preprocess.audio_features import fbank, kaldi_fbank, normalize_fbank
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec

IMAGE_TARGET = 0.9  # ours / bare
AUDIO_TARGET = 450.0  # clips/s on 2 cores
BATCH_SIZE = 64


def write_image_shards(directory: Path, num_images: int, num_shards: int, seed: int = 0, size: int = 256) -> list[str]:
    """JPEG shards of size x size images: upsampled 16 x 16 random colours plus pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    per_shard = math.ceil(num_images / num_shards)
    urls = []
    for shard in range(num_shards):
        url = str(directory / f"images-{shard:03d}.tar")
        with webdataset.TarWriter(url) as writer:
            for index in range(shard * per_shard, min(num_images, (shard + 1) * per_shard)):
                coarse = torch.rand(1, 3, 16, 16, generator=generator)
                smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")[0]  # (3, size, size)
                noisy = smooth * 255 + torch.randn(3, size, size, generator=generator) * 8
                image = noisy.clamp(0, 255).to(torch.uint8)
                jpeg = encode_jpeg(image, quality=90).numpy().tobytes()
                writer.write({"__key__": f"{index:06d}", "jpg": jpeg, "txt": f"image number {index}"})
        urls.append(url)
    return urls


def write_audio_shards(directory: Path, num_clips: int, seconds: float, sample_rate: int, seed: int = 0) -> list[str]:
    """WAV shards (16-bit) of tones in noise, two shards."""
    rng = np.random.default_rng(seed)
    urls = []
    per_shard = math.ceil(num_clips / 2)
    time_axis = np.arange(int(seconds * sample_rate)) / sample_rate
    for shard in range(2):
        url = str(directory / f"audio-{shard:03d}.tar")
        with webdataset.TarWriter(url) as writer:
            for index in range(shard * per_shard, min(num_clips, (shard + 1) * per_shard)):
                tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 4000) * time_axis)
                clip = (tone + 0.05 * rng.standard_normal(time_axis.shape)).astype(np.float32)
                buffer = io.BytesIO()
                soundfile.write(buffer, clip, sample_rate, format="WAV", subtype="PCM_16")
                writer.write({"__key__": f"{index:06d}", "wav": buffer.getvalue(), "txt": f"tone {index}"})
        urls.append(url)
    return urls


def _decode_sample(sample: dict) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8))


def bare_pass(urls: list[str], num_workers: int) -> int:
    """One pass of bare webdataset + decode_jpeg, batched; returns the samples seen."""
    dataset = (
        webdataset.WebDataset(urls, shardshuffle=False, nodesplitter=webdataset.split_by_node, empty_check=False)
        .map(_decode_sample)
        .batched(BATCH_SIZE, collation_fn=torch.stack)
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return sum(batch.shape[0] for batch in loader)


def ours_pass(urls: list[str], num_workers: int, config: ImagePreprocessConfig, *, train: bool = False,
              normalize: bool = True) -> int:
    """One pass of our image loader (evaluation crops unless ``train``); returns the samples seen."""
    loader = make_loader(
        [SourceSpec(urls, ["image", "text"], name="images")],
        batch_size=BATCH_SIZE,
        train=train,
        resampled=False,
        shuffle_buffer=0,
        drop_last=False,
        preprocess={"image": config},
        num_workers=num_workers,
        normalize_images=normalize,
    )
    return sum(batch["image"].shape[0] for batch in loader)


def audio_pass(urls: list[str], num_workers: int, config: AudioPreprocessConfig) -> int:
    loader = make_loader(
        [SourceSpec(urls, ["audio", "text"], name="audio")],
        batch_size=16,
        train=True,
        resampled=False,
        shuffle_buffer=0,
        preprocess={"audio": config},
        num_workers=num_workers,
    )
    return sum(len(batch["__key__"]) for batch in loader)


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class CpuTimed:
    """Wraps runners to record the CPU seconds of each call, all processes included.

    On a shared machine wall-clock time also measures the neighbours; CPU time per
    sample is what the pipeline itself costs, whoever else is running.
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def wrap(self, name: str, runner: Callable[[], object]) -> Callable[[], object]:
        self.times[name] = []

        def run() -> object:
            before = cpu_seconds()
            result = runner()
            self.times[name].append(cpu_seconds() - before)
            return result

        return run

    def median(self, name: str) -> float:
        return statistics.median(self.times[name][1:] or self.times[name])  # the first call is the warm-up


def compare_images(urls: list[str], num_images: int, workers: int, rounds: int, quick: bool) -> str:
    """Alternating passes of bare, ours, ours uint8 and ours train; prints a table, returns a summary."""
    config = ImagePreprocessConfig(image_size=224)
    runners = {
        "bare": lambda: bare_pass(urls, workers),
        "ours": lambda: ours_pass(urls, workers, config),
        "ours uint8": lambda: ours_pass(urls, workers, config, normalize=False),
        "ours train": lambda: ours_pass(urls, workers, config, train=True),
    }
    cpu = CpuTimed()
    comparison = alternate({name: cpu.wrap(name, runner) for name, runner in runners.items()}, rounds=rounds)
    print(f"  {workers} worker(s):")
    ratios = {}
    for name in runners:
        per_sample = cpu.median(name) / num_images * 1e6
        line = f"    {comparison.describe(name, num_images, 'samples/s')}  CPU {per_sample:5.0f} us/sample"
        if name != "bare":
            ratios[name] = (1.0 / comparison.ratio(name, "bare"), cpu.median("bare") / cpu.median(name))
            line += f"  {ratios[name][0]:.2f}x bare (CPU {ratios[name][1]:.2f}x)"
        print(line)
    print(f"    {noise_note(comparison)}{'' if quick else f'; target: ours >= {IMAGE_TARGET}x bare'}")
    return ", ".join(f"{name} {wall:.2f}x (CPU {by_cpu:.2f}x)" for name, (wall, by_cpu) in ratios.items())


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    num_images = 128 if quick else 2000
    num_clips = 16 if quick else 400
    print(f"data: {machine_summary()}")
    audio_config = AudioPreprocessConfig()
    lines = []
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        for size in (224, 256):
            urls = write_image_shards(directory / str(size), num_images, num_shards=4, size=size)
            kib = sum(Path(url).stat().st_size for url in urls) / num_images / 1024
            print(f"images: {num_images} JPEG {size}x{size} ({kib:.0f} KiB each) in {len(urls)} shards -> 224 px, "
                  f"batch {BATCH_SIZE}")
            for workers in (1, 2):
                lines.append(f"{size} px {workers}w: {compare_images(urls, num_images, workers, rounds, quick)}")

        # Audio: the filterbank alone, one thread. Both run with freed memory kept in the
        # process, as our loader's workers do; without it each call faults its buffers in
        # anew and the figures swing with the machine's page-fault cost (spread 45-70%).
        retain_freed_memory()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        clips = [torch.randn(160_000, generator=generator) * 0.1 for _ in range(min(num_clips, 50))]
        comparison = alternate(
            {
                "kaldi.fbank 1 thread": lambda: [kaldi_fbank(clip, audio_config) for clip in clips],
                "ours fbank 1 thread": lambda: [normalize_fbank(fbank(clip, audio_config), audio_config) for clip in clips],
            },
            rounds=rounds,
        )
        torch.set_num_threads(threads)
        print(f"audio: {len(clips)} clips of 10 s at 16 kHz, 128 mel bins")
        for name in comparison.times:
            print(f"  {comparison.describe(name, len(clips), 'clips/s')}")
        speedup = comparison.ratio("kaldi.fbank 1 thread", "ours fbank 1 thread")
        print(f"  ours / kaldi.fbank: {speedup:.2f}x faster; {noise_note(comparison)}")

        audio_urls = write_audio_shards(directory, num_clips, 10.0, 16_000)
        name = "audio loader 2 workers"
        cpu = CpuTimed()
        comparison = alternate({name: cpu.wrap(name, lambda: audio_pass(audio_urls, 2, audio_config))}, rounds=rounds)
        loader_rate = num_clips / comparison.median(name)
        per_clip = cpu.median(name) / num_clips
        print(f"  {comparison.describe(name, num_clips, 'clips/s')}  CPU {per_clip * 1e3:.2f} ms/clip")
        print(f"  audio loader ({num_clips} WAV clips: decode + fbank + collation), 2 workers: {loader_rate:.0f} clips/s "
              f"by wall clock, {2 / per_clip:.0f} clips/s for 2 cores by CPU time"
              f"{'' if quick else f' (target >= {AUDIO_TARGET:.0f})'}")
        lines.append(f"fbank {speedup:.2f}x kaldi, audio loader {loader_rate:.0f} clips/s ({2 / per_clip:.0f} by CPU)")
    summary = "data: " + "; ".join(lines)
    print(summary)
    return summary


if __name__ == "__main__":
    main()
