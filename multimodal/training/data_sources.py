"""What training reads: data configuration, the tokenizer, loaders with the model's preprocessing.

A run resolves its data in two steps. ``resolve_sources`` checks the configured
sources (or builds the built-in demo on first use when none is configured); the
trainer then picks the tokenizer (a file, a checkpoint's, or one trained on the
demo's captions) and fits the text tower to it; ``prepare`` makes the loaders: a
factory for the training stream (re-created with a new seed at every checkpoint,
see multimodal/training/trainer.py) and the evaluation sets.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from multimodal.data.demo import dataset
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.modalities.registry import MEDIA_MODALITIES, get_modality
from multimodal.data.pipeline.remote import RemoteConfig
from multimodal.data.pipeline.shard_reader import expand_shards, is_remote
from multimodal.data.pipeline.source_spec import AugmentConfig, SourceSpec, source_name
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal import checkpoint
from multimodal.apps.evaluation_sources import data_class_names, eval_loader, not_evaluated_lines
from multimodal.apps.evaluation import EvalSetConfig
from multimodal.model import ModelConfig
from multimodal.training.demo_sources import demo_augment, demo_eval_sets, demo_training_sources  # the run's defaults

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    # Empty: the built-in demo. Each entry is what the loader reads (see SourceSpec), so every
    # option of a source, its name and keys included, is a setting of the run.
    train: list[SourceSpec] = field(default_factory=list)
    eval: list[EvalSetConfig] = field(default_factory=list)  # with the demo and none given: the demo's sets
    batch_size: int = 128  # per process and micro-batch
    eval_batch_size: int = 250
    # Loader worker processes per training process; None: chosen from the cores the run gets
    # (see multimodal/training/threads.py: 2 on a CPU with 2 cores or more).
    num_workers: int | None = None
    # Added to the workers' niceness (0-19); None: 19 where several compute threads share
    # their cores with the workers (a worker would stall their parallel regions), else 0
    # (see multimodal/training/threads.py).
    worker_nice: int | None = None
    tokenizer: str | None = None  # a tokenizer.json; None with the demo: trained on its captions
    tokenizer_vocab_size: int = 512
    demo_dir: str | None = None  # None: the default cache directory
    demo_scale: float = 1.0  # fraction of the demo's data (all voices and digits kept): smaller, quicker runs
    # The demo's image-text batches per audio-text batch (why 2: docs/decisions.md).
    demo_image_weight: float = 2.0
    shuffle_buffer: int = 1000
    # The demo's training augmentation (no effect on configured sources, which carry their own); null: none.
    demo_augment: AugmentConfig | None = field(default_factory=demo_augment)
    # The demo's samples of one digit are positives of each other in the loss (its sources'
    # label_key): ten classes in a batch of 128 made a dozen same-digit pairs per row negatives.
    demo_label_positives: bool = True
    # How shards over HTTP(S) and from pipe: commands are read: stall timeout, retries, shards
    # fetched ahead at once (see multimodal/data/remote.py and docs/scale.md).
    remote: RemoteConfig = field(default_factory=RemoteConfig)


@dataclass
class PreparedEvalSet:
    config: EvalSetConfig
    loader_factory: object
    gallery_loader_factory: object = None
    train_loader_factory: object = None  # a linear probe's training set

    def loader(self):
        return self.loader_factory()

    def gallery_loader(self):
        return self.gallery_loader_factory()

    def train_loader(self):
        return self.train_loader_factory()


@dataclass
class PreparedData:
    config: DataConfig
    model: ModelConfig
    tokenizer: Tokenizer | None
    sources: list[SourceSpec]
    eval_sets: list[PreparedEvalSet]
    current_loader: object = None
    # (set name, field) whose samples without the set's modality were said (see say_not_evaluated).
    said_not_evaluated: set[tuple[str, str]] = field(default_factory=set)

    def train_loader(self, *, seed: int, rank: int = 0, world_size: int = 1, device=None):
        """The endless, shuffled training stream for this process (resampled shards, mixed by weight).

        ``device``: where batches arrive; images travel as uint8 and are normalised there.
        """
        # The sources as configured (an unnamed one stays unnamed in config.json); the loader names
        # each by the one rule, source_name, that _check_distinct_names checked.
        self.current_loader = make_loader(
            self.sources,
            batch_size=self.config.batch_size,
            train=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.config.num_workers,
            worker_nice=self.config.worker_nice,
            preprocess=self.model.preprocess,
            tokenize=self.tokenize,
            shuffle_buffer=self.config.shuffle_buffer,
            device=device,
            remote=self.config.remote,
        )
        return self.current_loader

    def eval_loader(self, spec: SourceSpec):
        """A finite pass over an evaluation source (see ``EvalSetConfig.source_specs``) with evaluation
        preprocessing: :func:`multimodal.apps.evaluation_sources.eval_loader`, as ``multimodal eval`` reads it."""
        return eval_loader(spec, batch_size=self.config.eval_batch_size, preprocess=self.model.preprocess,
                           tokenize=self.tokenize, remote=self.config.remote)

    def say_not_evaluated(self, eval_set: EvalSetConfig, field_name: str, counts: dict[str, int]) -> None:
        """Logs, once per run, how many samples of an evaluation set's ``field_name`` (``shards`` ...) lack
        the modality it reads (``counts``, see :func:`multimodal.apps.evaluation_sources.not_evaluated`).

        On shards that mix pictures and sounds they are the normal case and the same at every
        evaluation, so the first evaluation says them and the later ones only count them.
        """
        if (eval_set.name, field_name) in self.said_not_evaluated:
            return
        self.said_not_evaluated.add((eval_set.name, field_name))
        for line in not_evaluated_lines(counts, getattr(eval_set, field_name)):
            logger.warning("eval set %r: %s (said at the first evaluation only)", eval_set.name, line)

    def tokenize(self, texts: list[str]):
        return self.tokenizer(texts, self.model.text.context_length)

    def skipped_total(self) -> int:
        """Samples and shards skipped so far by the current training loader."""
        return self.current_loader.stats.total_skipped() if self.current_loader is not None else 0


@dataclass
class ResolvedSources:
    """What a run reads: training sources and evaluation sets (the demo's when none is configured)."""

    train: list[SourceSpec]
    eval_sets: list[EvalSetConfig]
    demo: dataset.DemoPaths | None = None


def resolve_sources(config: DataConfig, model: ModelConfig, *, progress: bool = True) -> ResolvedSources:
    """The configured sources, checked; or the built-in demo (built on first use) when none is configured.

    Raises ValueError naming the setting when a source's shards do not exist, its
    modalities are not the model's, it asks for every caption (``all_captions``, an
    evaluation option) or its name is another's, so a run fails before it starts.
    A zero-shot set given no class names takes those its data record (see
    :func:`multimodal.training.preflight.check_eval_sets`, which a run calls first and which
    settles them already).
    """
    eval_sets = [_with_class_names(eval_set, index) for index, eval_set in enumerate(config.eval)]
    if config.train:
        for index, source in enumerate(config.train):
            where = f"data.train[{index}]"
            if source.all_captions:
                # The training loader refuses it too, but only once the model is built.
                raise ValueError(f"{where}.all_captions: every caption of a sample is for retrieval evaluation; "
                                 "training reads one caption per sample (remove all_captions)")
            unknown = [m for m in source.modalities if m not in model.modalities]
            if unknown:
                raise ValueError(f"{where}.modalities: the model has no {' or '.join(unknown)} encoder "
                                 f"(it has {model.modalities})")
            try:
                expand_shards(source.shards)
            except ValueError as error:
                raise ValueError(f"{where}.shards: {error}") from None
            _check_augment(source, model, where, warn_unused=True)
        _check_distinct_names(config.train)
        return ResolvedSources(train=list(config.train), eval_sets=eval_sets)
    train, paths = demo_training_sources(
        model, demo_dir=config.demo_dir, scale=config.demo_scale, image_weight=config.demo_image_weight,
        augment=config.demo_augment, label_positives=config.demo_label_positives, progress=progress,
    )
    for source in train:
        _check_augment(source, model, "data.demo_augment", warn_unused=False)
    if not eval_sets:
        eval_sets = [e for e in demo_eval_sets(paths) if _fits(e, model)]
    return ResolvedSources(train=train, eval_sets=eval_sets, demo=paths)


def _check_distinct_names(train: list[SourceSpec]) -> None:
    """Raises ValueError when two training sources would go by one name: the loader keys its counts by name."""
    first: dict[str, int] = {}
    for index, source in enumerate(train):
        name = source_name(source, index)
        if name in first:
            raise ValueError(f"data.train[{first[name]}] and data.train[{index}] both go by the name {name!r} "
                             "(an unnamed source is train{index}); give them distinct names")
        first[name] = index


def _check_augment(source: SourceSpec, model: ModelConfig, where: str, *, warn_unused: bool) -> None:
    """Raises ValueError for augmentation the model's preprocessing makes meaningless; warns about levers
    of a modality the source does not read (``warn_unused``)."""
    for modality, preprocess in model.preprocess.items():
        levers = source.augment.levers_for(modality)
        if modality in source.modalities and levers is not None:
            get_modality(modality).check_levers(levers, preprocess, f"{where}.augment.{modality}")
    if not warn_unused:
        return
    for modality in MEDIA_MODALITIES:
        if source.augment.enabled_for(modality) and modality not in source.modalities:
            logger.warning("%s.augment.%s is ignored: the source reads %s, not %s", where, modality,
                           " and ".join(source.modalities), modality)


def statistics_warnings(resolved: ResolvedSources, model: ModelConfig, pretrained: set[str] = frozenset()) -> list[str]:
    """One line per way a training source's measured statistics (image_stats.json beside its shards,
    see :attr:`~multimodal.data.modalities.base.Modality.writer_measures`) miss the model's preprocessing.

    ``pretrained``: modalities whose towers start from a checkpoint; they keep the
    preprocessing their weights learned with, whatever the data measure.
    """
    warnings = []
    for index, source in enumerate(resolved.train if resolved.demo is None else []):
        for modality in source.modalities:
            definition, preprocess = get_modality(modality), model.preprocess.get(modality)
            if not definition.writer_measures or preprocess is None or modality in pretrained:
                continue
            first = expand_shards(source.shards)[0]
            if is_remote(first):
                continue
            for line in definition.statistics_warnings(Path(first).parent, preprocess):
                warnings.append(f"data.train[{index}]: {line}")
    return warnings


def load_tokenizer(path: str | Path):
    """Our tokenizer or CLIP's, from a tokenizer.json or a checkpoint directory (which must hold one)."""
    tokenizer = checkpoint.load_tokenizer(path)
    if tokenizer is None:
        raise ValueError(f"{path} has no tokenizer.json")
    return tokenizer


def prepare(config: DataConfig, model: ModelConfig, tokenizer: Tokenizer | None,
            resolved: ResolvedSources) -> PreparedData:
    """Loaders for ``resolved`` sources with ``model``'s preprocessing and ``tokenizer`` (None: no text)."""
    if tokenizer is None and any(get_modality(m).batching == "captions" for s in resolved.train for m in s.modalities):
        raise ValueError(
            "data.tokenizer is not set: give a tokenizer.json (train one with `multimodal tokenizer --captions ...`)"
        )
    data = PreparedData(config=config, model=model, tokenizer=tokenizer, sources=resolved.train, eval_sets=[])
    data.eval_sets = [_prepare_eval_set(data, e) for e in resolved.eval_sets]
    return data


def _with_class_names(eval_set: EvalSetConfig, index: int) -> EvalSetConfig:
    """``eval_set``, a zero-shot set given no class names with those its data record."""
    if eval_set.task != "zeroshot" or eval_set.class_names:
        return eval_set
    try:
        return replace(eval_set, class_names=data_class_names(eval_set.shards, eval_set.modality))
    except ValueError as error:
        raise ValueError(f"data.eval[{index}] ({eval_set.name}).shards: {error}") from None


def _fits(eval_set: EvalSetConfig, model: ModelConfig) -> bool:
    return set(eval_set.model_modalities) <= set(model.modalities)


def _prepare_eval_set(data: PreparedData, eval_set: EvalSetConfig) -> PreparedEvalSet:
    specs = eval_set.source_specs()
    factories = {field: (lambda spec=spec: data.eval_loader(spec)) for field, spec in specs.items()}
    return PreparedEvalSet(config=eval_set, loader_factory=factories["shards"],
                           gallery_loader_factory=factories.get("gallery_shards"),
                           train_loader_factory=factories.get("train_shards"))
