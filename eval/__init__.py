"""Zero-shot, retrieval and linear-probe evaluation on embeddings.

Prompt templates (``multimodal.eval.templates``), zero-shot classifier weights from class names
x templates (``multimodal.eval.zeroshot``), accuracy / mean per-class recall / recall@K / mAP@K
(``multimodal.eval.metrics``), linear probes and few-shot on frozen embeddings
(``multimodal.eval.linear_probe``) and evaluation loops over a loader (``multimodal.eval.loops``).
A model is reached only through ``Encoder``: ``encode(modality, batch) -> unit-norm (B, E)``.
"""
from multimodal.eval.linear_probe import (
    LinearProbe,
    LinearProbeResult,
    evaluate_linear_probe,
    fewshot_indices,
    fit_linear_probe,
)
from multimodal.eval.loops import (
    Encoder,
    collect_embeddings,
    evaluate_retrieval,
    evaluate_zero_shot,
    move_batch,
    sample_of_each_row,
)
from multimodal.eval.metrics import (
    bidirectional_retrieval_metrics,
    classification_metrics,
    classification_metrics_from_ranks,
    mean_per_class_recall,
    retrieval_metrics,
    top_k_accuracy,
    true_class_rank,
)
from multimodal.eval.templates import (
    AUDIO_TEMPLATES,
    IMAGE_TEMPLATES,
    SPOKEN_WORD_TEMPLATES,
    TEMPLATE_SETS,
    format_prompt,
    format_prompts,
    get_templates,
    validate_templates,
)
from multimodal.eval.zeroshot import build_zero_shot_weights, zero_shot_logits, zero_shot_probabilities

__all__ = [
    "AUDIO_TEMPLATES",
    "IMAGE_TEMPLATES",
    "SPOKEN_WORD_TEMPLATES",
    "TEMPLATE_SETS",
    "Encoder",
    "LinearProbe",
    "LinearProbeResult",
    "bidirectional_retrieval_metrics",
    "build_zero_shot_weights",
    "classification_metrics",
    "classification_metrics_from_ranks",
    "collect_embeddings",
    "evaluate_linear_probe",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "fewshot_indices",
    "fit_linear_probe",
    "format_prompt",
    "format_prompts",
    "get_templates",
    "mean_per_class_recall",
    "move_batch",
    "retrieval_metrics",
    "sample_of_each_row",
    "top_k_accuracy",
    "true_class_rank",
    "validate_templates",
    "zero_shot_logits",
    "zero_shot_probabilities",
]
