"""The weight average: its arithmetic, what it tracks, and its round trip."""
import pytest
import torch
from torch import nn

from multimodal.training.ema import WeightAverage


def test_each_update_moves_the_average_by_one_minus_decay_towards_the_weights():
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model)  # 0.9 * 1 + 0.1 * 3
    torch.testing.assert_close(average.state_dict()["weight"], torch.full((2, 3), 1.2))
    with torch.no_grad():
        model.weight.fill_(0.0)
    average.update(model)  # 0.9 * 1.2 + 0.1 * 0
    torch.testing.assert_close(average.state_dict()["weight"], torch.full((2, 3), 1.08))
    torch.testing.assert_close(average.state_dict()["bias"], torch.zeros(2))


def test_frozen_parameters_are_not_averaged():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    average = WeightAverage(model, decay=0.5)
    assert "0.weight" not in average.state_dict() and "1.weight" in average.state_dict()
    with torch.no_grad():
        model[1].weight.add_(2.0)
    average.update(model)
    torch.testing.assert_close(average.state_dict()["1.weight"], model[1].weight - 1.0)


def test_bf16_weights_are_averaged_in_float32():
    model = nn.Linear(4, 4, bias=False).to(torch.bfloat16)
    average = WeightAverage(model, decay=0.999)
    assert average.shadow[0].dtype == torch.float32
    before = average.shadow[0].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)  # a move of 1e-3: below bf16's resolution near 1, kept in fp32
    torch.testing.assert_close(average.shadow[0] - before, torch.full((4, 4), 1e-3), atol=1e-5, rtol=0)


def test_state_round_trip_and_errors():
    model = nn.Linear(2, 2)
    average = WeightAverage(model, decay=0.99)
    other = WeightAverage(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(average.state_dict(), "saved")
    assert all(torch.equal(a, b) for a, b in zip(other.shadow, average.shadow))
    with pytest.raises(ValueError, match="saved: the averaged weights lack 1 parameters"):
        other.load_state_dict({"weight": torch.zeros(2, 2)}, "saved")
    with pytest.raises(ValueError, match=r"ema.decay must be in \(0, 1\)"):
        WeightAverage(model, decay=1.0)
