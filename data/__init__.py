"""Bytes to tensors: shard listing and reading, image and audio preprocessing, batch streams.

The public names below are imported on first use, so ``import multimodal.data.tokenizer`` (or
any other submodule) does not pay for torchvision, torchaudio and webdataset.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "expand_shards": "multimodal.data.shards",
    "read_shard": "multimodal.data.shards",
    "decode_image": "multimodal.data.image",
    "image_to_tensor": "multimodal.data.image",
    "eval_crop": "multimodal.data.image",
    "train_crop": "multimodal.data.image",
    "normalize_image": "multimodal.data.image",
    "preprocess_image": "multimodal.data.image",
    "decode_audio": "multimodal.data.audio",
    "load_waveform": "multimodal.data.audio",
    "fbank": "multimodal.data.audio",
    "train_audio_features": "multimodal.data.audio",
    "eval_audio_windows": "multimodal.data.audio",
    "audio_to_features": "multimodal.data.audio",
    "collate_audio": "multimodal.data.audio",
    "AugmentConfig": "multimodal.data.augment",
    "augment_image": "multimodal.data.augment_image",
    "augment_waveform": "multimodal.data.augment_audio",
    "SampleFields": "multimodal.data.sample_fields",
    "SourceSpec": "multimodal.data.source_spec",
    "DataStats": "multimodal.data.skip_counts",
    "ShardLoader": "multimodal.data.loader",
    "make_loader": "multimodal.data.loader",
    "Modality": "multimodal.data.modality",
    "MODALITIES": "multimodal.data.modalities",
    "get_modality": "multimodal.data.modalities",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
