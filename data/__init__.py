"""Bytes to tensors: shard listing and reading, image and audio preprocessing, batch streams.

The public names below are imported on first use, so ``import data.tokenizer`` (or
any other submodule) does not pay for torchvision, torchaudio and webdataset.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "expand_shards": "data.shards",
    "read_shard": "data.shards",
    "decode_image": "data.image",
    "image_to_tensor": "data.image",
    "eval_crop": "data.image",
    "train_crop": "data.image",
    "normalize_image": "data.image",
    "preprocess_image": "data.image",
    "decode_audio": "data.audio",
    "load_waveform": "data.audio",
    "fbank": "data.audio",
    "train_audio_features": "data.audio",
    "eval_audio_windows": "data.audio",
    "audio_to_features": "data.audio",
    "collate_audio": "data.audio",
    "SourceSpec": "data.pipeline",
    "DataStats": "data.pipeline",
    "ShardLoader": "data.pipeline",
    "make_loader": "data.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
