"""Augmentation cost: the demo's training loader with and without it, and each lever on its own.

Loader: the demo's image-text and audio-text training sources (the ``tiny`` preset's
preprocessing: 32 px crops; 1 s windows of 64 mel bins at 16 kHz), read by
:func:`multimodal.data.pipeline.loader.make_loader` in training mode with one DataLoader
worker, batches of 128, plain and with the demo's augmentation
(:func:`multimodal.training.demo_sources.demo_augment`) alternately. The clock starts at the first
batch (the worker's start and its first batch are left out), so samples/s is what
one worker keeps up. "worker s per step" is the CPU one worker spends on the batch of
an average training step (the demo draws ``data.demo_image_weight`` image batches per
audio batch): compare it with the trainer's step time times the number of workers
(``make train``: 2) to see whether the loader keeps the trainer fed; on a machine
whose cores the workers share with the trainer, it is also time the trainer loses.

Levers: each lever alone at p = 1 and its default ranges on 256 decoded demo samples
(32 px crops; 1 s clips at 16 kHz), one thread, alternating, in microseconds per
sample, beside the preprocessing the sample gets anyway (decode + crop; decode +
resample + filterbank). Image levers act on all the crops at once, as the loader
applies them to a batch; the demo's image levers are also timed one image at a time.
The audio feature levers (``equalizer``, ``spec_augment``) act on the filterbank's
features, the others on the waveform.

Builds the demo on first use (a few minutes), like ``make train``. Run:
``python -m bench.bench_augment [--quick] [--rounds N]``. Prints figures, asserts nothing.
"""
from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace

import torch

from bench.common import alternate, machine_summary, noise_note, parse_args
from multimodal.data.demo import dataset
from multimodal.data.preprocess.audio_features import load_waveform, samples_for_frames, train_audio_features
from multimodal.data.pipeline.source_spec import AugmentConfig
from multimodal.data.preprocess.augment_config import FEATURE_LEVERS, AudioAugmentConfig, ImageAugmentConfig
from multimodal.data.preprocess.augment_audio import augment_features, augment_waveform
from multimodal.data.preprocess.augment_image import augment_image, augment_images, draw_image_levers
from multimodal.data.preprocess.image_transforms import decode_image, train_crop
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.shard_reader import expand_shards, read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.presets import tiny
from multimodal.training.data_sources import DataConfig
from multimodal.training.demo_sources import demo_augment

BATCH_SIZE = 128


def loader_rate(spec: SourceSpec, batches: int) -> Callable[[], float]:
    """A runner: one worker's training stream of ``spec``; returns seconds per sample after the first batch."""
    model = tiny()

    def run() -> float:
        loader = make_loader([spec], batch_size=BATCH_SIZE, train=True, seed=random.randrange(1 << 30),
                             num_workers=1, preprocess={"image": model.image_preprocess, "audio": model.audio_preprocess},
                             shuffle_buffer=1000)
        stream = iter(loader)
        next(stream)
        start = time.perf_counter()
        for _ in itertools.islice(stream, batches):
            pass
        seconds = time.perf_counter() - start
        del stream
        return seconds / (batches * BATCH_SIZE)

    return run


def measure_loaders(paths, batches: int, rounds: int) -> dict[str, dict[str, float]]:
    """{modality: {"plain": samples/s, "augmented": samples/s}} for one worker."""
    results = {}
    for modality, shards in (("image", paths.image_train), ("audio", paths.audio_train)):
        runners = {
            f"{modality} {kind}": loader_rate(
                SourceSpec(shards, [modality, "text"], name=modality, augment=augment), batches)
            for kind, augment in (("plain", AugmentConfig()), ("augmented", demo_augment()))
        }
        per_sample = {name: [] for name in runners}
        names = list(runners)
        for round_index in range(rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                per_sample[name].append(runners[name]())
        results[modality] = {name.split()[1]: 1.0 / sorted(times)[len(times) // 2]
                             for name, times in per_sample.items()}
    return results


def demo_samples(shards: str, member: str, count: int) -> list[bytes]:
    samples = []
    for url in expand_shards(shards):
        for sample in read_shard(url, []):
            samples.append(sample[member])
            if len(samples) == count:
                return samples
    return samples


def one_lever(config, name: str):
    """``config`` (image or audio levers) with only ``name`` switched on (p = 1, default ranges)."""
    off = type(config)()
    lever = getattr(off, name)
    return replace(off, **{name: replace(lever, p=1.0)})


def measure_levers(paths, count: int, rounds: int) -> list[tuple[str, float]]:
    """(name, microseconds per sample) for the preprocessing and for each lever alone."""
    model = tiny()
    image_config, audio_config = model.image_preprocess, model.audio_preprocess
    images = demo_samples(paths.image_train, "png", count)
    clips = demo_samples(paths.audio_train, "wav", count)
    crops = [train_crop(decode_image(data), image_config, random.Random(i)) for i, data in enumerate(images)]
    waves = [load_waveform(data, audio_config) for data in clips]
    keep = samples_for_frames(audio_config.max_frames, audio_config)
    runners: dict[str, Callable[[], object]] = {
        "image: decode + crop": lambda: [train_crop(decode_image(d), image_config, random.Random(i))
                                         for i, d in enumerate(images)],
        "audio: decode + resample + fbank": lambda: [
            train_audio_features(load_waveform(d, audio_config), audio_config, random.Random(i))
            for i, d in enumerate(clips)],
    }
    stacked = torch.stack(crops)  # (N, 3, S, S): the loader augments a batch's crops at once

    def batched(config: ImageAugmentConfig) -> torch.Tensor:
        draws = [draw_image_levers(config, random.Random(i), stacked.shape[-1]) for i in range(len(crops))]
        return augment_images(stacked, draws)

    for field in fields(ImageAugmentConfig):
        config = one_lever(ImageAugmentConfig(), field.name)
        runners[f"image {field.name}"] = lambda config=config: batched(config)
    runners["image: demo's levers"] = lambda: batched(demo_augment().image)
    runners["image: demo's levers, one at a time"] = lambda: [augment_image(c, demo_augment().image, random.Random(i))
                                                              for i, c in enumerate(crops)]
    features = [train_audio_features(w, audio_config, random.Random(i)) for i, w in enumerate(waves)]
    for name in FEATURE_LEVERS:  # on the features, in place (repeating them on the same tensors costs the same)
        config = one_lever(AudioAugmentConfig(), name)
        runners[f"audio {name}"] = lambda config=config: [
            augment_features(f, config, random.Random(i), norm_std=audio_config.norm_std)
            for i, f in enumerate(features)]
    for field in fields(AudioAugmentConfig):
        if field.name in FEATURE_LEVERS:
            continue
        config = one_lever(AudioAugmentConfig(), field.name)
        runners[f"audio {field.name}"] = lambda config=config: [
            augment_waveform(w, audio_config.sample_rate, config, random.Random(i), keep_samples=keep)
            for i, w in enumerate(waves)]
    demo_audio = demo_augment().audio
    runners["audio: demo's levers"] = lambda: [
        (augment_waveform(w, audio_config.sample_rate, demo_audio, random.Random(i), keep_samples=keep),
         augment_features(f, demo_audio, random.Random(i), norm_std=audio_config.norm_std))
        for i, (w, f) in enumerate(zip(waves, features))]
    comparison = alternate(runners, rounds=rounds, warmup=1)
    print(f"  levers, {len(crops)} samples each, median of {rounds} alternating round(s) "
          f"({noise_note(comparison)})")
    return [(name, comparison.median(name) / len(crops) * 1e6) for name in runners]


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    # The loader's workers run with one thread each; the levers are timed the same way.
    torch.set_num_threads(1)
    rounds = args.rounds or (1 if args.quick else 5)
    batches = 2 if args.quick else 8
    print(f"augment: {machine_summary()}")
    paths = dataset.build_demo()
    for name, micros in measure_levers(paths, 64 if args.quick else 256, rounds):
        print(f"    {name:<36} {micros:9.0f} us/sample")
    rates = measure_loaders(paths, batches, rounds)
    print(f"  demo loader, one worker, batch {BATCH_SIZE}, {batches} batches after the first, "
          f"median of {rounds} alternating round(s):")
    for modality, by_kind in rates.items():
        print(f"    {modality:<6} plain {by_kind['plain']:7.0f} samples/s  augmented {by_kind['augmented']:7.0f} "
              f"samples/s  (x{by_kind['augmented'] / by_kind['plain']:.2f})")
    image_weight = DataConfig().demo_image_weight
    per_step = {kind: BATCH_SIZE * (image_weight / rates["image"][kind] + 1.0 / rates["audio"][kind]) / (image_weight + 1)
                for kind in ("plain", "augmented")}
    summary = (
        f"augment: demo loader samples/s per worker, plain/augmented: images {rates['image']['plain']:.0f}/"
        f"{rates['image']['augmented']:.0f}, audio {rates['audio']['plain']:.0f}/{rates['audio']['augmented']:.0f}; "
        f"worker s per step (batch {BATCH_SIZE}, images:audio {image_weight:g}:1): {per_step['plain']:.3f} plain, "
        f"{per_step['augmented']:.3f} augmented"
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
