"""Evaluation sets run on a model: zero-shot classification, retrieval and linear probes, by configuration.

Used by the training script (during and after training) and by ``multimodal eval``.
The metrics and loops themselves live in ``eval/``; this module joins them to the
model, its tokenizer and the data loaders, and says how each set's shards are read
(:meth:`EvalSetConfig.source_specs`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from multimodal.config_parser import from_dict
from multimodal.data.modalities.registry import CAPTION_MODALITY, MEDIA_MODALITIES, MODALITIES
from multimodal.data.pipeline.sample_fields import CAPTION_KEYS, SampleFields
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.eval import build_zero_shot_weights, collect_embeddings, retrieval_metrics, validate_templates
from multimodal.eval import evaluate_retrieval, evaluate_zero_shot
from multimodal.eval.linear_probe import DEFAULT_VAL_FRACTION, LinearProbeResult, evaluate_linear_probe
from multimodal.eval.loops import sample_of_each_row
from multimodal.apps.evaluation_sources import not_evaluated
from multimodal.modality_parts import CLASSIFIED_MODALITIES, parts_of

TASKS = ("zeroshot", "retrieval", "linear_probe")
LABEL_KEY = "json:label;cls"  # where evaluation reads a sample's class label
DEFAULT_PROBE_SEED = 0


@dataclass
class EvalSetConfig:
    """One evaluation set: an entry of ``data.eval`` in the training configuration.

    Training runs every set at the end (and every ``eval_every`` steps) and logs its
    metrics as ``{name}/{metric}``; ``multimodal eval`` builds one from its options. A
    checkpoint written by training records the sets it ran (``config.json``, under
    ``train.data.eval``), so their templates serve zero-shot classification later.

    Fields:
        name: the set's name, the prefix of its metric names (``digits/accuracy@1``).
        shards: its tar shards: a path, a brace pattern (``val-{000000..000003}.tar``) or a
            ``pipe:`` command; or, for a set of labelled items (zero-shot, a linear probe, the
            queries of a gallery), a folder with one sub-folder per class, as ``multimodal eval``
            takes it (label i: the i-th sub-folder by name; see :mod:`multimodal.apps.evaluation_sources`).
            Read once per evaluation, in order, with evaluation preprocessing (centre crop;
            audio covered by windows whose embeddings are averaged). Samples without the
            set's modality (a shard mixing pictures and sounds) are skipped and counted.
            For a linear probe, the test set.
        task: ``"zeroshot"`` (classification against prompts), ``"retrieval"`` or
            ``"linear_probe"`` (logistic regression on frozen embeddings, see
            :mod:`multimodal.eval.linear_probe`).
        modality: what is classified (zero-shot: ``"image"`` or ``"audio"``; linear probe:
            any); for retrieval, the queries (any modality).
        class_names: zero-shot only: the name of each class, in label order (label ``i`` is
            ``class_names[i]``). A sample's label is its json ``label`` field or its ``.cls``
            member (so for linear-probe sets too). Empty: the names the data record, read when
            a run starts: the class folders' names, or the json ``class_name`` beside each
            ``label`` (``multimodal shards --layout classes`` writes them). Names given must
            not contradict that record (a recorded name under another label is refused).
        templates: zero-shot only: prompts with one ``{}`` (or ``{label}``) where the class
            name goes, averaged into one classifier row per class. Empty: the built-in
            templates of the modality (``multimodal.modality_parts.PARTS``).
        gallery_modality: retrieval only: the modality retrieved (default ``"text"``).
        gallery_shards: retrieval only. Unset: every sample of ``shards`` holds a pair, its
            ``modality`` and its ``gallery_modality`` (an image and its captions), and each
            query's matches are its own partners; metrics in both directions
            (``image_to_text/recall@1``, ``text_to_image/recall@1`` ...). Set: queries come
            from ``shards`` and the gallery from ``gallery_shards``, both with class labels,
            and every gallery item of the query's class is a match (recall@K and mAP@10,
            ``audio_to_image/...``): how speech -> image retrieval is measured when no
            sample holds both.
        caption_keys: retrieval with text: where a sample's captions are, tried in order
            (see :mod:`multimodal.data.pipeline.sample_fields`; default ``txt;json:text;json:caption``).
            Every caption of a sample is read, not one (COCO and Flickr30k have five per
            image): text -> image counts a caption's own image found, image -> text any
            of its captions (CLIP_benchmark's rule). CLIP_benchmark's retrieval shards
            hold one caption per line of ``.txt``: ``lines:txt``.
        train_shards: linear probe only, and required there: the labelled training set
            the probe is fitted on (``shards`` is the test set).
        fewshot_k: linear probe only: fit on exactly this many training samples per class,
            drawn under ``seed`` (every class needs that many); unset: all of them.
        val_fraction: linear probe only: the share of each class of the training samples
            held out to choose the weight decay by validation accuracy (default 0.2);
            the probe is then refit on all of them.
        weight_decay: linear probe only: a fixed L2 weight decay instead of the search
            (needed for ``fewshot_k: 1``, which leaves nothing to validate on).
        seed: linear probe only: seeds the few-shot draw and the validation split.

    Examples, in YAML under ``data:``::

        eval:
          - name: digits                  # zero-shot classification
            shards: data/digits-val-{000000..000003}.tar
            modality: image
            class_names: [zero, one, two, three, four, five, six, seven, eight, nine]
            templates: ["a handwritten {}.", "the digit {} written by hand."]
          - name: coco                    # retrieval within image-caption pairs, every caption
            shards: data/coco-val-{000000..000004}.tar
            task: retrieval
            modality: image
            gallery_modality: text
            caption_keys: json:caption
          - name: speech_to_digits        # retrieval against a gallery, matched by label
            shards: data/spoken-val.tar
            task: retrieval
            modality: audio
            gallery_modality: image
            gallery_shards: data/digits-val-{000000..000003}.tar
          - name: digits_10shot           # few-shot linear probe on the image embeddings
            shards: data/digits-val-{000000..000003}.tar
            task: linear_probe
            modality: image
            train_shards: data/digits-train-{000000..000039}.tar
            fewshot_k: 10
          - name: sounds                  # zero-shot on class folders (sounds/cow/*.ogg ...): no class_names,
            shards: data/sounds           # the folders' names are taken, in sorted order
            modality: audio
    """

    name: str
    shards: str
    task: str = "zeroshot"
    # Without these, a set evaluates the first media modality (image) against captions: what
    # run configs that leave them out have always meant.
    modality: str = MEDIA_MODALITIES[0]
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    gallery_modality: str = CAPTION_MODALITY
    gallery_shards: str | None = None
    caption_keys: str = CAPTION_KEYS
    train_shards: str | None = None
    fewshot_k: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    weight_decay: float | None = None
    seed: int = DEFAULT_PROBE_SEED

    def __post_init__(self) -> None:
        where = f"eval set {self.name!r}"
        if self.task not in TASKS:
            raise ValueError(f"{where}: unknown task {self.task!r}; expected one of {TASKS}")
        for option in ("modality", "gallery_modality"):
            if getattr(self, option) not in MODALITIES:
                raise ValueError(f"{where}: {option} {getattr(self, option)!r} is not one of {MODALITIES}")
        if self.templates:
            validate_templates(self.templates)
        try:
            SampleFields(caption_keys=self.caption_keys)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        if self.task == "retrieval" and self.modality == self.gallery_modality:
            raise ValueError(f"{where}: modality and gallery_modality are both {self.modality!r}; retrieval needs two")
        probe_options = {"train_shards": self.train_shards is not None, "fewshot_k": self.fewshot_k is not None,
                         "val_fraction": self.val_fraction != DEFAULT_VAL_FRACTION,
                         "weight_decay": self.weight_decay is not None, "seed": self.seed != DEFAULT_PROBE_SEED}
        if self.task != "linear_probe":
            given = [option for option, set_ in probe_options.items() if set_]
            if given:
                raise ValueError(f"{where}: {', '.join(given)} set for a {self.task} set; they are for "
                                 "task linear_probe")
            return
        if self.train_shards is None:
            raise ValueError(f"{where}: a linear probe needs train_shards (its labelled training set)")
        if self.fewshot_k is not None and self.fewshot_k < 1:
            raise ValueError(f"{where}: fewshot_k must be at least 1, got {self.fewshot_k}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"{where}: val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"{where}: weight_decay must be >= 0, got {self.weight_decay}")
        if self.fewshot_k == 1 and self.weight_decay is None:
            raise ValueError(f"{where}: fewshot_k 1 leaves no sample per class to choose the weight decay on; "
                             "give weight_decay (e.g. 1e-4)")

    @property
    def modalities(self) -> list[str]:
        """What a loader of ``shards`` must provide."""
        if self.task == "retrieval" and self.gallery_shards is None:
            return [self.modality, self.gallery_modality]
        return [self.modality]

    @property
    def model_modalities(self) -> list[str]:
        """What the model must encode to run this set (zero-shot prompts are captions)."""
        if self.task == "zeroshot":
            return sorted({self.modality, CAPTION_MODALITY})
        if self.task == "retrieval":
            return [self.modality, self.gallery_modality]
        return [self.modality]

    def source_specs(self) -> dict[str, SourceSpec]:
        """How each of the set's shard fields is read: ``{"shards": ..., "gallery_shards" | "train_shards": ...}``.

        Sets matched by label (zero-shot, a gallery, linear probes) read each sample's
        label; a source with text reads every caption of a sample (``all_captions``).
        """
        def spec(shards: str, modalities: list[str], role: str, labelled: bool) -> SourceSpec:
            return SourceSpec(shards, modalities=modalities, name=self.name if role == "shards" else f"{self.name}:{role}",
                              caption_keys=self.caption_keys, label_key=LABEL_KEY if labelled else None,
                              all_captions=CAPTION_MODALITY in modalities)

        paired = self.task == "retrieval" and self.gallery_shards is None
        specs = {"shards": spec(self.shards, self.modalities, "shards", labelled=not paired)}
        if self.task == "retrieval" and self.gallery_shards is not None:
            specs["gallery_shards"] = spec(self.gallery_shards, [self.gallery_modality], "gallery", labelled=True)
        if self.task == "linear_probe":
            specs["train_shards"] = spec(self.train_shards, [self.modality], "train", labelled=True)
        return specs


def default_templates(modality: str) -> tuple[str, ...]:
    """The built-in zero-shot templates of ``modality`` (``multimodal.modality_parts.PARTS``)."""
    templates = parts_of(modality).templates
    if templates is None:
        raise ValueError(f"{modality} has no zero-shot templates: classify one of {CLASSIFIED_MODALITIES}")
    return templates


def recorded_eval_sets(checkpoint_config: dict) -> list[EvalSetConfig]:
    """The evaluation sets a checkpoint's training ran (``train.data.eval`` of its config.json); [] when none.

    Raises ValueError (naming the entry) for an entry that is not a valid ``EvalSetConfig``.
    """
    train = checkpoint_config.get("train")
    data = train.get("data") if isinstance(train, dict) else None
    entries = data.get("eval") if isinstance(data, dict) else None
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ValueError(f"train.data.eval must be a list of evaluation sets, got {type(entries).__name__}")
    return [from_dict(EvalSetConfig, entry, f"train.data.eval[{index}]") for index, entry in enumerate(entries)]


def zero_shot_templates(
    modality: str, templates: Sequence[str] | None = None, recorded: Iterable[EvalSetConfig] = ()
) -> tuple[list[str], str]:
    """The prompt templates for zero-shot ``modality`` and, in words, where they come from.

    In order: ``templates`` when given (validated); those of the first zero-shot set of
    ``modality`` in ``recorded`` that has some (the sets a checkpoint's training ran,
    see :func:`recorded_eval_sets`): the wordings the model was evaluated with, e.g. the
    demo's; else the built-in ones (:func:`default_templates`).
    """
    if templates:
        return list(validate_templates(templates)), "given"
    for eval_set in recorded:
        if eval_set.task == "zeroshot" and eval_set.modality == modality and eval_set.templates:
            return list(eval_set.templates), f"recorded in the checkpoint (eval set {eval_set.name!r})"
    return list(default_templates(modality)), f"built-in {modality} templates"


def text_encoder(model, tokenizer, device) -> Callable[[list[str]], torch.Tensor]:
    """Prompts -> unit-norm text embeddings (N, E), for zero-shot heads."""
    context_length = model.config.text.context_length

    def encode_text(prompts: list[str]) -> torch.Tensor:
        ids, padding_mask = tokenizer(prompts, context_length)
        return model.encode(CAPTION_MODALITY, ids.to(device), padding_mask.to(device))

    return encode_text


@torch.no_grad()
def zero_shot_weights(model, tokenizer, class_names, templates, device) -> torch.Tensor:
    """Classifier weights (C, E) from class names x prompt templates."""
    return build_zero_shot_weights(text_encoder(model, tokenizer, device), list(class_names), list(templates))


def run_linear_probe(
    model, config: EvalSetConfig, loader: Iterable[dict], train_loader: Iterable[dict], *,
    device: torch.device | str = "cpu",
) -> LinearProbeResult:
    """A linear-probe set: embeds ``train_loader`` (the training set) and ``loader`` (the test set), fits, scores."""
    if config.task != "linear_probe":
        raise ValueError(f"eval set {config.name!r} is a {config.task} set, not a linear probe")
    train = collect_embeddings(model, train_loader, [config.modality], with_labels=True, device=device)
    test = collect_embeddings(model, loader, [config.modality], with_labels=True, device=device)
    return evaluate_linear_probe(train[config.modality], train["label"], test[config.modality], test["label"],
                        fewshot_k=config.fewshot_k, val_fraction=config.val_fraction,
                        weight_decay=config.weight_decay, seed=config.seed)


def run_evaluation(
    model,
    config: EvalSetConfig,
    loader: Iterable[dict],
    tokenizer,
    *,
    gallery_loader: Iterable[dict] | None = None,
    train_loader: Iterable[dict] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One evaluation set's metrics, as a flat dict.

    ``loader`` reads ``config.shards``; ``gallery_loader`` its ``gallery_shards`` and
    ``train_loader`` its ``train_shards`` (a linear probe's training set), when it has them.
    """
    if config.task == "zeroshot":
        if not config.class_names:
            raise ValueError(f"eval set {config.name!r} has no class_names yet: take them from its data first "
                             "(multimodal.training.preflight.check_eval_sets)")
        templates = config.templates or default_templates(config.modality)
        weights = zero_shot_weights(model, tokenizer, config.class_names, templates, device)
        return evaluate_zero_shot(model, loader, config.modality, weights, device=device)
    if config.task == "linear_probe":
        if train_loader is None:
            raise ValueError(f"eval set {config.name!r} is a linear probe but no training loader was given")
        return run_linear_probe(model, config, loader, train_loader, device=device).metrics
    if config.gallery_shards is None:
        return evaluate_retrieval(model, loader, config.modality, config.gallery_modality, device=device)
    if gallery_loader is None:
        raise ValueError(f"eval set {config.name!r} has gallery_shards but no gallery loader was given")
    queries = collect_embeddings(model, loader, [config.modality], with_labels=True, device=device)
    gallery = collect_embeddings(model, gallery_loader, [config.gallery_modality], with_labels=True, device=device)
    direction = f"{config.modality}_to_{config.gallery_modality}"
    # A caption (a row of a sample with several) carries its sample's label.
    metrics = retrieval_metrics(
        queries[config.modality], gallery[config.gallery_modality],
        query_labels=queries["label"][sample_of_each_row(queries, config.modality)],
        gallery_labels=gallery["label"][sample_of_each_row(gallery, config.gallery_modality)],
    )
    return {f"{direction}/{k}": v for k, v in metrics.items()}


NotEvaluated = Callable[[EvalSetConfig, str, dict[str, int]], None]


def run_evaluations(model, eval_sets: Iterable, tokenizer, *, device: torch.device | str = "cpu",
                    say_not_evaluated: NotEvaluated | None = None) -> dict[str, float]:
    """Every evaluation set's metrics, keys prefixed with the set's name.

    Each element of ``eval_sets`` has ``config`` (EvalSetConfig), ``loader()``,
    ``gallery_loader()`` and ``train_loader()`` (fresh finite loaders of the set's
    ``shards``, ``gallery_shards`` and ``train_shards``; see ``multimodal.training.data_sources``).
    ``say_not_evaluated(config, field, counts)`` is told, after each set, of the samples of
    its ``field`` (``"shards"`` ...) passed over for lacking the modality it reads
    (``{"missing_audio": 6}``, see :func:`multimodal.apps.evaluation_sources.not_evaluated`), if any.
    """
    results: dict[str, float] = {}
    for eval_set in eval_sets:
        config = eval_set.config
        loaders = {"shards": eval_set.loader()}
        if config.gallery_shards is not None:
            loaders["gallery_shards"] = eval_set.gallery_loader()
        if config.task == "linear_probe":
            loaders["train_shards"] = eval_set.train_loader()
        metrics = run_evaluation(model, config, loaders["shards"], tokenizer,
                                 gallery_loader=loaders.get("gallery_shards"), train_loader=loaders.get("train_shards"),
                                 device=device)
        results.update({f"{config.name}/{key}": value for key, value in metrics.items()})
        if say_not_evaluated is not None:
            specs = config.source_specs()
            for field_name, loader in loaders.items():
                counts = not_evaluated(loader.stats, specs[field_name].modalities)
                if counts:
                    say_not_evaluated(config, field_name, counts)
    return results
