"""A fourth modality is its own definition module, its encoder and two registry entries, and nothing more.

The test copies the package as it installs, adds a "vector" modality (floats stored as a
``.npy`` member) the way a user would: a definition module in ``data/``, an encoder built
from the project's block stack in ``encoders/``, its name in the registry's ``DEFINITIONS``
and its entry in ``modality_parts.PARTS``. With no other edit the copy then writes shards
of it, loads and collates it with its own preprocessing, counts samples without it, trains
a vector-text model, evaluates it zero-shot (shards and class folders) and embeds it
(shards and files). The zero-shot figure is checked against one computed from ``embed``'s
outputs, so every command agrees on what the model says.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

VECTOR_MODULE = '''
import io
from dataclasses import dataclass

import numpy as np
import torch
from multimodal.data.modalities.base import Modality


@dataclass
class VectorPreprocessConfig:
    scale: float = 1.0


class VectorModality(Modality):
    name = "vector"
    extensions = ("npy",)
    media_types = {"npy": "application/x-npy"}
    batching = "stack"
    one, many = "a vector", "vectors"
    class_caption = "a vector of {}."
    preprocess_config = VectorPreprocessConfig

    def check_decodes(self, data, **options):
        np.load(io.BytesIO(data), allow_pickle=False)

    def load_member(self, data, config, *, train, rng, levers):
        try:
            values = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:
            raise ValueError(f"not a .npy array: {error}") from None
        return {"vector": torch.from_numpy(values * config.scale).float()}

    def collate_into(self, batch, samples, *, tokenize=None, train=True):
        batch["vector"] = torch.stack([sample["vector"] for sample in samples])

    def prepare(self, item, config, **options):
        data = item.read_bytes() if hasattr(item, "read_bytes") else bytes(item)
        return self.load_member(data, config, train=False, rng=None, levers=None)["vector"]


VECTOR = VectorModality()
'''

VECTOR_ENCODER = '''
from dataclasses import dataclass, field

import torch
from torch import nn

from multimodal.encoders.block import TransformerConfig
from multimodal.encoders.encoder import EncoderTrunk


@dataclass
class VectorConfig:
    size: int = 3
    transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=16, depth=1, num_heads=2))


class VectorEncoder(nn.Module):
    """(B, size) vectors -> (B, width): each entry a token (its value times a learned direction plus its position)."""

    def __init__(self, config: VectorConfig) -> None:
        super().__init__()
        self.config = config
        width = config.transformer.width
        self.stem = nn.Linear(1, width)
        self.positions = nn.Parameter(torch.randn(1, config.size, width) * width**-0.5)
        self.trunk = EncoderTrunk(config.transformer, pooling="mean")

    @property
    def width(self) -> int:
        return self.trunk.width

    def forward(self, vectors, padding_mask=None):
        return self.trunk(self.stem(vectors[..., None]) + self.positions)
'''

# Run in the edited copy: every step a user takes with the new modality, through the public commands.
RUN = '''
import io, json, sys, tarfile
from pathlib import Path

import numpy as np

import multimodal
from multimodal.cli import main as multimodal_command
from multimodal.data.pipeline.loader import make_loader
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.vector_modality import VectorPreprocessConfig
from multimodal.data.writing.listing import samples_from_folder
from multimodal.data.writing.writer import write_shards
from multimodal.training.trainer import main as train

work = Path(sys.argv[1])
report = {"package": multimodal.__file__}


def npy(values):
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=np.float32))
    return buffer.getvalue()


# 1. Shards of a captioned folder: the writer checks each member, the loader reads and collates.
folder = work / "captioned"
folder.mkdir()
for index in range(6):
    (folder / f"v{index}.npy").write_bytes(npy([index] * 3))
    (folder / f"v{index}.txt").write_text(f"vector number {index}")
(folder / "v6.npy").write_bytes(b"not an array")  # refused by the writer's check
(folder / "v6.txt").write_text("broken")
(folder / "caption-only.txt").write_text("no vector")  # a caption with no member
written = write_shards(samples_from_folder(folder), work / "captioned-shards", shuffle=False)
report["written"] = written.splits["all"].num_samples
report["skipped"] = sorted(skip.reason for skip in written.skipped)
shard = next((work / "captioned-shards").glob("*.tar"))
with tarfile.open(shard, "a") as archive:  # a sample without its vector, for the loader to skip
    data = b"a caption alone"
    info = tarfile.TarInfo("lonely.txt")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
source = SourceSpec(str(shard), modalities=["vector", "text"], name="vectors")
loader = make_loader([source], batch_size=3, train=False, preprocess={"vector": VectorPreprocessConfig(scale=2.0)})
batches = list(loader)
report["rows"] = [batch["vector"].tolist() for batch in batches]
report["texts"] = [batch["text"] for batch in batches]
report["loader_skips"] = dict(loader.stats.skipped["vectors"])

# 2. Class folders of two kinds of vector, written as shards with their class names.
rng = np.random.default_rng(0)
for split in ("train", "test"):
    for offset, name in ((0.0, "low"), (4.0, "high")):
        (work / split / name).mkdir(parents=True)
        for index in range(6):
            (work / split / name / f"{name}{index}.npy").write_bytes(npy(rng.normal(size=3) + offset))
    assert multimodal_command(["shards", "--input", str(work / split), "--output", str(work / f"{split}-shards"),
                               "--layout", "classes"]) == 0

# 3. A vector-text model trained for two steps by the trainer, from the command line's settings.
assert multimodal_command(["tokenizer", "--captions", str(work / "train-shards" / "shard-000000.tar"),
                           "--vocab-size", "300", "--output", str(work / "tokenizer.json")]) == 0
train([
    "--data.train", json.dumps([{"shards": str(work / "train-shards" / "shard-000000.tar"), "modalities": ["vector", "text"]}]),
    "--data.tokenizer", str(work / "tokenizer.json"), "--model.text.vocab_size", "300",
    "--model.image", "null", "--model.audio", "null", "--model.vector", "{}",
    "--optim.steps", "2", "--data.batch_size", "4", "--output_dir", str(work / "runs"), "--run_name", "vectors",
    "--plot", "false", "--threads", "1",
])
checkpoint = work / "runs" / "vectors" / "checkpoints" / "step-0000002"
report["model_config"] = json.loads((checkpoint / "config.json").read_text())["model"]

# 4. Zero-shot evaluation of the shards and of the class folders; embeddings of both and of the prompts.
for name, data in (("shards", work / "test-shards" / "shard-000000.tar"), ("folders", work / "test")):
    assert multimodal_command(["eval", "--checkpoint", str(checkpoint), "--task", "zeroshot", "--data", str(data),
                               "--modality", "vector", "--output", str(work / f"zeroshot-{name}.json")]) == 0
assert multimodal_command(["embed", "--checkpoint", str(checkpoint), "--modality", "vector",
                           "--input", str(work / "test-shards" / "shard-000000.tar"), "--output", str(work / "parts")]) == 0
assert multimodal_command(["embed", "--checkpoint", str(checkpoint), "--modality", "vector",
                           "--input", str(work / "test"), "--output", str(work / "files.npy")]) == 0
(work / "prompts.txt").write_text("a vector of high.\\na vector of low.\\n")
assert multimodal_command(["embed", "--checkpoint", str(checkpoint), "--modality", "text",
                           "--input", str(work / "prompts.txt"), "--output", str(work / "prompts.npy")]) == 0
(work / "report.json").write_text(json.dumps(report))
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


def _add_the_vector_modality(package: Path) -> None:
    """The whole change a user makes: two new modules and one entry in each of two tables."""
    (package / "data" / "vector_modality.py").write_text(textwrap.dedent(VECTOR_MODULE))
    (package / "encoders" / "vector_encoder.py").write_text(textwrap.dedent(VECTOR_ENCODER))
    registry = package / "data" / "modalities" / "registry.py"
    _edit(registry, "from multimodal.data.modalities.text_modality import TEXT\n",
          "from multimodal.data.modalities.text_modality import TEXT\nfrom multimodal.data.vector_modality import VECTOR\n")
    _edit(registry, "(TEXT, IMAGE, AUDIO)", "(TEXT, IMAGE, AUDIO, VECTOR)")
    parts = package / "modality_parts.py"
    _edit(parts, "from torch import nn\n",
          "from torch import nn\n\nfrom multimodal.encoders.vector_encoder import VectorConfig, VectorEncoder\n")
    _edit(parts, "\n}\n",
          '\n    "vector": ModalityParts(get_modality("vector"), VectorEncoder, VectorConfig, ("a vector of {}.",)),\n}\n')


def _rows_by_key(stem: Path) -> dict[str, np.ndarray]:
    """An ``embed`` output (``.npy`` and its ``.keys.json``) as {key: row}."""
    keys = json.loads(stem.with_suffix(".keys.json").read_text())
    return dict(zip(keys, np.load(stem.with_suffix(".npy"))))


@pytest.mark.slow
def test_a_fourth_modality_is_its_module_its_encoder_and_two_table_entries(tmp_path):
    package = _copy_of_the_package(tmp_path / "site")
    _add_the_vector_modality(package)
    (tmp_path / "run.py").write_text(RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["package"] == str(package / "__init__.py")  # the edited copy, not the installed tree

    # The writer took the six vectors, refused the broken one as bad_vector and the lone caption as no_media;
    # the loader read each vector with its own preprocessing (scaled by 2) and its caption, in shard order.
    assert (report["written"], report["skipped"]) == (6, ["bad_vector", "no_media"])
    assert report["rows"] == [[[0.0] * 3, [2.0] * 3, [4.0] * 3], [[6.0] * 3, [8.0] * 3, [10.0] * 3]]
    assert report["texts"] == [[f"vector number {i}" for i in range(3)], [f"vector number {i}" for i in range(3, 6)]]
    assert report["loader_skips"] == {"missing_vector": 1}

    # The model config holds the new tower and its preprocessing, made from the registry.
    model = report["model_config"]
    assert model["image"] is None and model["audio"] is None
    assert model["vector"]["size"] == 3 and model["vector_preprocess"] == {"scale": 1.0}

    # Zero-shot from shards (class names from classes.json) and from class folders agree...
    shards = json.loads((tmp_path / "zeroshot-shards.json").read_text())
    folders = json.loads((tmp_path / "zeroshot-folders.json").read_text())
    assert shards["class_names"] == folders["class_names"] == ["high", "low"]
    assert shards["templates"] == ["a vector of {}."]
    assert shards["results"]["eval/num_samples"] == folders["results"]["eval/num_samples"] == 12
    assert shards["results"]["eval/accuracy@1"] == pytest.approx(folders["results"]["eval/accuracy@1"])

    # ...with what embed's vectors say: each file's nearest prompt is its prediction.
    files = _rows_by_key(tmp_path / "files.npy")
    prompts = np.load(tmp_path / "prompts.npy")  # rows: "a vector of high.", "a vector of low."
    predicted = {key: ("high", "low")[int(np.argmax(prompts @ row))] for key, row in files.items()}
    correct = sum(predicted[key] == Path(key).parent.name for key in files)
    assert len(files) == 12
    assert folders["results"]["eval/accuracy@1"] == pytest.approx(correct / 12)

    # The shard part holds the same twelve vectors as the files (keys differ: class__stem against paths).
    parts = _rows_by_key(tmp_path / "parts" / "part-shard-000000.npy")
    by_stem = {Path(key).stem: row for key, row in files.items()}
    assert sorted(parts) == sorted(f"{Path(key).parent.name}__{Path(key).stem}" for key in files)
    for key, row in parts.items():
        np.testing.assert_allclose(row, by_stem[key.split("__", 1)[1]], atol=1e-6)
