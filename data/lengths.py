"""Clip and caption lengths against what a model reads of them: the counts of what training cuts.

Training reads a random window of ``max_frames`` log-mel frames of a longer clip
(:func:`multimodal.data.preprocess.audio_features.train_audio_features`), and of a longer caption the
first ``context_length - 2`` tokens: the start and end-of-text tokens take the other
two positions (:func:`multimodal.data.tokenization.bpe_tokenizer.encode_rows`, for our tokenizer and
CLIP's alike). A :class:`LengthCounts` counts how many clips and captions that cuts.

- A clip is *longer than the window* when its whole length gives more than
  ``max_frames`` frames: exactly when training reads only part of its frames and
  evaluation covers it with several windows (:func:`multimodal.data.preprocess.audio_features.eval_audio_windows`).
  Its length comes from the audio file's header (no decoding; a file whose header
  does not say is decoded), resampled to the model's rate as training resamples it.
- A caption is *longer than the context* when it has more than ``context_length - 2``
  tokens. Without a tokenizer it is counted in words (white-space separated) instead:
  the byte-level BPE tokenizers here (ours and CLIP's) give every word one token or
  more, so a caption of more words than that is cut for certain and the count is a
  lower bound (:attr:`LengthLimits.caption_unit` is then ``"words"``).
"""
from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import soundfile

from multimodal.data.preprocess.audio_features import decode_audio, num_frames, resampled_length, samples_for_frames
from multimodal.data.preprocess.preprocess_config import AudioPreprocessConfig

# A caption's positions besides its own tokens: start-of-text and end-of-text.
SPECIAL_POSITIONS = 2


@dataclass(frozen=True)
class LengthLimits:
    """What a model reads: its audio preprocessing (the window) and text context; None where it has no such tower.

    ``tokenize``: ``texts -> token ids of each, without special tokens`` (``Tokenizer.tokenize``,
    ``ClipTokenizer.tokenize``); None counts captions in words, a lower bound of their tokens.
    """

    audio: AudioPreprocessConfig | None = None
    context_length: int | None = None
    tokenize: Callable[[Sequence[str]], list[list[int]]] | None = None

    @property
    def window_seconds(self) -> float:
        """The seconds of audio one window of ``max_frames`` frames covers (e.g. 1.015 s for 100 frames)."""
        return samples_for_frames(self.audio.max_frames, self.audio) / self.audio.sample_rate

    @property
    def caption_room(self) -> int:
        """Caption tokens the context holds besides start and end of text."""
        return self.context_length - SPECIAL_POSITIONS

    @property
    def caption_unit(self) -> str:
        """What caption lengths are counted in: ``"tokens"``, or ``"words"`` without a tokenizer."""
        return "tokens" if self.tokenize is not None else "words"


def audio_length(data: bytes) -> tuple[int, int]:
    """``(samples per channel, sample_rate)`` of an audio file's bytes, read from its header.

    A file whose header does not give its length is decoded. Raises ValueError when
    the bytes are not audio.
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as sound:
            if sound.frames > 0:
                return int(sound.frames), int(sound.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, EOFError):
        pass  # decode_audio below says what is wrong, or reads what libsndfile's header reader did not
    waveform, sample_rate = decode_audio(data)  # (C, N)
    return int(waveform.shape[-1]), sample_rate


def _covering(lengths: Counter[int], share: float) -> int:
    """The smallest length at least ``share`` of the counted items are no longer than."""
    needed = share * sum(lengths.values())
    covered = 0
    for length in sorted(lengths):
        covered += lengths[length]
        if covered >= needed - 1e-9:
            return length
    return max(lengths)


def _share_within(lengths: Counter[int], limit: int) -> float:
    """The share of the counted items no longer than ``limit``."""
    return sum(count for length, count in lengths.items() if length <= limit) / sum(lengths.values())


@dataclass
class LengthCounts:
    """Clips and captions counted against ``limits``: how many there are, how many are cut, how long they are.

    Add clips with :meth:`add_clip` and captions with :meth:`add_captions`; clips
    whose bytes are not audio are counted in ``unreadable_clips`` only.
    """

    limits: LengthLimits
    clips: int = 0
    long_clips: int = 0
    unreadable_clips: int = 0
    total_seconds: float = 0.0
    longest_seconds: float = 0.0
    # The frames each clip's whole length gives -> clips: the window that would read a share of them whole.
    clip_frames: Counter[int] = field(default_factory=Counter)
    captions: int = 0
    long_captions: int = 0
    # Caption length (in limits.caption_unit) -> captions.
    caption_lengths: Counter[int] = field(default_factory=Counter)

    def add_clip(self, data: bytes) -> None:
        """Counts one audio file (its bytes), against the window when the limits have one."""
        config = self.limits.audio
        try:
            samples, sample_rate = audio_length(data)
        except ValueError:
            self.unreadable_clips += 1
            return
        seconds = samples / sample_rate
        self.clips += 1
        self.total_seconds += seconds
        self.longest_seconds = max(self.longest_seconds, seconds)
        if config is not None:
            frames = num_frames(resampled_length(samples, sample_rate, config.sample_rate), config)
            self.clip_frames[frames] += 1
            self.long_clips += frames > config.max_frames

    def add_captions(self, captions: Sequence[str]) -> None:
        """Counts captions (all of a sample's, when it has several), against the context when the limits have one."""
        if not captions:
            return
        if self.limits.tokenize is not None:
            lengths = [len(ids) for ids in self.limits.tokenize(list(captions))]
        else:
            lengths = [len(caption.split()) for caption in captions]
        self.captions += len(lengths)
        self.caption_lengths.update(lengths)
        if self.limits.context_length is not None:
            self.long_captions += sum(length > self.limits.caption_room for length in lengths)

    @property
    def mean_seconds(self) -> float:
        return self.total_seconds / self.clips if self.clips else 0.0

    @property
    def long_clip_share(self) -> float:
        return self.long_clips / self.clips if self.clips else 0.0

    @property
    def long_caption_share(self) -> float:
        return self.long_captions / self.captions if self.captions else 0.0

    @property
    def longest_caption(self) -> int:
        """The longest caption counted, in ``limits.caption_unit`` (0 when none)."""
        return max(self.caption_lengths, default=0)

    def frames_covering(self, share: float) -> tuple[int, float]:
        """The smallest ``max_frames`` that reads at least ``share`` of the clips whole, and the share it
        reads whole."""
        frames = _covering(self.clip_frames, share)
        return frames, _share_within(self.clip_frames, frames)

    def context_covering(self, share: float) -> tuple[int, float]:
        """The smallest ``context_length`` that reads at least ``share`` of the captions whole (their tokens + 2),
        and the share it reads whole."""
        length = _covering(self.caption_lengths, share)
        return length + SPECIAL_POSITIONS, _share_within(self.caption_lengths, length)


__all__ = ["LengthCounts", "LengthLimits", "SPECIAL_POSITIONS", "audio_length"]
