"""Vision transformer: patch embedding + class token + positions -> patch dropout -> block stack -> CLS pooling.

Shapes: B batch, R x K patch grid, N = R * K patches, P prefix tokens (0 or 1), D width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from multimodal.encoders.block import TransformerConfig
from multimodal.encoders.stems import ConvStem, GridPositions, PatchEmbed
from multimodal.encoders.encoder import EncoderTrunk
from multimodal.encoders.patch_dropout import PatchDropout

STEMS = ("patch", "conv")


@dataclass
class VisionConfig:
    """ViT. open_clip's towers use ``patch_bias=False`` and ``pre_norm=True`` (ln_pre).

    ``patch_dropout``: the fraction of patch tokens each image drops in training (FLIP;
    ``PatchDropout``); the class token is always kept, evaluation sees every token.
    ``stem``: ``"patch"`` projects each patch of pixels (ViT, CLIP); ``"conv"`` runs
    3 x 3 stride-2 convolutions of ``stem_channels`` first (:class:`ConvStem`), the same
    token grid for more of a convolution's prior: much better on small data.
    """

    image_size: int = 224
    patch_size: int = 32
    in_channels: int = 3
    transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=768, depth=12, num_heads=12))
    class_token: bool = True
    pooling: str = "cls"
    position: str = "learned"
    patch_bias: bool = True
    pre_norm: bool = False
    patch_dropout: float = 0.0
    stem: str = "patch"
    stem_channels: tuple[int, ...] = (32, 64)

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"image stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(
                f"image patch_dropout must be in [0, 1) (the fraction of patch tokens dropped in training), "
                f"got {self.patch_dropout}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.patch_size
        return side, side


class VisionEncoder(nn.Module):
    """Images (B, 3, H, W) at the configured size -> pooled features (B, D)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        if config.image_size % config.patch_size != 0:
            raise ValueError(f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}")
        self.config = config
        width = config.transformer.width
        num_prefix = 1 if config.class_token else 0
        # Class token and positions start as open_clip's VisionTransformer, at width^-0.5
        # (the blocks: Transformer).
        embedding_std = width**-0.5
        if config.stem == "conv":
            self.patch_embed = ConvStem(config.in_channels, width, config.patch_size, tuple(config.stem_channels),
                                        bias=config.patch_bias)
        else:
            self.patch_embed = PatchEmbed(config.in_channels, width, config.patch_size, bias=config.patch_bias)
        self.class_token = nn.Parameter(torch.randn(1, 1, width) * embedding_std) if config.class_token else None
        self.positions = GridPositions(config.position, num_prefix, config.grid_size, width, init_std=embedding_std)
        self.patch_dropout = PatchDropout(config.patch_dropout, num_prefix)
        self.trunk = EncoderTrunk(config.transformer, pooling=config.pooling, num_prefix=num_prefix, pre_norm=config.pre_norm)

    @property
    def width(self) -> int:
        return self.trunk.width

    def forward(self, images: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` (B, 3, H, W) -> (B, D). ``padding_mask`` is accepted for a uniform encoder call and unused."""
        x, _ = self.patch_dropout(self.embed(images))  # (B, P + M, D): M = N unless training with patch dropout
        return self.trunk(x)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The stem: images (B, 3, H, W) -> prefix and patch tokens with positions added, (B, P + N, D)."""
        c = self.config
        if images.ndim != 4 or images.shape[1] != c.in_channels or tuple(images.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(
                f"image input must have shape (batch, {c.in_channels}, {c.image_size}, {c.image_size}), got "
                f"{tuple(images.shape)}; preprocess images with the model's image transform"
            )
        patches = self.patch_embed(images)  # (B, R, K, D)
        B, R, K, D = patches.shape
        x = patches.reshape(B, R * K, D)  # (B, N, D)
        if self.class_token is not None:
            x = torch.cat([self.class_token.expand(B, 1, D).to(x.dtype), x], dim=1)  # (B, 1 + N, D)
        return x + self.positions(R, K)

    def resize_positions(self, image_size: int) -> None:
        """Interpolates the position grid for another input resolution (bicubic; CLS kept)."""
        if image_size % self.config.patch_size != 0:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {self.config.patch_size}")
        self.config.image_size = image_size
        self.positions.resize(self.config.grid_size)
