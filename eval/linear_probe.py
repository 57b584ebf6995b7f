"""Linear-probe and few-shot classification on frozen embeddings: multinomial logistic regression.

Shapes: N samples, D embedding width, C classes (those present in the training labels).

The probe is what the CLIP paper fits (scikit-learn's L-BFGS logistic regression) and
CLIP_benchmark reports, written in torch:

* the model: logits = features @ weight.T + bias, weight (C, D), bias (C,), one row per
  class present in the training labels (``probe.classes``: a label missing from them
  could never be learnt, and its bias would only drift towards minus infinity);
* the objective, minimised full-batch by L-BFGS (strong Wolfe line search) from zeros:
  ``mean cross-entropy + weight_decay / 2 * ||weight||^2`` (the bias is not penalised,
  as in scikit-learn). It is convex, so the solution does not depend on the start;
* the weight decay is chosen as CLIP_benchmark chooses it: 97 values log-spaced over
  [1e-6, 1e2] (:data:`WEIGHT_DECAY_GRID`); fit on the training part and score
  validation accuracy at 7 of them (every 16th), then around the best at spans of 8, 4,
  2 and 1 grid steps; ties go to the value tried first. The probe reported is then
  refit on the whole training set with that weight decay;
* the validation part is a stratified draw of ``val_fraction`` of each class (at least
  one sample of every class with two or more, never all of a class), under ``seed``.

Few-shot (``fewshot_k=K``): K training samples of every class are drawn under ``seed``
(:func:`fewshot_indices`) and they are all the probe sees. Unlike CLIP_benchmark,
whose weight-decay search validates on the rest of the training set and whose refit
adds it, the validation split is drawn from those K per class, so nothing beyond K
labelled samples per class is used; K = 1 therefore needs a fixed ``weight_decay``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from multimodal.eval.metrics import classification_metrics

# CLIP_benchmark's sweep: 97 values over 8 decades; the coarse pass tries every 16th.
WEIGHT_DECAY_GRID: tuple[float, ...] = tuple(float(v) for v in torch.logspace(-6, 2, 97, dtype=torch.float64))
COARSE_STEP = 16
REFINE_SPANS = (8, 4, 2, 1)
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_MAX_ITER = 1000


@dataclass
class LinearProbe:
    """A fitted probe: ``weight`` (C, D), ``bias`` (C,), the label of each row ``classes`` (C,) and its weight decay."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, C) scores, column c for label ``classes[c]``."""
        return features.to(self.weight) @ self.weight.T + self.bias

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N,) the label scored highest."""
        return self.classes[self.logits(features).argmax(dim=1).to(self.classes.device)]

    def columns(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (N,) -> their column in :meth:`logits` (N,); ValueError for a label the probe was not fitted on."""
        labels = labels.to(self.classes.device).long()
        columns = torch.searchsorted(self.classes, labels).clamp(max=self.classes.shape[0] - 1)
        unknown = labels[self.classes[columns] != labels]
        if unknown.numel():
            raise _unseen_labels(unknown)
        return columns


@dataclass
class LinearProbeResult:
    """What :func:`linear_probe` found: the test metrics, the probe, and how the weight decay was chosen.

    ``validation_accuracy`` maps each weight decay tried to its validation accuracy
    (empty when a fixed weight decay was given).
    """

    metrics: dict[str, float]
    probe: LinearProbe
    validation_accuracy: dict[float, float]


def _unseen_labels(labels: torch.Tensor) -> ValueError:
    return ValueError(f"test labels {sorted(set(labels.tolist()))[:10]} have no training sample; the probe could "
                      "never predict them (give training data of every class tested)")


def _check_features(features: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"{what}: features must be (N, D) and labels (N,), got {tuple(features.shape)} and "
                         f"{tuple(labels.shape)}")
    if features.shape[0] == 0:
        raise ValueError(f"{what}: no samples")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integer class indices, got dtype {labels.dtype}")
    if int(labels.min()) < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {int(labels.min())}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{what}: features contain NaN or infinity (check the model's outputs)")


def probe_objective(
    weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, weight_decay: float
) -> torch.Tensor:
    """The minimised loss: mean cross-entropy of ``features @ weight.T + bias`` + weight_decay / 2 * ||weight||^2."""
    logits = features @ weight.T + bias  # (N, C)
    return F.cross_entropy(logits, labels) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_linear_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight_decay: float,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    tolerance_grad: float = 1e-7,
) -> LinearProbe:
    """Minimises :func:`probe_objective` over weight (C, D) and bias (C,) by full-batch L-BFGS.

    C is the number of distinct ``labels``; they may be any non-negative integers.
    Fits in the features' precision (float32 at least) on their device. Stops after
    ``max_iter`` iterations or when every gradient entry is below ``tolerance_grad``.
    """
    _check_features(features, labels, "fit_linear_probe")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(features, labels, weight_decay, max_iter, tolerance_grad)


def _fit(features: torch.Tensor, labels: torch.Tensor, weight_decay: float, max_iter: int,
         tolerance_grad: float) -> LinearProbe:
    dtype = torch.promote_types(features.dtype, torch.float32)
    classes = torch.unique(labels.long())  # (C,) sorted
    # A copy: embeddings made under torch.inference_mode cannot take part in autograd themselves.
    features = features.to(dtype).clone()
    targets = torch.searchsorted(classes, labels.long()).to(features.device)  # (N,)
    num_classes = classes.shape[0]
    weight = torch.zeros(num_classes, features.shape[1], dtype=dtype, device=features.device, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=dtype, device=features.device, requires_grad=True)
    # Stop on a loss change below the precision's resolution: a fixed threshold would either stop a
    # float64 fit far from its optimum or keep a float32 fit iterating on rounding noise.
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance_grad,
                                  tolerance_change=torch.finfo(dtype).eps, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = probe_objective(weight, bias, features, targets, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), classes.to(features.device), float(weight_decay))


def fewshot_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Exactly ``k`` samples of every class present in ``labels`` (N,), drawn under ``seed``; sorted indices (k x classes,).

    The same labels, k and seed give the same indices on every machine (a seeded CPU
    permutation). Raises ValueError naming the classes with fewer than k samples.
    """
    if k < 1:
        raise ValueError(f"fewshot k must be at least 1, got {k}")
    labels = labels.cpu().long()
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))  # (N,)
    chosen, short = [], {}
    for label in torch.unique(labels).tolist():
        members = order[labels[order] == label]  # this class's samples, in the drawn order
        if members.shape[0] < k:
            short[label] = members.shape[0]
        chosen.append(members[:k])
    if short:
        listed = ", ".join(f"class {label}: {count}" for label, count in list(short.items())[:10])
        raise ValueError(f"few-shot k={k} needs {k} training samples of every class; too few in {listed}")
    return torch.cat(chosen).sort().values


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices), both sorted: ``val_fraction`` of each class held out, under ``seed``.

    A class of n >= 2 samples gives round(n * val_fraction) to validation, clipped to
    [1, n - 1], so every such class is both trained on and validated; a class of one
    sample stays in training. Raises ValueError when nothing can be held out.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = labels.cpu().long()
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))  # (N,)
    train, validation = [], []
    for label in torch.unique(labels).tolist():
        members = order[labels[order] == label]
        count = members.shape[0]
        held_out = min(max(round(count * val_fraction), 1), count - 1) if count >= 2 else 0
        validation.append(members[:held_out])
        train.append(members[held_out:])
    validation_indices = torch.cat(validation).sort().values
    if validation_indices.numel() == 0:
        raise ValueError("no class has two training samples: nothing to validate the weight decay on; "
                         "give a fixed weight decay")
    return torch.cat(train).sort().values, validation_indices


def _accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probe.predict(features) == labels.to(probe.classes.device)).double().mean())


def search_weight_decay(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    *,
    grid: Sequence[float] = WEIGHT_DECAY_GRID,
    max_iter: int = DEFAULT_MAX_ITER,
) -> tuple[float, dict[float, float]]:
    """The weight decay of ``grid`` with the best validation accuracy (the search of the module docstring).

    Returns (best weight decay, {weight decay tried: validation accuracy}). Each value
    is fitted once, however often the search comes back to it.
    """
    if not grid:
        raise ValueError("the weight decay grid is empty")
    accuracies: dict[int, float] = {}

    def best_of(indices: Sequence[int]) -> int:
        best, best_accuracy = indices[0], -1.0
        for index in indices:
            if index not in accuracies:
                probe = fit_linear_probe(train_features, train_labels, grid[index], max_iter=max_iter)
                accuracies[index] = _accuracy(probe, val_features, val_labels)
            if accuracies[index] > best_accuracy:  # strictly better: ties keep the value tried first
                best, best_accuracy = index, accuracies[index]
        return best

    peak = best_of(list(range(0, len(grid), COARSE_STEP)))
    for span in REFINE_SPANS:
        peak = best_of([max(peak - span, 0), peak, min(peak + span, len(grid) - 1)])
    return float(grid[peak]), {float(grid[index]): accuracy for index, accuracy in sorted(accuracies.items())}


def evaluate_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    fewshot_k: int | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    weight_decay: float | None = None,
    seed: int = 0,
    top_k: Sequence[int] = (1, 5),
    max_iter: int = DEFAULT_MAX_ITER,
) -> LinearProbeResult:
    """Fits a probe on (train_features (N, D), train_labels (N,)) and scores it on the test set.

    Args:
        fewshot_k: train on exactly this many samples per class (drawn under ``seed``); None: all.
        val_fraction: the share of each class held out to choose the weight decay.
        weight_decay: a fixed value (no search, no validation split); None: searched.
        seed: the few-shot draw and the validation split.
        top_k: the k of each accuracy@k.

    Returns the test metrics of :func:`multimodal.eval.metrics.classification_metrics`
    (``accuracy@1``, ``accuracy@5``, ``mean_per_class_recall``, ``num_samples``) plus
    ``num_train_samples``, with the probe and the validation accuracies of the search.
    Raises ValueError when a test label never occurs in the training data (the probe
    could never predict it), or the widths of the two sets differ.
    """
    _check_features(train_features, train_labels, "the training set")
    _check_features(test_features, test_labels, "the test set")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"training features are {train_features.shape[1]}-wide, test features "
                         f"{test_features.shape[1]}-wide; embed both with the same model")
    train_labels, test_labels = train_labels.long(), test_labels.long()
    unseen = test_labels[~torch.isin(test_labels, train_labels.to(test_labels.device))]
    if unseen.numel():  # before any fitting: the search would be wasted
        raise _unseen_labels(unseen)
    if fewshot_k is not None:
        chosen = fewshot_indices(train_labels, fewshot_k, seed)
        train_features, train_labels = train_features[chosen.to(train_features.device)], train_labels[chosen.to(train_labels.device)]
    validation_accuracy: dict[float, float] = {}
    if weight_decay is None:
        fit_rows, val_rows = stratified_split(train_labels, val_fraction, seed)
        weight_decay, validation_accuracy = search_weight_decay(
            train_features[fit_rows.to(train_features.device)], train_labels[fit_rows.to(train_labels.device)],
            train_features[val_rows.to(train_features.device)], train_labels[val_rows.to(train_labels.device)],
            max_iter=max_iter,
        )
    probe = fit_linear_probe(train_features, train_labels, weight_decay, max_iter=max_iter)
    # Ranked among the classes trained on: a class without training samples cannot be predicted.
    metrics = classification_metrics(probe.logits(test_features).float(), probe.columns(test_labels), top_k)
    metrics["num_train_samples"] = int(train_labels.shape[0])
    return LinearProbeResult(metrics, probe, validation_accuracy)


__all__ = [
    "DEFAULT_VAL_FRACTION",
    "WEIGHT_DECAY_GRID",
    "LinearProbe",
    "LinearProbeResult",
    "fewshot_indices",
    "fit_linear_probe",
    "evaluate_linear_probe",
    "probe_objective",
    "search_weight_decay",
    "stratified_split",
]
