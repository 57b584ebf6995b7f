"""Each modality is defined once, and the commands ask the definition instead of branching on names.

Three kinds of check: the registry's behaviour (its errors, the order it gives pair names
and batches); the source, read with ast, holding no comparison of a modality variable
against a name outside the definitions; and no literal modality name outside the
definitions, the presets, the demo and other projects' converters, each with its reason.
A fourth modality added with no other edit is ``tests/test_a_fourth_modality.py``; that every
registered extension reads a file of its format is checked in ``test_media_types.py``.
"""
import ast
from pathlib import Path

import pytest
import torch

from multimodal.data.pipeline.batches import collate_samples
from multimodal.data.modalities.registry import MODALITIES, get_modality
from multimodal.model import MultimodalModel
from multimodal.modality_parts import parts_of
from multimodal.presets import tiny

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("lookup", [get_modality, parts_of])
@pytest.mark.parametrize("name", ["video", "Image", ["image"]])
def test_an_unknown_modality_is_refused_naming_the_known_ones(lookup, name):
    message = f"unknown modality {name!r}; expected one of ('text', 'image', 'audio')"
    with pytest.raises(ValueError) as caught:
        lookup(name)
    assert str(caught.value) == message


def test_the_registry_order_names_the_pairs_whatever_order_a_config_lists():
    """A checkpoint's temperatures are named by pair (``logit_scales.text_image``): the names
    must not depend on the order a run lists its modalities in."""
    model = MultimodalModel(tiny(("audio", "image", "text")))
    assert model.config.modalities == ["text", "image", "audio"]
    assert model.config.pairs == ["text_image", "text_audio", "image_audio"]
    assert sorted(model.state_dict()) == sorted(MultimodalModel(tiny(MODALITIES)).state_dict())


def test_a_batch_holds_the_members_first_then_the_captions():
    sample = {"__key__": "k", "text": "a caption", "audio": [torch.zeros(5, 8)],
              "image": torch.zeros(3, 4, 4, dtype=torch.uint8)}
    batch = collate_samples([sample, {**sample, "__key__": "l"}], tokenize=None, source="s")
    assert list(batch) == ["__key__", "__source__", "image", "audio", "text"]
    assert batch["image"].shape == (2, 3, 4, 4) and batch["audio"].shape == (2, 5, 8)
    assert batch["text"] == ["a caption", "a caption"]


# Where a modality's name may still be compared: its own definition, and the converters of
# other projects' checkpoints (whose towers have fixed names).
NAMED_ON_PURPOSE = ("data/modalities/text_modality.py", "data/modalities/image_modality.py", "data/modalities/audio_modality.py", "multimodal/interop/")


def _product_files():
    for package in ("multimodal", "data", "eval", "encoders"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(NAMED_ON_PURPOSE):
                yield relative, path


def _names_a_modality(node: ast.AST) -> bool:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith("modality")


def test_no_command_branches_on_a_modalitys_name():
    """``modality == "image"`` or ``("image", "audio")`` outside a definition: ask the registry instead."""
    offences = []
    for relative, path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=relative)):
            if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
                sides = [node.left, node.comparators[0]]
                named = any(isinstance(s, ast.Constant) and s.value in MODALITIES for s in sides)
                if named and any(_names_a_modality(s) for s in sides):
                    offences.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
            if isinstance(node, ast.Tuple) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and e.value in MODALITIES for e in node.elts
            ):
                offences.append(f"{relative}:{node.lineno}: {ast.unparse(node)}")
    assert not offences, "\n".join(offences)


# Where a modality's name may be written out ("image"), each with why. Everywhere else a
# command asks the registry or the definition (its reads_files, batching, cut_to ...).
LITERAL_NAMES_ALLOWED = {
    "data/modalities/text_modality.py": "the definition names its own entries",
    "data/modalities/image_modality.py": "the definition names its own entries",
    "data/modalities/audio_modality.py": "the definition names its own entries",
    "multimodal/modality_parts.py": "the model's parts, one entry per modality, as the registry's definitions",
    "eval/templates.py": "the default prompt templates of each modality, which the parts name",
    "multimodal/presets.py": "a preset names the towers it builds",
    "data/demo/": "the demo's own collections: digits as pictures and as speech",
    "multimodal/training/demo_sources.py": "the demo's sources and evaluation sets, by collection",
    "multimodal/interop/": "other projects' checkpoints hold towers of fixed names",
}


def _literal_names(tree: ast.AST, relative: str) -> list[str]:
    """``file:line: "image"`` for each string constant that is a modality's name."""
    return [f"{relative}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in MODALITIES]


def test_no_modality_is_named_outside_the_allowed_places():
    """A literal "image", "audio" or "text" outside the places above: ask the registry or the definition."""
    offences = []
    for package in ("multimodal", "data", "eval", "encoders"):
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if not relative.startswith(tuple(LITERAL_NAMES_ALLOWED)):
                offences += _literal_names(ast.parse(path.read_text(), filename=relative), relative)
    assert not offences, "\n".join(offences)


def test_the_allowed_places_exist():
    """An allowed file or function that moved or went away leaves no stale entry behind."""
    assert all((ROOT / place).exists() for place in LITERAL_NAMES_ALLOWED)
