"""The audio modality, defined once: its files, how a member becomes training or evaluation
log-mel frames, how they are collated, what the API takes as a clip.

The signal work lives in :mod:`multimodal.data.preprocess.audio_features` (decoding, resampling, filterbanks,
windows) and :mod:`multimodal.data.preprocess.augment_audio` (the levers); this module says when each is used.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from multimodal.data.modalities.base import Modality
from multimodal.data.preprocess.augment_config import AudioAugmentConfig
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig

# What soundfile reads (and torchaudio for MP3), in the order shards are searched.
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")


def is_waveform_with_rate(item: Any) -> bool:
    """Whether ``item`` is a ``(waveform tensor or array, sample_rate int)`` pair."""
    import numpy as np
    import torch

    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], (torch.Tensor, np.ndarray))
        and isinstance(item[1], (int, np.integer))
    )


class AudioModality(Modality):
    """Audio: a member decodes to a mono waveform at the config's rate; training takes one random
    crop of at most a window as normalised log-mel frames (T, F), evaluation every window of the
    clip (embedded and averaged per clip). A clip shorter than one patch is padded with silence,
    an empty one refused (:func:`multimodal.data.preprocess.audio_features.fit_clip_length`), in every path."""

    name = "audio"
    extensions = AUDIO_EXTENSIONS
    media_types = {"flac": "audio/flac", "wav": "audio/wav", "ogg": "audio/ogg", "mp3": "audio/mpeg"}
    batching = "windows"
    page_element = "audio"
    one, many = "audio", "audio"
    class_caption = "the sound of {}."
    cut_to = "window"
    files_called = "sounds"
    preprocess_config = AudioPreprocessConfig
    augment_config = AudioAugmentConfig

    def preprocess_for(self, tower: Any) -> AudioPreprocessConfig:
        """The encoder's mel bins and window, and windows no shorter than one of its patches."""
        return AudioPreprocessConfig(num_mel_bins=tower.num_mel_bins, max_frames=tower.max_frames,
                                     min_frames=tower.patch_size)

    def fill_earlier_settings(self, tower: Any, preprocess: Any) -> None:
        """``audio_preprocess.min_frames`` (added later) was the encoder's patch length, which the model
        config now holds equal to it: a checkpoint whose patches are not 16 frames loads."""
        if isinstance(tower, dict) and isinstance(preprocess, dict) and "min_frames" not in preprocess:
            if "patch_size" in tower:
                preprocess["min_frames"] = tower["patch_size"]

    def check_preprocess(self, preprocess: AudioPreprocessConfig, tower: Any) -> None:
        if (preprocess.num_mel_bins, preprocess.max_frames) != (tower.num_mel_bins, tower.max_frames):
            raise ValueError(
                "audio_preprocess (num_mel_bins, max_frames) = "
                f"{(preprocess.num_mel_bins, preprocess.max_frames)} differs from the encoder's "
                f"{(tower.num_mel_bins, tower.max_frames)}"
            )
        if preprocess.min_frames != tower.patch_size:
            # Shorter windows than one patch are refused by the encoder alone and masked to
            # nothing when batched, so every path pads clips to exactly this length.
            raise ValueError(
                f"model.audio_preprocess.min_frames {preprocess.min_frames} differs from the audio "
                f"encoder's patch length {tower.patch_size} (model.audio.patch_size); set them equal"
            )

    def recognises(self, path, head: bytes) -> bool:
        """A header soundfile reads."""
        import soundfile

        try:
            soundfile.info(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError):
            return False
        return True

    def check_decodes(self, data: bytes, **options: Any) -> object:
        from multimodal.data.preprocess.audio_features import check_has_samples, decode_audio

        check_has_samples(decode_audio(data)[0])  # a clip with no samples is refused by every reader
        return None

    def load_member(self, data: bytes, config: Any, *, train: bool, rng: random.Random | None, levers: Any) -> dict:
        from multimodal.data.preprocess.audio_features import eval_audio_windows, load_waveform, samples_for_frames, train_audio_features
        from multimodal.data.preprocess.augment_audio import augment_features, augment_waveform

        waveform = load_waveform(data, config)  # (samples,) at config.sample_rate
        if levers is not None:
            waveform = augment_waveform(waveform, config.sample_rate, levers, rng,
                                        keep_samples=samples_for_frames(config.max_frames, config))
        if not train:
            return {"audio": eval_audio_windows(waveform, config)}  # every (T, F) window of the clip
        features = train_audio_features(waveform, config, rng)  # one (T, F) crop
        if levers is not None:
            augment_features(features, levers, rng, norm_std=config.norm_std)
        return {"audio": [features]}

    def collate_into(self, batch: dict, samples: list[dict], *, tokenize=None, train: bool = True) -> None:
        import torch

        from multimodal.data.preprocess.audio_features import collate_audio

        clips = [window for sample in samples for window in sample["audio"]]
        audio, padding_mask = collate_audio(clips)  # (W, T, F), (W, T)
        batch["audio"] = audio
        if bool(padding_mask.any()):
            batch["audio_padding_mask"] = padding_mask
        if not train:  # evaluation: every window of a clip is a row, averaged per clip
            owners = [row for row, sample in enumerate(samples) for _ in sample["audio"]]
            batch["audio_window_clip"] = torch.tensor(owners, dtype=torch.int64)  # (W,)

    def is_single_input(self, inputs: Any) -> bool:
        return super().is_single_input(inputs) or is_waveform_with_rate(inputs)

    def check_levers(self, levers: Any, config: Any, where: str) -> None:
        """Band-limiting must remove something at the model's sample rate (``config.sample_rate``)."""
        levers.check_sample_rate(config.sample_rate, where)

    def prepare(self, item: Any, config: Any, **options: Any) -> Any:
        """A path, bytes, a ``(waveform, sample_rate)`` pair, or a waveform with ``options["sample_rate"]``
        -> its evaluation windows [(T_i, F), ...], at least ``config.min_frames`` long."""
        import numpy as np
        import torch

        from multimodal.data.preprocess.audio_features import audio_to_features

        sample_rate = options.get("sample_rate")
        if is_waveform_with_rate(item):
            item, sample_rate = item
        if isinstance(item, (str, Path)):
            item = Path(item).read_bytes()
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(np.ascontiguousarray(item))
        if isinstance(item, torch.Tensor):
            if sample_rate is None:
                raise ValueError("a waveform needs its sample rate: pass (waveform, sample_rate) or sample_rate=...")
            if not item.is_floating_point():
                raise ValueError(f"a waveform must be floating point in [-1, 1], got {item.dtype}")
            return audio_to_features(item.cpu(), config, sample_rate=int(sample_rate), min_frames=config.min_frames)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return audio_to_features(bytes(item), config, min_frames=config.min_frames)
        raise TypeError(
            f"cannot read audio from {type(item).__name__}: give a path, bytes, (waveform, sample_rate) or a waveform tensor"
        )


AUDIO = AudioModality()

__all__ = ["AUDIO", "AUDIO_EXTENSIONS", "AudioModality", "is_waveform_with_rate"]
