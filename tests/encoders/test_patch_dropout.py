"""Patch dropout: kept counts, prefix, evaluation untouched, gradients, randomness, audio padding, open_clip."""
import dataclasses

import pytest
import torch

from multimodal.encoders import AudioConfig, AudioEncoder, TransformerConfig, VisionConfig, VisionEncoder
from multimodal.encoders.patch_dropout import PatchDropout, kept_counts

SMALL = dict(width=32, depth=2, num_heads=4)


def vision(rate: float, image_size: int = 56, seed: int = 0) -> VisionEncoder:
    """A 7 x 7 = 49 patch ViT."""
    torch.manual_seed(seed)
    return VisionEncoder(
        VisionConfig(image_size=image_size, patch_size=8, transformer=TransformerConfig(**SMALL), patch_dropout=rate)
    )


def audio(rate: float, pooling: str = "prefix_mean", seed: int = 0) -> AudioEncoder:
    """64 mel bins, up to 120 frames: a 5 x 11 patch grid, two prefix tokens."""
    torch.manual_seed(seed)
    return AudioEncoder(
        AudioConfig(num_mel_bins=64, max_frames=120, transformer=TransformerConfig(**SMALL), patch_dropout=rate,
                    pooling=pooling)
    )


def indexed_tokens(batch: int, num_prefix: int, num_patches: int) -> torch.Tensor:
    """(B, P + N, 1) tokens whose value is their position, so the output says which were kept."""
    return torch.arange(num_prefix + num_patches, dtype=torch.float).expand(batch, -1)[..., None].clone()


def trunk_inputs(encoder, *args) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the block stack receives: the tokens (B, T, D) and padding mask of one forward call."""
    seen = {}

    def hook(module, inputs, kwargs):
        seen["x"], seen["mask"] = inputs[0], kwargs.get("padding_mask")

    handle = encoder.trunk.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        encoder(*args)
    finally:
        handle.remove()
    return seen["x"], seen["mask"]


def test_kept_count_rounds_down_like_open_clip_but_exactly():
    assert int(kept_counts(torch.tensor([49]), 0.5)) == 24
    assert int(kept_counts(torch.tensor([49]), 0.75)) == 12
    assert int(kept_counts(torch.tensor([100]), 0.9)) == 10  # open_clip's int(100 * (1 - 0.9)) is 9
    assert kept_counts(torch.tensor([1, 3, 0]), 0.75).tolist() == [1, 1, 0]  # at least one, none of nothing
    for rate in (0.25, 0.5, 0.75):  # exact in binary: open_clip's formula has no float error here
        counts = kept_counts(torch.arange(1, 300), rate).tolist()
        assert counts == [max(1, int(n * (1 - rate))) for n in range(1, 300)]


def test_training_keeps_the_class_token_and_the_counted_patches():
    encoder = vision(0.5).train()
    images = torch.randn(3, 3, 56, 56)
    full = encoder.embed(images)  # (3, 1 + 49, D)
    x, mask = trunk_inputs(encoder, images)
    assert x.shape == (3, 1 + 24, 32) and mask is None
    assert torch.equal(x[:, 0], full[:, 0])
    for b in range(3):  # each kept token is one of the sample's own patch tokens, none twice
        matches = (x[b, 1:, None, :] == full[b, None, 1:, :]).all(dim=-1)  # (24, 49)
        assert matches.sum(dim=1).tolist() == [1] * 24 and matches.any(dim=0).sum() == 24


def test_distillation_and_class_tokens_are_both_kept():
    dropout = PatchDropout(0.75, num_prefix=2).train()
    out, _ = dropout(indexed_tokens(4, 2, 40))
    assert out.shape == (4, 2 + 10, 1)
    assert out[:, :2, 0].tolist() == [[0.0, 1.0]] * 4
    assert (out[:, 2:] >= 2).all()


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_evaluation_is_bitwise_unchanged_by_the_setting(modality):
    if modality == "image":
        with_dropout, without = vision(0.75), vision(0.0)
        args = (torch.randn(4, 3, 56, 56),)
    else:
        with_dropout, without = audio(0.75, pooling="mean"), audio(0.0, pooling="mean")
        mask = torch.zeros(4, 120, dtype=torch.bool)
        mask[1, 70:] = True
        args = (torch.randn(4, 120, 64), mask)
    without.load_state_dict(with_dropout.state_dict())
    with torch.no_grad():
        assert torch.equal(with_dropout.eval()(*args), without.eval()(*args))
        torch.manual_seed(1)
        assert not torch.equal(with_dropout.train()(*args), without.train()(*args))


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_gradients_reach_every_parameter(modality):
    if modality == "image":
        encoder, args = vision(0.5).train(), (torch.randn(8, 3, 56, 56),)
    else:
        mask = torch.zeros(8, 120, dtype=torch.bool)
        mask[::2, 80:] = True
        encoder, args = audio(0.5, pooling="mean").train(), (torch.randn(8, 120, 64), mask)
    torch.manual_seed(0)
    encoder(*args).square().sum().backward()
    no_gradient = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_gradient == []


def test_each_sample_draws_its_own_subset_and_the_seed_fixes_it():
    dropout = PatchDropout(0.5, num_prefix=1).train()
    tokens = indexed_tokens(6, 1, 49)  # every row the same
    torch.manual_seed(3)
    first = dropout(tokens)[0][:, 1:, 0]
    subsets = [frozenset(row.tolist()) for row in first]
    assert len(set(subsets)) == 6
    torch.manual_seed(3)
    assert torch.equal(dropout(tokens)[0][:, 1:, 0], first)
    torch.manual_seed(4)
    assert not torch.equal(dropout(tokens)[0][:, 1:, 0], first)


def test_same_tokens_as_open_clip_under_the_same_seed():
    open_clip = pytest.importorskip("open_clip")
    x = torch.randn(5, 1 + 49, 16)
    for rate in (0.5, 0.75):
        theirs = open_clip.transformer.PatchDropout(rate).train()
        ours = PatchDropout(rate, num_prefix=1).train()
        torch.manual_seed(7)
        expected = theirs(x)
        torch.manual_seed(7)
        got, mask = ours(x)
        assert mask is None
        assert torch.equal(got, expected)


def test_vision_tower_trains_like_open_clip_with_patch_dropout():
    open_clip = pytest.importorskip("open_clip")
    from multimodal.interop import open_clip_to_model
    from multimodal.model import MultimodalModel

    model_config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 56, "patch_size": 8, "width": 64, "layers": 2, "head_width": 16, "patch_dropout": 0.5},
        "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 1},
    }
    torch.manual_seed(0)
    theirs = open_clip.model.CLIP(model_config["embed_dim"], model_config["vision_cfg"], model_config["text_cfg"])
    imported = open_clip_to_model(theirs.state_dict(), model_config=model_config)
    config = imported.config
    config.image = dataclasses.replace(config.image, patch_dropout=0.5)
    ours = MultimodalModel(config)
    ours.load_state_dict(imported.state_dict())
    images = torch.randn(4, 3, 56, 56)
    theirs.train(), ours.train()
    with torch.no_grad():
        torch.manual_seed(11)
        expected = theirs.encode_image(images, normalize=True)
        torch.manual_seed(11)
        got = ours.encode("image", images)
        torch.manual_seed(12)
        other_draw = ours.encode("image", images)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (other_draw - expected).abs().max() > 1e-3


def test_padded_patches_go_first_and_the_mask_follows_the_kept_tokens():
    dropout = PatchDropout(0.5, num_prefix=2).train()
    tokens = indexed_tokens(3, 2, 40)
    mask = torch.zeros(3, 42, dtype=torch.bool)
    mask[0, 2 + 20 :] = True  # 20 valid patches
    mask[2, 2 + 5 :] = True  # 5 valid patches
    torch.manual_seed(0)
    out, out_mask = dropout(tokens, mask)
    keep = [10, 20, 2]  # floor(valid / 2) of each sample's own valid patches
    assert out.shape == (3, 2 + 20, 1) and out_mask.shape == (3, 2 + 20)
    for b, count in enumerate(keep):
        assert out_mask[b].tolist() == [False, False] + [False] * count + [True] * (20 - count)
        valid_kept = out[b, 2 : 2 + count, 0].tolist()
        assert len(set(valid_kept)) == count
        assert all(not mask[b, int(position)] for position in valid_kept)
    assert out[:, :2, 0].tolist() == [[0.0, 1.0]] * 3


@pytest.mark.parametrize("pooling", ["mean", "prefix_mean"])
def test_audio_training_never_sees_padded_frames(pooling):
    encoder = audio(0.5, pooling=pooling).train()
    clips = torch.randn(3, 120, 64)
    mask = torch.zeros(3, 120, dtype=torch.bool)
    mask[0, 57:] = True
    mask[2, 95:] = True
    messy = clips.clone()
    messy[mask] = 1e4 * torch.randn(int(mask.sum()), 64)  # padding that would dominate any average it entered
    torch.manual_seed(5)
    expected = encoder(clips, mask)
    torch.manual_seed(5)
    got = encoder(messy, mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.manual_seed(5)
    x, token_mask = trunk_inputs(encoder, clips, mask)
    # 57 frames: 5 time columns x 5 rows = 25 valid patches -> 12 kept; 120 frames: 55 -> 27; 95 frames: 40 -> 20
    assert x.shape[1] == 2 + 27
    assert (~token_mask[:, 2:]).sum(dim=1).tolist() == [12, 27, 20]


def test_mean_pooling_averages_only_the_valid_kept_tokens():
    encoder = audio(0.5, pooling="mean").train()
    clips = torch.randn(2, 120, 64)
    mask = torch.zeros(2, 120, dtype=torch.bool)
    mask[0, 57:] = True
    torch.manual_seed(2)
    pooled = encoder(clips, mask)
    torch.manual_seed(2)
    embedded, embedded_mask = encoder.embed(clips, mask)
    tokens, token_mask = encoder.patch_dropout(embedded, embedded_mask)
    trunk = encoder.trunk
    hidden = trunk.norm(trunk.transformer(trunk.pre_norm(tokens), padding_mask=token_mask))
    valid = ~token_mask[0, 2:]
    torch.testing.assert_close(pooled[0], hidden[0, 2:][valid].mean(dim=0))


def test_rate_is_checked_where_it_is_set():
    with pytest.raises(ValueError, match=r"image patch_dropout must be in \[0, 1\) .* got 1.0"):
        VisionConfig(patch_dropout=1.0)
    with pytest.raises(ValueError, match=r"audio patch_dropout must be in \[0, 1\) .* got -0.1"):
        AudioConfig(patch_dropout=-0.1)


def test_the_trainer_command_line_reaches_the_setting(capsys):
    from multimodal.training.train_config import parse_config
    from multimodal.training.trainer import main

    config = parse_config(["--model.image.patch_dropout", "0.5", "--model.audio.patch_dropout", "0.25"])
    assert (config.model.image.patch_dropout, config.model.audio.patch_dropout) == (0.5, 0.25)
    with pytest.raises(SystemExit) as stopped:
        main(["--model.image.patch_dropout", "1"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "train.py: error: image patch_dropout must be in [0, 1) (the fraction of patch tokens dropped in training), got 1.0"
    )


def test_checkpoint_keeps_the_setting_and_evaluates_every_token(tmp_path):
    from multimodal.checkpoint import load_model, save_checkpoint
    from multimodal.model import MultimodalModel
    from multimodal.presets import tiny

    config = tiny(modalities=("text", "image"))
    config.image.patch_dropout = 0.5
    torch.manual_seed(0)
    model = MultimodalModel(config)
    loaded = load_model(save_checkpoint(model, tmp_path / "checkpoint"))
    assert loaded.config.image.patch_dropout == 0.5
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode("image", images), model.eval().encode("image", images))
