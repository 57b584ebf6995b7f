"""Checkpoints: round trip, shared weights, atomic writes, clear errors on mismatch."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.checkpoint import CheckpointError, load_model, save_checkpoint
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.presets import tiny
from tests.model.test_model import random_batch


def test_round_trip_gives_identical_embeddings(tmp_path):
    torch.manual_seed(0)
    model = MultimodalModel(tiny()).eval()
    batch = random_batch(model.config)
    before = model(batch)["features"]
    save_checkpoint(model, tmp_path / "ckpt", extra_config={"note": "test"})
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["note"] == "test"
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.config == model.config
    after = loaded(batch)["features"]
    for m in before:
        assert torch.equal(before[m], after[m])


def test_shared_trunk_is_stored_once_and_restored_shared(tmp_path):
    config = tiny()
    config.image.transformer.depth = config.text.transformer.depth = config.audio.transformer.depth  # tiny's differ
    model = MultimodalModel(ModelConfig(**{**config.__dict__, "share_trunk": True}))
    save_checkpoint(model, tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert not any(k.startswith("encoders.image.trunk.transformer.") for k in keys)
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.encoders["image"].trunk.transformer is loaded.encoders["text"].trunk.transformer
    batch = random_batch(model.config)
    model.eval()
    for m, f in model(batch)["features"].items():
        assert torch.equal(f, loaded(batch)["features"][m])


def test_mismatches_are_listed(tmp_path):
    model = MultimodalModel(tiny(["text", "image"]))
    save_checkpoint(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    del state["projections.text.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["encoders.image.class_token"] = torch.zeros(1, 1, 7)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "ckpt")
    message = str(error.value)
    assert "missing keys (1): projections.text.weight" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "encoders.image.class_token: checkpoint (1, 1, 7) vs model (1, 1, 128)" in message


def test_bad_config_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_model(tmp_path)
    model = MultimodalModel(tiny(["text", "image"]))
    save_checkpoint(model, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["model"]["embed_dimm"] = 3
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="embed_dimm"):
        load_model(tmp_path / "ckpt")
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(tmp_path / "ckpt")


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    model = MultimodalModel(tiny(["text", "image"]))
    save_checkpoint(model, tmp_path / "ckpt")

    class BrokenTokenizer(Tokenizer):
        def __init__(self):  # no vocabulary needed: saving fails first
            pass

        def save(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tmp_path / "ckpt", tokenizer=BrokenTokenizer())
    load_model(tmp_path / "ckpt")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary directory left behind


def test_a_checkpoint_from_before_min_frames_loads_with_its_own_patch_length(tmp_path):
    """config.json written before audio_preprocess.min_frames existed: it meant the encoder's patch length
    (8 here), so the checkpoint loads as it did, and its id is still hashed from the file as written."""
    from multimodal.checkpoint import checkpoint_id, read_config
    from multimodal.config_parser import apply_overrides

    config = apply_overrides(tiny(), {"audio.patch_size": "8", "audio.stride": "8", "audio_preprocess.min_frames": "8"})
    directory = save_checkpoint(MultimodalModel(config), tmp_path / "ckpt")
    before = checkpoint_id(directory)
    written = json.loads((directory / "config.json").read_text())
    del written["model"]["audio_preprocess"]["min_frames"]
    (directory / "config.json").write_text(json.dumps(written))
    assert load_model(directory).config.audio_preprocess.min_frames == 8
    assert "min_frames" not in read_config(directory, as_written=True)["model"]["audio_preprocess"]
    # Hashed as written, as the version that wrote it hashed it (indexes record that id): filled in, it would equal before.
    assert checkpoint_id(directory) != before
