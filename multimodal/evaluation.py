"""Evaluation sets run on a model: zero-shot classification and retrieval, by configuration.

Used by the training script (during and after training) and by ``multimodal eval``.
The metrics and loops themselves live in ``eval/``; this module joins them to the
model, its tokenizer and the data loaders.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from multimodal.config import from_dict
from multimodal.eval import TEMPLATE_SETS, build_zero_shot_weights, collect_embeddings, retrieval_metrics, validate_templates
from multimodal.eval import evaluate_retrieval, evaluate_zero_shot

TASKS = ("zeroshot", "retrieval")


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
            ``pipe:`` command. Read once per evaluation, in order, with evaluation
            preprocessing (centre crop; audio covered by windows whose embeddings are averaged).
        task: ``"zeroshot"`` (classification against prompts) or ``"retrieval"``.
        modality: ``"image"`` or ``"audio"`` for zero-shot: what is classified; for
            retrieval, the queries (any modality).
        class_names: zero-shot only, and required there: the name of each class, in label
            order (label ``i`` is ``class_names[i]``). A sample's label is its json
            ``label`` field or its ``.cls`` member.
        templates: zero-shot only: prompts with one ``{}`` (or ``{label}``) where the class
            name goes, averaged into one classifier row per class. Empty: the built-in
            templates of the modality (``multimodal.eval.TEMPLATE_SETS``).
        gallery_modality: retrieval only: the modality retrieved (default ``"text"``).
        gallery_shards: retrieval only. Unset: every sample of ``shards`` holds a pair, its
            ``modality`` and its ``gallery_modality`` (an image and its caption), and each
            query's one match is its own partner; metrics in both directions
            (``image_to_text/recall@1``, ``text_to_image/recall@1`` ...). Set: queries come
            from ``shards`` and the gallery from ``gallery_shards``, both with class labels,
            and every gallery item of the query's class is a match (recall@K and mAP@10,
            ``audio_to_image/...``): how speech -> image retrieval is measured when no
            sample holds both.

    Examples, in YAML under ``data:``::

        eval:
          - name: digits                  # zero-shot classification
            shards: data/digits-val-{000000..000003}.tar
            modality: image
            class_names: [zero, one, two, three, four, five, six, seven, eight, nine]
            templates: ["a handwritten {}.", "the digit {} written by hand."]
          - name: coco                    # retrieval within image-caption pairs
            shards: data/coco-val-{000000..000004}.tar
            task: retrieval
            modality: image
            gallery_modality: text
          - name: speech_to_digits        # retrieval against a gallery, matched by label
            shards: data/spoken-val.tar
            task: retrieval
            modality: audio
            gallery_modality: image
            gallery_shards: data/digits-val-{000000..000003}.tar
    """

    name: str
    shards: str
    task: str = "zeroshot"
    modality: str = "image"
    class_names: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    gallery_modality: str = "text"
    gallery_shards: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"eval set {self.name!r}: unknown task {self.task!r}; expected one of {TASKS}")
        if self.task == "zeroshot" and not self.class_names:
            raise ValueError(f"eval set {self.name!r}: a zero-shot evaluation needs class_names (label i -> name)")
        if self.templates:
            validate_templates(self.templates)

    @property
    def modalities(self) -> list[str]:
        """What a loader of ``shards`` must provide."""
        if self.task == "zeroshot":
            return [self.modality]
        if self.gallery_shards is None:
            return [self.modality, self.gallery_modality]
        return [self.modality]


def default_templates(modality: str) -> tuple[str, ...]:
    """The built-in zero-shot templates of ``modality`` ("image", else the audio ones)."""
    return TEMPLATE_SETS["image" if modality == "image" else "audio"]


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
        return model.encode("text", ids.to(device), padding_mask.to(device))

    return encode_text


@torch.no_grad()
def zero_shot_weights(model, tokenizer, class_names, templates, device) -> torch.Tensor:
    """Classifier weights (C, E) from class names x prompt templates."""
    return build_zero_shot_weights(text_encoder(model, tokenizer, device), list(class_names), list(templates))


def run_evaluation(
    model,
    config: EvalSetConfig,
    loader: Iterable[dict],
    tokenizer,
    *,
    gallery_loader: Iterable[dict] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """One evaluation set's metrics, as a flat dict."""
    if config.task == "zeroshot":
        templates = config.templates or default_templates(config.modality)
        weights = zero_shot_weights(model, tokenizer, config.class_names, templates, device)
        return evaluate_zero_shot(model, loader, config.modality, weights, device=device)
    if config.gallery_shards is None:
        return evaluate_retrieval(model, loader, config.modality, config.gallery_modality, device=device)
    if gallery_loader is None:
        raise ValueError(f"eval set {config.name!r} has gallery_shards but no gallery loader was given")
    queries = collect_embeddings(model, loader, [config.modality], with_labels=True, device=device)
    gallery = collect_embeddings(model, gallery_loader, [config.gallery_modality], with_labels=True, device=device)
    direction = f"{config.modality}_to_{config.gallery_modality}"
    metrics = retrieval_metrics(
        queries[config.modality], gallery[config.gallery_modality],
        query_labels=queries["label"], gallery_labels=gallery["label"],
    )
    return {f"{direction}/{k}": v for k, v in metrics.items()}


def run_evaluations(model, eval_sets: Iterable, tokenizer, *, device: torch.device | str = "cpu") -> dict[str, float]:
    """Every evaluation set's metrics, keys prefixed with the set's name.

    Each element of ``eval_sets`` has ``config`` (EvalSetConfig), ``loader()`` and
    ``gallery_loader()`` (fresh finite loaders; see ``multimodal.sources``).
    """
    results: dict[str, float] = {}
    for eval_set in eval_sets:
        config = eval_set.config
        gallery = eval_set.gallery_loader() if config.gallery_shards is not None else None
        metrics = run_evaluation(model, config, eval_set.loader(), tokenizer, gallery_loader=gallery, device=device)
        results.update({f"{config.name}/{key}": value for key, value in metrics.items()})
    return results
