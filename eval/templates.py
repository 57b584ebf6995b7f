"""Prompt templates that turn a class name into sentences for a zero-shot head.

A template is a format string with exactly one placeholder, ``{}`` or ``{label}``,
where the class name goes: ``"a photo of a {}."`` or ``"the sound of {label}."``.
Literal braces are written doubled (``{{`` and ``}}``) as in ``str.format``.

Several templates per class are averaged into one classifier row (see
``multimodal.eval.zeroshot``): each wording adds its own bias, and the average of several
phrasings is a steadier description of the class than any one of them.
"""
from __future__ import annotations

import string
from collections.abc import Sequence

# Our own wordings, for natural images: objects, scenes, digits.
IMAGE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of the {}.",
    "an image that shows a {}.",
    "a snapshot of a {}.",
    "a close view of the {}.",
    "an out-of-focus picture of a {}.",
    "a small picture of a {}.",
    "a sketch of a {}.",
    "a {} shown in an image.",
    "there is a {} in this picture.",
)

# Our own wordings, for sound events and environmental audio.
AUDIO_TEMPLATES: tuple[str, ...] = (
    "the sound of {}.",
    "a recording of {}.",
    "an audio clip of {}.",
    "this is the sound of {}.",
    "a short sound recording of {}.",
    "{} can be heard.",
    "you can hear {} in this recording.",
    "audio of {}.",
)

# Our own wordings, for speech where the class is the word spoken (spoken digits, commands).
SPOKEN_WORD_TEMPLATES: tuple[str, ...] = (
    "someone saying {}.",
    "a voice saying {}.",
    "the spoken word {}.",
    "a person says {}.",
    "a recording of someone saying {}.",
    "the word {}, spoken aloud.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "image": IMAGE_TEMPLATES,
    "audio": AUDIO_TEMPLATES,
    "spoken_word": SPOKEN_WORD_TEMPLATES,
}

_PLACEHOLDER_NAMES = ("", "label")


def get_templates(name: str) -> tuple[str, ...]:
    """The built-in template set called ``name``: one of ``TEMPLATE_SETS`` ("image", "audio", "spoken_word")."""
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set {name!r}; choose one of {sorted(TEMPLATE_SETS)} or pass your own list")
    return TEMPLATE_SETS[name]


def _placeholder_name(template: str, index: int | None = None) -> str:
    """The name of the single placeholder of ``template`` ("" for ``{}``), or ValueError saying what is wrong."""
    where = f"template {index} ({template!r})" if index is not None else f"template {template!r}"
    try:
        parsed = list(string.Formatter().parse(template))  # (literal, name, spec, conversion) per piece
    except ValueError as error:  # unmatched braces, e.g. "a {} }"
        raise ValueError(
            f"{where} is not a valid format string ({error}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    fields = [(name, spec, conversion) for _, name, spec, conversion in parsed if name is not None]
    if len(fields) != 1:
        raise ValueError(
            f"{where} has {len(fields)} placeholders; "
            "it needs exactly one, '{}' or '{label}', where the class name goes"
        )
    name, spec, conversion = fields[0]
    if name not in _PLACEHOLDER_NAMES or spec or conversion:
        written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
        raise ValueError(
            f"{where} has placeholder {written}; use '{{}}' or '{{label}}' with no conversion or format spec"
        )
    return name


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Checks user-supplied templates and returns them as a tuple.

    Each must be a string with exactly one placeholder, ``{}`` or ``{label}``, and
    no conversion or format spec. Raises ValueError naming the first bad template
    (its index and text), and when the list is empty or is a single string (a
    common slip: a string is a sequence of one-character "templates").
    """
    if isinstance(templates, str):
        raise ValueError(f"templates must be a list of strings, got the single string {templates!r}; wrap it in a list")
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates is empty; give at least one, e.g. ['a photo of a {}.']")
    for index, template in enumerate(templates):
        if not isinstance(template, str):
            raise ValueError(f"template {index} is a {type(template).__name__}, not a string: {template!r}")
        _placeholder_name(template, index)
    return templates


def format_prompt(template: str, class_name: str) -> str:
    """``template`` with ``class_name`` in its one placeholder: ("a photo of a {}.", "dog") -> "a photo of a dog."."""
    name = _placeholder_name(template)
    return template.format(class_name) if name == "" else template.format(label=class_name)


def format_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Every prompt: ``result[c][t]`` is template ``t`` filled with class name ``c``."""
    templates = validate_templates(templates)
    return [[format_prompt(template, class_name) for template in templates] for class_name in class_names]
