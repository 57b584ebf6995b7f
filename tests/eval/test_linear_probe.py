"""Linear probe and few-shot on embeddings: the optimum, the weight-decay search, few-shot draws, splits, errors."""
import pytest
import torch
import torch.nn.functional as F

from multimodal.eval.linear_probe import (
    WEIGHT_DECAY_GRID,
    evaluate_linear_probe,
    fewshot_indices,
    fit_linear_probe,
    probe_objective,
    search_weight_decay,
    stratified_split,
)


def clusters(per_class: int, centres: torch.Tensor, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian clusters around ``centres`` (C, D): features (C * per_class, D), labels (C * per_class,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(centres.shape[0]).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(labels.shape[0], centres.shape[1], generator=generator)
    return features, labels


def test_two_separable_gaussian_clusters_are_classified_perfectly():
    centres = torch.tensor([[3.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])
    train, train_labels = clusters(40, centres, 0.5, seed=0)
    test, test_labels = clusters(25, centres, 0.5, seed=1)
    result = evaluate_linear_probe(train, train_labels, test, test_labels)
    assert result.metrics["accuracy@1"] == 1.0 and result.metrics["mean_per_class_recall"] == 1.0
    assert result.metrics["accuracy@5"] == 1.0  # clipped to the 2 classes
    assert (result.metrics["num_samples"], result.metrics["num_train_samples"]) == (50, 80)
    assert result.probe.weight_decay in WEIGHT_DECAY_GRID
    assert result.probe.weight_decay in result.validation_accuracy


def test_the_fit_is_the_optimum_of_the_regularised_loss():
    """At the solution the gradient of mean cross-entropy + wd / 2 * ||W||^2 vanishes (float64, overlapping classes)."""
    centres = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5], [-1.0, -1.0, 0.0]], dtype=torch.float64)
    features, labels = clusters(30, centres, 1.0, seed=2)
    weight_decay = 0.01
    probe = fit_linear_probe(features, labels, weight_decay, tolerance_grad=1e-12)
    weight = probe.weight.clone().requires_grad_(True)
    bias = probe.bias.clone().requires_grad_(True)
    probe_objective(weight, bias, features, labels, weight_decay).backward()
    assert weight.dtype == torch.float64
    assert float(weight.grad.abs().max()) < 1e-8 and float(bias.grad.abs().max()) < 1e-8
    # Stationarity written out: wd * W = (1/N) sum_i (onehot(y_i) - softmax(x_i))^T x_i, and the bias columns sum to 0.
    probabilities = F.softmax(features @ probe.weight.T + probe.bias, dim=1)  # (N, C)
    residual = F.one_hot(labels, 3).double() - probabilities  # (N, C)
    torch.testing.assert_close(weight_decay * probe.weight, residual.T @ features / features.shape[0], atol=1e-8, rtol=0)
    # A larger weight decay shrinks the weights.
    assert fit_linear_probe(features, labels, 1.0).weight.norm() < probe.weight.norm()


def test_labels_need_not_be_contiguous_and_the_probe_predicts_labels():
    centres = torch.tensor([[4.0, 0.0], [0.0, 4.0], [-4.0, -4.0]])
    features, compact = clusters(10, centres, 0.3, seed=3)
    labels = torch.tensor([2, 7, 9])[compact]
    probe = fit_linear_probe(features, labels, 1e-3)
    assert probe.classes.tolist() == [2, 7, 9] and probe.weight.shape == (3, 2)
    assert torch.equal(probe.predict(features), labels)
    with pytest.raises(ValueError, match=r"test labels \[3\] have no training sample"):
        probe.columns(torch.tensor([2, 3]))


def test_fewshot_picks_exactly_k_per_class_deterministically():
    labels = torch.tensor([0] * 7 + [1] * 5 + [2] * 9)[torch.randperm(21, generator=torch.Generator().manual_seed(0))]
    chosen = fewshot_indices(labels, 4, seed=5)
    assert torch.bincount(labels[chosen]).tolist() == [4, 4, 4]
    assert chosen.tolist() == sorted(set(chosen.tolist()))  # distinct, sorted
    assert torch.equal(fewshot_indices(labels, 4, seed=5), chosen)  # the same under the same seed
    assert any(not torch.equal(fewshot_indices(labels, 4, seed=s), chosen) for s in range(6, 10))
    # Growing K keeps the earlier draw: the first K of each class's seeded order.
    assert set(chosen.tolist()) <= set(fewshot_indices(labels, 5, seed=5).tolist())
    with pytest.raises(ValueError, match=r"few-shot k=6 needs 6 training samples of every class; too few in class 1: 5"):
        fewshot_indices(labels, 6)


def test_stratified_split_holds_out_a_share_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 2)
    train, validation = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[validation], minlength=4).tolist() == [2, 1, 0, 1]
    assert torch.bincount(labels[train], minlength=4).tolist() == [8, 2, 1, 1]
    assert sorted(train.tolist() + validation.tolist()) == list(range(16))
    assert torch.equal(stratified_split(labels, 0.2, seed=0)[1], validation)
    with pytest.raises(ValueError, match="nothing to validate the weight decay on"):
        stratified_split(torch.tensor([0, 1, 2]), 0.2)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        stratified_split(labels, 1.0)


def test_the_search_follows_clip_benchmark_and_fits_each_value_once(monkeypatch):
    """Coarse: every 16th of the 97 values; then spans 8, 4, 2, 1 around the best; ties keep the first tried."""
    import multimodal.eval.linear_probe as module

    best = WEIGHT_DECAY_GRID[37]
    fitted = []

    def fake_fit(features, labels, weight_decay, **options):
        fitted.append(weight_decay)
        return weight_decay

    def fake_accuracy(weight_decay, features, labels):  # peaked at index 37 of the grid
        return 1.0 - abs(WEIGHT_DECAY_GRID.index(weight_decay) - 37) / 100

    monkeypatch.setattr(module, "fit_linear_probe", fake_fit)
    monkeypatch.setattr(module, "_accuracy", fake_accuracy)
    chosen, accuracies = search_weight_decay(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), torch.zeros(1))
    assert chosen == best
    indices = [WEIGHT_DECAY_GRID.index(value) for value in fitted]
    assert indices == [0, 16, 32, 48, 64, 80, 96, 24, 40, 36, 44, 34, 38, 35, 37]
    assert len(set(indices)) == len(indices) and list(accuracies) == sorted(accuracies)
    assert WEIGHT_DECAY_GRID[0] == pytest.approx(1e-6) and WEIGHT_DECAY_GRID[-1] == pytest.approx(100.0)


def test_fewshot_probe_and_a_fixed_weight_decay():
    centres = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    train, train_labels = clusters(20, centres, 0.4, seed=4)
    test, test_labels = clusters(10, centres, 0.4, seed=5)
    result = evaluate_linear_probe(train, train_labels, test, test_labels, fewshot_k=3, seed=1)
    assert result.metrics["num_train_samples"] == 9 and result.metrics["accuracy@1"] == 1.0
    again = evaluate_linear_probe(train, train_labels, test, test_labels, fewshot_k=3, seed=1)
    assert torch.equal(again.probe.weight, result.probe.weight)
    fixed = evaluate_linear_probe(train, train_labels, test, test_labels, fewshot_k=1, weight_decay=1e-3)
    assert fixed.validation_accuracy == {} and fixed.probe.weight_decay == 1e-3
    with pytest.raises(ValueError, match="nothing to validate the weight decay on; give a fixed weight decay"):
        evaluate_linear_probe(train, train_labels, test, test_labels, fewshot_k=1)


def test_probe_errors_say_what_to_fix():
    features, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match=r"test labels \[5\] have no training sample; the probe could never predict"):
        evaluate_linear_probe(features, labels, features, torch.tensor([0, 5, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="training features are 3-wide, test features 4-wide"):
        evaluate_linear_probe(features, labels, torch.randn(6, 4), labels)
    with pytest.raises(ValueError, match="the test set: features contain NaN"):
        evaluate_linear_probe(features, labels, torch.full((6, 3), float("nan")), labels)
    with pytest.raises(ValueError, match="the training set: labels must be integer class indices"):
        evaluate_linear_probe(features, labels.float(), features, labels)


def test_probes_fit_inside_no_grad_and_inference_mode():
    """Evaluation code runs under torch.no_grad or inference_mode; the fit still gets its gradients."""
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]])
    features, labels = clusters(5, centres, 0.5, seed=6)
    reference = fit_linear_probe(features, labels, 0.1)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            inside = features.clone()  # made under the mode, as a model's embeddings would be
            probe = fit_linear_probe(inside, labels.clone(), 0.1)
        torch.testing.assert_close(probe.weight, reference.weight)
