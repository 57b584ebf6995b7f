"""Preprocessing parameters.

These dataclasses travel inside a model checkpoint (``config.json``) so that a
checkpoint says exactly how its inputs must be prepared; training, evaluation
and the inference API all read them from there.
"""
from __future__ import annotations

from dataclasses import dataclass

# OpenAI CLIP's image statistics: the default, so converted CLIP weights work as they are.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# What transparent pixels are composited onto: white, as a browser or image viewer shows
# a transparent PNG (a black background turns a black drawing into a black square).
WHITE = (255, 255, 255)

# AudioSet log-mel statistics used by AST.
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


@dataclass
class ImagePreprocessConfig:
    """How an image becomes a ``(3, image_size, image_size)`` float tensor.

    ``background``: the RGB colour (0-255 each) that images with an alpha channel
    (RGBA, grey + alpha, palette with transparency) are composited onto when decoded.
    Checkpoints written before this field existed load with the default, white.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # Training crop: RandomResizedCrop over this fraction of the area.
    train_crop_scale: tuple[float, float] = (0.9, 1.0)
    interpolation: str = "bicubic"
    # Images with a single channel (MNIST) are repeated to 3 channels.
    background: tuple[int, int, int] = WHITE

    def __post_init__(self) -> None:
        check_background(self.background, "image_preprocess.background")


def check_background(background: tuple[int, int, int], where: str) -> None:
    """Raises ValueError unless ``background`` is three integers in [0, 255]."""
    if (
        len(background) != 3
        or not all(isinstance(value, int) and not isinstance(value, bool) for value in background)
        or not all(0 <= value <= 255 for value in background)
    ):
        raise ValueError(f"{where} must be three integers in [0, 255] (an RGB colour), got {tuple(background)!r}")


@dataclass
class AudioPreprocessConfig:
    """How a waveform becomes ``(num_frames, num_mel_bins)`` normalised log-mel frames.

    The filterbank is Kaldi-compatible (``torchaudio.compliance.kaldi.fbank``),
    as AST uses; normalisation is ``(x - norm_mean) / (2 * norm_std)``.
    Checkpoints written before ``min_frames`` existed load with the default, 16: the
    patch length of AST and of every preset (the model's config checks it).
    SpecAugment is no preprocessing setting: it is the training lever
    ``augment.audio.spec_augment`` of each source (see :data:`RETIRED_MASK_KEYS`).
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # Frames in one clip window (1024 frames at a 10 ms shift = 10.24 s).
    max_frames: int = 1024
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD
    # Fewest frames a window may have: the encoder's patch length along time (16 in AST and
    # every preset). Shorter clips are padded with silence up to it, so a clip is embedded
    # from its own sound whether it is alone or batched with longer ones.
    min_frames: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.min_frames, bool) or not isinstance(self.min_frames, int) or self.min_frames < 1:
            raise ValueError(
                f"audio_preprocess.min_frames must be an integer of at least 1 (the encoder's patch length along "
                f"time), got {self.min_frames!r}"
            )
        if self.min_frames > self.max_frames:
            # Every window would then be shorter than the encoder takes.
            raise ValueError(
                f"audio_preprocess.min_frames {self.min_frames} exceeds audio_preprocess.max_frames "
                f"{self.max_frames}: a window holds at most max_frames frames, so it could never be long enough"
            )


# SpecAugment's widest masks were once preprocessing settings (``audio_preprocess.freq_mask`` and
# ``.time_mask``), masking the same clip as the lever ``augment.audio.spec_augment``: now the lever
# is the one setting. Checkpoints and run configs written before carry these keys.
RETIRED_MASK_KEYS = ("freq_mask", "time_mask")
# A model config's preprocessing sections: ``image_preprocess``, ``audio_preprocess``.
PREPROCESS_SUFFIX = "_preprocess"


def take_retired_masks(model_tree: object) -> dict[str, dict[str, int]]:
    """Takes the retired SpecAugment keys out of a model config tree, in place; returns those that were on.

    ``model_tree``: a model config as a checkpoint's ``config.json`` holds it (``{"audio_preprocess":
    {"freq_mask": 8, ...}, ...}``); every ``<modality>_preprocess`` section is searched. Returns the
    nonzero widths by modality, ``{"audio": {"freq_mask": 8}}``: ``{}`` when none was set or all
    were 0 (such a tree meant no masks). Anything but a dict has nothing to take.
    """
    taken: dict[str, dict[str, int]] = {}
    if not isinstance(model_tree, dict):
        return taken
    for name, section in model_tree.items():
        if not (name.endswith(PREPROCESS_SUFFIX) and isinstance(section, dict)):
            continue
        widths = {key: section.pop(key) for key in RETIRED_MASK_KEYS if key in section}
        widths = {key: width for key, width in widths.items() if width}
        if widths:
            taken[name.removesuffix(PREPROCESS_SUFFIX)] = widths
    return taken


def retired_masks_error(modality: str, widths: dict[str, int], where: str) -> ValueError:
    """The refusal of a new configuration that sets ``widths`` (from :func:`take_retired_masks`) at ``where``."""
    given = " and ".join(f"{modality}{PREPROCESS_SUFFIX}.{key} {width}" for key, width in widths.items())
    retired = "is no longer a preprocessing setting" if len(widths) == 1 else "are no longer preprocessing settings"
    return ValueError(
        f"{where}: {given} {retired}: SpecAugment is set per training source as "
        f"augment.{modality}.spec_augment (p, freq_mask, time_mask). Set it there, as "
        f"data.train[i].augment.{modality}.spec_augment of each {modality} source or "
        f"data.demo_augment.{modality}.spec_augment for the demo (p 1.0 masks every clip, as "
        f"{modality}{PREPROCESS_SUFFIX} did), and remove it from the model"
    )
