"""What training cuts of the data: clips longer than the audio window, captions longer than the text context.

A model reads a random ``max_frames`` window of a longer clip and the first
``context_length - 2`` tokens of a longer caption (see :mod:`multimodal.data.lengths`).
:func:`measure_sources` reads the first samples of each training source (a bounded
sample: the headers of the audio files, the captions' tokens) and
:func:`truncation_lines` says, per source, how much is cut and which settings read
more. The trainer logs those lines at start-up; ``multimodal shards`` prints the same
for the shards it writes (:func:`written_truncation_lines`), where every sample is counted.

Evaluation reads a long clip whole, as windows whose embeddings are averaged; a long
caption is cut there as in training.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

from multimodal.data.lengths import LengthCounts, LengthLimits
from multimodal.data.modalities.registry import get_modality
from multimodal.data.pipeline.sample_fields import SampleFields, UnusableSample
from multimodal.data.pipeline.shard_reader import ShardProblem, expand_shards, is_remote, read_shard
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.model import ModelConfig

# Bounds of the sample read per source: start-up stays quick even for shards of long clips.
MAX_SAMPLES = 2_000
MAX_BYTES = 128 << 20
# A longer window or context is advised to read this share of what is cut whole; when less than
# (1 - this share) is cut at all, one that reads every item whole.
COVER_SHARE = 0.95


@dataclass
class SourceLengths:
    """One source's clips and captions as measured: ``where`` names it (``data.train[1]``).

    ``complete``: every sample of its shards was read (the figures are not from a sample);
    ``measured``: False for sources not read (remote shards), whose counts are empty.
    """

    where: str
    counts: LengthCounts
    samples_read: int = 0
    shards_read: int = 0
    num_shards: int = 0
    complete: bool = False
    measured: bool = True


def model_limits(model: ModelConfig, tokenizer=None) -> LengthLimits:
    """The audio window and text context of ``model``; captions counted with ``tokenizer`` (None: in words)."""
    return LengthLimits(
        audio=model.audio_preprocess if model.audio is not None else None,
        context_length=model.text.context_length if model.text is not None else None,
        tokenize=tokenizer.tokenize if tokenizer is not None else None,
    )


def measure_sources(
    sources: Sequence[SourceSpec], model: ModelConfig, tokenizer=None, *, names: Sequence[str] | None = None,
    max_samples: int = MAX_SAMPLES, max_bytes: int = MAX_BYTES,
) -> list[SourceLengths]:
    """Clip and caption lengths of the first samples of each training source, against ``model``.

    Args:
        sources: training sources (:class:`~multimodal.data.pipeline.source_spec.SourceSpec`), read with their own keys.
        model: the run's model config: its audio window and text context.
        tokenizer: the run's tokenizer (its ``tokenize``); None counts captions in words.
        names: how the lines name each source; default ``data.train[i]``.
        max_samples / max_bytes: per source, reading stops after this many samples or
            bytes of samples, over its shards in order.

    Sources of remote shards (``pipe:``, URLs) are not read (``measured=False``):
    start-up does not download data to measure it.
    """
    limits = model_limits(model, tokenizer)
    names = list(names) if names is not None else [f"data.train[{index}]" for index in range(len(sources))]
    return [_measure_source(source, name, limits, max_samples, max_bytes) for source, name in zip(sources, names)]


def _measure_source(
    source: SourceSpec, where: str, limits: LengthLimits, max_samples: int, max_bytes: int
) -> SourceLengths:
    measured = SourceLengths(where, LengthCounts(limits))
    urls = expand_shards(source.shards, check_exists=False)  # checked when the sources were resolved
    measured.num_shards = len(urls)
    cuts = _cuts(source)
    read_audio = "window" in cuts and limits.audio is not None
    read_text = "context" in cuts and limits.context_length is not None
    if any(is_remote(url) for url in urls):
        measured.measured = False
        return measured
    # The source's own keys, as its training loader reads it: what is measured is what training sees.
    fields = source.sample_fields()
    captions: list[str] = []
    size = 0
    measured.complete = True
    with closing(_raw_samples(urls if read_audio or read_text else [])) as samples:
        for shard_index, raw in samples:
            if measured.samples_read >= max_samples or size >= max_bytes:
                measured.complete = False
                break
            measured.samples_read += 1
            measured.shards_read = shard_index + 1
            size += sum(len(value) for key, value in raw.items() if not key.startswith("__"))
            _count_sample(raw, source, fields, measured.counts if read_audio else None,
                          captions if read_text else None)
    measured.counts.add_captions(captions)  # one batch: tokenizers encode a batch far faster than one at a time
    return measured


def _raw_samples(urls: list[str]) -> Iterator[tuple[int, dict]]:
    """(shard index, raw sample) over the shards in order; a shard that does not read gives nothing."""
    for index, url in enumerate(urls):
        problems: list[ShardProblem] = []  # bad shards are training's to report
        with closing(read_shard(url, problems)) as samples:
            for raw in samples:
                yield index, raw


def _cuts(source: SourceSpec) -> dict[str, str]:
    """What training cuts of ``source``'s items (its definitions' ``cut_to``: "window", "context") -> the modality cut so."""
    return {get_modality(modality).cut_to: modality for modality in source.modalities
            if get_modality(modality).cut_to is not None}


def _count_sample(raw: dict, source: SourceSpec, fields: SampleFields, clips: LengthCounts | None,
                  captions: list[str] | None) -> None:
    """Adds a raw sample's clip to ``clips`` and its captions to ``captions``, as training reads the sample.

    A sample lacking one of the source's modalities is skipped by training, so it is not counted.
    """
    cuts = _cuts(source)
    try:
        members = {modality: fields.member(raw, modality) for modality in source.modalities
                   if get_modality(modality).reads_files}
        texts = fields.captions(raw) if "context" in cuts else []
    except UnusableSample:
        return  # training skips it too (and counts it among its skipped samples)
    if clips is not None:
        clips.add_clip(members[cuts["window"]])
    if captions is not None:
        captions.extend(texts)


def truncation_lines(measured: Iterable[SourceLengths], *, min_share: float = 0.0) -> list[str]:
    """One line per source and modality whose clips or captions the model cuts; none when nothing is cut.

    Each says how many are cut of how many read (and that they are a sample, when
    they are), how long they are, and the settings that read more. ``min_share``: a
    modality of a source is left out unless more than this share of it is cut
    (0: any clip or caption cut is reported).
    """
    lines = []
    for source in measured:
        if not source.measured:
            continue
        if source.complete:
            scope = ""
        else:
            scope = (f"; the first {source.samples_read:,} samples, from {source.shards_read} of its "
                     f"{source.num_shards} shard{'s' if source.num_shards != 1 else ''}")
        lines += _length_lines(source.counts, prefix=f"{source.where}: ", whose="the model's",
                               verb="read" if scope else "", scope=scope, tokenizer_option="--data.tokenizer FILE",
                               min_share=min_share)
    return lines


def written_truncation_lines(counts: LengthCounts, preset_name: str) -> list[str]:
    """The lines of :func:`truncation_lines` for every sample the shard writer wrote, against a preset's limits."""
    return _length_lines(counts, prefix="", whose=f"the {preset_name} preset's", verb="written", scope="",
                         tokenizer_option="--tokenizer FILE", min_share=0.0)


def _length_lines(counts: LengthCounts, *, prefix: str, whose: str, verb: str, scope: str,
                  tokenizer_option: str, min_share: float) -> list[str]:
    """``prefix`` names the source, ``whose`` the limits, ``verb`` what was done to the items counted,
    ``scope`` the sample read (or ""), ``tokenizer_option`` how to give a tokenizer."""
    lines = []
    if counts.long_clips and counts.long_clip_share > min_share:
        lines.append(prefix + _clip_sentence(counts, whose, verb, scope))
    if counts.long_captions and counts.long_caption_share > min_share:
        lines.append(prefix + _caption_sentence(counts, whose, verb, scope, tokenizer_option))
    return lines


def _clip_sentence(counts: LengthCounts, whose: str, verb: str, scope: str) -> str:
    audio = counts.limits.audio
    window = _seconds(counts.limits.window_seconds)
    share = COVER_SHARE if counts.long_clip_share > 1 - COVER_SHARE else 1.0
    frames, covered = counts.frames_covering(share)
    per_second = 1000 / audio.frame_shift_ms
    clips = f"clips {verb}".rstrip()
    return (
        f"{counts.long_clips:,} of {counts.clips:,} {clips} ({counts.long_clip_share:.1%}{scope}) are longer than "
        f"{whose} {window} s audio window (longest {_seconds(counts.longest_seconds)} s, mean "
        f"{_seconds(counts.mean_seconds)} s): training reads a random {window} s of each; evaluation reads them "
        f"whole, as windows. To read {_portion(covered)} of them whole in training, train with "
        f"--model.audio.max_frames {frames} --model.audio_preprocess.max_frames {frames} ({per_second:g} frames a "
        f"second; the audio tower's cost grows with them)"
    )


def _caption_sentence(counts: LengthCounts, whose: str, verb: str, scope: str, tokenizer_option: str) -> str:
    limits = counts.limits
    share = COVER_SHARE if counts.long_caption_share > 1 - COVER_SHARE else 1.0
    context, covered = counts.context_covering(share)
    captions = f"captions {verb}".rstrip()
    of = f"{counts.long_captions:,} of {counts.captions:,} {captions} ({counts.long_caption_share:.1%}{scope})"
    context_words = f"{whose} text context of {limits.context_length} tokens"
    if limits.caption_unit == "tokens":
        return (
            f"{of} are longer than {context_words} ({limits.caption_room} caption tokens besides start and end of "
            f"text; longest {counts.longest_caption} tokens): training and evaluation read only their first "
            f"{limits.caption_room} tokens. To read {_portion(covered)} of them whole, train with "
            f"--model.text.context_length {context}"
        )
    return (
        f"at least {of} are longer than {context_words} ({limits.caption_room} caption tokens besides start and "
        f"end of text): they have more than {limits.caption_room} words (longest {counts.longest_caption} words) and "
        f"every word is one token or more, so training and evaluation read only the start of each. Count their "
        f"tokens with {tokenizer_option}; to read {_portion(covered)} of them whole, train with "
        f"--model.text.context_length {context} or more"
    )


def _portion(share: float) -> str:
    """"all", or a share rounded down (99.96% is "99.9%", not "all")."""
    return "all" if share >= 1.0 else f"{math.floor(share * 1000) / 10:.1f}%"


def _seconds(value: float) -> str:
    """Seconds as a reader compares them: 1.01 and 3.50 below 10 s, 73.0 below 100 s, whole seconds above."""
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


__all__ = [
    "COVER_SHARE", "MAX_BYTES", "MAX_SAMPLES", "SourceLengths", "measure_sources", "model_limits",
    "truncation_lines", "written_truncation_lines",
]
