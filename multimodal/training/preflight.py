"""Everything a training run will read, checked before its first step.

A run that cannot finish should fail in seconds with one line, not after ten minutes
of training: a typo in an evaluation set's path, a tokenizer or a checkpoint to start
from, an evaluation set whose samples lack the labels or the modality it needs, an
output folder that cannot be written. Each check raises ValueError naming the setting
(its dotted key) and the path; none of them writes anything.

The training sources are checked where they are resolved
(:func:`multimodal.training.data_sources.resolve_sources`); this module checks the rest.
"""
from __future__ import annotations

import itertools
import os
from contextlib import closing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from multimodal.checkpoint import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CheckpointError, read_config
from multimodal.data.pipeline.sample_fields import SampleFields, UnusableSample
from multimodal.data.pipeline.shard_reader import ShardProblem, expand_shards, is_remote, read_shard
from multimodal.apps.evaluation_sources import (
    ClassRecord,
    check_given_names,
    check_same_class_folders,
    data_class_names,
    folder_record,
    is_class_folder,
    read_class_folder,
    recorded_name,
)
from multimodal.apps.evaluation import EvalSetConfig
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


def check_eval_sets(eval_sets: Sequence[EvalSetConfig], model: ModelConfig,
                    samples_checked: int | None = None) -> list[EvalSetConfig]:
    """Every evaluation set fits the model and its data exist and hold what it reads; returns the sets settled.

    Shards: the first ``samples_checked`` (``SAMPLES_CHECKED`` by default) samples of the local
    shards, in order (at most ``BYTES_CHECKED`` bytes of them: an audio set's clips are large), must include one
    that holds the set's modalities (and a label, where the set reads one): samples of
    another modality, as in a shard mixing pictures and sounds, are skipped when the set
    is read, as in training. The labels of the samples that fit must name a class of
    ``class_names``, and the class names those samples record (json ``class_name``) must
    not contradict them (see :func:`multimodal.apps.evaluation_sources.check_given_names`). That
    takes a fraction of a second.

    Class folders: they hold files of the set's modality, and ``class_names`` (when given)
    name as many classes as there are folders, in their order.

    Returned: the sets, each zero-shot set given no ``class_names`` with the names its
    data record (its class folders' names, or its shards' json ``class_name``, one pass).
    """
    settled = []
    for index, eval_set in enumerate(eval_sets):
        where = f"data.eval[{index}] ({eval_set.name})"
        missing = [m for m in eval_set.model_modalities if m not in model.modalities]
        if missing:
            raise ValueError(f"{where}: the model has no {' or '.join(missing)} encoder (it has {model.modalities}); "
                             f"{eval_set.task} of {eval_set.modality} needs {eval_set.model_modalities}")
        if eval_set.task == "zeroshot" and not eval_set.class_names:
            try:
                names = data_class_names(eval_set.shards, eval_set.modality)
            except ValueError as error:
                raise ValueError(f"{where}.shards: {error}") from None
            eval_set = replace(eval_set, class_names=names)
        specs = eval_set.source_specs()
        _check_alike(specs, eval_set, where)
        folder_classes: dict[str, list[str]] = {}  # each part's class folders, read once
        for field, spec in specs.items():
            if is_class_folder(spec.shards):
                folder_classes[field] = _check_class_folder(spec, eval_set, f"{where}.{field}")
                continue
            try:
                urls = expand_shards(spec.shards)
            except ValueError as error:
                raise ValueError(f"{where}.{field}: {error}") from None
            _check_first_samples(urls, spec.modalities, spec.sample_fields(), eval_set, f"{where}.{field}",
                                 samples_checked if samples_checked is not None else SAMPLES_CHECKED)
        _check_same_classes(folder_classes, where)
        settled.append(eval_set)
    return settled


def _check_alike(specs: dict, eval_set: EvalSetConfig, where: str) -> None:
    """A set's parts are all class folders or all shards, and class folders only where it reads labelled items."""
    folders = {field: is_class_folder(spec.shards) for field, spec in specs.items()}
    if folders.get("shards") and len(specs["shards"].modalities) > 1:
        raise ValueError(f"{where}.shards: {eval_set.shards} is a folder of class folders, a classification set; "
                         f"retrieval of {' and '.join(specs['shards'].modalities)} pairs needs shards whose samples "
                         "hold both")
    if len(set(folders.values())) > 1:
        kinds = ", ".join(f"{field} {'class folders' if folder else 'shards'}" for field, folder in folders.items())
        raise ValueError(f"{where}: give its parts alike, all class folders or all shards ({kinds}): labels "
                         "number the sorted class folders in one and what the shards say in the other")


def _check_same_classes(folder_classes: dict[str, list[str]], where: str) -> None:
    """The class folders of a set's parts (a probe's training and test sets, queries and gallery) are the same.

    ``folder_classes``: the class names of each part that is class folders (none, or all: see _check_alike).
    """
    for field, names in folder_classes.items():
        if field == "shards":
            continue
        try:
            check_same_class_folders(folder_classes["shards"], names, "shards", field)
        except ValueError as error:
            raise ValueError(f"{where}.{field}: {error}") from None


def _check_class_folder(spec, eval_set: EvalSetConfig, where: str) -> list[str]:
    """The folder holds class folders with files of the set's modality; a zero-shot set's class_names fit them.

    Returns the folders' class names (label order)."""
    try:
        folder = read_class_folder(spec.shards, spec.modalities[0])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if eval_set.task != "zeroshot":  # a zero-shot set has no other part than its shards
        return folder.class_names
    given, found = eval_set.class_names, folder.class_names
    if len(given) != len(found):
        raise ValueError(f"{where}: class_names names {len(given)} classes, but {folder.root} has {len(found)} class "
                         f"folders ({', '.join(found[:10])}{' ...' if len(found) > 10 else ''}); give one name per "
                         "folder in their sorted order, or leave class_names out to take the folders' names")
    try:
        check_given_names(given, folder_record(folder), f"the class folders of {folder.root}, sorted by name,")
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    return found


SAMPLES_CHECKED = 1000  # samples of an evaluation set's shards looked at, at start-up
BYTES_CHECKED = 64 << 20  # and at most this many bytes of them read


def _check_first_samples(urls: list[str], modalities: list[str], fields: SampleFields, eval_set: EvalSetConfig,
                         where: str, samples_checked: int) -> None:
    local = list(itertools.takewhile(lambda url: not is_remote(url), urls))
    if not local:
        return  # remote: opening it may cost more than a start-up check should
    looked = _Looked(modalities, fields, eval_set, where, samples_checked)
    for url in local:
        problems: list[ShardProblem] = []
        with closing(read_shard(url, problems)) as samples:  # closed on every way out, the raises included
            for sample in samples:
                if looked.full() or looked.enough():
                    break
                looked.judge(sample)
        looked.shard_done(url, problems)
        if looked.full() or looked.enough():
            break
    looked.conclude(local)


class _Looked:
    """What the start-up check saw of a set's first samples: which fit, why the others do not, the names recorded."""

    def __init__(self, modalities: list[str], fields: SampleFields, eval_set: EvalSetConfig, where: str,
                 samples_checked: int) -> None:
        self.modalities, self.fields, self.eval_set, self.where = modalities, fields, eval_set, where
        self.samples_checked = samples_checked
        self.count = self.size = self.fitting = 0
        self.misfits: dict[str, int] = {}  # reason -> samples
        self.example: tuple[str, str, UnusableSample] | None = None  # the first misfit: key, url, why
        self.unread: list[ShardProblem] = []
        self.shards = 0
        self.record = ClassRecord("the shards")

    def full(self) -> bool:
        return self.count >= self.samples_checked or self.size > BYTES_CHECKED

    def enough(self) -> bool:
        """One sample fits, and the set reads no class names to check further labels against."""
        return self.fitting > 0 and self.eval_set.task != "zeroshot"

    def judge(self, sample: dict) -> None:
        self.count += 1
        self.size += sum(len(value) for key, value in sample.items() if not key.startswith("__"))
        try:
            for modality in self.modalities:
                self.fields.raw_input(sample, modality)
            label = self.fields.label(sample) if self.fields.label_key is not None else None
        except UnusableSample as misfit:
            self.misfits[misfit.reason] = self.misfits.get(misfit.reason, 0) + 1
            if self.example is None:
                self.example = (sample["__key__"], sample["__url__"], misfit)
            return
        self.fitting += 1
        if self.eval_set.task == "zeroshot":
            classes = len(self.eval_set.class_names)
            if not 0 <= label < classes:
                raise ValueError(f"{self.where}: sample {sample['__key__']} of {sample['__url__']} has label {label}, "
                                 f"but class_names names {classes} classes (labels 0-{classes - 1}); give a name for "
                                 "every label")
            try:
                self.record.add(recorded_name(sample))
            except ValueError as error:
                raise ValueError(f"{self.where}: {error}") from None

    def shard_done(self, url: str, problems: list[ShardProblem]) -> None:
        self.shards += 1
        self.unread.extend(problems)

    def conclude(self, urls: list[str]) -> None:
        if self.count == 0:
            detail = self.unread[0].message if self.unread else "it holds no sample"
            raise ValueError(f"{self.where}: {urls[0]} cannot be read: {detail}")
        if self.fitting == 0:
            wanted = " and ".join(self.modalities) + (" with a class label" if self.fields.label_key else "")
            key, url, misfit = self.example
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.misfits.items()))
            raise ValueError(f"{self.where}: the set reads {wanted}, but none of {self._extent(urls)} does "
                             f"({reasons}); the first, {key} of {url}: {misfit}")
        if self.eval_set.task == "zeroshot":
            try:
                check_given_names(self.eval_set.class_names, self.record.names, "the shards")
            except ValueError as error:
                raise ValueError(f"{self.where}: {error}") from None

    def _extent(self, urls: list[str]) -> str:
        """What was looked at, in words: ``the 6 samples of x.tar`` or ``the first 1000 samples (2 of 9 shards)``."""
        if not self.full() and self.shards == len(urls):
            return (f"the {self.count} samples of {urls[0]}" if len(urls) == 1
                    else f"the {self.count} samples of its {len(urls)} local shards")
        bound = (f"{self.samples_checked} samples" if self.count >= self.samples_checked
                 else f"{BYTES_CHECKED >> 20} MiB")
        return (f"the first {self.count} samples of {urls[0]}" if self.shards == 1
                else f"the first {self.count} samples, in {self.shards} of its {len(urls)} shards") + \
            f" (a start-up check reads at most {bound})"


__all__ = ["check_checkpoint_dir", "check_eval_sets", "check_output_dir", "check_tokenizer_path"]
