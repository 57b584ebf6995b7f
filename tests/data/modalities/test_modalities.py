"""Each modality is defined once, and the commands ask the definition instead of branching on names.

Four kinds of check: the registry's behaviour (its errors, the order it gives pair names
and batches); the source, read with ast, holding no comparison of a modality variable
against a name outside the definitions; no literal modality name outside the places allowed, each
with its reason; and a fourth modality added as its own module
plus one registry entry, which shards, the loader and the skip counts then handle with no
other edit. That every registered extension reads a file of its format is checked in
``test_media_types.py``.
"""
import ast
import os
import shutil
import subprocess
import sys
import textwrap
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
    "multimodal/interop/": "other projects' checkpoints hold towers of fixed names",
    "multimodal/presets.py": "a preset names the towers it builds",
    "multimodal/modality_parts.py": "the model's parts, one entry per modality, as the registry's definitions",
    "data/demo/": "the demo's own collections: digits as pictures and as speech",
    "eval/templates.py": "the default prompt templates of each modality",
    # Not turned into questions yet:
    "multimodal/checkpoint.py": "reads the fixed config fields model.audio / audio_preprocess of old checkpoints",
    "multimodal/training/trainer.py": "reads the config field model.image of an init_from checkpoint",
    "multimodal/training/alignment.py": "the default pairs: every tower with text",
    "multimodal/apps/api.py": "embed_images / embed_audio / embed_texts and the text side of zero-shot",
    "multimodal/apps/evaluation.py": "EvalSetConfig's defaults (image, text) that old run configs rely on; the text side",
    "multimodal/apps/evaluation_sources.py": "images are normalised after the loader, no other modality is",
    "multimodal/apps/search/query.py": "a query is text by default",
    "multimodal/apps/search/collection.py": "the captions a result is shown with",
    "multimodal/apps/search_server.py": "the search page's text field",
    "multimodal/cli/classify.py": "zero-shot's text side",
    "multimodal/cli/evaluate.py": "the option default --gallery-modality text; whether a source reads captions",
    "multimodal/cli/tokenizer.py": "reads the captions of shard samples",
    "data/pipeline/loader.py": "images are normalised after the loader, no other modality is",
    "data/pipeline/sample_fields.py": "the config fields image_keys / audio_keys of SourceSpec",
    "data/pipeline/source_spec.py": "SourceSpec's default modalities (image, text) that old run configs rely on",
    "data/writing/listing.py": "how a folder report words the files of each modality",
    "data/writing/pairing.py": "an SVG drawing is read as an image",
    "eval/metrics.py": "a retrieval report's default side names",
}
# Functions of otherwise clean files that may, with why: (file, function) -> reason.
LITERAL_NAMES_ALLOWED_IN = {
    ("multimodal/training/data_sources.py", "demo_eval_sets"): "the demo's evaluation sets, by collection",
    ("multimodal/training/data_sources.py", "resolve_sources"): "the demo's two training collections, image and audio with text",
    ("multimodal/training/data_sources.py", "normalisation_warnings"): "measured image statistics against the image normalisation",
    ("data/writing/writer.py", "_keep_for_image_statistics"): "image_stats.json measures images' pixels",
}


def _literal_names(tree: ast.AST, relative: str) -> list[str]:
    """``file:line: "image"`` for each string constant that is a modality's name, outside the allowed functions."""
    found = []

    def visit(node: ast.AST, allowed: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            allowed = allowed or (relative, node.name) in LITERAL_NAMES_ALLOWED_IN
        if isinstance(node, ast.Constant) and node.value in MODALITIES and not allowed:
            found.append(f"{relative}:{node.lineno}: {node.value!r}")
        for child in ast.iter_child_nodes(node):
            visit(child, allowed)

    visit(tree, False)
    return found


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
    for relative, function in LITERAL_NAMES_ALLOWED_IN:
        tree = ast.parse((ROOT / relative).read_text())
        assert function in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}, (relative, function)


# A fourth modality, as a user would add one: a definition module of its own (here a vector
# of floats stored as a .npy member) and its name in the registry's DEFINITIONS.
VECTOR_MODULE = '''
import io
import numpy as np
import torch
from multimodal.data.modalities.base import Modality

class VectorModality(Modality):
    name = "vector"
    extensions = ("npy",)
    media_types = {"npy": "application/x-npy"}
    batching = "stack"
    one, many = "a vector", "vectors"

    def check_decodes(self, data, **options):
        np.load(io.BytesIO(data), allow_pickle=False)

    def load_member(self, data, config, *, train, rng, levers):
        try:
            values = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:
            raise ValueError(f"not a .npy array: {error}") from None
        return {"vector": torch.from_numpy(values * config["scale"]).float()}

    def collate_into(self, batch, samples, *, tokenize=None, train=True):
        batch["vector"] = torch.stack([sample["vector"] for sample in samples])

VECTOR = VectorModality()
'''

FOURTH_MODALITY_RUN = '''
import io, sys, tarfile
from pathlib import Path

import numpy as np

import multimodal
from multimodal.data.writing.listing import samples_from_folder
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.writing.writer import write_shards

work = Path(sys.argv[1])
print("package", multimodal.__file__)
folder = work / "folder"
folder.mkdir()
for index in range(6):
    buffer = io.BytesIO()
    np.save(buffer, np.full(3, index, dtype=np.float32))
    (folder / f"v{index}.npy").write_bytes(buffer.getvalue())
    (folder / f"v{index}.txt").write_text(f"vector number {index}")
(folder / "v6.npy").write_bytes(b"not an array")  # refused by the writer's check
(folder / "v6.txt").write_text("broken")
(folder / "caption-only.txt").write_text("no vector")  # a caption with no member
result = write_shards(samples_from_folder(folder), work / "shards", shuffle=False)
print("written", result.splits["all"].num_samples, "skipped", sorted(skip.reason for skip in result.skipped))

shard = next((work / "shards").glob("*.tar"))
with tarfile.open(shard, "a") as archive:  # a sample without its vector, for the loader to skip
    data = b"a caption alone"
    info = tarfile.TarInfo("lonely.txt")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))

source = SourceSpec(str(shard), modalities=["vector", "text"], name="vectors")
loader = make_loader([source], batch_size=3, train=False, preprocess={"vector": {"scale": 2.0}})
batches = list(loader)
print("rows", [batch["vector"].tolist() for batch in batches])
print("texts", [batch["text"] for batch in batches])
print("skips", dict(loader.stats.skipped["vectors"]))
'''


def _copy_of_the_package(site: Path) -> Path:
    """The package as it installs (multimodal/ with data/, eval/, encoders/ inside), copied under ``site``."""
    ignore = shutil.ignore_patterns("__pycache__")
    package = site / "multimodal"
    shutil.copytree(ROOT / "multimodal", package, ignore=ignore)
    for leaf in ("data", "eval", "encoders"):
        shutil.copytree(ROOT / leaf, package / leaf, ignore=ignore)
    return package


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r}"
    path.write_text(text.replace(old, new))


@pytest.mark.slow
def test_a_fourth_modality_on_the_data_path_is_its_module_and_two_registry_entries(tmp_path):
    """Shards, the writer's check, the loader, collation and skip counts take a new modality with no other edit."""
    package = _copy_of_the_package(tmp_path / "site")
    (package / "data" / "vector_modality.py").write_text(textwrap.dedent(VECTOR_MODULE))
    _edit(package / "data" / "modalities" / "registry.py", "from multimodal.data.modalities.text_modality import TEXT\n",
          "from multimodal.data.modalities.text_modality import TEXT\nfrom multimodal.data.vector_modality import VECTOR\n")
    _edit(package / "data" / "modalities" / "registry.py", "(TEXT, IMAGE, AUDIO)", "(TEXT, IMAGE, AUDIO, VECTOR)")
    # Its encoder is not exercised here (no model is built); any module class stands in.
    _edit(package / "modality_parts.py", "\n}\n", "\n    \"vector\": ModalityParts(get_modality(\"vector\"), nn.Identity),\n}\n")
    (tmp_path / "run.py").write_text(FOURTH_MODALITY_RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["package"] == str(package / "__init__.py")  # the edited copy, not the installed tree
    # The writer took the six vectors, refused the broken one as bad_vector and the lone caption as no_media.
    assert lines["written"] == "6 skipped ['bad_vector', 'no_media']"
    # The loader read each vector with its preprocessing (scaled by 2) and its caption, in shard order.
    assert eval(lines["rows"]) == [[[0.0] * 3, [2.0] * 3, [4.0] * 3], [[6.0] * 3, [8.0] * 3, [10.0] * 3]]
    assert eval(lines["texts"]) == [[f"vector number {i}" for i in range(3)], [f"vector number {i}" for i in range(3, 6)]]
    assert eval(lines["skips"]) == {"missing_vector": 1}
