"""What an evaluation set reads besides tar shards, and the class names its data record.

A ``data.eval`` entry's ``shards`` (or ``gallery_shards``, ``train_shards``) may be a
folder with one sub-folder per class, as ``multimodal eval --data`` takes it: its files of
the set's modality are labelled by the one rule of
:func:`multimodal.data.writing.listing.class_folder_files` (sub-folders sorted by name) and read
with the preprocessing and collation that shards are read with (:class:`ClassFolderLoader`).
Training and ``multimodal eval`` make a set's loaders here (:func:`eval_loader`).

A set's shards may mix modalities: samples without the one it reads are passed over and
counted, the normal case rather than an error (:func:`not_evaluated`); their reader does
not warn of them at every pass, its caller says them once. A sample that holds the
modality and does not decode is still warned of.

A zero-shot set given no ``class_names`` takes them from its data: the class folders'
names, or the ``class_name`` that each sample's json records beside its ``label``
(``multimodal shards --layout classes`` writes both) (:func:`data_class_names`). Names
that are given are held against that record (:func:`check_given_names`): a name given
for one label that the data records under another is an error, the classic one being
names listed in counting order for shards labelled alphabetically.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from multimodal.data.pipeline.batches import collate_samples
from multimodal.data.writing.listing import class_folder_files, class_name_in_words
from multimodal.data.pipeline.loader import ShardLoader, finish_batch, make_loader
from multimodal.data.modalities.image_modality import rasterised
from multimodal.data.modalities.registry import get_modality, normalize_extension
from multimodal.data.pipeline.shard_reader import SHARD_SUFFIXES, expand_shards, is_remote, read_shard
from multimodal.data.pipeline.remote import RemoteConfig
from multimodal.data.pipeline.skip_counts import DataStats, WorkerCounts
from multimodal.data.pipeline.source_spec import SourceSpec


def is_class_folder(shards: str) -> bool:
    """Whether a set's ``shards`` is a local folder holding no tar shard of its own: class sub-folders, then.

    The rule ``multimodal eval --data`` tells a folder of class folders from a folder of shards by.
    """
    if not isinstance(shards, str) or is_remote(shards) or "::" in shards:
        return False
    path = Path(shards[len("file:"):] if shards.startswith("file:") else shards)
    return path.is_dir() and not any(child.name.endswith(SHARD_SUFFIXES) and child.is_file()
                                     for child in path.iterdir())


@dataclass
class ClassFolder:
    """The files of one modality in a folder of class folders.

    ``folders``: the class folders' names, sorted (label order); ``class_names``: the same
    in words (``golden_retriever`` -> ``golden retriever``); ``files``: (path, label) of
    every file of the modality.
    """

    root: Path
    modality: str
    folders: list[str]
    class_names: list[str]
    files: list[tuple[Path, int]]


def read_class_folder(root: str | Path, modality: str) -> ClassFolder:
    """The class folders of ``root`` and their files of ``modality``; ValueError when there are none."""
    root = Path(root)
    folders, files = class_folder_files(root)
    if not folders:
        raise ValueError(f"folder {root} holds neither .tar shards nor class sub-folders holding files; "
                         "give a shard spec, or a folder with one sub-folder per class")
    definition = get_modality(modality)
    # The files `multimodal eval` takes from a folder: SVG drawings among the images.
    own = [(path, label) for path, label in files if normalize_extension(path.suffix) in definition.folder_extensions]
    if not own:
        raise ValueError(f"the class folders of {root} ({', '.join(folders[:5])}{' ...' if len(folders) > 5 else ''}) "
                         f"hold no {definition.one} file (.{', .'.join(definition.folder_extensions)})")
    return ClassFolder(root, modality, folders, [class_name_in_words(name) for name in folders], own)


class SkippedFile(NamedTuple):
    """A file of a class folder that could not be read: its path, the error's type and its message."""

    path: str
    error: str  # "ValueError"
    message: str


class ClassFolderLoader:
    """Labelled batches of one modality's files in class folders, as a finite shard loader gives them.

    Each pass reads the files in order: ``get_modality(m).load_member`` with evaluation
    preprocessing, :func:`~multimodal.data.pipeline.batches.collate_samples` (audio as windows,
    ``label`` int64 (B,)), then :func:`~multimodal.data.pipeline.loader.finish_batch` (each definition's
    step after the loader: images normalised). A file that does not decode is skipped, counted in ``stats``
    (``bad_image`` ...) as a sample of a shard is, and listed in ``skipped`` (this pass's).

    ``__key__`` of an item: its path under the folder (``cats/1.png``); with ``path_keys``,
    its whole path as listed (``pets/cats/1.png``), which a reader of the keys can open.
    ``log_skips`` False: no warning of the first file skipped of each reason, for a caller
    that names every file of ``skipped`` itself.
    """

    def __init__(self, folder: ClassFolder, name: str, *, batch_size: int, preprocess: Mapping[str, object],
                 path_keys: bool = False, log_skips: bool = True) -> None:
        if folder.modality not in preprocess:
            raise ValueError(f"source {name!r}: no {folder.modality} preprocessing given (the model has no "
                             f"{folder.modality} encoder)")
        self.folder, self.name, self.batch_size, self.preprocess = folder, name, batch_size, dict(preprocess)
        self.path_keys = path_keys
        self.quiet = () if log_skips else (f"bad_{folder.modality}",)
        self.stats = DataStats([name], quiet=self.quiet)
        self.skipped: list[SkippedFile] = []

    def __iter__(self) -> Iterator[dict]:
        self.stats = DataStats([self.name], quiet=self.quiet)
        self.skipped = []
        counts = WorkerCounts()
        samples = []
        for path, label in self.folder.files:
            sample = self._sample(path, label, counts)
            if sample is None:
                continue
            samples.append(sample)
            if len(samples) == self.batch_size:
                yield self._batch(samples, counts)
                samples = []
        if samples:
            yield self._batch(samples, counts)
        self.stats.add(counts.take())
        if self.stats.samples[self.name] == 0:
            raise ValueError(f"source {self.name!r} yielded no valid sample from the {len(self.folder.files)} "
                             f"{get_modality(self.folder.modality).many} of {self.folder.root}; skipped: "
                             f"{self.stats.skipped.get(self.name) or 'nothing'}")

    def _sample(self, path: Path, label: int, counts: WorkerCounts) -> dict | None:
        modality = self.folder.modality
        definition = get_modality(modality)
        try:
            data = path.read_bytes()
            if normalize_extension(path.suffix) not in definition.extensions:
                # A format no shard holds (an SVG drawing): drawn as the shard writer draws it.
                data = rasterised(data)
            loaded = definition.load_member(data, self.preprocess[modality], train=False, rng=None, levers=None)
        except (OSError, ValueError) as error:
            counts.skip(self.name, f"bad_{modality}", f"{path}: {error}")
            self.skipped.append(SkippedFile(str(path), type(error).__name__, str(error)))
            return None
        counts.valid(self.name)
        key = str(path) if self.path_keys else path.relative_to(self.folder.root).as_posix()
        return {"__key__": key, "label": label, **loaded}

    def _batch(self, samples: list[dict], counts: WorkerCounts) -> dict:
        self.stats.add(counts.take())
        batch = collate_samples(samples, None, self.name, train=False)
        return finish_batch(batch, self.preprocess)


def eval_loader(spec: SourceSpec, *, batch_size: int, preprocess: Mapping[str, object],
                tokenize: Callable | None = None, num_workers: int = 0,
                remote: RemoteConfig | None = None) -> ClassFolderLoader | ShardLoader:
    """One finite, ordered pass over an evaluation source (see ``EvalSetConfig.source_specs``).

    A folder of class folders is read by a :class:`ClassFolderLoader` (the files of
    ``spec.modalities[0]``), shards by the shard loader with evaluation preprocessing.
    Its samples that lack a modality the set reads are counted without a warning: the
    caller says them (:func:`not_evaluated`); decode errors are warned of as ever.
    """
    if is_class_folder(spec.shards):
        return ClassFolderLoader(read_class_folder(spec.shards, spec.modalities[0]), spec.name,
                                 batch_size=batch_size, preprocess=preprocess)
    loader = make_loader([spec], batch_size=batch_size, train=False, seed=0, num_workers=num_workers,
                         preprocess=preprocess, tokenize=tokenize, remote=remote)
    loader.stats.quiet(not_evaluated_reasons(spec.modalities))
    return loader


def not_evaluated_reasons(modalities: Iterable[str]) -> list[str]:
    """The skip reasons of samples that lack a file modality a set reads: ``["missing_audio"]``."""
    return [f"missing_{name}" for name in modalities if get_modality(name).reads_files]


def not_evaluated(stats: DataStats, modalities: Iterable[str]) -> dict[str, int]:
    """``{"missing_audio": n}``: samples a pass over a set's data passed over for lacking a file
    modality the set reads (``modalities``), by reason; empty when there were none.

    On shards that mix pictures and sounds such a sample is not an input of the
    evaluation (as ``multimodal embed`` passes it over), so not a failure; a sample that
    has the modality and does not decode still is.
    """
    absent = set(not_evaluated_reasons(modalities))
    counts: dict[str, int] = {}
    for reasons in stats.skipped.values():
        for reason, count in reasons.items():
            if reason in absent:
                counts[reason] = counts.get(reason, 0) + count
    return counts


def not_evaluated_lines(counts: Mapping[str, int], data: str) -> list[str]:
    """What :func:`not_evaluated` counted, in words, a line per reason:
    ``3 sample(s) of x.tar hold no audio (missing_audio): not evaluated``."""
    return [f"{count} sample(s) of {data} hold no {reason[len('missing_'):]} ({reason}): not evaluated"
            for reason, count in sorted(counts.items())]


# The class names a set's data record --------------------------------------------------------


@dataclass(frozen=True)
class RecordedName:
    """A class name as the data records it: its label, and where (a sample's key and shard, or a folder)."""

    label: int
    name: str
    where: str


def recorded_name(sample: Mapping[str, object]) -> RecordedName | None:
    """The (label, class name) a raw shard sample's json records (``label`` int, ``class_name`` text), else None."""
    try:
        fields = json.loads(sample.get("json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return None
    if not isinstance(fields, dict):
        return None
    label, name = fields.get("label"), fields.get("class_name")
    if isinstance(label, bool) or not isinstance(label, int) or not isinstance(name, str):
        return None
    return RecordedName(label, name, f"sample {sample.get('__key__')} of {sample.get('__url__')}")


GIVE_CLASS_NAMES = "give class_names (label i -> name)"  # what to do when the data name no classes


class ClassRecord:
    """Class names by label, gathered from samples; two names for one label are an error.

    ``remedy``: what a message tells the user to do when the data name too few classes
    (a setting's words in a run file, an option's on the command line).
    """

    def __init__(self, origin: str, remedy: str = GIVE_CLASS_NAMES) -> None:
        self.origin = origin  # what the names come from, as a message says it
        self.remedy = remedy
        self.names: dict[int, RecordedName] = {}

    def add(self, recorded: RecordedName | None) -> None:
        if recorded is None:
            return
        known = self.names.setdefault(recorded.label, recorded)
        if known.name != recorded.name:
            raise ValueError(f"{self.origin} record label {recorded.label} as {known.name!r} ({known.where}) and as "
                             f"{recorded.name!r} ({recorded.where}); a label must name one class")

    def in_label_order(self) -> list[str]:
        """The names of labels 0 to the highest, or ValueError naming labels no sample names."""
        if not self.names:
            raise ValueError(f"{self.origin} record no class name (a json 'label' with its 'class_name', as "
                             f"`multimodal shards --layout classes` writes them); {self.remedy}")
        missing = [label for label in range(max(self.names) + 1) if label not in self.names]
        if missing or min(self.names) < 0:
            wrong = missing or sorted(label for label in self.names if label < 0)
            raise ValueError(f"{self.origin} name no class for label(s) {wrong[:10]} (they record labels "
                             f"{sorted(self.names)[:10]}{' ...' if len(self.names) > 10 else ''}); {self.remedy}")
        return [self.names[label].name for label in range(len(self.names))]


def recorded_class_names(shards: str, remedy: str = GIVE_CLASS_NAMES) -> list[str]:
    """The class names ``shards`` record, in label order: the ``classes.json`` the shard writer puts
    beside them (no shard opened, see :mod:`multimodal.data.writing.class_record`), else those every sample
    records (one pass over the shards: shards written before that record, or elsewhere).

    ValueError when they record none, leave a label unnamed (``remedy`` says what to do
    then) or name one label twice.
    """
    from multimodal.data.writing.class_record import recorded_beside

    urls = expand_shards(shards)
    beside = recorded_beside(urls)
    if beside is not None:
        return beside
    record = ClassRecord(f"the samples of {shards}", remedy)
    for url in urls:
        for sample in read_shard(url, []):
            record.add(recorded_name(sample))
    return record.in_label_order()


def data_class_names(shards: str, modality: str) -> list[str]:
    """The class names a set's data gives, in label order: its class folders', or those its shards record."""
    if is_class_folder(shards):
        return read_class_folder(shards, modality).class_names
    return recorded_class_names(shards)


def _comparable(name: str) -> str:
    """A class name as two spellings of it compare: ``Golden_Retriever`` and ``golden retriever`` alike."""
    return " ".join(name.replace("_", " ").split()).casefold()


def check_given_names(given: Sequence[str], recorded: Mapping[int, RecordedName], origin: str) -> None:
    """ValueError when ``given`` (class_names, label i -> name) contradicts what the data record.

    A contradiction: a label the data use beyond the names given, or a name given for one
    label that the data record for another. Names the data do not record at all are
    other names for the classes (``tench`` for ``n01440764``) and stand.
    """
    positions = {_comparable(name): index for index, name in enumerate(given)}
    for label in sorted(recorded):
        entry = recorded[label]
        if not 0 <= label < len(given):
            raise ValueError(f"{entry.where} has label {label}, but class_names names {len(given)} classes "
                             f"(labels 0-{len(given) - 1}); give a name for every label, or leave class_names "
                             f"out to take the names {origin} record")
        elsewhere = positions.get(_comparable(entry.name))
        if elsewhere is not None and elsewhere != label:
            order = [recorded[n].name if n in recorded else "?" for n in range(max(recorded) + 1)]
            raise ValueError(
                f"class_names are not in label order: {origin} give label {label} to {entry.name!r} "
                f"({entry.where}), but class_names[{label}] is {given[label]!r} and class_names[{elsewhere}] is "
                f"{given[elsewhere]!r}. Leave class_names out to take these names, or list them in label order: "
                f"{order[:12]}{' ...' if len(order) > 12 else ''}")


def check_same_class_folders(first: Sequence[str], other: Sequence[str], first_name: str, other_name: str) -> None:
    """ValueError unless ``other`` (a part's class names, such as a probe's training set) are ``first``'s
    in the same order: label i is the i-th class folder of each. The message names the folders only one has."""
    if list(first) != list(other):
        only_first = sorted(set(first) - set(other))
        only_other = sorted(set(other) - set(first))
        raise ValueError(f"its class folders must be those of {first_name} (label i is the i-th folder of each); "
                         f"only in {first_name}: {only_first[:10]}, only in {other_name}: {only_other[:10]}")


def folder_record(folder: ClassFolder) -> dict[int, RecordedName]:
    """A class folder's names as a record: label i is the i-th class folder, sorted by name."""
    return {label: RecordedName(label, name, f"folder {folder.folders[label]}, number {label} by name")
            for label, name in enumerate(folder.class_names)}


__all__ = [
    "ClassFolder", "ClassFolderLoader", "ClassRecord", "GIVE_CLASS_NAMES", "RecordedName", "SkippedFile",
    "check_given_names", "check_same_class_folders", "data_class_names", "eval_loader", "folder_record", "is_class_folder", "not_evaluated",
    "not_evaluated_lines", "not_evaluated_reasons", "read_class_folder", "recorded_class_names", "recorded_name",
]
