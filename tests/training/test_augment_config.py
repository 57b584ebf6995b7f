"""Augmentation settings: checked when built, reached from the command line and YAML, on for the demo only."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from multimodal.training import data_sources
from multimodal.data.demo import dataset
from multimodal.config_parser import from_dict, to_dict
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.data.pipeline.source_spec import AugmentConfig
from multimodal.data.preprocess.augment_config import ImageAugmentConfig, NoiseAugment
from multimodal.apps.evaluation import EvalSetConfig
from multimodal.presets import tiny
from multimodal.training.data_sources import DataConfig
from multimodal.training.demo_sources import demo_augment
from multimodal.training.train_config import parse_config


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"image": {"affine": {"p": 1.5}}}, r"augment.image.affine.p must be a probability in \[0, 1\], got 1.5"),
        ({"image": {"affine": {"scale": [1.2, 0.8]}}},
         r"augment.image.affine.scale must be two numbers \[low, high\], low <= high, within \(0, 4\]"),
        ({"image": {"affine": {"rotation_degrees": 200}}},
         r"augment.image.affine.rotation_degrees must be a number in \[0, 180\], got 200"),
        ({"image": {"resolution": {"min_size": 1}}}, "augment.image.resolution.min_size must be an integer >= 2"),
        ({"image": {"blur": {"sigma": [-1, 1]}}}, "augment.image.blur.sigma must be two numbers"),
        ({"audio": {"speed": {"factor": [0.2, 1.0]}}}, r"augment.audio.speed.factor .* within \[0.5, 2\]"),
        ({"audio": {"noise": {"snr_db": [30, 5]}}}, "augment.audio.noise.snr_db must be two numbers"),
        ({"audio": {"noise": {"colors": ["grey"]}}},
         r"augment.audio.noise.colors must be one or more of \['white', 'pink', 'brown'\], got \['grey'\]"),
        ({"audio": {"band_limit": {"sample_rates": [500]}}},
         "augment.audio.band_limit.sample_rates must be one or more integer rates >= 1000 Hz, got"),
        ({"audio": {"band_limit": {"highpass_hz": 500, "lowpass_hz": 400}}},
         "augment.audio.band_limit.lowpass_hz must be a number above highpass_hz"),
        ({"audio": {"reverb": {"rt60_seconds": [0, 0.5]}}}, "augment.audio.reverb.rt60_seconds must be two numbers"),
        ({"audio": {"spec_augment": {"freq_mask": -1}}}, "augment.audio.spec_augment.freq_mask must be an integer >= 0"),
        ({"audio": {"trim": {"margin_seconds": [0.2, 0.1]}}}, "augment.audio.trim.margin_seconds must be two numbers"),
        ({"audio": {"equalizer": {"tilt_db": [12, -12]}}}, "augment.audio.equalizer.tilt_db must be two numbers"),
        ({"audio": {"equalizer": {"peak_width": [0, 0.2]}}},
         r"augment.audio.equalizer.peak_width must be two numbers \[low, high\], low <= high, within \(0, 10\]"),
    ],
)
def test_a_bad_setting_is_an_error_naming_it(settings, message):
    with pytest.raises(ValueError, match=message):
        from_dict(AugmentConfig, settings)


def test_wrong_types_and_misspelt_keys_are_errors():
    with pytest.raises(TypeError, match="image.affine.p: expected a number, got 'high'"):
        from_dict(AugmentConfig, {"image": {"affine": {"p": "high"}}})
    with pytest.raises(ValueError, match=r"image.afine \(did you mean image.affine\?\)"):
        from_dict(AugmentConfig, {"image": {"afine": {"p": 0.5}}})


def test_everything_is_off_by_default_and_on_for_the_demo():
    assert not SourceSpec(shards="x.tar").augment.image.enabled
    assert not AugmentConfig().audio.enabled and not AugmentConfig().enabled_for("text")
    demo = DataConfig().demo_augment
    assert demo == demo_augment() and demo.image.enabled and demo.audio.enabled
    assert from_dict(AugmentConfig, json.loads(json.dumps(to_dict(demo)))) == demo  # round trip, tuples back


def test_a_source_on_the_command_line_takes_its_augmentation(tmp_path):
    source = {"shards": str(tmp_path / "a.tar"), "augment": {"image": {"affine": {"p": 0.5, "scale": [0.9, 1.0]}},
                                                         "audio": {"noise": {"p": 0.25}}}}
    config = parse_config(["--data.train", json.dumps([source])])
    augment = config.data.train[0].augment
    assert augment.image.affine.p == 0.5 and augment.image.affine.scale == (0.9, 1.0)
    assert augment.audio.noise == NoiseAugment(p=0.25)
    with pytest.raises(ValueError, match=r"data.train\[0\].augment.image.afine \(did you mean "):
        parse_config(["--data.train", json.dumps([{"shards": "a.tar", "augment": {"image": {"afine": {}}}}])])
    # The demo's levers are dotted keys of their own; null switches the demo's augmentation off.
    tuned = parse_config(["--data.demo_augment.audio.speed.p", "0.3", "--data.demo_augment.image.invert.p", "0.5"])
    assert tuned.data.demo_augment.audio.speed.p == 0.3 and tuned.data.demo_augment.image.invert.p == 0.5
    assert parse_config(["--data.demo_augment", "null"]).data.demo_augment is None


def test_a_yaml_file_reaches_the_levers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data:\n"
        "  train:\n"
        f"    - shards: {tmp_path / 'speech.tar'}\n"
        "      modalities: [audio, text]\n"
        "      augment:\n"
        "        audio:\n"
        "          band_limit: {p: 0.2, sample_rates: [8000, 11025]}\n"
        "          gain: {p: 1.0, db: [-6, 6]}\n"
    )
    audio = parse_config(["--config", str(path)]).data.train[0].augment.audio
    assert audio.band_limit.sample_rates == (8000, 11025) and audio.gain.db == (-6.0, 6.0)


def write_shard(path: Path) -> str:
    path.write_bytes(b"")
    return str(path)


def test_training_refuses_a_band_limit_at_the_models_rate_and_warns_about_unused_levers(tmp_path, caplog):
    model = tiny()  # audio at 16 kHz
    shards = write_shard(tmp_path / "a.tar")
    speech = SourceSpec(shards=shards, modalities=["audio", "text"],
                        augment=from_dict(AugmentConfig, {"audio": {"band_limit": {"p": 0.5,
                                                                                   "sample_rates": [16000]}}}))
    with pytest.raises(ValueError, match=r"data.train\[0\].augment.audio.band_limit.sample_rates \[16000\] must all "
                                         r"be below the model's audio sample rate \(16000 Hz\)"):
        data_sources.resolve_sources(DataConfig(train=[speech]), model)
    images = SourceSpec(shards=shards, modalities=["image", "text"], augment=demo_augment())
    with caplog.at_level(logging.WARNING, logger="multimodal.training.data_sources"):
        data_sources.resolve_sources(DataConfig(train=[images]), model)
    assert "data.train[0].augment.audio is ignored: the source reads image and text, not audio" in caplog.text
    assert "augment.image" not in caplog.text


def test_the_demos_training_sources_carry_its_augmentation_and_evaluation_none(tmp_path, monkeypatch):
    paths = SimpleNamespace(image_train=write_shard(tmp_path / "i.tar"), audio_train=write_shard(tmp_path / "a.tar"))
    monkeypatch.setattr(dataset, "build_demo", lambda *args, **kwargs: paths)
    eval_set = EvalSetConfig(name="digits", shards=paths.image_train, modality="image", class_names=["a", "b"])
    model = tiny()
    resolved = data_sources.resolve_sources(DataConfig(eval=[eval_set]), model)
    assert [s.augment for s in resolved.train] == [demo_augment(), demo_augment()]
    tuned = DataConfig(eval=[eval_set], demo_augment=AugmentConfig(image=ImageAugmentConfig()))
    assert not any(s.augment.enabled_for(m) for s in data_sources.resolve_sources(tuned, model).train
                   for m in ("image", "audio"))
    off = data_sources.resolve_sources(DataConfig(eval=[eval_set], demo_augment=None), model)
    assert all(s.augment == AugmentConfig() for s in off.train)
    prepared = data_sources.prepare(DataConfig(), model, None, SimpleNamespace(train=[], eval_sets=[]))
    evaluation = prepared.eval_loader(SourceSpec(paths.image_train, ["image"], name="digits")).dataset
    assert all(spec.augment == AugmentConfig() for spec in evaluation.sources)


def test_the_demo_draws_images_by_its_image_weight(tmp_path, monkeypatch):
    paths = SimpleNamespace(image_train=write_shard(tmp_path / "i.tar"), audio_train=write_shard(tmp_path / "a.tar"))
    monkeypatch.setattr(dataset, "build_demo", lambda *args, **kwargs: paths)
    eval_set = EvalSetConfig(name="digits", shards=paths.image_train, modality="image", class_names=["a", "b"])
    by_default = data_sources.resolve_sources(DataConfig(eval=[eval_set]), tiny()).train
    assert [(s.modalities, s.weight) for s in by_default] == [(["image", "text"], 2.0), (["audio", "text"], 1.0)]
    even = data_sources.resolve_sources(DataConfig(eval=[eval_set], demo_image_weight=1.0), tiny()).train
    assert [s.weight for s in even] == [1.0, 1.0]


def test_every_yaml_example_in_the_readme_parses_to_its_settings(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]
    assert len(blocks) >= 2
    configs = []
    for index, block in enumerate(blocks):
        path = tmp_path / f"example{index}.yaml"
        path.write_text(block, encoding="utf-8")
        configs.append(parse_config(["--config", str(path)]))
    levers = next(config for config, block in zip(configs, blocks) if "spec_augment" in block).data.train
    assert levers[0].augment.image.affine.p == 0.8 and levers[0].augment.image.resolution.min_size == 8
    assert levers[1].label_key == "json:label" and levers[1].augment.audio.spec_augment.p == 0.5
    assert levers[1].augment.audio.band_limit.sample_rates == (8000,)
    assert levers[1].augment.audio.trim.margin_seconds == (0, 0.15)
    stem = next(config for config, block in zip(configs, blocks) if "stem:" in block).model.image
    assert stem.stem == "conv" and tuple(stem.stem_channels) == (32, 64)


@pytest.mark.parametrize(("saved_flag", "expected"), [(None, False), (True, True), (False, False)])
def test_a_demo_run_from_before_label_positives_resumes_without_them(tmp_path, saved_flag, expected):
    from multimodal.checkpoint import FORMAT_VERSION
    from multimodal.training.resumed_config import resumed_config
    from multimodal.training.train_config import TrainConfig

    train = to_dict(TrainConfig())
    if saved_flag is None:  # written before the setting existed
        del train["data"]["demo_label_positives"]
    else:
        train["data"]["demo_label_positives"] = saved_flag
    (tmp_path / "config.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "model": {}, "train": train}))
    resumed = resumed_config(TrainConfig(resume=str(tmp_path)), tmp_path, given={"resume": str(tmp_path)})
    assert resumed.data.demo_label_positives is expected
