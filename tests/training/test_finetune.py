"""Training from a converted open_clip or Hugging Face CLIP (random weights): a locked image tower, an added audio
tower, and a checkpoint every command reads; binding with both image and text locked; the refusals."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file

from multimodal.training import trainer
from multimodal.checkpoint import load_model
from multimodal.config_parser import to_dict
from multimodal.cli import main as cli_main
from multimodal.data.writing.writer import SampleSource, write_shards
from multimodal.interop import convert_checkpoint
from multimodal.presets import tiny

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

COLOURS = ["red", "green", "blue", "grey"]
SAMPLE_RATE = 16_000


def converted_open_clip(root: Path) -> Path:
    from tests.interop.test_interop_open_clip import SMALL_CONFIG, build_small

    hub = root / "open_clip-hub"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in build_small(seed=3).state_dict().items()},
              str(hub / "open_clip_model.safetensors"))
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": SMALL_CONFIG, "preprocess_cfg": preprocess}))
    return convert_checkpoint("open_clip", hub, root / "clip-open_clip")


def converted_hf_clip(root: Path) -> Path:
    from tests.interop.test_interop_hf import build_clip

    reference = build_clip(seed=4)
    weights = root / "hf-model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    config = root / "hf-config.json"
    config.write_text(json.dumps(reference.config.to_dict()))
    return convert_checkpoint("hf-clip", weights, root / "clip-hf", config=config)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Image-caption and clip-caption shards of four colours / four tones."""
    from torchvision.io import encode_png

    root = tmp_path_factory.mktemp("finetune")
    generator = torch.Generator().manual_seed(0)
    images, clips = [], []
    for index in range(32):
        label = index % 4
        image = (torch.rand(3, 24, 24, generator=generator) * 60).to(torch.uint8)
        image[label % 3] += 150 if label < 3 else 60
        images.append(SampleSource(key=f"i{index:03d}", media={"png": encode_png(image).numpy().tobytes()},
                                   caption=f"a {COLOURS[label]} square", extra={"label": label}))
        time = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * (220 * (label + 1)) * time) + 0.01 * np.random.default_rng(index).standard_normal(time.size)
        buffer = io.BytesIO()
        soundfile.write(buffer, wave.astype(np.float32), SAMPLE_RATE, format="WAV")
        clips.append(SampleSource(key=f"a{index:03d}", media={"wav": buffer.getvalue()},
                                  caption=f"a {COLOURS[label]} tone", extra={"label": label}))
    return {
        "root": root,
        "images": write_shards(images, root / "images", prefix="img").splits["all"].spec,
        "clips": write_shards(clips, root / "clips", prefix="clip").splits["all"].spec,
        "open_clip": converted_open_clip(root),
        "hf-clip": converted_hf_clip(root),
    }


def finetune_args(data, checkpoint: Path, output: Path, *extra: str, steps: int = 20) -> list[str]:
    sources = [{"shards": data["images"], "modalities": ["image", "text"]},
               {"shards": data["clips"], "modalities": ["audio", "text"]}]
    return ["--init_from", str(checkpoint), "--data.train", json.dumps(sources), "--data.batch_size", "8",
            "--data.num_workers", "0", "--optim.steps", str(steps), "--optim.warmup_steps", "2",
            "--checkpoint_every", "0", "--log_every", "5", "--plot", "false", "--mixed_precision", "no",
            "--output_dir", str(output), "--run_name", "run", *extra]


def tensors(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(directory / "model.safetensors")).items() if k.startswith(prefix)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["open_clip", "hf-clip"])
def test_a_converted_clip_trains_with_a_locked_image_tower_and_an_added_audio_tower(data, kind, tmp_path, capsys):
    start = data[kind]
    result = trainer.main(finetune_args(data, start, tmp_path, "--freeze", '["image"]'))
    printed = capsys.readouterr().out
    final = Path(result["checkpoint"])
    assert final.name == "step-0000020"
    assert f"init_from {start}: loaded the text, image tower(s) and the text_image temperature(s); audio start(s) " \
           "fresh" in printed
    assert "freeze image:" in printed
    # The locked tower is the checkpoint's to the bit; the text tower trained; the audio tower is the run's own.
    before, after = tensors(start, "encoders.image."), tensors(final, "encoders.image.")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert tensors(start, "projections.image.")["projections.image.weight"].equal(
        tensors(final, "projections.image.")["projections.image.weight"])
    text_before, text_after = tensors(start, "encoders.text."), tensors(final, "encoders.text.")
    assert any(not torch.equal(text_before[k], text_after[k]) for k in text_before)
    config = json.loads((final / "config.json").read_text())
    assert config["model"]["image"] == json.loads((start / "config.json").read_text())["model"]["image"]
    assert config["model"]["audio"]["transformer"] == json.loads(json.dumps(to_dict(tiny().audio.transformer)))
    # No optimiser state for what is locked.
    state = torch.load(final / "training_state.pt", weights_only=True)["optimizer"]
    names = [name for group in state["param_groups"] for name in group["params"]]
    assert names and not any(name.startswith(("encoders.image.", "projections.image.")) for name in names)
    assert any(name.startswith("encoders.audio.") for name in names)

    # Every command reads the result.
    model = load_model(final)
    assert model.modalities == ["text", "image", "audio"]
    shards_root = data["root"]
    image = shards_root / "red.png"
    from torchvision.io import encode_png

    image.write_bytes(encode_png(torch.zeros(3, 24, 24, dtype=torch.uint8)).numpy().tobytes())
    assert cli_main(["classify", "--checkpoint", str(final), "--labels", "red,green", "--json", str(image)]) == 0
    assert cli_main(["embed", "--checkpoint", str(final), "--modality", "audio", "--input", data["clips"],
                     "--output", str(tmp_path / "emb")]) == 0
    assert cli_main(["index", "--input", str(tmp_path / "emb"), "--checkpoint", str(final),
                     "--output", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert cli_main(["search", "--index", str(tmp_path / "idx"), "--text", "a red tone", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits[0]["hits"]) == 2


def test_binding_locks_image_and_text_and_draws_no_image_text_batch(data, tmp_path, capsys):
    start = data["open_clip"]
    result = trainer.main(finetune_args(data, start, tmp_path, "--freeze", '["image", "text"]', steps=6))
    printed = capsys.readouterr().out
    assert "data.train[0]: image-text pairs are not trained: those towers are all frozen" in printed
    final = Path(result["checkpoint"])
    for prefix in ("encoders.image.", "encoders.text.", "projections.", "logit_scales.text_image"):
        if prefix == "projections.":
            before = {k: v for k, v in tensors(start, prefix).items() if "audio" not in k}
        else:
            before = tensors(start, prefix)
        after = tensors(final, prefix)
        assert before and all(torch.equal(before[k], after[k]) for k in before), prefix
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained_pairs = {key for row in rows for key in row if key.startswith("loss/")}
    assert trained_pairs == {"loss/text_audio"}


def test_layer_decay_and_unlocked_blocks_train_only_what_they_say(data, tmp_path):
    start = data["open_clip"]
    args = finetune_args(data, start, tmp_path, "--freeze", '["image"]', "--freeze_unlocked_blocks", "1",
                         "--optim.layer_decay", "0.5", steps=8)
    result = trainer.main(args)
    before, after = tensors(start, "encoders.image."), tensors(Path(result["checkpoint"]), "encoders.image.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".blocks.1." in k or ".norm." in k for k in changed), sorted(changed)
    assert not any(".blocks.0." in k for k in changed)


@pytest.mark.parametrize("extra, expected", [
    (["--freeze", '["smell"]'], "freeze: this model has no 'smell' tower (it has text, image, audio)"),
    (["--model.image.transformer.width", "32", "--model.image.transformer.num_heads", "2"],
     "encoders.image."),
    (["--init_from", "NOWHERE"], "init_from: NOWHERE does not exist"),
])
def test_refusals_come_before_training_in_one_line(data, tmp_path, extra, expected, capsys):
    args = finetune_args(data, data["open_clip"], tmp_path / "runs") + extra
    with pytest.raises(SystemExit) as exit_info:
        trainer.main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "runs").exists()


def test_a_run_started_from_a_checkpoint_resumes_after_that_checkpoint_moved(data, tmp_path):
    import shutil

    start = tmp_path / "start"
    shutil.copytree(data["open_clip"], start)
    trainer.main(finetune_args(data, start, tmp_path, "--freeze", '["image"]', "--checkpoint_every", "3", steps=3))
    start.rename(tmp_path / "moved")
    result = trainer.main(["--output_dir", str(tmp_path), "--run_name", "run", "--resume", "latest",
                           "--optim.steps", "5", "--threads", "1"])
    assert Path(result["checkpoint"]).name == "step-0000005"


def test_a_config_files_model_section_applies_on_top_of_the_checkpoints_towers(tmp_path):
    """`--config` with a model section and `--init_from`: the file's settings hold as a flag's do, the
    checkpoint's architecture stays, and the same file is accepted again on resume."""
    from multimodal.training.train_config import parse_config

    checkpoint = converted_open_clip(tmp_path)
    (tmp_path / "run.yaml").write_text("model:\n  image:\n    transformer:\n      drop_path: 0.1\n")
    from_file = parse_config(["--init_from", str(checkpoint), "--config", str(tmp_path / "run.yaml")])
    from_flag = parse_config(["--init_from", str(checkpoint), "--model.image.transformer.drop_path", "0.1"])
    assert from_file.model == from_flag.model
    assert from_file.model.image.transformer.drop_path == 0.1
    assert from_file.model.image.transformer.width == json.loads((checkpoint / "config.json").read_text())[
        "model"]["image"]["transformer"]["width"]


def test_a_tokenizer_other_than_the_checkpoints_is_refused_for_its_text_tower(tmp_path):
    """The loaded text tower's rows are its own tokenizer's ids: another tokenizer of any size is refused by name."""
    from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
    from multimodal.training.model_setup import choose_tokenizer
    from multimodal.training.data_sources import ResolvedSources
    from multimodal.training.train_config import parse_config

    checkpoint = converted_open_clip(tmp_path)
    other = tmp_path / "other.json"
    Tokenizer.train(["a red square", "a blue circle"] * 20, vocab_size=300).save(other)
    resolved = ResolvedSources(train=[], eval_sets=[])
    config = parse_config(["--init_from", str(checkpoint), "--data.tokenizer", str(other)])
    with pytest.raises(ValueError, match=r"^data.tokenizer: .*other.json is not the tokenizer of init_from"):
        choose_tokenizer(config, resolved, None)
    same = parse_config(["--init_from", str(checkpoint), "--data.tokenizer", str(checkpoint / "tokenizer.json")])
    assert choose_tokenizer(same, resolved, None).vocab_size == config.model.text.vocab_size
