"""A run from a checkpoint: the fine-tuning learning rate and warm-up unless given, said in one start-up line;
and the warning when it moves a tower that a tower it does not train is aligned to."""
import json
from pathlib import Path

import pytest
import torch

from multimodal.training import trainer
from multimodal.training.alignment import drift_warnings, trained_pairs
from multimodal.checkpoint import save_checkpoint
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.data.writing.writer import SampleSource, write_shards
from multimodal.model import MultimodalModel
from multimodal.training.model_setup import fit_text_to_tokenizer
from multimodal.training.optimizer import FINE_TUNING_DEFAULTS, fine_tuning_line, rate_text
from multimodal.presets import tiny
from multimodal.training.optimizer import OptimConfig
from multimodal.training.train_config import TrainConfig, parse_config

LR, WARMUP, STEPS = (FINE_TUNING_DEFAULTS[name] for name in ("lr", "warmup_steps", "steps"))


def checkpoint(directory: Path, modalities=("text", "image", "audio"), *, sources=None,
               init_from=None) -> Path:
    """A tiny checkpoint recording how it was trained: ``sources`` (modalities of each; None: the demo)."""
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["a handwritten seven", "someone saying seven"] * 4, vocab_size=280)
    train_section = {"data": {"train": [{"shards": "x", "modalities": list(m)} for m in sources or []]},
                     "init_from": None if init_from is None else str(init_from)}
    model = fit_text_to_tokenizer(tiny(tuple(modalities)), tokenizer)
    return save_checkpoint(MultimodalModel(model), directory, tokenizer=tokenizer,
                           extra_config={"train": train_section})


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory) -> Path:
    """Text, image and audio towers trained as the demo trains them: image-text and audio-text pairs."""
    return checkpoint(tmp_path_factory.mktemp("demo_like") / "ckpt")


# --------------------------------------------------------------------------- the fine-tuning defaults


def settings(config) -> tuple:
    return config.optim.lr, config.optim.warmup_steps, config.optim.steps


def test_init_from_takes_the_fine_tuning_rate_warm_up_and_length(demo_like):
    assert settings(parse_config(["--init_from", str(demo_like)])) == (LR, WARMUP, STEPS)
    assert LR < OptimConfig().lr and STEPS < OptimConfig().steps
    assert settings(parse_config([])) == settings(TrainConfig())


def test_values_given_on_the_command_line_or_in_a_file_are_kept(demo_like, tmp_path):
    given = parse_config(["--init_from", str(demo_like), "--optim.lr", "3e-4", "--optim.steps", "40"])
    assert settings(given) == (3e-4, WARMUP, 40)
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"optim": {"warmup_steps": 7, "lr": 2e-3}}))
    from_file = parse_config(["--config", str(file), "--init_from", str(demo_like)])
    assert settings(from_file) == (2e-3, 7, STEPS)
    whole = parse_config(["--init_from", str(demo_like), "--optim", json.dumps({"lr": 5e-4})])
    assert settings(whole) == (5e-4, OptimConfig().warmup_steps, OptimConfig().steps)


def test_binding_a_fresh_tower_into_a_locked_space_keeps_the_from_scratch_settings(tmp_path):
    image_text = checkpoint(tmp_path / "image_text", ("text", "image"))
    bind = parse_config(["--init_from", str(image_text), "--freeze", '["image", "text"]'])
    assert settings(bind) == settings(TrainConfig())
    # A locked tower whose last block trains is fine-tuned.
    unlocked = parse_config(["--init_from", str(image_text), "--freeze", '["image", "text"]',
                             "--freeze_unlocked_blocks", "1"])
    assert settings(unlocked) == (LR, WARMUP, STEPS)


def test_the_start_up_line_says_which_values_are_defaults_and_which_given():
    assert [rate_text(rate) for rate in (5e-5, 0.002, 1e-10, 3e-4)] == ["5e-5", "0.002", "1e-10", "0.0003"]
    scratch = OptimConfig()
    fine = OptimConfig(lr=LR, warmup_steps=WARMUP, steps=STEPS)
    assert fine_tuning_line(fine, scratch, ["text", "image"], []) == (
        f"fine-tuning from init_from with lr {rate_text(LR)}, {WARMUP} warm-up steps, {STEPS} steps in all: the "
        f"fine-tuning defaults (from scratch: lr {rate_text(scratch.lr)}, {scratch.warmup_steps} warm-up steps, "
        f"{scratch.steps} steps), a lower rate and a shorter run keep what the checkpoint learned "
        "(docs/pretrained.md); --optim.lr, --optim.warmup_steps and --optim.steps choose others")
    given_rate = OptimConfig(lr=3e-4, warmup_steps=WARMUP, steps=STEPS)
    assert fine_tuning_line(given_rate, scratch, ["text"], []) == (
        f"fine-tuning from init_from with lr 0.0003 (given), {WARMUP} warm-up steps (the fine-tuning default; "
        f"--optim.warmup_steps chooses another), {STEPS} steps in all (the fine-tuning default; --optim.steps "
        "chooses another)")
    all_given = OptimConfig(lr=3e-4, warmup_steps=WARMUP + 1, steps=STEPS + 1)
    assert fine_tuning_line(all_given, scratch, ["text"], ["audio"]) == (
        f"fine-tuning from init_from with lr 0.0003 (given), {WARMUP + 1} warm-up steps (given), {STEPS + 1} steps "
        "in all (given); the fresh audio tower(s) learn at that rate too (a higher --optim.lr trains them faster)")
    assert fine_tuning_line(scratch, scratch, [], ["audio"]) == (
        f"init_from: every tower that trains starts fresh (audio): lr {rate_text(scratch.lr)}, "
        f"{scratch.warmup_steps} warm-up steps, {scratch.steps} steps in all, as from scratch (no fine-tuning "
        "defaults)")


# --------------------------------------------------------------------------- drift


def image_text_run(demo_like) -> "object":
    return parse_config(["--init_from", str(demo_like)]).model


def test_a_run_that_moves_text_without_audio_warns_for_audio_with_the_fixes(demo_like):
    model = image_text_run(demo_like)
    for locked in (set(), {"image"}):
        warnings = drift_warnings(demo_like, model, [["image", "text"]], locked)
        assert warnings == [
            f"warning: this run moves the text tower of init_from {demo_like}, to which its audio tower is aligned, "
            "and trains no audio: audio's zero-shot and retrieval will drift (docs/pretrained.md). To keep them, "
            "lock text (--freeze '[\"text\"]'), add a source of audio-text pairs to data.train, or bind audio "
            "again afterwards (--init_from this run's checkpoint --freeze '[\"text\", \"image\"]' on audio-text pairs)"
        ]


def test_no_warning_when_the_aligned_tower_is_locked_or_the_modality_trains_too(demo_like):
    model = image_text_run(demo_like)
    # Text locked: image moves, but audio was never trained against image.
    assert drift_warnings(demo_like, model, [["image", "text"]], {"text"}) == []
    assert drift_warnings(demo_like, model, [["image", "text"], ["audio", "text"]], set()) == []
    # Binding audio again: image and text locked; image is aligned to text alone.
    assert drift_warnings(demo_like, model, [["audio", "text"]], {"image", "text"}) == []
    # With unlocked blocks a frozen tower moves (locked is then empty): warned.
    assert len(drift_warnings(demo_like, model, [["image", "text"]], set())) == 1


def test_alignment_follows_the_checkpoints_ancestors_and_counts_every_pair_without_a_record(demo_like, tmp_path):
    assert trained_pairs(demo_like) == {"text_image", "text_audio"}
    child = checkpoint(tmp_path / "child", sources=[["image", "text"]], init_from=demo_like)
    assert trained_pairs(child) == {"text_image", "text_audio"}
    orphan = checkpoint(tmp_path / "orphan", sources=[["image", "text"]], init_from=tmp_path / "gone")
    assert trained_pairs(orphan) == {"text_image", "text_audio", "image_audio"}


# --------------------------------------------------------------------------- both at start-up, one step


def test_a_run_from_a_checkpoint_says_its_rate_and_warns_of_drift_at_start_up(demo_like, tmp_path, capsys, caplog):
    from torchvision.io import encode_png

    images = [SampleSource(key=f"i{index}", media={"png": encode_png(torch.full((3, 8, 8), index * 20,
                                                                              dtype=torch.uint8)).numpy().tobytes()},
                           caption="a handwritten seven") for index in range(8)]
    shards = write_shards(images, tmp_path / "shards").splits["all"].spec
    source = json.dumps([{"shards": shards, "modalities": ["image", "text"]}])
    trainer.main(["--init_from", str(demo_like), "--data.train", source, "--freeze", '["image"]', "--optim.steps", "2",
                  "--data.batch_size", "4", "--data.num_workers", "0", "--threads", "1", "--plot", "false",
                  "--mixed_precision", "no", "--output_dir", str(tmp_path), "--run_name", "run"])
    captured = capsys.readouterr()
    log = captured.out + captured.err + caplog.text  # the warning is logged: under pytest, caplog holds it
    assert (f"fine-tuning from init_from with lr {rate_text(LR)} (the fine-tuning default; --optim.lr chooses "
            f"another), {WARMUP} warm-up steps (the fine-tuning default; --optim.warmup_steps chooses another), "
            "2 steps in all (given)") in log
    assert f"warning: this run moves the text tower of init_from {demo_like}, to which its audio tower" in log
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["optim"]
    assert (recorded["lr"], recorded["warmup_steps"], recorded["steps"]) == (LR, WARMUP, 2)
