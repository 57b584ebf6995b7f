"""The built-in demo as a run reads it: its training sources, augmentation, evaluation sets and tokenizer.

The demo's data are two collections named by what they hold (handwritten digits as
pictures, spoken digits as sounds, each with captions; :mod:`multimodal.data.demo`), so
this module names the modalities it reads; everything else a run does asks the registry.
:mod:`multimodal.training.data_sources` uses it when a run configures no source.
"""
from __future__ import annotations

import logging
import math

from multimodal.apps.evaluation import EvalSetConfig
from multimodal.data.demo import dataset
from multimodal.data.pipeline.source_spec import AugmentConfig, SourceSpec
from multimodal.data.preprocess.augment_config import (
    AffineAugment,
    AudioAugmentConfig,
    BandLimitAugment,
    EqualizerAugment,
    GainAugment,
    ImageAugmentConfig,
    NoiseAugment,
    ResolutionAugment,
    SpecAugmentLever,
    SpeedAugment,
    StrokeAugment,
    TrimAugment,
)
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer, read_caption_files
from multimodal.model import ModelConfig

logger = logging.getLogger(__name__)


def demo_augment() -> AugmentConfig:
    """The demo's training augmentation: handwriting as other writers give it, voices as other
    speakers, rooms and microphones do.

    The image levers act on the digit source, the audio levers on the speech source. Only
    the cheap levers are on, and band-limiting for a fifth of the clips, because on 2 cores
    the loader's workers share the CPU with the trainer (what each setting bought and cost:
    docs/decisions.md, "The demo's augmentation and mixing"). The others stay a dotted key
    away (``--data.demo_augment.audio.reverb.p 0.3``).
    """
    return AugmentConfig(
        image=ImageAugmentConfig(
            # Zoom up to 1.4x, as digits that fill their frame; a third down to 8 px, as small scans (docs/decisions.md).
            affine=AffineAugment(p=0.8, rotation_degrees=12.0, scale=(0.8, 1.4), shear_degrees=10.0, translate=0.08),
            stroke=StrokeAugment(p=0.5, thickness=(-0.5, 1.0)),
            resolution=ResolutionAugment(p=0.3, min_size=8),
        ),
        audio=AudioAugmentConfig(
            # Half the clips lose their quiet ends, as people's recordings of a word do (docs/decisions.md).
            trim=TrimAugment(p=0.5),
            speed=SpeedAugment(p=0.8, factor=(0.85, 1.15)),
            noise=NoiseAugment(p=0.5, snr_db=(5.0, 35.0)),
            # A fifth of the clips through a telephone line, most through a microphone's colouring (docs/decisions.md).
            band_limit=BandLimitAugment(p=0.2),
            gain=GainAugment(p=1.0, db=(-12.0, 6.0)),
            equalizer=EqualizerAugment(p=0.8),
            # Half the clips lose a span of up to 10 frames (0.1 s), no band of mel bins (docs/decisions.md).
            spec_augment=SpecAugmentLever(p=0.5, freq_mask=0, time_mask=10),
        ),
    )


def demo_training_sources(
    model: ModelConfig, *, demo_dir: str | None, scale: float, image_weight: float, augment: AugmentConfig | None,
    label_positives: bool, progress: bool = True,
) -> tuple[list[SourceSpec], dataset.DemoPaths]:
    """The demo's training sources (built on first use) and where its data are.

    Its two collections are each paired with captions: only the pairs the model encodes are
    trained. The settings are the run's ``data.demo_*`` (see ``DataConfig``). Raises
    ValueError, before the demo is built (minutes the first time), when the model encodes
    neither pair or ``image_weight`` is not a positive number.
    """
    collections = {"image": ("image_train", image_weight), "audio": ("audio_train", 1.0)}
    trained = [modality for modality in collections if {modality, "text"} <= set(model.modalities)]
    if not trained:
        raise ValueError(f"the demo trains image-text and audio-text pairs; this model has only {model.modalities}")
    if "image" in trained and not (math.isfinite(image_weight) and image_weight > 0):
        raise ValueError(f"data.demo_image_weight must be a positive number, got {image_weight}")
    paths = dataset.build_demo(demo_dir, scale=scale, progress=_demo_progress if progress else None)
    augment = augment if augment is not None else AugmentConfig()
    label_key = "json:label" if label_positives else None
    train = [SourceSpec(shards=getattr(paths, collections[m][0]), modalities=[m, "text"], augment=augment,
                        weight=collections[m][1], label_key=label_key) for m in trained]
    return train, paths


def demo_eval_sets(paths: dataset.DemoPaths) -> list[EvalSetConfig]:
    """The demo's evaluation sets: zero-shot images and speech, each on held-out data of the
    training collections and on other collections, and emergent speech -> image retrieval.

    - ``image_zeroshot``: MNIST digits held out from training;
    - ``image_real_zeroshot``: scikit-learn's 8 x 8 digits, other writers and another scanner;
    - ``audio_zeroshot``: espeak-ng voices never heard in training;
    - ``audio_phone_zeroshot``: the same clips over a telephone line (8 kHz, 300-3,400 Hz, mu-law);
    - ``audio_real_zeroshot``: the ten human recordings (one speaker);
    - ``emergent``: held-out voices retrieving held-out MNIST images of their digit, a pair
      never trained on.
    """
    names = list(paths.class_names)
    image_templates = list(paths.zero_shot_templates["image"])
    audio_templates = list(paths.zero_shot_templates["audio"])
    return [
        EvalSetConfig(name="image_zeroshot", shards=paths.image_val, modality="image",
                      class_names=names, templates=image_templates),
        EvalSetConfig(name="image_real_zeroshot", shards=paths.image_real, modality="image",
                      class_names=names, templates=image_templates),
        EvalSetConfig(name="audio_zeroshot", shards=paths.audio_val, modality="audio",
                      class_names=names, templates=audio_templates),
        EvalSetConfig(name="audio_phone_zeroshot", shards=paths.audio_phone, modality="audio",
                      class_names=names, templates=audio_templates),
        EvalSetConfig(name="audio_real_zeroshot", shards=paths.audio_real, modality="audio",
                      class_names=names, templates=audio_templates),
        EvalSetConfig(name="emergent", shards=paths.audio_val, task="retrieval", modality="audio",
                      gallery_modality="image", gallery_shards=paths.image_val),
    ]


def demo_tokenizer(paths: dataset.DemoPaths, vocab_size: int) -> Tokenizer:
    """Our BPE tokenizer trained on the demo's captions (deterministic for a given build)."""
    return Tokenizer.train(read_caption_files(paths.captions_file), vocab_size=vocab_size)


def _demo_progress(stage: str, done: int, total: int) -> None:
    if done == total:
        logger.info("demo data: %s done (%d)", stage, total)


__all__ = ["demo_augment", "demo_eval_sets", "demo_tokenizer", "demo_training_sources"]
