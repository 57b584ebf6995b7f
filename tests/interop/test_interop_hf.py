"""Hugging Face CLIP and AST weights in our model (same outputs), CLIP exported back bit for bit, refusals."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from multimodal import preset
from multimodal.checkpoint import load_model
from multimodal.interop import (
    convert_checkpoint,
    hf_ast_model_config,
    hf_ast_to_model,
    hf_clip_to_model,
    model_to_hf_clip,
    save_hf_clip,
)
from multimodal.model import MultimodalModel

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5
VOCAB_SIZE = 49408


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random offsets on every parameter (HF initialises norms to 1 and biases to 0, which hides swaps)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def clip_config(eos_token_id: int = 49407, hidden_act: str = "quick_gelu"):
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=eos_token_id, hidden_act=hidden_act,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, hidden_act=hidden_act, layer_norm_eps=1e-6,
        ),
        projection_dim=24,
    )


def build_clip(eos_token_id: int = 49407, hidden_act: str = "quick_gelu", seed: int = 0):
    torch.manual_seed(seed)
    return perturbed(transformers.CLIPModel(clip_config(eos_token_id, hidden_act)), seed)


def token_ids(batch: int = 3, length: int = 16, seed: int = 0) -> torch.Tensor:
    """Start-of-text, random ids, end-of-text (49407, the largest id) at varied positions, zeros after."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB_SIZE - 2, (batch, length), generator=generator)
    ids[:, 0] = VOCAB_SIZE - 2
    for row, end in enumerate([3, length - 1, 9][:batch]):
        ids[row, end] = VOCAB_SIZE - 1
        ids[row, end + 1 :] = 0
    return ids


def clip_differences(reference, ours: MultimodalModel, seed: int = 0) -> tuple[float, float]:
    torch.manual_seed(seed)
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids(seed=seed)
    with torch.no_grad():
        image = F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(reference.get_text_features(input_ids=ids).pooler_output, dim=-1)
        return (
            (image - ours.encode("image", pixels)).abs().max().item(),
            (text - ours.encode("text", ids)).abs().max().item(),
        )


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_hf_clip_features_match(hidden_act):
    reference = build_clip(hidden_act=hidden_act)
    ours = hf_clip_to_model(reference.state_dict(), reference.config.to_dict())
    assert max(clip_differences(reference, ours)) < TOLERANCE
    assert ours.config.text.transformer.activation == hidden_act
    assert ours.config.image.transformer.norm_eps == 1e-6
    assert ours.logit_scales["text_image"].item() == reference.logit_scale.item()


def test_hf_clip_legacy_eos_id_2_pools_at_the_largest_id():
    reference = build_clip(eos_token_id=2)  # HF then pools at argmax(input_ids)
    ours = hf_clip_to_model(reference.state_dict(), reference.config.to_dict())
    assert ours.config.text.eot_token_id == VOCAB_SIZE - 1
    assert max(clip_differences(reference, ours)) < TOLERANCE


def test_round_trip_ours_to_hf_to_ours_is_exact():
    ours = hf_clip_to_model(build_clip(seed=1).state_dict(), clip_config().to_dict())
    config, state = model_to_hf_clip(ours)
    exported = transformers.CLIPModel(transformers.CLIPConfig(**config)).eval()
    exported.load_state_dict(state, strict=True)
    assert max(clip_differences(exported, ours, seed=2)) < TOLERANCE
    back = hf_clip_to_model(exported.state_dict(), config)
    before, after = ours.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert back.config == ours.config


def test_export_of_a_trained_shape_and_from_pretrained(tmp_path):
    # A model of ours (not converted), CLIP-shaped: vocabulary and end-of-text of CLIP's tokenizer.
    config = preset("tiny", modalities=("text", "image"), vocab_size=VOCAB_SIZE)
    config.text.eot_token_id = VOCAB_SIZE - 1
    config.image.pre_norm, config.image.patch_bias, config.image.stem = True, False, "patch"
    config.text.transformer.activation = config.image.transformer.activation = "quick_gelu"
    torch.manual_seed(0)
    ours = perturbed(MultimodalModel(config), seed=4)
    directory = save_hf_clip(ours, tmp_path / "hf")
    reference = transformers.CLIPModel.from_pretrained(directory).eval()
    assert reference.config.text_config.eos_token_id == VOCAB_SIZE - 1
    assert reference.config.text_config.bos_token_id == VOCAB_SIZE - 2
    pixels = torch.randn(2, 3, 32, 32)
    ids = token_ids(length=16)
    with torch.no_grad():
        image = F.normalize(reference.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        text = F.normalize(reference.get_text_features(input_ids=ids).pooler_output, dim=-1)
        assert (image - ours.encode("image", pixels)).abs().max().item() < TOLERANCE
        assert (text - ours.encode("text", ids)).abs().max().item() < TOLERANCE


def test_export_refuses_models_that_are_not_clip_shaped():
    model = MultimodalModel(preset("tiny"))  # three modalities, end-of-text id 2, patch bias, no pre-norm, conv stem
    with pytest.raises(ValueError) as error:
        model_to_hf_clip(model)
    message = str(error.value)
    reasons = ("modalities are ['text', 'image', 'audio']", "eot_token_id=2", "pre_norm=True", "patch embedding without bias",
               "this one has a conv stem")
    for reason in reasons:
        assert reason in message


def test_hf_clip_unknown_layout_is_refused_naming_the_keys():
    reference = build_clip()
    state = dict(reference.state_dict())
    del state["vision_model.post_layernorm.bias"]
    state["vision_model.head.weight"] = torch.zeros(3)
    state["text_model.embeddings.position_ids"] = torch.arange(16)[None]  # an old buffer: ignored
    with pytest.raises(ValueError) as error:
        hf_clip_to_model(state, reference.config.to_dict())
    message = str(error.value)
    assert "keys that did not map (1): vision_model.head.weight" in message
    assert "expected keys that are missing (1): vision_model.post_layernorm.bias" in message
    with pytest.raises(ValueError, match="model_type='siglip'"):
        hf_clip_to_model(reference.state_dict(), {"model_type": "siglip"})


def test_convert_checkpoint_hf_clip_from_a_safetensors_file(tmp_path):
    reference = build_clip(seed=5)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    config_path = tmp_path / "clip_config.json"
    config_path.write_text(json.dumps(reference.config.to_dict()))
    output = convert_checkpoint("hf-clip", weights, tmp_path / "converted", config=config_path)
    loaded = load_model(output)
    assert max(clip_differences(reference, loaded, seed=6)) < TOLERANCE
    assert (output / "tokenizer.json").is_file()


def test_convert_checkpoint_hf_clip_sharded_directory(tmp_path):
    reference = build_clip(seed=7)
    reference.save_pretrained(tmp_path / "hf", max_shard_size="500KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    loaded = load_model(convert_checkpoint("hf-clip", tmp_path / "hf", tmp_path / "converted"))
    assert max(clip_differences(reference, loaded, seed=8)) < TOLERANCE


# AST -----------------------------------------------------------------------------------


def ast_config(**overrides):
    options = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, num_mel_bins=128,
        max_length=100,
    )
    return transformers.ASTConfig(**{**options, **overrides})


def test_hf_ast_pooled_output_matches():
    torch.manual_seed(0)
    reference = perturbed(transformers.ASTModel(ast_config()), seed=0)
    ours = hf_ast_to_model(reference.state_dict(), reference.config.to_dict())
    filterbanks = torch.randn(2, 100, 128)
    with torch.no_grad():
        pooled = reference(filterbanks).pooler_output
        assert (pooled - ours.encode("audio", filterbanks, normalize=False)).abs().max().item() < TOLERANCE
        assert (F.normalize(pooled, dim=-1) - ours.encode("audio", filterbanks)).abs().max().item() < TOLERANCE
    assert ours.modalities == ["audio"] and ours.config.embed_dim == 64
    assert ours.config.audio.transformer.norm_eps == 1e-12


def test_convert_checkpoint_hf_ast_directory_with_classifier(tmp_path):
    torch.manual_seed(0)
    classifier = perturbed(transformers.ASTForAudioClassification(ast_config(num_labels=5)), seed=1)
    classifier.save_pretrained(tmp_path / "ast")  # the Hub's key names, with the classification head
    (tmp_path / "ast" / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "ASTFeatureExtractor", "mean": -5.0, "std": 3.0, "sampling_rate": 16000,
                    "max_length": 100, "num_mel_bins": 128, "do_normalize": True})
    )
    with pytest.warns(UserWarning, match="dropping the audio classification head"):
        output = convert_checkpoint("hf-ast", tmp_path / "ast", tmp_path / "converted")
    loaded = load_model(output)
    assert (loaded.config.audio_preprocess.norm_mean, loaded.config.audio_preprocess.norm_std) == (-5.0, 3.0)
    assert not (output / "tokenizer.json").exists()
    filterbanks = torch.randn(3, 100, 128)
    with torch.no_grad():
        pooled = classifier.audio_spectrogram_transformer(filterbanks).pooler_output
        assert (F.normalize(pooled, dim=-1) - loaded.encode("audio", filterbanks)).abs().max().item() < TOLERANCE


def test_hf_ast_refusals():
    reference = transformers.ASTModel(ast_config())
    with pytest.raises(ValueError, match="frequency_stride=12 differs from time_stride=10"):
        hf_ast_model_config(reference.state_dict(), {**reference.config.to_dict(), "frequency_stride": 12})
    with pytest.raises(ValueError, match="position table has 110 rows"):
        hf_ast_model_config(reference.state_dict(), {**reference.config.to_dict(), "max_length": 200})
    state = dict(reference.state_dict())
    state["layers.0.attention.extra.weight"] = torch.zeros(1)
    del state["layernorm.weight"]
    with pytest.raises(ValueError) as error:
        hf_ast_to_model(state, reference.config.to_dict())
    assert "layers.0.attention.extra.weight" in str(error.value) and "layernorm.weight" in str(error.value)
