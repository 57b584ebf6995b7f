"""Bytes to tensors: shard listing and reading, image and audio preprocessing, batch streams.

The public names below are imported on first use, so ``import multimodal.data.tokenization.bpe_tokenizer`` (or
any other submodule) does not pay for torchvision, torchaudio and webdataset.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "expand_shards": "multimodal.data.pipeline.shard_reader",
    "read_shard": "multimodal.data.pipeline.shard_reader",
    "decode_image": "multimodal.data.preprocess.image_transforms",
    "image_to_tensor": "multimodal.data.preprocess.image_transforms",
    "eval_crop": "multimodal.data.preprocess.image_transforms",
    "train_crop": "multimodal.data.preprocess.image_transforms",
    "normalize_image": "multimodal.data.preprocess.image_transforms",
    "preprocess_image": "multimodal.data.preprocess.image_transforms",
    "decode_audio": "multimodal.data.preprocess.audio_features",
    "load_waveform": "multimodal.data.preprocess.audio_features",
    "fbank": "multimodal.data.preprocess.audio_features",
    "train_audio_features": "multimodal.data.preprocess.audio_features",
    "eval_audio_windows": "multimodal.data.preprocess.audio_features",
    "audio_to_features": "multimodal.data.preprocess.audio_features",
    "collate_audio": "multimodal.data.preprocess.audio_features",
    "AugmentConfig": "multimodal.data.pipeline.source_spec",
    "augment_image": "multimodal.data.preprocess.augment_image",
    "augment_waveform": "multimodal.data.preprocess.augment_audio",
    "SampleFields": "multimodal.data.pipeline.sample_fields",
    "SourceSpec": "multimodal.data.pipeline.source_spec",
    "DataStats": "multimodal.data.pipeline.skip_counts",
    "ShardLoader": "multimodal.data.pipeline.loader",
    "make_loader": "multimodal.data.pipeline.loader",
    "Modality": "multimodal.data.modalities.base",
    "MODALITIES": "multimodal.data.modalities.registry",
    "get_modality": "multimodal.data.modalities.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
