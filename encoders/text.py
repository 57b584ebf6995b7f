"""Text transformer: token embedding + positions -> causal block stack -> end-of-text pooling.

Shapes: B batch, L tokens, D width.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from multimodal.encoders.block import TransformerConfig
from multimodal.encoders.stems import GridPositions
from multimodal.encoders.encoder import EncoderTrunk


@dataclass
class TextConfig:
    """Text encoder. The defaults follow CLIP's text tower (causal, EOT pooling, 77 tokens)."""

    vocab_size: int = 49408
    context_length: int = 77
    transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(width=512, depth=12, num_heads=8))
    causal: bool = True
    pooling: str = "eot"
    eot_token_id: int = 2
    position: str = "learned"
    pre_norm: bool = False


class TextEncoder(nn.Module):
    """Token ids (B, L) -> pooled features (B, D)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        width = config.transformer.width
        # Initialised as open_clip's text tower: tokens 0.02, positions 0.01 (the blocks: Transformer).
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.positions = GridPositions(config.position, 0, (1, config.context_length), width, init_std=0.01)
        self.trunk = EncoderTrunk(
            config.transformer, pooling=config.pooling, pre_norm=config.pre_norm, eot_token_id=config.eot_token_id
        )

    @property
    def width(self) -> int:
        return self.trunk.width

    def forward(self, token_ids: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``token_ids`` (B, L) int64, L <= context_length; ``padding_mask`` (B, L) True at padding.

        With causal attention and right padding the mask changes nothing before the
        end-of-text token, so CLIP-style models can leave it out.
        """
        if token_ids.ndim != 2 or token_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"text input must be integer token ids of shape (batch, length), got {tuple(token_ids.shape)} "
                f"{token_ids.dtype}; tokenize captions first"
            )
        length = token_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"text length {length} exceeds the encoder's context_length {self.config.context_length}")
        x = self.token_embedding(token_ids) + self.positions(1, length)  # (B, L, D)
        return self.trunk(x, is_causal=self.config.causal, padding_mask=padding_mask, token_ids=token_ids)
