"""Evaluation sets run on a model: zero-shot classification and retrieval, by configuration.

Used by the training script (during and after training) and by ``multimodal eval``.
The metrics and loops themselves live in ``eval/``; this module joins them to the
model, its tokenizer and the data loaders.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from multimodal.eval import TEMPLATE_SETS, build_zero_shot_weights, collect_embeddings, retrieval_metrics, validate_templates
from multimodal.eval import evaluate_retrieval, evaluate_zero_shot

TASKS = ("zeroshot", "retrieval")


@dataclass
class EvalSetConfig:
    """One evaluation.

    * ``task="zeroshot"``: classify ``modality`` inputs of ``shards`` (their json
      ``label``) against text prompts made from ``class_names`` x ``templates``
      (empty: the built-in templates for the modality).
    * ``task="retrieval"``: retrieve between ``modality`` and ``gallery_modality``. With
      ``gallery_shards`` unset, both come from the same samples (caption i <-> image i).
      With ``gallery_shards`` set, queries come from ``shards`` and the gallery from
      ``gallery_shards``, and items with the same ``label`` are relevant: how the
      emergent audio -> image alignment is measured.
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
    return TEMPLATE_SETS["image" if modality == "image" else "audio"]


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
