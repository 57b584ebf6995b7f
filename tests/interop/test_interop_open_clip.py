"""open_clip CLIP weights in our model: same embeddings as open_clip, refusals that name keys, file -> checkpoint."""
import json

import pytest
import torch
from safetensors.torch import save_file

from multimodal.data.tokenization.clip_tokenizer import ClipTokenizer
from multimodal.data.preprocess.preprocess_config import CLIP_MEAN, CLIP_STD
from multimodal.checkpoint import load_model
from multimodal.cli import build_parser, main
from multimodal.errors import ArgumentNeeded
from multimodal.interop import convert_checkpoint, open_clip_model_config, open_clip_to_model
from multimodal.interop.converters import ALL_OPTIONS

open_clip = pytest.importorskip("open_clip")

TOLERANCE = 1e-5
# Head widths other than 64 and QuickGELU: what the weights alone cannot tell.
SMALL_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
}


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random offsets on norms, biases and scalars (initialised to constants), so a swap cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim <= 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def build_small(config: dict = SMALL_CONFIG, seed: int = 0):
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        config["embed_dim"], config["vision_cfg"], config["text_cfg"], quick_gelu=config.get("quick_gelu", False)
    )
    return perturbed(model, seed)


@pytest.fixture(scope="module")
def small():
    return build_small()


def random_token_ids(batch: int, length: int, vocab_size: int = 49408, seed: int = 0) -> torch.Tensor:
    """Random ids with start-of-text first and the end-of-text id (the largest) at varied positions, zeros after."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size - 2, (batch, length), generator=generator)
    ids[:, 0] = vocab_size - 2
    for row in range(batch):
        end = int(torch.randint(1, length, (1,), generator=generator))
        ids[row, end] = vocab_size - 1
        ids[row, end + 1 :] = 0
    return ids


def max_differences(reference, ours, images, ids, padding_mask=None):
    with torch.no_grad():
        image = (reference.encode_image(images, normalize=True) - ours.encode("image", images)).abs().max().item()
        text = (reference.encode_text(ids, normalize=True) - ours.encode("text", ids, padding_mask)).abs().max().item()
    return image, text


def test_small_custom_config_matches_open_clip(small):
    ours = open_clip_to_model(small.state_dict(), model_config=SMALL_CONFIG)
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    image, text = max_differences(small, ours, images, random_token_ids(3, 16))
    assert image < TOLERANCE and text < TOLERANCE
    assert ours.logit_scales["text_image"].item() == small.logit_scale.item()
    config = ours.config
    assert (config.image.transformer.num_heads, config.text.transformer.num_heads) == (4, 4)
    assert config.image.transformer.activation == config.text.transformer.activation == "quick_gelu"
    assert config.text.eot_token_id == 49407 and config.image.image_size == 32


def test_real_captions_with_padding_mask_match_open_clip(small):
    ours = open_clip_to_model(small.state_dict(), model_config=SMALL_CONFIG)
    tokenizer = ClipTokenizer.from_bpe_file()
    ids, padding_mask = tokenizer(["a photo of a cat", "Two dogs!", "a very long caption " * 10], context_length=16)
    with torch.no_grad():
        expected = small.encode_text(ids, normalize=True)
        assert (expected - ours.encode("text", ids, padding_mask)).abs().max().item() < TOLERANCE
        assert (expected - ours.encode("text", {"text": ids})).abs().max().item() < TOLERANCE


def test_activation_is_an_argument_and_conflicts_are_refused(small):
    state = small.state_dict()
    config_without_activation = {k: v for k, v in SMALL_CONFIG.items() if k != "quick_gelu"}
    gelu = open_clip_to_model(state, model_config=config_without_activation)  # open_clip's default
    quick = open_clip_to_model(state, model_config=config_without_activation, activation="quick_gelu")
    images = torch.randn(2, 3, 32, 32)
    ids = random_token_ids(2, 16)
    assert max(max_differences(small, quick, images, ids)) < TOLERANCE
    assert max(max_differences(small, gelu, images, ids)) > 1e-3  # the wrong activation is visibly wrong
    with pytest.raises(ValueError, match="contradicts the model config's quick_gelu"):
        open_clip_to_model(state, model_config=SMALL_CONFIG, activation="gelu")
    with pytest.raises(ValueError, match="unknown activation"):
        open_clip_to_model(state, activation="relu")


def test_heads_default_to_width_over_64():
    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 128, "layers": 1},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
    }
    reference = build_small(config, seed=3)
    ours = open_clip_to_model(reference.state_dict())  # no model config: heads from widths
    assert (ours.config.image.transformer.num_heads, ours.config.text.transformer.num_heads) == (2, 1)
    assert max(max_differences(reference, ours, torch.randn(2, 3, 32, 32), random_token_ids(2, 8))) < TOLERANCE


def test_unknown_layout_is_refused_naming_the_keys(small):
    state = dict(small.state_dict())
    del state["ln_final.weight"]
    state["visual.attn_pool.query"] = torch.zeros(4, 64)
    with pytest.raises(ValueError) as error:
        open_clip_to_model(state, model_config=SMALL_CONFIG, source="broken.pt")
    message = str(error.value)
    assert "broken.pt" in message
    assert "keys that did not map (1): visual.attn_pool.query" in message
    assert "expected keys that are missing (1): ln_final.weight" in message


def test_a_resnet_tower_is_refused_naming_its_keys(small):
    state = {k: v for k, v in small.state_dict().items() if not k.startswith("visual.")}
    state["visual.layer1.0.conv1.weight"] = torch.zeros(8, 8, 1, 1)
    state["visual.attnpool.positional_embedding"] = torch.zeros(50, 64)
    with pytest.raises(ValueError) as error:
        open_clip_to_model(state)
    message = str(error.value)
    assert "visual.conv1.weight" in message and "visual.layer1.0.conv1.weight" in message
    assert "visual.attnpool.positional_embedding" in message
    assert "token_embedding.weight" not in message  # keys of the layout are not blamed


def test_unsupported_model_config_options_are_refused(small):
    config = json.loads(json.dumps(SMALL_CONFIG))
    config["vision_cfg"]["attentional_pool"] = True
    config["text_cfg"]["hf_model_name"] = "some/model"
    with pytest.raises(ValueError, match="attentional_pool=True.*hf_model_name"):
        open_clip_model_config(small.state_dict(), model_config=config)
    config = json.loads(json.dumps(SMALL_CONFIG))
    config["vision_cfg"]["layers"] = 3
    with pytest.raises(ValueError, match="vision_cfg.layers=3 but the weights say 2"):
        open_clip_model_config(small.state_dict(), model_config=config)


def write_training_checkpoint(small, directory):
    """open_clip's epoch_N.pt of a DDP run (weights under "state_dict", names prefixed "module.") and its model config."""
    source = directory / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in small.state_dict().items()}}, source)
    config_path = directory / "small.json"
    config_path.write_text(json.dumps(SMALL_CONFIG))
    return source, config_path


def test_convert_checkpoint_file_to_directory_to_load_model(small, tmp_path):
    source, config_path = write_training_checkpoint(small, tmp_path)
    output = convert_checkpoint("open_clip", source, tmp_path / "converted", model_config=config_path,
                                image_mean=CLIP_MEAN, image_std=CLIP_STD)
    assert output == tmp_path / "converted"
    loaded = load_model(output)
    images = torch.randn(2, 3, 32, 32)
    assert max(max_differences(small, loaded, images, random_token_ids(2, 16, seed=5))) < TOLERANCE
    saved = json.loads((output / "config.json").read_text())
    assert saved["tokenizer"] == {"kind": "clip"} and saved["converted_from"]["kind"] == "open_clip"
    tokenizer = ClipTokenizer.load(output)
    assert tokenizer("a cat")[0][0, :4].tolist() == [49406, 320, 2368, 49407]


def test_convert_checkpoint_reads_an_open_clip_hub_directory(small, tmp_path):
    directory = tmp_path / "hub"
    directory.mkdir()
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": SMALL_CONFIG, "preprocess_cfg": preprocess}))
    loaded = load_model(convert_checkpoint("open_clip", directory, tmp_path / "converted"))
    image_preprocess = loaded.config.image_preprocess
    assert (image_preprocess.mean, image_preprocess.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert image_preprocess.interpolation == "bilinear"
    assert max(max_differences(small, loaded, torch.randn(2, 3, 32, 32), random_token_ids(2, 16))) < TOLERANCE


def test_convert_checkpoint_refuses_options_of_other_kinds(tmp_path):
    with pytest.raises(ValueError, match=r"\['activation'\] do not apply to 'hf-ast'"):
        convert_checkpoint("hf-ast", tmp_path, tmp_path / "out", activation="gelu")
    with pytest.raises(ValueError, match="unknown source kind"):
        convert_checkpoint("timm", tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown checkpoint file type"):
        (tmp_path / "weights.npz").write_bytes(b"")
        convert_checkpoint("open_clip", tmp_path / "weights.npz", tmp_path / "out", image_mean=CLIP_MEAN,
                           image_std=CLIP_STD)


def test_a_bare_weights_file_needs_its_image_normalisation(small, tmp_path):
    """An epoch_N.pt records no mean/std: refused without them (naming the argument), recorded when given."""
    source, config_path = write_training_checkpoint(small, tmp_path)
    with pytest.raises(ArgumentNeeded) as error:
        convert_checkpoint("open_clip", source, tmp_path / "refused", model_config=config_path)
    assert str(error.value).startswith(f"{source} does not record the image normalisation its weights were trained "
                                       "with; pass image_mean and image_std: image_mean=CLIP_MEAN, image_std=CLIP_STD")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(ArgumentNeeded):  # one of the two is not enough
        convert_checkpoint("open_clip", source, tmp_path / "refused", model_config=config_path, image_mean=CLIP_MEAN)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loaded = load_model(convert_checkpoint("open_clip", source, tmp_path / "converted", model_config=config_path,
                                           image_mean=mean, image_std=std))
    assert (loaded.config.image_preprocess.mean, loaded.config.image_preprocess.std) == (mean, std)
    with pytest.raises(ValueError, match=r"image_std must be positive, got \(0\.2, 0\.0, 0\.3\)"):
        convert_checkpoint("open_clip", source, tmp_path / "bad", model_config=config_path, image_mean=mean,
                           image_std=(0.2, 0.0, 0.3))


def test_convert_command_asks_for_the_normalisation_by_its_options(small, tmp_path, capsys):
    source, config_path = write_training_checkpoint(small, tmp_path)
    argv = ["convert", "--from", "open_clip", str(source), "--output", str(tmp_path / "converted"),
            "--model-config", str(config_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert error == (
        f"multimodal convert: error: {source} does not record the image normalisation its weights were trained with; "
        "pass --image-mean R,G,B and --image-std R,G,B: --image-mean 0.48145466,0.4578275,0.40821073 --image-std "
        "0.26862954,0.26130258,0.27577711 for OpenAI's and most LAION weights, or the values the model was trained "
        "with (open_clip's --image-mean / --image-std)"
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--image-mean", "0.5,0.5", "--image-std", "0.25,0.25,0.25"])
    assert exit_info.value.code == 2 and "argument --image-mean: expected three numbers R,G,B" in capsys.readouterr().err
    assert main([*argv, "--image-mean", "0.5,0.4,0.3", "--image-std", "0.25,0.25,0.25"]) == 0
    saved = json.loads((tmp_path / "converted" / "config.json").read_text())["model"]["image_preprocess"]
    assert (saved["mean"], saved["std"]) == ([0.5, 0.4, 0.3], [0.25, 0.25, 0.25])
    # The command line takes exactly the options the library's table lists, under the same names.
    parser = build_parser()._subparsers._group_actions[0].choices["convert"]
    destinations = {action.dest for action in parser._actions} - {"help", "source_kind", "source", "output"}
    assert destinations == set(ALL_OPTIONS)


@pytest.mark.slow
def test_vit_b_32_matches_open_clip():
    torch.manual_seed(0)
    reference = perturbed(open_clip.create_model("ViT-B-32", pretrained=None), seed=0)
    ours = open_clip_to_model(reference.state_dict())  # everything from the weights; open_clip's GELU
    torch.manual_seed(1)
    images = torch.randn(2, 3, 224, 224)
    image, text = max_differences(reference, ours, images, random_token_ids(2, 77))
    assert image < TOLERANCE and text < TOLERANCE
    assert ours.config.image.transformer.num_heads == 12 and ours.config.text.transformer.num_heads == 8
