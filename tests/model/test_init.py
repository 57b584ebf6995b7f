"""Initialisation: our towers against open_clip's of the same architecture, parameter group by group.

Embeddings, patch embeddings and projections start as open_clip's tower of the same
modality. Every block stack starts as open_clip's text tower (``scaled_residual_init``;
open_clip leaves its vision blocks at torch's defaults, which trained worse on the demo),
so the image blocks' reference is an open_clip text tower of the image tower's width,
depth and MLP ratio.

Compared are the mean and standard deviation of each group (one tensor kind, pooled over
blocks) between our towers and open_clip's, built with random weights. Sampling error
sets the tolerance: the sample std of n draws has relative standard error
sqrt((kurtosis - 1) / (4 n)), at most 1 / sqrt(2 n) for the normal and uniform
distributions used here, so the two sides' stds may differ by 5 / sqrt(n) relative
(five standard errors of the difference); their means by 5 sqrt(2 / n) stds.
"""
import math

import pytest
import torch

from multimodal.encoders import AudioEncoder
from multimodal.model import MultimodalModel
from multimodal.presets import small, tiny

open_clip = pytest.importorskip("open_clip")

PRESETS = {"tiny": tiny, "small": small}


def open_clip_twin(config) -> torch.nn.Module:
    """open_clip's ``CLIP`` with our preset's text and image architecture, random weights."""
    image, text = config.image, config.text
    vision_cfg = dict(
        image_size=image.image_size, patch_size=image.patch_size, width=image.transformer.width,
        layers=image.transformer.depth, head_width=image.transformer.width // image.transformer.num_heads,
        mlp_ratio=image.transformer.mlp_ratio,
    )
    return open_clip.model.CLIP(config.embed_dim, vision_cfg, text_cfg(text.context_length, text.vocab_size, text.transformer))


def text_cfg(context_length: int, vocab_size: int, transformer) -> dict:
    return dict(
        context_length=context_length, vocab_size=vocab_size, width=transformer.width,
        heads=transformer.num_heads, layers=transformer.depth, mlp_ratio=transformer.mlp_ratio,
    )


def open_clip_text_blocks(transformer) -> torch.nn.ModuleList:
    """The blocks of an open_clip text tower with ``transformer``'s width, depth, heads and MLP ratio."""
    tower = open_clip.transformer.TextTransformer(**text_cfg(8, 16, transformer))
    return tower.transformer.resblocks


BLOCK_GROUPS = {  # ours -> open_clip's, inside one block
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.weight": "attn.out_proj.weight",
    "attn.proj.bias": "attn.out_proj.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "norm1.weight": "ln_1.weight",
    "norm2.bias": "ln_2.bias",
}


def groups(ours: MultimodalModel, theirs: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group name -> (our values, open_clip's values), each flattened and pooled over blocks."""
    image, text, visual = ours.encoders["image"], ours.encoders["text"], theirs.visual
    image_reference_blocks = open_clip_text_blocks(ours.config.image.transformer)
    pairs = {
        "image class token": (image.class_token, visual.class_embedding),
        "image positions": (torch.cat([image.positions.prefix, image.positions.grid.flatten(0, 1)]),
                            visual.positional_embedding),
        "image patch embedding": (image.patch_embed.proj.weight, visual.conv1.weight),
        "image projection": (ours.projections["image"].weight, visual.proj),
        "image final norm": (image.trunk.norm.weight, visual.ln_post.weight),
        "text token embedding": (text.token_embedding.weight, theirs.token_embedding.weight),
        "text positions": (text.positions.grid, theirs.positional_embedding),
        "text projection": (ours.projections["text"].weight, theirs.text_projection),
        "text final norm": (text.trunk.norm.bias, theirs.ln_final.bias),
    }
    for tower, our_blocks, their_blocks in (
        ("image", image.trunk.transformer.blocks, image_reference_blocks),
        ("text", text.trunk.transformer.blocks, theirs.transformer.resblocks),
    ):
        for our_name, their_name in BLOCK_GROUPS.items():
            our_values = torch.cat([block.get_parameter(our_name).flatten() for block in our_blocks])
            their_values = torch.cat([block.get_parameter(their_name).flatten() for block in their_blocks])
            pairs[f"{tower} blocks {our_name}"] = (our_values, their_values)
    return {name: (a.detach().flatten(), b.detach().flatten()) for name, (a, b) in pairs.items()}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_towers_start_as_open_clip_does(name):
    config = PRESETS[name](modalities=("text", "image"))
    config.image.stem = "patch"  # open_clip's ViT has no convolutional stem; the rest must start as its does
    torch.manual_seed(0)
    ours = MultimodalModel(config)
    torch.manual_seed(1)
    theirs = open_clip_twin(config)
    problems = []
    for group, (a, b) in groups(ours, theirs).items():
        assert a.numel() == b.numel(), group
        n = a.numel()
        std_a, std_b = a.std().item(), b.std().item()
        if max(std_a, std_b) == 0.0:  # constants (zero biases, unit norms): equal exactly
            if not torch.equal(a, b):
                problems.append(f"{group}: constant {a[0].item()} vs {b[0].item()}")
            continue
        if abs(std_a - std_b) > 5 / math.sqrt(n) * std_b:
            problems.append(f"{group}: std {std_a:.4f} vs open_clip {std_b:.4f} (n={n})")
        if abs(a.mean().item() - b.mean().item()) > 5 * math.sqrt(2 / n) * std_b:
            problems.append(f"{group}: mean {a.mean().item():.4f} vs open_clip {b.mean().item():.4f} (n={n})")
    assert problems == []


@pytest.mark.parametrize("modality", ["text", "image", "audio"])
def test_blocks_use_clips_scaled_residual_init(modality):
    """The formulas themselves, at the tiny preset's width 128 and depths 2 (audio: 3) (open_clip's TextTransformer)."""
    torch.manual_seed(0)
    config = tiny()
    blocks = MultimodalModel(config).encoders[modality].trunk.transformer.blocks
    width, depth = 128, getattr(config, modality).transformer.depth
    assert depth == (3 if modality == "audio" else 2)
    expected = {
        "attn.qkv.weight": width**-0.5,  # 0.088
        "attn.proj.weight": width**-0.5 * (2 * depth) ** -0.5,
        "mlp.fc1.weight": (2 * width) ** -0.5,
        "mlp.fc2.weight": width**-0.5 * (2 * depth) ** -0.5,
    }
    for name, std in expected.items():
        values = torch.cat([block.get_parameter(name).detach().flatten() for block in blocks])
        assert values.std().item() == pytest.approx(std, rel=5 / math.sqrt(values.numel()))


def test_audio_tower_starts_as_the_image_tower():
    """No reference has an audio ViT trained from scratch; ours starts as the image tower (open_clip's ViT)."""
    config = tiny()
    config.image.transformer.depth = config.audio.transformer.depth  # the residual init scales with depth
    torch.manual_seed(0)
    model = MultimodalModel(config)
    audio, image = model.encoders["audio"], model.encoders["image"]
    assert isinstance(audio, AudioEncoder)
    width = config.audio.transformer.width
    for values in (audio.prefix_tokens, audio.positions.grid):
        assert values.std().item() == pytest.approx(width**-0.5, rel=5 / math.sqrt(2 * values.numel()))
    for name in BLOCK_GROUPS:
        ours = torch.cat([b.get_parameter(name).detach().flatten() for b in audio.trunk.transformer.blocks])
        reference = torch.cat([b.get_parameter(name).detach().flatten() for b in image.trunk.transformer.blocks])
        assert ours.std().item() == pytest.approx(reference.std().item(), rel=5 / math.sqrt(ours.numel()), abs=1e-12)
