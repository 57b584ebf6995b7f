"""Contrastive losses against hand-computed values, a naive double loop, and full-batch gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from multimodal.data.modalities.registry import MODALITIES
from multimodal.losses import (
    contrastive_loss,
    infonce_loss,
    pair_name,
    sigmoid_loss,
    substitute_microbatch,
)

# Three 2-D unit vectors per modality. Their cosines, text_i . image_j, are
#   [[1.0, 0.6, 0.0],
#    [0.0, 0.8, 1.0],
#    [0.6, 1.0, 0.8]]
TEXT_3 = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
IMAGE_3 = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]


def _log_sum_exp(values):
    return math.log(sum(math.exp(v) for v in values))


def _unit_rows(generator, num_rows, dim, dtype=torch.float64):
    return F.normalize(torch.randn(num_rows, dim, generator=generator, dtype=dtype), dim=-1)


def _naive_infonce(first, second, scale):
    """Mean of row and column cross-entropies of scale * first @ second.T, with explicit loops."""
    n = len(first)
    logits = [[scale * sum(x * y for x, y in zip(first[i], second[j])) for j in range(n)] for i in range(n)]
    rows = sum(_log_sum_exp(logits[i]) - logits[i][i] for i in range(n)) / n
    columns = sum(_log_sum_exp([logits[i][j] for i in range(n)]) - logits[j][j] for j in range(n)) / n
    return (rows + columns) / 2


def _naive_sigmoid(first, second, scale, bias):
    """-sum_ij log(sigmoid(label_ij * logit_ij)) / n, with explicit loops."""
    n = len(first)
    total = 0.0
    for i in range(n):
        for j in range(n):
            logit = scale * sum(x * y for x, y in zip(first[i], second[j])) + bias
            label = 1.0 if i == j else -1.0
            total += math.log(1.0 + math.exp(-label * logit))
    return total / n


def test_infonce_hand_computed_3x3():
    # log scale ln 2 -> logits = 2 * cosines = [[2, 1.2, 0], [0, 1.6, 2], [1.2, 2, 1.6]].
    rows = [
        math.log(math.exp(2) + math.exp(1.2) + math.exp(0)) - 2,
        math.log(math.exp(0) + math.exp(1.6) + math.exp(2)) - 1.6,
        math.log(math.exp(1.2) + math.exp(2) + math.exp(1.6)) - 1.6,
    ]
    columns = [
        math.log(math.exp(2) + math.exp(0) + math.exp(1.2)) - 2,
        math.log(math.exp(1.2) + math.exp(1.6) + math.exp(2)) - 1.6,
        math.log(math.exp(0) + math.exp(2) + math.exp(1.6)) - 1.6,
    ]
    expected = (sum(rows) / 3 + sum(columns) / 3) / 2
    assert expected == pytest.approx(0.8675155521659494, abs=1e-12)
    loss = infonce_loss(torch.tensor(TEXT_3), torch.tensor(IMAGE_3), torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sigmoid_hand_computed_3x3():
    # log scale ln 2, bias -1 -> logits = 2 * cosines - 1 = [[1, .2, -1], [-1, .6, 1], [.2, 1, .6]];
    # a positive costs log(1 + e^-z), a negative log(1 + e^z).
    positives = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(-0.6)), math.log(1 + math.exp(-0.6))]
    negatives = [math.log(1 + math.exp(z)) for z in (0.2, -1.0, -1.0, 1.0, 0.2, 1.0)]
    expected = (sum(positives) + sum(negatives)) / 3
    assert expected == pytest.approx(2.0125206924420227, abs=1e-12)
    loss = sigmoid_loss(torch.tensor(TEXT_3), torch.tensor(IMAGE_3), torch.tensor(math.log(2.0)), torch.tensor(-1.0))
    assert loss.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_double_loop_5x5(seed):
    generator = torch.Generator().manual_seed(seed)
    first, second = _unit_rows(generator, 5, 4), _unit_rows(generator, 5, 4)
    log_scale, bias = 1.7, -0.8
    expected_infonce = _naive_infonce(first.tolist(), second.tolist(), math.exp(log_scale))
    expected_sigmoid = _naive_sigmoid(first.tolist(), second.tolist(), math.exp(log_scale), bias)
    assert infonce_loss(first, second, torch.tensor(log_scale, dtype=torch.float64)).item() == pytest.approx(
        expected_infonce, rel=1e-12
    )
    assert sigmoid_loss(
        first, second, torch.tensor(log_scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    ).item() == pytest.approx(expected_sigmoid, rel=1e-12)
    # float32 features compute in float32
    assert infonce_loss(first.float(), second.float(), torch.tensor(log_scale)).item() == pytest.approx(
        expected_infonce, rel=1e-5
    )


def test_infonce_is_symmetric_and_minimal_for_aligned_features():
    generator = torch.Generator().manual_seed(3)
    first, second = _unit_rows(generator, 6, 8), _unit_rows(generator, 6, 8)
    log_scale = torch.tensor(2.0, dtype=torch.float64)
    assert infonce_loss(first, second, log_scale).item() == pytest.approx(infonce_loss(second, first, log_scale).item())
    assert infonce_loss(first, first, log_scale) < infonce_loss(first, second, log_scale)


def test_sigmoid_bias_value_and_gradient():
    generator = torch.Generator().manual_seed(4)
    first, second = _unit_rows(generator, 5, 3), _unit_rows(generator, 5, 3)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    loss = sigmoid_loss(first, second, log_scale, bias)
    assert loss.item() == pytest.approx(_naive_sigmoid(first.tolist(), second.tolist(), 10.0, -10.0), rel=1e-12)
    loss.backward()
    # d/d bias of sum_ij softplus(z_ij) - sum_i z_ii, over n: (sum_ij sigmoid(z_ij) - n) / n
    logits = 10.0 * first @ second.T - 10.0
    expected_bias_grad = (torch.sigmoid(logits).sum().item() - 5) / 5
    assert bias.grad.item() == pytest.approx(expected_bias_grad, rel=1e-10)
    # d/d log_scale: chain rule through scale = exp(log_scale)
    labels = 2 * torch.eye(5, dtype=torch.float64) - 1
    expected_scale_grad = (-(labels * torch.sigmoid(-labels * logits) * 10.0 * (first @ second.T)).sum() / 5).item()
    assert log_scale.grad.item() == pytest.approx(expected_scale_grad, rel=1e-10)
    # the bias moves the loss: at bias 0 the same features give a different value
    shifted = sigmoid_loss(first, second, log_scale, torch.tensor(0.0, dtype=torch.float64))
    assert shifted.item() == pytest.approx(_naive_sigmoid(first.tolist(), second.tolist(), 10.0, 0.0), rel=1e-12)


def test_gradcheck_both_losses():
    generator = torch.Generator().manual_seed(5)
    first = _unit_rows(generator, 4, 3).requires_grad_()
    second = _unit_rows(generator, 4, 3).requires_grad_()
    log_scale = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(infonce_loss, (first, second, log_scale))
    assert torch.autograd.gradcheck(sigmoid_loss, (first, second, log_scale, bias))


def _three_modalities(seed, batch=4, dim=6):
    generator = torch.Generator().manual_seed(seed)
    return {m: _unit_rows(generator, batch, dim) for m in ("audio", "text", "image")}


def _scales_and_biases():
    pairs = ("text_image", "text_audio", "image_audio")
    log_scales = {p: torch.tensor(v, dtype=torch.float64) for p, v in zip(pairs, (2.0, 1.0, 3.0))}
    biases = {p: torch.tensor(v, dtype=torch.float64) for p, v in zip(pairs, (-1.0, -3.0, 0.5))}
    return log_scales, biases


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_multi_pair_sum(kind):
    features = _three_modalities(6)
    log_scales, biases = _scales_and_biases()
    biases = biases if kind == "sigmoid" else None
    total, per_pair = contrastive_loss(features, log_scales, biases, kind=kind)
    assert list(per_pair) == ["text_image", "text_audio", "image_audio"]
    for name, value in per_pair.items():
        first, second = name.split("_")
        scale = math.exp(log_scales[name].item())
        if kind == "infonce":
            expected = _naive_infonce(features[first].tolist(), features[second].tolist(), scale)
        else:
            expected = _naive_sigmoid(features[first].tolist(), features[second].tolist(), scale, biases[name].item())
        assert value.item() == pytest.approx(expected, rel=1e-12)
        assert not value.requires_grad
    assert total.item() == pytest.approx(sum(v.item() for v in per_pair.values()), rel=1e-12)

    # a subset of pairs, named in either order; only the pairs asked for are computed
    subset_total, subset = contrastive_loss(
        features, log_scales, biases, kind=kind, pairs=[("audio", "image"), ("text", "image")]
    )
    assert list(subset) == ["image_audio", "text_image"]
    assert subset_total.item() == pytest.approx(per_pair["image_audio"].item() + per_pair["text_image"].item())

    # only the modalities present are paired
    two = {m: features[m] for m in ("text", "audio")}
    _, only = contrastive_loss(two, log_scales, biases, kind=kind)
    assert list(only) == ["text_audio"]


def test_total_loss_gradients_flow_to_every_pair():
    features = {m: f.clone().requires_grad_() for m, f in _three_modalities(7).items()}
    log_scales = {p: torch.tensor(1.0, requires_grad=True) for p in ("text_image", "text_audio", "image_audio")}
    total, _ = contrastive_loss(features, log_scales)
    total.backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features.values())
    assert all(s.grad is not None and s.grad != 0 for s in log_scales.values())


def test_pair_name_order():
    assert MODALITIES == ("text", "image", "audio")
    assert pair_name("image", "text") == "text_image"
    assert pair_name("audio", "text") == "text_audio"
    assert pair_name("image", "audio") == pair_name("audio", "image") == "image_audio"
    with pytest.raises(ValueError, match="two different modalities"):
        pair_name("text", "text")
    with pytest.raises(ValueError, match="'video'"):
        pair_name("video", "text")


def test_errors():
    features = _three_modalities(8)
    log_scales, biases = _scales_and_biases()
    with pytest.raises(ValueError, match=r"\['depth', 'video'\]"):
        contrastive_loss({**features, "video": features["text"], "depth": features["text"]}, log_scales)
    with pytest.raises(ValueError, match="'smell'"):
        contrastive_loss(features, log_scales, pairs=[("text", "smell")])
    with pytest.raises(ValueError, match="unknown loss kind 'triplet'"):
        contrastive_loss(features, log_scales, kind="triplet")
    with pytest.raises(ValueError, match="needs biases"):
        contrastive_loss(features, log_scales, kind="sigmoid")
    with pytest.raises(ValueError, match="only used by kind='sigmoid'"):
        contrastive_loss(features, log_scales, biases, kind="infonce")
    with pytest.raises(ValueError, match="at least two modalities"):
        contrastive_loss({"text": features["text"]}, log_scales)
    with pytest.raises(ValueError, match="'text_audio' needs modalities \\['audio'\\]"):
        contrastive_loss({m: features[m] for m in ("text", "image")}, log_scales, pairs=[("text", "audio")])
    with pytest.raises(ValueError, match="listed twice"):
        contrastive_loss(features, log_scales, pairs=[("text", "image"), ("image", "text")])
    with pytest.raises(ValueError, match="pairs is empty"):
        contrastive_loss(features, log_scales, pairs=[])
    with pytest.raises(TypeError, match="two modality names"):
        contrastive_loss(features, log_scales, pairs=["text_image"])
    with pytest.raises(ValueError, match="no log scale for pair 'image_audio'"):
        contrastive_loss(features, {"text_image": log_scales["text_image"], "text_audio": log_scales["text_audio"]})
    with pytest.raises(ValueError, match="no bias for pair 'text_audio'"):
        contrastive_loss(features, log_scales, {"text_image": biases["text_image"]}, kind="sigmoid",
                         pairs=[("text", "image"), ("text", "audio")])
    with pytest.raises(ValueError, match="same batch size"):
        contrastive_loss({"text": features["text"], "image": features["image"][:3]}, log_scales)
    with pytest.raises(ValueError, match=r"\(B, E\) matrices"):
        infonce_loss(features["text"][0], features["image"][0], log_scales["text_image"])
    with pytest.raises(ValueError, match="init_process_group"):
        infonce_loss(features["text"], features["image"], log_scales["text_image"], gather=True)


def test_autocast_does_not_lower_the_logit_precision():
    generator = torch.Generator().manual_seed(9)
    first = _unit_rows(generator, 8, 16, torch.float32).bfloat16()
    second = _unit_rows(generator, 8, 16, torch.float32).bfloat16()
    log_scale = torch.tensor(math.log(100.0))
    reference = infonce_loss(first.float(), second.float(), log_scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = infonce_loss(first, second, log_scale)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_accumulated_microbatches_equal_one_large_batch(kind):
    num_micro, micro_batch, input_dim, embed_dim = 3, 4, 5, 3
    generator = torch.Generator().manual_seed(10)
    inputs = {m: torch.randn(num_micro * micro_batch, input_dim, generator=generator, dtype=torch.float64)
              for m in ("text", "image")}
    initial = {m: torch.randn(embed_dim, input_dim, generator=generator, dtype=torch.float64) for m in inputs}

    def fresh_parameters():
        weights = {m: w.clone().requires_grad_() for m, w in initial.items()}
        log_scales = {"text_image": torch.tensor(1.5, dtype=torch.float64, requires_grad=True)}
        biases = None
        if kind == "sigmoid":
            biases = {"text_image": torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)}
        return weights, log_scales, biases

    def encode(weights, modality, rows):
        return F.normalize(rows @ weights[modality].T, dim=-1)  # (b, E)

    def gradients(weights, log_scales, biases):
        grads = {m: w.grad.clone() for m, w in weights.items()}
        grads["log_scale"] = log_scales["text_image"].grad.clone()
        if biases is not None:
            grads["bias"] = biases["text_image"].grad.clone()
        return grads

    # one batch of num_micro * micro_batch rows
    weights, log_scales, biases = fresh_parameters()
    full_features = {m: encode(weights, m, x) for m, x in inputs.items()}  # (k * b, E)
    full_loss, _ = contrastive_loss(full_features, log_scales, biases, kind=kind)
    full_loss.backward()
    expected = gradients(weights, log_scales, biases)

    # the same rows in micro-batches: cache without gradients, then recompute one at a time
    weights, log_scales, biases = fresh_parameters()
    chunks = {m: list(x.split(micro_batch)) for m, x in inputs.items()}
    with torch.no_grad():
        cached = {m: [encode(weights, m, chunk) for chunk in chunks[m]] for m in inputs}
    for index in range(num_micro):
        fresh = {m: encode(weights, m, chunks[m][index]) for m in inputs}
        features = substitute_microbatch(cached, fresh, index)
        loss, _ = contrastive_loss(features, log_scales, biases, kind=kind)
        assert loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
        loss.backward()
    log_scales["text_image"].grad.div_(num_micro)
    if biases is not None:
        biases["text_image"].grad.div_(num_micro)
    accumulated = gradients(weights, log_scales, biases)

    for name, grad in expected.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=1e-10, atol=1e-12, msg=name)

    # plain accumulation, each micro-batch its own negatives, is a different objective
    weights, log_scales, biases = fresh_parameters()
    for index in range(num_micro):
        alone = {m: encode(weights, m, chunks[m][index]) for m in inputs}  # (b, E)
        loss, _ = contrastive_loss(alone, log_scales, biases, kind=kind)
        (loss / num_micro).backward()
    assert not torch.allclose(weights["text"].grad, expected["text"], rtol=1e-3)


def test_substitute_microbatch_layout_and_errors():
    cached = {"text": [torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)],
              "image": [torch.zeros(2, 3), torch.ones(2, 3), torch.full((2, 3), 2.0)]}
    fresh = {"text": torch.full((2, 3), 9.0), "image": torch.full((2, 3), 8.0)}
    full = substitute_microbatch(cached, fresh, 1)
    assert full["text"][:, 0].tolist() == [0, 0, 9, 9, 2, 2]
    assert full["image"][:, 0].tolist() == [0, 0, 8, 8, 2, 2]
    with pytest.raises(ValueError, match="fresh ones hold"):
        substitute_microbatch(cached, {"text": fresh["text"]}, 0)
    with pytest.raises(IndexError, match="index 3 is out of range for 3"):
        substitute_microbatch(cached, fresh, 3)
    with pytest.raises(ValueError, match="recompute the same micro-batch"):
        substitute_microbatch(cached, {"text": torch.zeros(3, 3), "image": fresh["image"]}, 0)


def _naive_grouped(first, second, scale, groups, bias=None):
    """Loops: InfoNCE with uniform targets over same-group columns (bias None), or sigmoid with +1 for same group."""
    n = len(first)
    logits = [[scale * sum(x * y for x, y in zip(first[i], second[j])) for j in range(n)] for i in range(n)]
    if bias is not None:
        return sum(math.log(1.0 + math.exp(-(1.0 if groups[i] == groups[j] else -1.0) * (logits[i][j] + bias)))
                   for i in range(n) for j in range(n)) / n
    total = 0.0
    for direction in (logits, [list(column) for column in zip(*logits)]):
        for i in range(n):
            positives = [j for j in range(n) if groups[j] == groups[i]]
            normaliser = _log_sum_exp(direction[i])
            total += sum(normaliser - direction[i][j] for j in positives) / len(positives) / n
    return total / 2


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_groups_make_same_label_rows_positives(kind):
    generator = torch.Generator().manual_seed(3)
    text, image = _unit_rows(generator, 6, 4), _unit_rows(generator, 6, 4)
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    log_scale = torch.tensor(math.log(3.0), dtype=torch.float64)
    biases = {"text_image": torch.tensor(-2.0, dtype=torch.float64)} if kind == "sigmoid" else None
    features = {"text": text, "image": image}
    total, _ = contrastive_loss(features, {"text_image": log_scale}, biases, kind=kind, groups=groups)
    expected = _naive_grouped(text.tolist(), image.tolist(), 3.0, groups.tolist(),
                              bias=-2.0 if kind == "sigmoid" else None)
    assert total.item() == pytest.approx(expected, rel=1e-10)
    # Every row its own group: CLIP's loss exactly.
    plain, _ = contrastive_loss(features, {"text_image": log_scale}, biases, kind=kind)
    distinct, _ = contrastive_loss(features, {"text_image": log_scale}, biases, kind=kind, groups=torch.arange(6))
    assert distinct.item() == pytest.approx(plain.item(), rel=1e-12)
    assert not math.isclose(total.item(), plain.item(), rel_tol=1e-3)
    with pytest.raises(ValueError, match=r"groups must be one id per row, shape \(6,\)"):
        contrastive_loss(features, {"text_image": log_scale}, biases, kind=kind, groups=groups[:5])
