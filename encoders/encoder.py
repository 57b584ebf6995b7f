"""What the three encoders share: optional pre-norm, the block stack, final norm, pooling.

An encoder is a stem (tokens + positions, its own) followed by this trunk; the
modalities differ only in their stem and pooling. Shapes: B batch, T tokens, D width.
"""
from __future__ import annotations

import torch
from torch import nn

from multimodal.encoders.block import Transformer, TransformerConfig
from multimodal.encoders.pool import POOLINGS, AttentionPool, pool_cls, pool_eot, pool_mean, pool_prefix_mean


class EncoderTrunk(nn.Module):
    """pre_norm -> transformer -> norm -> pool.

    Args:
        transformer: the block stack's configuration.
        pooling: one of ``POOLINGS``.
        num_prefix: prefix tokens (CLS, distillation) before the content tokens.
        pre_norm: a LayerNorm before the first block (CLIP's ``ln_pre``).
        eot_token_id: the end-of-text id, for ``pooling="eot"``.
    """

    def __init__(
        self,
        transformer: TransformerConfig,
        *,
        pooling: str,
        num_prefix: int = 0,
        pre_norm: bool = False,
        eot_token_id: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if pooling in ("cls", "prefix_mean") and num_prefix == 0:
            raise ValueError(f"pooling={pooling!r} needs prefix tokens, but the encoder has none")
        if pooling == "eot" and eot_token_id is None:
            raise ValueError("pooling='eot' needs eot_token_id")
        self.pooling = pooling
        self.num_prefix = num_prefix
        self.eot_token_id = eot_token_id
        width = transformer.width
        self.pre_norm = nn.LayerNorm(width, eps=transformer.norm_eps) if pre_norm else nn.Identity()
        self.transformer = Transformer(transformer)
        self.norm = nn.LayerNorm(width, eps=transformer.norm_eps)
        self.attention_pool = AttentionPool(width, transformer.num_heads, transformer.norm_eps) if pooling == "attention" else None

    @property
    def width(self) -> int:
        return self.norm.normalized_shape[0]

    def forward(
        self,
        x: torch.Tensor,
        *,
        is_causal: bool = False,
        padding_mask: torch.Tensor | None = None,
        token_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens with positions (B, T, D) -> pooled (B, D). ``padding_mask`` (B, T), True at padding."""
        x = self.transformer(self.pre_norm(x), is_causal=is_causal, padding_mask=padding_mask)
        x = self.norm(x)  # per token, so it commutes with picking a token
        if self.pooling == "cls":
            return pool_cls(x)
        if self.pooling == "prefix_mean":
            return pool_prefix_mean(x, self.num_prefix)
        if self.pooling == "mean":
            return pool_mean(x, padding_mask, skip=self.num_prefix)
        if self.pooling == "eot":
            return pool_eot(x, token_ids, self.eot_token_id)
        return self.attention_pool(x, padding_mask)
