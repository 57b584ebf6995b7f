"""Everything a training run will read, checked before its first step.

A run that cannot finish should fail in seconds with one line, not after ten minutes
of training: a typo in an evaluation set's path, a tokenizer or a checkpoint to start
from, an evaluation set whose samples lack the labels or the modality it needs, an
output folder that cannot be written. Each check raises ValueError naming the setting
(its dotted key) and the path; none of them writes anything.

The training sources are checked where they are resolved
(:func:`multimodal.sources.resolve_sources`); this module checks the rest.
"""
from __future__ import annotations

import itertools
import os
from contextlib import closing
from collections.abc import Sequence
from pathlib import Path

from multimodal.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CheckpointError, read_config
from multimodal.data.sample_fields import SampleFields, UnusableSample
from multimodal.data.shards import ShardProblem, expand_shards, is_remote, read_shard
from multimodal.evaluation import EvalSetConfig
from multimodal.model import ModelConfig


def check_checkpoint_dir(path: str | os.PathLike, key: str) -> None:
    """``path`` is a checkpoint directory (its config reads, its weights are there), or ValueError naming ``key``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{key}: {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{key}: {path} is a file, not a checkpoint directory ({CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        read_config(path)
    except CheckpointError as error:
        raise ValueError(f"{key}: {error}") from None
    if not (path / WEIGHTS_FILE).is_file():
        raise ValueError(f"{key}: {path} is not a checkpoint directory: {WEIGHTS_FILE} is missing")


def check_tokenizer_path(path: str | os.PathLike, key: str) -> None:
    """``path`` is a tokenizer.json or a directory holding one, or ValueError naming ``key``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{key}: {path} does not exist (give a tokenizer.json, or a checkpoint directory holding one)")
    if path.is_dir() and not (path / TOKENIZER_FILE).is_file():
        raise ValueError(f"{key}: {path} is a directory without a {TOKENIZER_FILE}")


def check_output_dir(run_dir: str | os.PathLike, key: str = "output_dir") -> None:
    """The run directory can be created (or written, if it exists), without creating anything now."""
    run_dir = Path(run_dir).absolute()
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{key}: cannot create {run_dir}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}: cannot write {run_dir}: {existing} is not writable; choose another --output_dir")


def check_eval_sets(eval_sets: Sequence[EvalSetConfig], model: ModelConfig) -> None:
    """Every evaluation set fits the model, its shards exist, and its first shard holds what the set reads.

    The first sample must hold the set's modalities (and a label, where the set reads
    one); the labels of the first ``LABELS_CHECKED`` samples (at most ``LABEL_BYTES_CHECKED``
    bytes of them: an audio set's clips are large) must name a class of
    ``class_names``, since one beyond them stops the evaluation. That takes a fraction of
    a second; later samples that are unusable are skipped and counted, as in training.
    """
    for index, eval_set in enumerate(eval_sets):
        where = f"data.eval[{index}] ({eval_set.name})"
        missing = [m for m in eval_set.model_modalities if m not in model.modalities]
        if missing:
            raise ValueError(f"{where}: the model has no {' or '.join(missing)} encoder (it has {model.modalities}); "
                             f"{eval_set.task} of {eval_set.modality} needs {eval_set.model_modalities}")
        for field, spec in eval_set.source_specs().items():
            try:
                urls = expand_shards(spec.shards)
            except ValueError as error:
                raise ValueError(f"{where}.{field}: {error}") from None
            _check_first_shard(urls[0], spec.modalities, spec.sample_fields(), eval_set, f"{where}.{field}")


LABELS_CHECKED = 1000  # samples of an evaluation set's first shard whose labels are checked at start-up
LABEL_BYTES_CHECKED = 64 << 20  # and at most this many bytes of them read


def _check_first_shard(url: str, modalities: list[str], fields: SampleFields, eval_set: EvalSetConfig,
                       where: str) -> None:
    if is_remote(url):
        return  # remote: opening it may cost more than a start-up check should
    problems: list[ShardProblem] = []
    with closing(read_shard(url, problems)) as samples:  # closed on every way out, the raises included
        _check_samples(samples, problems, url, modalities, fields, eval_set, where)


def _check_samples(samples, problems: list[ShardProblem], url: str, modalities: list[str], fields: SampleFields,
                   eval_set: EvalSetConfig, where: str) -> None:
    """The first sample's members and label, then (zero-shot) the labels of the first LABELS_CHECKED, read lazily."""
    first = next(samples, None)
    if first is None:
        detail = problems[0].message if problems else "it holds no sample"
        raise ValueError(f"{where}: {url} cannot be read: {detail}")
    wanted = " and ".join(modalities) + (" with a class label" if fields.label_key else "")
    try:
        for modality in modalities:
            fields.raw_input(first, modality)
        if fields.label_key is not None:
            fields.label(first)
    except UnusableSample as error:
        raise ValueError(f"{where}: the set reads {wanted}, but the first sample of {url} "
                         f"({first['__key__']}) does not fit: {error}") from None
    if eval_set.task != "zeroshot":
        return
    classes = len(eval_set.class_names)
    size = 0
    for count, sample in enumerate(itertools.chain([first], samples)):  # lazily: a shard may be large
        size += sum(len(value) for key, value in sample.items() if not key.startswith("__"))
        if count == LABELS_CHECKED or size > LABEL_BYTES_CHECKED:
            break
        try:
            label = fields.label(sample)
        except UnusableSample:
            continue  # skipped and counted when the set is read
        if not 0 <= label < classes:
            raise ValueError(f"{where}: sample {sample['__key__']} of {url} has label {label}, but class_names "
                             f"names {classes} classes (labels 0-{classes - 1}); give a name for every label")


__all__ = ["check_checkpoint_dir", "check_eval_sets", "check_output_dir", "check_tokenizer_path"]
