"""The multimodal model: presets forward/backward, weight sharing, temperatures, errors."""
import math

import pytest
import torch

from multimodal.encoders import TransformerConfig
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.presets import PRESETS, preset, tiny


def random_batch(config: ModelConfig, batch_size: int = 2, audio_frames: int | None = None) -> dict:
    batch = {}
    if config.text is not None:
        ids = torch.randint(3, config.text.vocab_size, (batch_size, config.text.context_length))
        ids[:, -1] = config.text.eot_token_id
        batch["text"] = ids
    if config.image is not None:
        size = config.image.image_size
        batch["image"] = torch.randn(batch_size, 3, size, size)
    if config.audio is not None:
        batch["audio"] = torch.randn(batch_size, audio_frames or config.audio.max_frames, config.audio.num_mel_bins)
    return batch


@pytest.mark.parametrize("name", ["tiny", "small", pytest.param("base", marks=pytest.mark.slow)])
def test_every_preset_and_modality_runs_forward_and_backward(name):
    torch.manual_seed(0)
    config = preset(name)
    model = MultimodalModel(config)
    # Audio length is free up to the maximum: keep the large presets' clips short to stay fast.
    batch = random_batch(config, audio_frames=None if name == "tiny" else 116)
    outputs = model(batch)
    features = outputs["features"]
    assert set(features) == {"text", "image", "audio"}
    for f in features.values():
        assert f.shape == (2, config.embed_dim)
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(2))
    loss, per_pair = model.loss(outputs)
    assert set(per_pair) == {"text_image", "text_audio", "image_audio"}
    loss.backward()
    for m in ("text", "image", "audio"):
        grads = [p.grad for p in model.encoders[m].parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{m} encoder has parameters without gradient"
        assert any(g.abs().sum() > 0 for g in grads)
    assert all(s.grad is not None for s in model.logit_scales.values())


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_parameter_counts_equal_open_clips_for_the_same_towers(name):
    """Text + image towers built as open_clip builds them hold exactly as many parameters as its CLIP."""
    pytest.importorskip("open_clip")
    from bench.bench_train_step import CONFIGS, open_clip_model, our_model

    config = CONFIGS[name]
    theirs = sum(p.numel() for p in open_clip_model(config).parameters())
    assert our_model(config).num_parameters() == theirs


def test_shared_trunk_drops_the_parameters_of_all_but_one_stack():
    config = tiny()
    config.image.transformer.depth = config.text.transformer.depth = config.audio.transformer.depth  # tiny's differ
    separate = MultimodalModel(config)
    shared = MultimodalModel(ModelConfig(**{**config.__dict__, "share_trunk": True}))
    stack = sum(p.numel() for p in separate.encoders["text"].trunk.transformer.parameters())
    assert separate.num_parameters() - shared.num_parameters() == 2 * stack
    assert shared.encoders["image"].trunk.transformer is shared.encoders["audio"].trunk.transformer
    shared.loss(shared(random_batch(shared.config)))[0].backward()


def test_shared_trunk_needs_identical_stacks():
    config = tiny()
    config.image.transformer = TransformerConfig(width=128, depth=1, num_heads=4)
    config.share_trunk = True
    with pytest.raises(ValueError, match="identical transformer configs"):
        MultimodalModel(config)


def test_temperature_initialisation_and_clamp():
    model = MultimodalModel(tiny())
    assert model.logit_scales["text_image"].item() == pytest.approx(math.log(1 / 0.07))
    assert model.logit_biases is None
    with torch.no_grad():
        model.logit_scales["text_image"].fill_(10.0)
    model.clamp_logit_scales()
    assert model.logit_scales["text_image"].item() == pytest.approx(math.log(100.0))
    sig = MultimodalModel(ModelConfig(**{**tiny().__dict__, "loss": "sigmoid"}))
    assert sig.logit_scales["text_audio"].item() == pytest.approx(math.log(10.0))
    assert sig.logit_biases["text_audio"].item() == pytest.approx(-10.0)


def test_loss_uses_only_configured_pairs_present():
    config = tiny()
    config.loss_pairs = ["text_image", "text_audio"]
    model = MultimodalModel(config)
    batch = random_batch(config)
    outputs = model(batch)
    assert set(outputs["log_scales"]) == {"text_image", "text_audio"}
    _, per_pair = model.loss(outputs)
    assert set(per_pair) == {"text_image", "text_audio"}
    _, per_pair = model.loss(model({"text": batch["text"], "audio": batch["audio"]}))
    assert set(per_pair) == {"text_audio"}
    with pytest.raises(ValueError, match="no trained modality pair"):
        model.loss(model({"image": batch["image"], "audio": batch["audio"]}))


def test_encode_accepts_a_batch_dict_with_padding_mask():
    torch.manual_seed(0)
    model = MultimodalModel(tiny(["text", "audio"])).eval()
    clip = torch.randn(1, 60, 64)
    padded = torch.cat([clip, torch.zeros(1, 40, 64)], dim=1)
    mask = torch.zeros(1, 100, dtype=torch.bool)
    mask[:, 60:] = True
    alone = model.encode("audio", clip)
    batched = model.encode("audio", {"audio": padded, "audio_padding_mask": mask})
    torch.testing.assert_close(alone, batched, atol=1e-5, rtol=1e-5)


def test_errors_name_the_problem():
    model = MultimodalModel(tiny(["text", "image"]))
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        model.encode("audio", torch.randn(1, 100, 64))
    with pytest.raises(ValueError, match="no 'image' entry"):
        model.encode("image", {"text": torch.zeros(1, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="unknown loss"):
        ModelConfig(text=tiny().text, loss="triplet")
    with pytest.raises(ValueError, match="at least one encoder"):
        ModelConfig()
    with pytest.raises(ValueError, match="loss_pairs"):
        ModelConfig(text=tiny().text, image=tiny().image, loss_pairs=["text_audio"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    assert set(PRESETS) == {"tiny", "small", "base"}
