"""Encoders: masking semantics, stems, positions, pooling, presets, shape errors."""
import pytest
import torch
import torch.nn.functional as F

from multimodal.encoders import AudioConfig, AudioEncoder, TextConfig, TextEncoder, Transformer, TransformerConfig
from multimodal.encoders import VisionConfig, VisionEncoder
from multimodal.encoders.stems import GridPositions, PatchEmbed, resize_grid, sinusoidal_1d, sinusoidal_2d
from multimodal.encoders.pool import AttentionPool, pool_eot, pool_mean

SMALL = dict(width=32, depth=2, num_heads=4)


@pytest.mark.parametrize("backend", ["fused", "explicit"])
def test_causal_future_tokens_never_change_earlier_outputs(backend):
    torch.manual_seed(0)
    stack = Transformer(TransformerConfig(**SMALL, attention_backend=backend)).eval()
    x = torch.randn(2, 10, 32)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 32)
    torch.testing.assert_close(stack(x, is_causal=True)[:, :6], stack(changed, is_causal=True)[:, :6])
    assert not torch.allclose(stack(x, is_causal=True)[:, 6:], stack(changed, is_causal=True)[:, 6:])


@pytest.mark.parametrize("backend", ["fused", "explicit"])
def test_padded_positions_never_change_valid_outputs(backend):
    torch.manual_seed(0)
    stack = Transformer(TransformerConfig(**SMALL, attention_backend=backend)).eval()
    x = torch.randn(2, 9, 32)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[0, 5:] = True
    changed = x.clone()
    changed[0, 5:] = 100 * torch.randn(4, 32)
    torch.testing.assert_close(stack(x, padding_mask=mask)[0, :5], stack(changed, padding_mask=mask)[0, :5])
    # and a padded sequence equals the same sequence alone, unpadded
    torch.testing.assert_close(stack(x, padding_mask=mask)[0, :5], stack(x[:1, :5])[0], atol=1e-5, rtol=1e-5)


def test_patch_embed_matmul_path_equals_convolution():
    torch.manual_seed(0)
    embed = PatchEmbed(3, 16, patch_size=8)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    expected = embed.proj(x).permute(0, 2, 3, 1)
    got = embed(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    g1 = torch.autograd.grad(got.sum(), embed.proj.weight)[0]
    g2 = torch.autograd.grad(expected.sum(), embed.proj.weight)[0]
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-5)


def test_overlapping_spectrogram_patches():
    embed = PatchEmbed(1, 8, patch_size=16, stride=10)
    out = embed(torch.randn(1, 1, 128, 1024))
    assert out.shape == (1, 12, 101, 8)  # AST: 12 x 101 = 1212 patches


def test_sinusoidal_matches_the_formula():
    pe = sinusoidal_1d(torch.arange(5), 8)
    pos, i = 3, 2  # channel 2i = 4 and 2i+1 = 5
    assert pe[pos, 4].item() == pytest.approx(torch.sin(torch.tensor(pos / 10000 ** (4 / 8))).item(), abs=1e-6)
    assert pe[pos, 5].item() == pytest.approx(torch.cos(torch.tensor(pos / 10000 ** (4 / 8))).item(), abs=1e-6)
    grid = sinusoidal_2d(3, 4, 8)
    assert grid.shape == (3, 4, 8)
    torch.testing.assert_close(grid[2, 1, :4], sinusoidal_1d(torch.tensor([2]), 4)[0])
    torch.testing.assert_close(grid[2, 1, 4:], sinusoidal_1d(torch.tensor([1]), 4)[0])


def test_position_grid_resize_keeps_prefix_and_interpolates():
    torch.manual_seed(0)
    positions = GridPositions("learned", 1, (4, 4), 8, init_std=0.02)
    prefix = positions.prefix.detach().clone()
    expected = F.interpolate(positions.grid.detach().permute(2, 0, 1)[None], size=(6, 6), mode="bicubic",
                             align_corners=False)[0].permute(1, 2, 0)
    positions.resize((6, 6))
    torch.testing.assert_close(positions.prefix, prefix)
    torch.testing.assert_close(positions.grid.detach(), expected)
    assert positions(6, 6).shape == (1 + 36, 8)
    constant = torch.ones(4, 4, 8)
    torch.testing.assert_close(resize_grid(constant, (7, 5)), torch.ones(7, 5, 8))


def test_vision_encoder_runs_at_a_new_resolution_after_resize():
    encoder = VisionEncoder(VisionConfig(image_size=32, patch_size=8, transformer=TransformerConfig(**SMALL)))
    encoder.resize_positions(48)
    assert encoder(torch.randn(2, 3, 48, 48)).shape == (2, 32)


def test_audio_any_length_and_padding_equal_alone():
    torch.manual_seed(0)
    encoder = AudioEncoder(AudioConfig(num_mel_bins=32, max_frames=120, transformer=TransformerConfig(**SMALL))).eval()
    short = torch.randn(1, 57, 32)
    other = torch.randn(1, 120, 32)
    batch = torch.cat([F.pad(short, (0, 0, 0, 63)), other])
    mask = torch.zeros(2, 120, dtype=torch.bool)
    mask[0, 57:] = True
    out = encoder(batch, mask)
    torch.testing.assert_close(out[0], encoder(short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], encoder(other)[0], atol=1e-5, rtol=1e-5)


def test_audio_resize_positions_for_longer_clips():
    encoder = AudioEncoder(AudioConfig(num_mel_bins=32, max_frames=100, transformer=TransformerConfig(**SMALL)))
    with pytest.raises(ValueError, match="frames"):
        encoder(torch.randn(1, 200, 32))
    encoder.resize_positions(200)
    assert encoder(torch.randn(1, 200, 32)).shape == (1, 32)


def test_eot_pooling_picks_the_end_of_text_position():
    x = torch.arange(2 * 5 * 3, dtype=torch.float).view(2, 5, 3)
    ids = torch.tensor([[1, 7, 2, 0, 0], [1, 7, 8, 9, 2]])
    torch.testing.assert_close(pool_eot(x, ids, eot_token_id=2), torch.stack([x[0, 2], x[1, 4]]))
    with pytest.raises(ValueError, match="no end-of-text"):
        pool_eot(x, torch.ones(2, 5, dtype=torch.long), eot_token_id=2)


def test_mean_pooling_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert pool_mean(x, torch.tensor([[False, False, True]])).item() == 2.0


def test_attention_pool_ignores_padding():
    torch.manual_seed(0)
    pool = AttentionPool(16, 4)
    x = torch.randn(1, 6, 16)
    padded = torch.cat([x, torch.randn(1, 3, 16)], dim=1)
    mask = torch.tensor([[False] * 6 + [True] * 3])
    torch.testing.assert_close(pool(padded, mask), pool(x), atol=1e-5, rtol=1e-5)


def test_text_encoder_shape_errors_are_clear():
    encoder = TextEncoder(TextConfig(vocab_size=50, context_length=8, transformer=TransformerConfig(**SMALL)))
    with pytest.raises(ValueError, match="token ids"):
        encoder(torch.randn(2, 8))
    with pytest.raises(ValueError, match="context_length"):
        encoder(torch.full((2, 9), 2))


def test_vision_and_audio_shape_errors_are_clear():
    vision = VisionEncoder(VisionConfig(image_size=32, patch_size=8, transformer=TransformerConfig(**SMALL)))
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\)"):
        vision(torch.randn(2, 3, 28, 28))
    audio = AudioEncoder(AudioConfig(num_mel_bins=32, max_frames=100, transformer=TransformerConfig(**SMALL)))
    with pytest.raises(ValueError, match="log-mel frames"):
        audio(torch.randn(2, 100, 64))


def test_config_validation():
    with pytest.raises(ValueError, match="activation"):
        TransformerConfig(activation="relu6")
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(width=30, num_heads=4)
    with pytest.raises(ValueError, match="pooling"):
        VisionEncoder(VisionConfig(image_size=32, patch_size=8, pooling="max", transformer=TransformerConfig(**SMALL)))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = Transformer(TransformerConfig(**SMALL))
    checkpointed = Transformer(TransformerConfig(**SMALL, grad_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 32)
    g1 = torch.autograd.grad(plain(x).sum(), list(plain.parameters()))
    g2 = torch.autograd.grad(checkpointed(x).sum(), list(checkpointed.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_layer_scale_drop_path_and_qk_norm_run():
    stack = Transformer(TransformerConfig(**SMALL, layer_scale_init=1e-5, drop_path=0.2, qk_norm=True))
    x = torch.randn(2, 5, 32)
    stack(x).sum().backward()
    # LayerScale at 1e-5 keeps the stack close to identity at initialisation
    stack.eval()
    assert (stack(x) - x).abs().max() < 1e-3


def test_conv_stem_is_its_convolutions_then_a_patch_projection():
    from multimodal.encoders.stems import ConvStem

    torch.manual_seed(0)
    stem = ConvStem(3, 24, patch_size=8, channels=(4, 6))
    x = torch.randn(2, 3, 32, 16)
    by_hand = x
    for conv in stem.convs:
        by_hand = F.gelu(F.conv2d(by_hand, conv.weight, conv.bias, stride=2, padding=1))
    by_hand = F.conv2d(by_hand, stem.proj.weight, stem.proj.bias, stride=2).permute(0, 2, 3, 1)  # (B, R, K, D)
    out = stem(x)
    assert out.shape == (2, 4, 2, 24)  # the grid of 8 px patches
    torch.testing.assert_close(out, by_hand)
    with pytest.raises(ValueError, match="needs a patch_size divisible by 4, got 6"):
        ConvStem(3, 24, patch_size=6, channels=(4, 6))


def test_vision_encoder_with_a_conv_stem_trains_and_resizes():
    config = VisionConfig(image_size=32, patch_size=8, stem="conv", transformer=TransformerConfig(32, 1, 2))
    encoder = VisionEncoder(config)
    images = torch.randn(3, 3, 32, 32)
    encoder(images).sum().backward()
    assert encoder.patch_embed.convs[0].weight.grad is not None
    encoder.resize_positions(48)
    assert encoder(torch.randn(1, 3, 48, 48)).shape == (1, 32)
    with pytest.raises(ValueError, match="image stem must be one of patch, conv, got 'cnn'"):
        VisionConfig(stem="cnn")
