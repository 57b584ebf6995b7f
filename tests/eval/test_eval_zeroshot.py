"""Zero-shot classifier weights against a hand computation; templates and their validation."""
import math

import pytest
import torch

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

# Unnormalised 2-D "text embeddings" of every prompt, chosen so the averages are easy by hand.
PROMPT_EMBEDDINGS = {
    "a cat.": (3.0, 4.0),  # -> (0.6, 0.8)
    "the cat!": (0.0, 2.0),  # -> (0.0, 1.0)
    "a dog.": (1.0, 0.0),  # -> (1.0, 0.0)
    "the dog!": (5.0, 0.0),  # -> (1.0, 0.0): its larger norm must not weigh more
}


class FakeTextEncoder:
    """Looks prompts up in PROMPT_EMBEDDINGS and records the batches it was called with."""

    def __init__(self):
        self.batches = []

    def __call__(self, prompts):
        self.batches.append(list(prompts))
        return torch.tensor([PROMPT_EMBEDDINGS[prompt] for prompt in prompts])


def test_weights_match_a_hand_computation():
    encoder = FakeTextEncoder()
    weights = build_zero_shot_weights(encoder, ["cat", "dog"], ["a {}.", "the {label}!"])
    # cat: mean of (0.6, 0.8) and (0, 1) = (0.3, 0.9), renormalised; dog: (1, 0).
    norm = math.sqrt(0.3**2 + 0.9**2)
    expected = torch.tensor([[0.3 / norm, 0.9 / norm], [1.0, 0.0]])
    torch.testing.assert_close(weights, expected)
    assert weights.dtype == torch.float32
    assert encoder.batches == [["a cat.", "the cat!", "a dog.", "the dog!"]]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batching_does_not_change_the_weights(batch_size):
    reference = build_zero_shot_weights(FakeTextEncoder(), ["cat", "dog"], ["a {}.", "the {label}!"])
    encoder = FakeTextEncoder()
    weights = build_zero_shot_weights(encoder, ["cat", "dog"], ["a {}.", "the {label}!"], batch_size=batch_size)
    torch.testing.assert_close(weights, reference)
    assert all(len(batch) <= batch_size for batch in encoder.batches)
    assert sum(len(batch) for batch in encoder.batches) == 4


def test_weights_are_built_without_gradients():
    projection = torch.nn.Linear(2, 2)

    def encode_text(prompts):
        return projection(torch.tensor([PROMPT_EMBEDDINGS[prompt] for prompt in prompts]))

    weights = build_zero_shot_weights(encode_text, ["cat", "dog"], ["a {}.", "the {label}!"])
    assert not weights.requires_grad


def test_weights_input_errors():
    with pytest.raises(ValueError, match="must return a \\(2, E\\) tensor"):
        build_zero_shot_weights(lambda prompts: torch.zeros(len(prompts) + 1, 2), ["cat", "dog"], ["a {}."])
    with pytest.raises(ValueError, match="class_names must be a non-empty list"):
        build_zero_shot_weights(FakeTextEncoder(), [], ["a {}."])
    with pytest.raises(ValueError, match="class_names must be a non-empty list"):
        build_zero_shot_weights(FakeTextEncoder(), "cat", ["a {}."])
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        build_zero_shot_weights(FakeTextEncoder(), ["cat"], ["a {}."], batch_size=0)
    with pytest.raises(ValueError, match="2 placeholders"):
        build_zero_shot_weights(FakeTextEncoder(), ["cat"], ["a {} {}."])


def test_logits_and_probabilities():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    embeddings = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    logits = zero_shot_logits(embeddings, weights)
    torch.testing.assert_close(logits, 100.0 * torch.tensor([[1.0, 0.0, 0.6], [0.6, 0.8, 1.0]]))
    torch.testing.assert_close(zero_shot_logits(embeddings, weights, logit_scale=1.0), logits / 100.0)
    probabilities = zero_shot_probabilities(embeddings, weights, logit_scale=10.0)
    torch.testing.assert_close(probabilities, torch.softmax(10.0 * embeddings @ weights.T, dim=-1))
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(2))
    half = zero_shot_logits(embeddings.half(), weights.half())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="same E"):
        zero_shot_logits(embeddings, torch.eye(3))


# ----------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", sorted(TEMPLATE_SETS))
def test_built_in_template_sets_are_valid_and_distinct(name):
    templates = get_templates(name)
    assert validate_templates(templates) == templates
    assert len(templates) >= 5 and len(set(templates)) == len(templates)
    assert all("seven" in format_prompt(template, "seven") for template in templates)


def test_built_in_sets_are_the_named_constants():
    assert get_templates("image") is IMAGE_TEMPLATES
    assert get_templates("audio") is AUDIO_TEMPLATES
    assert get_templates("spoken_word") is SPOKEN_WORD_TEMPLATES
    with pytest.raises(ValueError, match="unknown template set 'video'"):
        get_templates("video")


def test_format_prompt_supports_both_placeholders_and_escaped_braces():
    assert format_prompt("a photo of a {}.", "dog") == "a photo of a dog."
    assert format_prompt("the sound of {label}.", "rain") == "the sound of rain."
    assert format_prompt("{{literal}} {}", "x") == "{literal} x"
    assert format_prompts(["cat", "dog"], ["a {}", "{label}!"]) == [["a cat", "cat!"], ["a dog", "dog!"]]


def test_validate_templates_accepts_user_lists():
    assert validate_templates(["a {}.", "the {label}."]) == ("a {}.", "the {label}.")


@pytest.mark.parametrize(
    "templates, message",
    [
        (["a photo."], r"template 0 \('a photo.'\) has 0 placeholders"),
        (["a {}.", "{} and {}"], r"template 1 \('\{\} and \{\}'\) has 2 placeholders"),
        (["a {name}."], r"has placeholder \{name\}; use '\{\}' or '\{label\}'"),
        (["a {0}."], r"has placeholder \{0\}"),
        (["a {!r}."], r"has placeholder \{!r\}"),
        (["a {label:>10}."], r"has placeholder \{label:>10\}"),
        (["a {} }"], "not a valid format string"),
        ([], "templates is empty"),
        ("a photo of a {}.", "single string"),
        (["a {}.", 3], "template 1 is a int, not a string"),
    ],
)
def test_validate_templates_errors(templates, message):
    with pytest.raises(ValueError, match=message):
        validate_templates(templates)
