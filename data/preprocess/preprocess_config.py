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
    """

    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # Frames in one clip window (1024 frames at a 10 ms shift = 10.24 s).
    max_frames: int = 1024
    norm_mean: float = AUDIOSET_MEAN
    norm_std: float = AUDIOSET_STD
    # SpecAugment in training: widest frequency / time mask (0 disables).
    freq_mask: int = 0
    time_mask: int = 0
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

