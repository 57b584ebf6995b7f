"""Pooling a token sequence (B, T, D) into one vector per input (B, D)."""
from __future__ import annotations

import torch
from torch import nn

from multimodal.encoders.attention import scaled_dot_product

POOLINGS = ("cls", "prefix_mean", "mean", "eot", "attention")


def pool_cls(x: torch.Tensor) -> torch.Tensor:
    """The first token (B, T, D) -> (B, D)."""
    return x[:, 0]


def pool_prefix_mean(x: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """Average of the prefix tokens: AST averages its CLS and distillation tokens."""
    return x[:, :num_prefix].mean(dim=1)


def pool_mean(x: torch.Tensor, padding_mask: torch.Tensor | None, skip: int = 0) -> torch.Tensor:
    """Mean over valid tokens from position ``skip`` on (prefix tokens excluded)."""
    x = x[:, skip:]
    if padding_mask is None:
        return x.mean(dim=1)
    valid = (~padding_mask[:, skip:]).to(x.dtype)[..., None]  # (B, T, 1)
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def pool_eot(x: torch.Tensor, token_ids: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """The hidden state at the first end-of-text token of each sequence, as CLIP pools text.

    Raises ValueError when a sequence has no end-of-text token (a caption truncated
    without keeping it, or ids from another tokenizer).
    """
    is_eot = token_ids == eot_token_id  # (B, L)
    has_eot = is_eot.any(dim=1)
    if not bool(has_eot.all()):
        missing = (~has_eot).nonzero().flatten().tolist()
        raise ValueError(
            f"text rows {missing} have no end-of-text token (id {eot_token_id}); tokenize with a tokenizer "
            "that keeps it on truncation, or check the encoder's eot_token_id"
        )
    position = is_eot.int().argmax(dim=1)  # first occurrence
    return x[torch.arange(x.shape[0], device=x.device), position]


class AttentionPool(nn.Module):
    """A learned query that cross-attends to the tokens (multi-head), then a projection."""

    def __init__(self, dim: int, num_heads: int, norm_eps: float = 1e-5):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention pool width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        H, hd = self.num_heads, D // self.num_heads
        q = self.q(self.norm(self.query)).view(1, 1, H, hd).transpose(1, 2).expand(B, H, 1, hd)  # (B, H, 1, hd)
        k, v = self.kv(x).view(B, T, 2, H, hd).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, hd)
        out = scaled_dot_product(q, k, v, padding_mask=padding_mask)  # (B, H, 1, hd)
        return self.proj(out.reshape(B, D))
