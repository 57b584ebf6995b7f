"""Model presets as plain functions: ``tiny`` (tests and the demo), ``small``, ``base``.

Every preset builds all three encoders; drop one with ``modalities=("text", "image")``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig, ImagePreprocessConfig
from multimodal.data.modalities.registry import MODALITIES
from multimodal.encoders import AudioConfig, TextConfig, TransformerConfig, VisionConfig
from multimodal.model import ModelConfig

# MNIST is grey digits on black: its own statistics suit the demo better than CLIP's.
_DEMO_IMAGE_MEAN = (0.13, 0.13, 0.13)
_DEMO_IMAGE_STD = (0.31, 0.31, 0.31)


def _select(config: ModelConfig, modalities: Iterable[str] | None) -> ModelConfig:
    if modalities is None:
        return config
    keep = set(modalities)
    unknown = keep - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; expected {', '.join(MODALITIES)}")
    for m in MODALITIES:
        if m not in keep:
            setattr(config, m, None)
            if hasattr(config, f"{m}_preprocess"):
                setattr(config, f"{m}_preprocess", None)
    config.__post_init__()
    return config


def tiny(modalities: Iterable[str] | None = None, vocab_size: int = 1024) -> ModelConfig:
    """Trains in minutes on 2 CPU cores: 32 px digits in 8 px patches, 1 s clips of 64 mel bins in 16 x 16 patches.

    The image tower's stem is two 3 x 3 stride-2 convolutions before a 2 x 2 patch
    projection (``stem="conv"``): the same 16 tokens, and from a few thousand digits it
    learns what a patch projection learns from far more (MNIST zero-shot 94.9% -> 98.2%).
    With the stem doing the early work, its trunk keeps two blocks of the three: the
    same accuracy (98.1%) for a sixth less work per image step. The text trunk has two
    as well: the demo's captions hold at most 8 tokens, and a third block changed no
    figure beyond seed noise while it cost 7% of every step.

    The spectrogram patches do not overlap (stride 16, where AST overlaps them at 10): 24
    patches a clip instead of 45 halve the audio tower's work, which on a CPU without
    bf16 was what kept ``make train`` over its time.
    """
    def trunk(depth: int = 3) -> TransformerConfig:
        return TransformerConfig(width=128, depth=depth, num_heads=4, mlp_ratio=2.0)

    config = ModelConfig(
        embed_dim=128,
        text=TextConfig(vocab_size=vocab_size, context_length=16, transformer=trunk(depth=2)),
        image=VisionConfig(image_size=32, patch_size=8, stem="conv", transformer=trunk(depth=2)),
        audio=AudioConfig(num_mel_bins=64, max_frames=100, stride=16, transformer=trunk()),
        image_preprocess=ImagePreprocessConfig(image_size=32, mean=_DEMO_IMAGE_MEAN, std=_DEMO_IMAGE_STD),
        audio_preprocess=AudioPreprocessConfig(num_mel_bins=64, max_frames=100),
    )
    return _select(config, modalities)


def small(modalities: Iterable[str] | None = None, vocab_size: int = 49408) -> ModelConfig:
    """Width 256, 6 layers per tower: 96 px images in 16 px patches, 32 tokens, 10 s clips (1,214 audio tokens)."""
    def trunk() -> TransformerConfig:
        return TransformerConfig(width=256, depth=6, num_heads=4)

    config = ModelConfig(
        embed_dim=256,
        text=TextConfig(vocab_size=vocab_size, context_length=32, transformer=trunk()),
        image=VisionConfig(image_size=96, patch_size=16, transformer=trunk()),
        audio=AudioConfig(num_mel_bins=128, max_frames=1024, transformer=trunk()),
    )
    return _select(config, modalities)


def base(modalities: Iterable[str] | None = None, vocab_size: int = 49408) -> ModelConfig:
    """ViT-B/32 image tower, CLIP's 12-layer width-512 text tower, an AST-base-sized audio tower."""
    config = ModelConfig(
        embed_dim=512,
        text=TextConfig(
            vocab_size=vocab_size, context_length=77, transformer=TransformerConfig(width=512, depth=12, num_heads=8)
        ),
        image=VisionConfig(
            image_size=224, patch_size=32, patch_bias=False, pre_norm=True,
            transformer=TransformerConfig(width=768, depth=12, num_heads=12),
        ),
        audio=AudioConfig(
            num_mel_bins=128, max_frames=1024, transformer=TransformerConfig(width=768, depth=12, num_heads=12)
        ),
    )
    return _select(config, modalities)


PRESETS: dict[str, Callable[..., ModelConfig]] = {"tiny": tiny, "small": small, "base": base}


def preset(name: str, **kwargs) -> ModelConfig:
    """The preset called ``name`` (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
