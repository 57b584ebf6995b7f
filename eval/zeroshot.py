"""Zero-shot classification heads built from class names and prompt templates.

Shapes: C classes, T templates, N prompts or inputs, E embedding width.

A class is described by T sentences ("a photo of a dog.", "a sketch of a dog." ...).
Each sentence is embedded and L2-normalised, the T unit vectors of a class are
averaged, and the mean is normalised again: one unit row per class, (C, E). An
input's logits are then its cosine similarity with every row, times a scale.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from multimodal.eval.templates import format_prompt, validate_templates

TextEncodeFunction = Callable[[list[str]], torch.Tensor]


@torch.no_grad()
def build_zero_shot_weights(
    encode_text: TextEncodeFunction,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """Classifier weights (C, E), one unit-norm row per class, in float32.

    Args:
        encode_text: maps a list of N prompts to their embeddings (N, E); the caller
            tokenizes, moves to its device and encodes. Its output need not be
            normalised: every prompt embedding is L2-normalised here.
        class_names: the C class names, in label order (row c is label c).
        templates: format strings with one ``{}`` or ``{label}`` placeholder (see
            ``multimodal.eval.templates.validate_templates``).
        batch_size: prompts per ``encode_text`` call. Prompts of all classes are
            encoded as one flat list, so the batches do not depend on T.

    The rows live on the device ``encode_text`` returns. Gradients are not tracked.
    """
    templates = validate_templates(templates)
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(f"class_names must be a non-empty list of strings, got {class_names!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    num_classes, num_templates = len(class_names), len(templates)
    prompts = [format_prompt(template, name) for name in class_names for template in templates]  # class-major

    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        embeddings = encode_text(batch)
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(batch):
            shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
            raise ValueError(
                f"encode_text returned {shape} for {len(batch)} prompts; it must return a ({len(batch)}, E) tensor"
            )
        # Each prompt counts equally in its class mean, whatever the norm the encoder gave it.
        chunks.append(F.normalize(embeddings.float(), dim=-1))
    prompt_embeddings = torch.cat(chunks)  # (C * T, E)
    per_class = prompt_embeddings.view(num_classes, num_templates, -1)  # (C, T, E)
    return F.normalize(per_class.mean(dim=1), dim=-1)  # (C, E)


def zero_shot_logits(embeddings: torch.Tensor, weights: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Scaled cosine similarities (N, C) of unit-norm ``embeddings`` (N, E) with class ``weights`` (C, E).

    Computed in float32 at least (half-precision similarities tie too often to rank
    classes). ``logit_scale`` only matters for probabilities; 100 is CLIP's learned value.
    """
    if embeddings.ndim != 2 or weights.ndim != 2 or embeddings.shape[1] != weights.shape[1]:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and weights {tuple(weights.shape)} must be (N, E) and (C, E) "
            "with the same E; build the weights with the same model that embeds the inputs"
        )
    dtype = torch.promote_types(torch.promote_types(embeddings.dtype, weights.dtype), torch.float32)
    return logit_scale * embeddings.to(dtype) @ weights.to(embeddings.device, dtype).T  # (N, C)


def zero_shot_probabilities(
    embeddings: torch.Tensor, weights: torch.Tensor, logit_scale: float = 100.0
) -> torch.Tensor:
    """Class probabilities (N, C): softmax over ``zero_shot_logits``."""
    return zero_shot_logits(embeddings, weights, logit_scale).softmax(dim=-1)
