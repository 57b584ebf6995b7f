"""Multi-head scaled dot-product attention.

Shapes: B batch, T query length, S key length, H heads, D head dim, C = H * D model width.

Two execution paths compute the same function:

* ``"fused"``: ``torch.nn.functional.scaled_dot_product_attention``;
* ``"explicit"``: ``softmax(Q K^T / sqrt(D) + mask) V`` written out with matmuls.

They agree to float rounding (tested to 1e-5 in fp32). Neither is always faster:
on CPU the fused kernel's backward in bf16 is several times slower than two
plain matmuls at short sequences, while at long sequences the fused kernel
avoids materialising the (T, S) score matrix. ``choose_backend`` picks one by
device, dtype, length and whether gradients are needed; ``bench/`` measures it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("auto", "fused", "explicit")

# Sequence lengths from which PyTorch's fused CPU kernel beats the explicit
# softmax(QK^T / sqrt(d)) V path, per (dtype, gradients needed). What holds: with
# gradients in half precision the fused backward is slower at short and medium lengths
# and pays off only for long sequences (AST-sized, ~1k tokens), where it also avoids
# keeping (T, T) probabilities per head; in fp32 with gradients it wins from medium
# lengths; fp32 inference is never slower fused. `python -m bench attention` measures
# every row on the machine at hand and checks that this choice is never more than 10%
# slower than the faster path.
_CPU_FUSED_FROM_LENGTH = {
    (torch.bfloat16, True): 1024,
    (torch.float16, True): 1024,
    (torch.float32, True): 128,
    (torch.bfloat16, False): 1024,
    (torch.float16, False): 1024,
}


def choose_backend(seq_len: int, dtype: torch.dtype, device: torch.device, needs_grad: bool) -> str:
    """The faster attention path for this call: ``"fused"`` or ``"explicit"``."""
    if device.type != "cpu":
        return "fused"
    threshold = _CPU_FUSED_FROM_LENGTH.get((dtype, needs_grad))
    if threshold is None:  # fp32 inference: the fused forward is at least as fast
        return "fused"
    return "fused" if seq_len >= threshold else "explicit"


def build_attention_mask(
    query_len: int,
    key_len: int,
    *,
    is_causal: bool,
    padding_mask: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Boolean mask, True where a query may attend to a key, broadcastable to (B, H, T, S).

    ``padding_mask`` is (B, S), True at padded keys. Returns None when nothing is masked.
    """
    allowed = None
    if is_causal:
        # Query i sees keys 0..i (+ offset when keys outnumber queries).
        allowed = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)
    if padding_mask is not None:
        keys_valid = ~padding_mask[:, None, None, :]  # (B, 1, 1, S)
        allowed = keys_valid if allowed is None else allowed & keys_valid
    return allowed


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(D)) V with masked keys excluded. q (B,H,T,D), k/v (B,H,S,D) -> (B,H,T,D)."""
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, H, T, S)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of q (B,H,T,D) over k, v (B,H,S,D) -> (B,H,T,D) by the chosen backend.

    Every query must keep at least one key (a fully padded sequence has no defined output).
    """
    if backend == "auto":
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        backend = choose_backend(k.shape[-2], q.dtype, q.device, needs_grad)
    if backend == "fused":
        if padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal and q.shape[-2] == k.shape[-2])
        allowed = build_attention_mask(
            q.shape[-2], k.shape[-2], is_causal=is_causal, padding_mask=padding_mask, device=q.device
        )
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    if backend == "explicit":
        allowed = build_attention_mask(
            q.shape[-2], k.shape[-2], is_causal=is_causal, padding_mask=padding_mask, device=q.device
        )
        return explicit_attention(q, k, v, allowed)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")


class Attention(nn.Module):
    """Multi-head self-attention with one fused Q/K/V projection and an output projection W_O.

    Args:
        dim: model width C; must be divisible by ``num_heads``.
        num_heads: number of heads H; each has width D = C / H.
        qkv_bias: bias on the fused Q/K/V projection.
        proj_bias: bias on the output projection.
        qk_norm: LayerNorm on queries and keys per head (stabilises large models).
        norm_eps: epsilon of the QK-norm LayerNorms.
        backend: ``"auto"`` (fastest for the call), ``"fused"`` or ``"explicit"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``nn.MultiheadAttention`` initialises itself: Xavier-uniform Q/K/V, zero biases.

        The fused Q/K/V weight is one (3C, C) matrix, so its Xavier std is (2C)^-0.5. The
        output projection keeps ``nn.Linear``'s default weights. A block stack then
        re-initialises the weights as CLIP's text tower (``scaled_residual_init``).
        """
        nn.init.xavier_uniform_(self.qkv.weight)
        for linear in (self.qkv, self.proj):
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(
        self, x: torch.Tensor, *, is_causal: bool = False, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). ``padding_mask`` (B, T) is True at padded positions."""
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        q, k = self.q_norm(q), self.k_norm(k)
        out = scaled_dot_product(q, k, v, is_causal=is_causal, padding_mask=padding_mask, backend=self.backend)
        out = out.transpose(1, 2).reshape(B, T, C)  # heads concatenated: (B, T, H*D)
        return self.proj(out)
