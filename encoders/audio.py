"""Audio-spectrogram transformer (AST): overlapping spectrogram patches + two prefix tokens -> block stack.

Input: log-mel frames (B, T, F): T frames, F mel bins. The spectrogram is read as a
one-channel (F, T) plane and cut into 16x16 patches at stride 10 in both axes, giving
an R x K grid (R along frequency, K along time) flattened frequency-major, as AST does.
A clip shorter than the maximum uses the first K' time columns of the position grid,
so any length up to ``max_frames`` is encoded without padding; in a batch padded to
its longest clip, the patch columns past a clip's end are masked as padding.

Shapes: B batch, T frames, F mel bins, R x K patch grid, N = R * K patches, P prefix
tokens, M patches kept by patch dropout, D width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from multimodal.encoders.block import TransformerConfig
from multimodal.encoders.stems import GridPositions, PatchEmbed, patch_grid_size
from multimodal.encoders.encoder import EncoderTrunk
from multimodal.encoders.patch_dropout import PatchDropout


@dataclass
class AudioConfig:
    """AST. Hugging Face's AST uses ``norm_eps=1e-12`` and averages its two prefix tokens.

    ``patch_dropout``: the fraction of patch tokens each clip drops in training (FLIP;
    ``PatchDropout``): of its own valid patches, padding going first; the prefix
    tokens are always kept, evaluation sees every token.
    """

    num_mel_bins: int = 128
    max_frames: int = 1024
    patch_size: int = 16
    stride: int = 10
    transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=768, depth=12, num_heads=12))
    num_prefix_tokens: int = 2  # CLS and distillation tokens
    pooling: str = "prefix_mean"
    position: str = "learned"
    pre_norm: bool = False
    patch_dropout: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(
                f"audio patch_dropout must be in [0, 1) (the fraction of patch tokens dropped in training), "
                f"got {self.patch_dropout}"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        return patch_grid_size((self.num_mel_bins, self.max_frames), self.patch_size, self.stride)


class AudioEncoder(nn.Module):
    """Log-mel frames (B, T, F) -> pooled features (B, D)."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        width = config.transformer.width
        # Prefix tokens and positions start as the vision tower's (open_clip's ViT), at
        # width^-0.5 (the blocks: Transformer).
        embedding_std = width**-0.5
        self.patch_embed = PatchEmbed(1, width, config.patch_size, config.stride)
        self.prefix_tokens = nn.Parameter(torch.randn(1, config.num_prefix_tokens, width) * embedding_std)
        self.positions = GridPositions(
            config.position, config.num_prefix_tokens, config.grid_size, width, init_std=embedding_std
        )
        self.patch_dropout = PatchDropout(config.patch_dropout, config.num_prefix_tokens)
        self.trunk = EncoderTrunk(
            config.transformer, pooling=config.pooling, num_prefix=config.num_prefix_tokens, pre_norm=config.pre_norm
        )

    @property
    def width(self) -> int:
        return self.trunk.width

    def forward(self, frames: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``frames`` (B, T, F); ``padding_mask`` (B, T) True at padded frames (clips shorter than T) -> (B, D)."""
        x, token_mask = self.patch_dropout(*self.embed(frames, padding_mask))  # (B, P + M, D), (B, P + M)
        return self.trunk(x, padding_mask=token_mask)

    def embed(
        self, frames: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stem: frames (B, T, F) -> tokens with positions (B, P + N, D) and their padding mask.

        The mask is (B, P + N), True at patches not wholly inside a clip, or None without a frame mask.
        """
        c = self.config
        if frames.ndim != 3 or frames.shape[2] != c.num_mel_bins:
            raise ValueError(
                f"audio input must be log-mel frames of shape (batch, frames, {c.num_mel_bins}), got {tuple(frames.shape)}"
            )
        B, T, _ = frames.shape
        if T < c.patch_size or T > c.max_frames:
            raise ValueError(f"audio has {T} frames; the encoder takes {c.patch_size} to {c.max_frames}")
        plane = frames.transpose(1, 2).unsqueeze(1)  # (B, 1, F, T)
        patches = self.patch_embed(plane)  # (B, R, K, D): R frequency rows, K time columns
        _, R, K, D = patches.shape
        x = patches.reshape(B, R * K, D)  # frequency-major: index = r * K + k
        x = torch.cat([self.prefix_tokens.expand(B, -1, -1).to(x.dtype), x], dim=1)  # (B, P + N, D)
        x = x + self.positions(R, K)
        token_mask = None if padding_mask is None else self._token_padding_mask(padding_mask, R, K)
        return x, token_mask

    def _token_padding_mask(self, frame_mask: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Frame mask (B, T) -> token mask (B, P + R*K): a patch is padding unless all its frames are valid."""
        valid_frames = (~frame_mask).sum(dim=1)  # (B,), clips are left-aligned
        valid_cols = (valid_frames - self.config.patch_size).div(self.config.stride, rounding_mode="floor") + 1
        col_is_pad = torch.arange(cols, device=frame_mask.device)[None, :] >= valid_cols[:, None]  # (B, K)
        grid_is_pad = col_is_pad[:, None, :].expand(-1, rows, -1).reshape(frame_mask.shape[0], rows * cols)
        prefix = torch.zeros(frame_mask.shape[0], self.config.num_prefix_tokens, dtype=torch.bool, device=frame_mask.device)
        return torch.cat([prefix, grid_is_pad], dim=1)

    def resize_positions(self, max_frames: int) -> None:
        """Interpolates the position grid along time for another maximum clip length."""
        self.config.max_frames = max_frames
        self.positions.resize(self.config.grid_size)
