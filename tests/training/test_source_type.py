"""One source type: a run's training sources are the loader's SourceSpec, from the command line, YAML and config.json.

Covers what the merge of the run's source config into SourceSpec could break: a config.json
recorded before the loader's keys were settings still loads and resumes as the same run; a
key only SourceSpec had (image_keys) reaches the training loader; an evaluation-only option
(all_captions) is refused when the run starts, naming its key.
"""
from __future__ import annotations

import json

import pytest
import torch
import webdataset
from torchvision.io import encode_jpeg, encode_png

from multimodal.training import data_sources
from multimodal.checkpoint import CONFIG_FILE, FORMAT_VERSION, RUN_CHECKPOINTS, TRAINER_FILE
from multimodal.config_parser import to_dict
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.presets import tiny
from multimodal.training.train_config import TrainConfig, parse_config
from tests.training.test_train import run_trainer, tiny_dataset_at

# The keys a data.train entry had before it was a SourceSpec: what an earlier run's config.json holds.
EARLIER_SOURCE_KEYS = ("shards", "modalities", "weight", "caption_keys", "augment", "label_key")
CAPTIONS = ["a red square", "a blue square"]


def solid(colour: tuple[int, int, int], size: int = 16) -> torch.Tensor:
    return torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size).contiguous()


def write_two_image_shard(directory) -> str:
    """Samples holding two images, a red PNG and a blue JPEG: which one training reads says which key it used."""
    path = directory / "pairs-000.tar"
    png = encode_png(solid((255, 0, 0))).numpy().tobytes()
    jpg = encode_jpeg(solid((0, 0, 255)), quality=95).numpy().tobytes()
    with webdataset.TarWriter(str(path)) as writer:
        for index in range(8):
            writer.write({"__key__": f"s{index:03d}", "png": png, "jpg": jpg, "txt": CAPTIONS[index % 2]})
    return str(path)


def recorded_run(root, train_config: TrainConfig, *, earlier: bool):
    """A run folder with one checkpoint whose config.json records ``train_config`` (as an earlier version did)."""
    train = to_dict(train_config)
    if earlier:
        train["data"]["train"] = [{key: entry[key] for key in EARLIER_SOURCE_KEYS} for entry in train["data"]["train"]]
    checkpoint = root / "run" / RUN_CHECKPOINTS / "step-0000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / TRAINER_FILE).write_text("{}")
    record = {"format_version": FORMAT_VERSION, "model": {}, "train": train}
    (checkpoint / CONFIG_FILE).write_text(json.dumps(record))
    (root / "run" / CONFIG_FILE).write_text(json.dumps(train))  # the run's own record, as train.py writes it
    return checkpoint


def test_a_config_json_from_before_the_loader_keys_loads_and_resumes_as_the_same_run(tmp_path):
    source = {"shards": str(tmp_path / "img-{000..003}.tar"), "modalities": ["image", "text"], "weight": 2}
    flags = ["--output_dir", str(tmp_path), "--run_name", "run", "--data.train", json.dumps([source])]
    recorded_run(tmp_path, parse_config(flags), earlier=True)
    old_entry = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["data"]["train"][0]
    assert "image_keys" not in old_entry and "name" not in old_entry  # it is an earlier record

    # The earlier record as a config file: the keys it lacks take their defaults.
    [loaded] = parse_config(["--config", str(tmp_path / "run" / CONFIG_FILE)]).data.train
    assert loaded == SourceSpec(shards=source["shards"], modalities=["image", "text"], weight=2.0)
    assert loaded.name is None and not loaded.all_captions

    # Resumed with the original flags repeated: the same data, not a changed setting; and without them.
    for given in (flags, flags[:4]):
        resumed = parse_config([*given, "--resume", "latest", "--optim.steps", "20"])
        assert resumed.data.train == [loaded] and resumed.optim.steps == 20

    # A loader key given differently on resuming is a change of the run's data, refused naming data.train.
    changed = [{**source, "image_keys": "png"}]
    with pytest.raises(ValueError, match=r"these cannot change: data\.train: run \[.*\"image_keys\": "):
        parse_config([*flags[:4], "--data.train", json.dumps(changed), "--resume", "latest"])


def test_a_run_recorded_now_resumes_with_its_loader_keys(tmp_path):
    source = {"shards": str(tmp_path / "img.tar"), "modalities": ["image", "text"], "image_keys": "png",
              "name": "stamps"}
    flags = ["--output_dir", str(tmp_path), "--run_name", "run", "--data.train", json.dumps([source])]
    recorded_run(tmp_path, parse_config(flags), earlier=False)
    entry = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["data"]["train"][0]
    assert (entry["image_keys"], entry["name"], entry["all_captions"]) == ("png", "stamps", False)
    for given in (flags, flags[:4]):
        [resumed] = parse_config([*given, "--resume", "latest"]).data.train
        assert (resumed.image_keys, resumed.name) == ("png", "stamps")


@pytest.mark.parametrize("given", ["yaml", "flags"])
def test_image_keys_of_the_run_config_reach_the_training_loader(tmp_path, given):
    shards = write_two_image_shard(tmp_path)
    entries = [{"shards": shards, "modalities": ["image", "text"], "image_keys": keys} for keys in ("png", "jpg")]
    if given == "yaml":
        path = tmp_path / "run.yaml"
        path.write_text("data:\n  train:\n" + "".join(
            f"    - shards: {e['shards']}\n      modalities: [image, text]\n      image_keys: {e['image_keys']}\n"
            for e in entries))
        config = parse_config(["--config", str(path)])
    else:
        config = parse_config(["--data.train", json.dumps(entries)])
    assert [s.image_keys for s in config.data.train] == ["png", "jpg"]

    model = tiny(["text", "image"])
    tokenizer = Tokenizer.train(CAPTIONS * 10, vocab_size=300)
    red_then_blue = []
    for source in config.data.train:  # one at a time: each batch is then from the source under test
        data_config = data_sources.DataConfig(train=[source], batch_size=4, num_workers=0, worker_nice=0,
                                              shuffle_buffer=4)
        resolved = data_sources.resolve_sources(data_config, model)
        prepared = data_sources.prepare(data_config, model, tokenizer, resolved)
        loader = prepared.train_loader(seed=0)
        batch = next(iter(loader))
        # Unnamed, it goes by train0 in the loader, as before; the run's config keeps it unnamed.
        assert batch["__source__"] == "train0" and loader.dataset.names == ["train0"] and source.name is None
        red, blue = batch["image"][:, 0].mean().item(), batch["image"][:, 2].mean().item()
        red_then_blue.append(red > blue)
        assert prepared.skipped_total() == 0  # every sample read, none skipped for a missing image
    assert red_then_blue == [True, False]  # png: the red image; jpg: the blue one


def test_a_named_training_source_keeps_its_name_and_two_sources_may_not_share_one(tmp_path):
    shards = write_two_image_shard(tmp_path)
    model = tiny(["text", "image"])
    named = SourceSpec(shards=shards, name="squares")
    data_config = data_sources.DataConfig(train=[named, SourceSpec(shards=shards)], batch_size=4, num_workers=0,
                                          worker_nice=0)
    prepared = data_sources.prepare(data_config, model, Tokenizer.train(CAPTIONS * 10, vocab_size=300),
                                    data_sources.resolve_sources(data_config, model))
    assert prepared.train_loader(seed=0).dataset.names == ["squares", "train1"]
    assert [s.name for s in data_config.train] == ["squares", None]  # the config's objects are not renamed
    clash = data_sources.DataConfig(train=[SourceSpec(shards=shards), SourceSpec(shards=shards, name="train0")])
    with pytest.raises(ValueError, match=r"data\.train\[0\] and data\.train\[1\] both go by the name 'train0'"):
        data_sources.resolve_sources(clash, model)


def test_all_captions_in_a_training_source_is_refused_naming_its_key(tmp_path):
    shards = write_two_image_shard(tmp_path)
    config = parse_config(["--data.train", json.dumps([{"shards": shards}, {"shards": shards, "all_captions": True}])])
    with pytest.raises(ValueError, match=r"^data\.train\[1\]\.all_captions: every caption of a sample is for "
                                         r"retrieval evaluation; training reads one caption per sample"):
        data_sources.resolve_sources(config.data, tiny(["text", "image"]))


def test_the_trainer_refuses_all_captions_at_start_in_one_line(tmp_path):
    dataset = tiny_dataset_at(tmp_path / "data")
    entry = {"shards": dataset["spec"], "modalities": ["image", "text"], "all_captions": True}
    done = run_trainer(["--output_dir", str(tmp_path / "runs"), "--run_name", "x", "--model.audio", "null",
                        "--data.train", json.dumps([entry]), "--data.tokenizer", dataset["tokenizer"]])
    assert done.returncode == 2
    assert "train.py: error: data.train[0].all_captions: every caption of a sample is for retrieval" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
