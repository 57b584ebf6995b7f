"""Starting from a pretrained checkpoint: its architecture and weights, locked towers, layer decay, WiSE-FT."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from multimodal.checkpoint import CheckpointError, load_model, save_checkpoint
from multimodal.cli import main
from multimodal.config_parser import apply_overrides
from multimodal.data.preprocess.preprocess_config import CLIP_MEAN, CLIP_STD
from multimodal.data.tokenization.bpe_tokenizer import Tokenizer
from multimodal.model import MultimodalModel
from multimodal.training.optimizer import layer_decay_groups, layer_scale
from multimodal.presets import tiny
from multimodal.pretrained import (
    init_model_config,
    interpolate_checkpoints,
    keep_locked_in_eval,
    load_pretrained,
    lock_towers,
)


def seeded(config, seed: int) -> MultimodalModel:
    """A model whose every tensor is random, norms, biases and temperatures too (a fresh model has them constant)."""
    torch.manual_seed(seed)
    model = MultimodalModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim <= 1:
                parameter.add_(torch.randn(parameter.shape) * 0.05)
    return model


def image_text(**overrides):
    return apply_overrides(tiny(("text", "image")), overrides)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["a handwritten seven", "someone saying seven", "a photo of a cat"] * 4, vocab_size=280)


@pytest.fixture(scope="module")
def clip_like(tmp_path_factory, tokenizer):
    """An image-text checkpoint (tiny towers, seed 0) with a tokenizer."""
    directory = tmp_path_factory.mktemp("clip_like") / "ckpt"
    return save_checkpoint(seeded(image_text(), 0), directory, tokenizer=tokenizer)


def random_batch(batch: int = 2) -> dict:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 200, (batch, 16), generator=generator)
    ids[:, 10] = 2  # tiny's end-of-text id
    return {"text": ids, "image": torch.randn(batch, 3, 32, 32, generator=generator)}


# --------------------------------------------------------------------------- WiSE-FT


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tokenizer):
    """A and B: one architecture (B trained with drop-path, a training-only setting), other weights."""
    root = tmp_path_factory.mktemp("pair")
    a = save_checkpoint(seeded(image_text(), 0), root / "a", tokenizer=tokenizer, extra_config={"note": "A"})
    b_model = seeded(image_text(**{"image.transformer.drop_path": 0.1}), 1)
    b = save_checkpoint(b_model, root / "b", tokenizer=tokenizer, extra_config={"note": "B"})
    return a, b


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.3])
def test_interpolation_blends_every_tensor(pair, tmp_path, alpha):
    a, b = pair
    output = interpolate_checkpoints(a, b, alpha, tmp_path / "wise")
    assert output == tmp_path / "wise"
    a_state, b_state = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    blended = load_file(str(output / "model.safetensors"))
    assert blended.keys() == b_state.keys()
    for name, tensor in blended.items():
        expected = ((1 - alpha) * a_state[name].double() + alpha * b_state[name].double()).float()
        if alpha in (0.0, 1.0):  # the ends are the checkpoints themselves, bit for bit
            assert torch.equal(tensor, a_state[name] if alpha == 0.0 else b_state[name]), name
        else:
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7)
            assert not torch.equal(tensor, b_state[name]) or torch.equal(a_state[name], b_state[name])
    config = json.loads((output / "config.json").read_text())
    assert config["note"] == "B" and config["interpolated"] == {"from": str(a), "to": str(b), "alpha": alpha}
    assert config["model"] == json.loads((b / "config.json").read_text())["model"]
    assert (output / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    loaded = load_model(output)  # a checkpoint every command reads
    assert torch.equal(loaded.logit_scales["text_image"].detach(), blended["logit_scales.text_image"])


def test_interpolation_refuses_other_architectures_and_bad_paths(pair, tmp_path):
    a, b = pair
    wide = save_checkpoint(seeded(image_text(**{"image.transformer.width": 64}), 2), tmp_path / "wide")
    with pytest.raises(ValueError, match=re.escape(
        f"interpolate: {a} and {wide} differ in model.image.transformer.width (128 vs 64); interpolate a fine-tuned "
        "checkpoint with the one it started from"
    )):
        interpolate_checkpoints(a, wide, 0.5, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=re.escape(
        f"interpolate: {tmp_path / 'empty'} is not a checkpoint directory: config.json is missing"
    )):
        interpolate_checkpoints(a, tmp_path / "empty", 0.5, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=re.escape(f"interpolate {tmp_path / 'nowhere'}: no such directory")):
        interpolate_checkpoints(tmp_path / "nowhere", b, 0.5, tmp_path / "out")
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\].*got 1.5"):
        interpolate_checkpoints(a, b, 1.5, tmp_path / "out")
    with pytest.raises(ValueError, match="is one of the checkpoints read"):
        interpolate_checkpoints(a, b, 0.5, b)
    with pytest.raises(ValueError, match="exists and is not a checkpoint"):
        interpolate_checkpoints(a, b, 0.5, tmp_path / "empty")
    assert not (tmp_path / "out").exists()


def test_interpolation_names_the_first_differing_key_and_shape(pair, tmp_path):
    a, b = pair
    state = load_file(str(b / "model.safetensors"))
    lacking = save_checkpoint(seeded(image_text(), 3), tmp_path / "lacking")
    save_file({k: v for k, v in state.items() if k != "encoders.text.trunk.norm.bias"},
              str(lacking / "model.safetensors"))
    with pytest.raises(ValueError, match=re.escape(
        f"interpolate: {a} holds encoders.text.trunk.norm.bias but {lacking} does not"
    )):
        interpolate_checkpoints(a, lacking, 0.5, tmp_path / "out")
    reshaped = save_checkpoint(seeded(image_text(), 3), tmp_path / "reshaped")
    save_file({**state, "logit_scales.text_image": torch.zeros(1)}, str(reshaped / "model.safetensors"))
    with pytest.raises(ValueError, match=re.escape(
        f"interpolate: logit_scales.text_image has shape () in {a} and (1,) in {reshaped}"
    )):
        interpolate_checkpoints(a, reshaped, 0.5, tmp_path / "out")


def test_interpolate_command(pair, tmp_path, capsys):
    a, b = pair
    assert main(["interpolate", "--from", str(a), "--to", str(b), "--alpha", "0.5", "--output",
                 str(tmp_path / "wise")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'wise'}: 0.5 x {a} + 0.5 x {b}\n"
    assert json.loads((tmp_path / "wise" / "config.json").read_text())["interpolated"]["alpha"] == 0.5
    with pytest.raises(SystemExit) as exit_info:
        main(["interpolate", "--from", str(a), "--to", str(b), "--alpha", "2", "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "argument --alpha: expected a number in [0, 1], got 2.0" in capsys.readouterr().err


# --------------------------------------------------------------------------- loading the checkpoint's towers


def test_load_pretrained_fills_the_checkpoint_towers_and_leaves_the_new_one(clip_like):
    model, fresh = seeded(tiny(), 5), seeded(tiny(), 5)
    source = load_file(str(clip_like / "model.safetensors"))
    before = model.state_dict()
    assert not any(torch.equal(before[name], tensor) for name, tensor in source.items() if tensor.numel())
    summary = load_pretrained(model, clip_like)
    assert summary == {"loaded": ["text", "image"], "fresh": ["audio"], "unused": [], "temperatures": ["text_image"]}
    state, fresh_state = model.state_dict(), fresh.state_dict()
    assert set(source) < set(state)
    for name, tensor in state.items():
        expected = source[name] if name in source else fresh_state[name]
        assert torch.equal(tensor, expected), name
    assert sum(name.startswith(("encoders.audio.", "projections.audio.")) for name in state) > 0


def test_load_pretrained_refuses_another_width_naming_key_and_shapes(clip_like):
    model = MultimodalModel(apply_overrides(tiny(), {"image.transformer.width": 64}))
    with pytest.raises(CheckpointError) as error:
        load_pretrained(model, clip_like)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"init_from {clip_like}: encoders.image.class_token has shape (1, 1, 128) in the checkpoint and (1, 1, 64) "
        "in this run's model (and "
    )
    assert message.endswith("more keys); its towers must keep the checkpoint's architecture")


def test_not_a_checkpoint_is_refused_naming_the_path(tmp_path):
    model = MultimodalModel(tiny())
    with pytest.raises(FileNotFoundError, match=re.escape(f"init_from {tmp_path / 'missing'}: no such directory")):
        load_pretrained(model, tmp_path / "missing")
    with pytest.raises(CheckpointError, match=re.escape(
        f"init_from: {tmp_path} is not a checkpoint directory: config.json is missing"
    )):
        init_model_config(tiny(), tmp_path)


def test_init_model_config_keeps_the_checkpoints_towers_and_adds_the_runs(clip_like):
    run = apply_overrides(tiny(), {"embed_dim": 64, "image.transformer.depth": 5, "loss_pairs": ["image_audio"]})
    config = init_model_config(run, clip_like)
    checkpoint = image_text()
    assert config.text == checkpoint.text and config.image == checkpoint.image
    assert config.image_preprocess == checkpoint.image_preprocess
    assert config.audio == run.audio and config.audio_preprocess == run.audio_preprocess
    assert config.embed_dim == 128 and config.loss_pairs == ["image_audio"]
    dropped = init_model_config(tiny(("image", "audio")), clip_like)  # the run chooses its towers
    assert dropped.modalities == ["image", "audio"] and dropped.image == checkpoint.image


def test_a_shared_trunk_checkpoint_binds_a_new_tower_onto_its_trunk(tmp_path):
    shared = save_checkpoint(seeded(image_text(share_trunk=True), 0), tmp_path / "shared")
    with pytest.raises(ValueError, match=re.escape(
        f"init_from {shared}: the checkpoint shares one block stack between its towers (share_trunk), so the added "
        "audio tower must use its transformer settings"
    )):
        init_model_config(tiny(), shared)  # tiny's audio trunk has 3 blocks, the shared one 2
    run = apply_overrides(tiny(), {"audio.transformer.depth": 2})
    model = MultimodalModel(init_model_config(run, shared))
    assert load_pretrained(model, shared)["loaded"] == ["text", "image"]
    source = load_file(str(shared / "model.safetensors"))
    name = "trunk.transformer.blocks.1.mlp.fc2.weight"
    assert f"encoders.image.{name}" not in source  # stored once, under the first tower
    for modality in ("image", "audio"):
        assert torch.equal(model.state_dict()[f"encoders.{modality}.{name}"], source[f"encoders.text.{name}"])


def test_init_from_a_converted_open_clip_model(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from multimodal.interop import convert_checkpoint

    model_config = {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
    }
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(32, model_config["vision_cfg"], model_config["text_cfg"], quick_gelu=True).eval()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    converted = convert_checkpoint("open_clip", tmp_path / "weights.safetensors", tmp_path / "clip",
                                   model_config=model_config, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    original = load_model(converted).config

    config = init_model_config(tiny(), converted)
    assert config.image == original.image and config.text == original.text
    assert config.image.transformer.width == 64 and config.image.transformer.activation == "quick_gelu"
    assert config.text.eot_token_id == 49407 and config.image_preprocess.mean == CLIP_MEAN
    assert config.audio == tiny().audio and config.embed_dim == 32

    model = MultimodalModel(config)
    assert load_pretrained(model, converted)["loaded"] == ["text", "image"]
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(images, normalize=True)
        assert (model.encode("image", images) - expected).abs().max().item() < 1e-5
        assert model.encode("audio", torch.randn(2, 100, 64)).shape == (2, 32)


# --------------------------------------------------------------------------- locking towers


def trainable(model: MultimodalModel) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_lock_towers_leaves_the_last_block_norm_and_projection():
    model = MultimodalModel(tiny())
    every = trainable(model)
    summary = lock_towers(model, ["image"], unlocked_blocks=1)
    image = {name for name in every if name.startswith(("encoders.image.", "projections.image."))}
    unlocked = {name for name in image if name.startswith((
        "encoders.image.trunk.transformer.blocks.1.", "encoders.image.trunk.norm.", "projections.image."
    ))}
    assert len(unlocked) == 12 + 2 + 1
    assert trainable(model) == (every - image) | unlocked
    parameters = dict(model.named_parameters())
    assert summary == {
        "towers": {"image": {
            "locked": sum(parameters[n].numel() for n in image - unlocked),
            "trainable": sum(parameters[n].numel() for n in unlocked),
            "unlocked_blocks": 1,
        }},
        "temperatures": [],
    }
    model.train()
    assert keep_locked_in_eval(model) == 3  # the image tower's stem, positions and block 0
    image_tower = model.encoders["image"]
    assert image_tower.training and image_tower.trunk.transformer.blocks[1].training
    assert not image_tower.trunk.transformer.blocks[0].training and not image_tower.patch_embed.training
    assert model.encoders["text"].training


def test_locked_towers_stay_bit_identical_through_a_step():
    model = seeded(tiny(("text", "image")), 0)
    summary = lock_towers(model, ["image"])
    assert summary["towers"]["image"]["trainable"] == 0 and summary["temperatures"] == []
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    keep_locked_in_eval(model)
    loss, _ = model.loss(model(random_batch()))
    loss.backward()
    optimizer.step()
    for name, tensor in model.state_dict().items():
        locked = name.startswith(("encoders.image.", "projections.image."))
        assert torch.equal(tensor, before[name]) == locked or tensor.numel() == 0, name


def test_lock_towers_refusals_and_locked_temperatures():
    model = MultimodalModel(tiny(("text", "image")))
    with pytest.raises(ValueError, match=re.escape("freeze: this model has no 'audio' tower (it has text, image)")):
        lock_towers(model, ["audio"])
    with pytest.raises(ValueError, match=re.escape("freeze: unlocked_blocks=3 but the image tower has only 2 blocks")):
        lock_towers(model, ["image"], unlocked_blocks=3)
    assert lock_towers(model, ["text", "image"])["temperatures"] == ["text_image"]
    assert trainable(model) == set()
    shared = MultimodalModel(apply_overrides(tiny(("text", "image")), {"share_trunk": True}))
    with pytest.raises(ValueError, match=r"share one block stack \(share_trunk\), so locking image would lock"):
        lock_towers(shared, ["image"])


# --------------------------------------------------------------------------- layer-wise learning-rate decay


def test_layer_scales_by_depth_within_each_tower():
    model = MultimodalModel(tiny())  # text and image: 2 blocks; audio: 3
    expected = {
        "encoders.image.trunk.transformer.blocks.1.attn.qkv.weight": 0.5,
        "encoders.image.trunk.transformer.blocks.0.norm1.bias": 0.25,
        "encoders.image.patch_embed.convs.0.weight": 0.125,
        "encoders.image.class_token": 0.125,
        "encoders.text.token_embedding.weight": 0.125,
        "encoders.audio.trunk.transformer.blocks.0.mlp.fc1.weight": 0.125,
        "encoders.audio.prefix_tokens": 0.0625,
        "encoders.audio.positions.grid": 0.0625,
        "encoders.text.trunk.norm.weight": 1.0,
        "projections.audio.weight": 1.0,
        "logit_scales.text_image": 1.0,
    }
    assert {name: layer_scale(name, model, 0.5) for name in expected} == expected


def test_layer_decay_groups_keep_the_optimiser_grouping():
    from multimodal.training.optimizer import is_decay_free

    model = MultimodalModel(tiny())
    lock_towers(model, ["audio"])
    groups = layer_decay_groups(model, base_lr=1e-3, decay=0.5, weight_decay=0.2, is_decay_free=is_decay_free)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    grouped = [names[id(p)] for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(trainable(model))  # each trainable parameter once, locked ones none
    for group in groups:
        assert group["lr"] == pytest.approx(1e-3 * group["lr_scale"])
        for parameter in group["params"]:
            name = names[id(parameter)]
            assert group["lr_scale"] == layer_scale(name, model, 0.5)
            whole = parameter.ndim == 0 or parameter.numel() == 0
            assert all(p.ndim == 0 or p.numel() == 0 for p in group["params"]) == whole
            assert group["weight_decay"] == (0.0 if whole or is_decay_free(name, parameter) else 0.2)
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.1)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx(
        [1e-4 * group["lr_scale"] for group in optimizer.param_groups]
    )
    with pytest.raises(ValueError, match=re.escape("layer decay must be in (0, 1] (e.g. 0.75; 1: none), got 1.5")):
        layer_decay_groups(model, 1e-3, 1.5, 0.2, is_decay_free)


def test_interpolate_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["interpolate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: multimodal interpolate")
    for option in ("--from", "--to", "--alpha", "--output", "WiSE-FT"):
        assert option in text


def test_the_runs_optimizer_takes_layer_decay_from_its_setting():
    """optim.layer_decay reaches the optimiser a run builds: each group's lr is the base lr times its layer's scale."""
    from multimodal.training.optimizer import build_optimizer
    from multimodal.training.optimizer import OptimConfig

    model = MultimodalModel(tiny())
    decayed = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.5, fused=False))
    scales = sorted({group["lr_scale"] for group in decayed.param_groups})
    deepest = max(len(encoder.trunk.transformer.blocks) for encoder in model.encoders.values())
    assert scales[0] == pytest.approx(0.5 ** (deepest + 1)) and scales[-1] == 1.0
    assert [group["lr"] for group in decayed.param_groups] == pytest.approx(
        [1e-3 * group["lr_scale"] for group in decayed.param_groups])
    uniform = build_optimizer(model, OptimConfig(lr=1e-3, fused=False))
    assert {group["lr"] for group in uniform.param_groups} == {1e-3}
