"""Attention paths: fused (``F.scaled_dot_product_attention``) vs explicit vs auto, by length and dtype.

Queries, keys and values are the head-major views of one fused QKV tensor, exactly as
``Attention`` produces them (B, T, 3, H, D) -> 3 x (B, H, T, D). Each length runs about
the same number of tokens (batch = tokens / length), 8 heads of width 64, in fp32 and
bf16, forward only (under ``no_grad``, as inference runs) and forward + backward. The
check that matters: ``auto`` must never be slower than the faster of the two paths
(beyond noise); a row where it is gets flagged, and the thresholds in
``encoders/attention.py`` should follow.

Run: ``python -m bench.bench_attention [--quick] [--rounds N]``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from bench.common import alternate, bf16_supported, machine_summary, parse_args
from multimodal.encoders.attention import choose_backend, scaled_dot_product

LENGTHS = (17, 50, 77, 197, 257, 512, 1214)
QUICK_LENGTHS = (17, 257)
HEADS, HEAD_DIM = 8, 64
TOKENS = 2048
QUICK_TOKENS = 128
TOLERANCE = 1.10  # auto may be this much slower than the faster path before it counts as wrong (noise)


def repeats_for(length: int, tokens: int) -> int:
    """Calls per timed run: work per call grows with length, so short ones repeat to be long enough to time."""
    return max(1, (tokens // 8) // length)


def attention_runner(
    length: int, dtype: torch.dtype, backward: bool, backend: str, causal: bool, tokens: int
) -> Callable[[], tuple[torch.Tensor, torch.Tensor | None]]:
    """One timed run: attention (and its backward) over ~``tokens`` tokens, repeated ``repeats_for`` times.

    The run returns the last output and the inputs' gradient, so the backends can be compared.
    """
    batch = max(1, tokens // length)
    generator = torch.Generator().manual_seed(length)
    qkv = torch.randn(batch, length, 3, HEADS, HEAD_DIM, generator=generator).to(dtype).requires_grad_(backward)
    grad_out = torch.randn(batch, HEADS, length, HEAD_DIM, generator=generator).to(dtype)
    repeats = repeats_for(length, tokens)

    def run() -> tuple[torch.Tensor, torch.Tensor | None]:
        for _ in range(repeats):
            qkv.grad = None
            with torch.set_grad_enabled(backward):
                q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
                out = scaled_dot_product(q, k, v, is_causal=causal, backend=backend)
                if backward:
                    out.backward(grad_out)
        return out.detach(), qkv.grad

    return run


def cases(lengths: Sequence[int], dtypes: Sequence[torch.dtype]) -> list[tuple[torch.dtype, bool, int, bool]]:
    """(dtype, backward, length, causal) for every row; causal only at text lengths (<= 77)."""
    return [
        (dtype, backward, length, causal)
        for dtype in dtypes
        for backward in (False, True)
        for length in lengths
        for causal in ((False, True) if length <= 77 else (False,))
    ]


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    lengths = QUICK_LENGTHS if args.quick else LENGTHS
    tokens = QUICK_TOKENS if args.quick else TOKENS
    rounds = args.rounds or (1 if args.quick else 5)
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16_supported() else [])
    print(f"attention: {machine_summary()}")
    print(f"{HEADS} heads x {HEAD_DIM}, ~{tokens} tokens per call; ms per call, median of {rounds} rounds")
    print(f"{'dtype':<9}{'pass':<9}{'length':>7}{'causal':>7}{'fused':>9}{'explicit':>10}{'auto':>9}"
          "  auto picks  faster  auto/faster")
    slow_rows = []
    for dtype, backward, length, causal in cases(lengths, dtypes):
        backends = ("fused", "explicit", "auto")
        runners = {b: attention_runner(length, dtype, backward, b, causal, tokens) for b in backends}
        comparison = alternate(runners, rounds=rounds)
        ms = {b: comparison.median(b) / repeats_for(length, tokens) * 1e3 for b in backends}
        faster = min(("fused", "explicit"), key=lambda b: ms[b])
        picked = choose_backend(length, dtype, torch.device("cpu"), backward)
        auto_over_faster = ms["auto"] / ms[faster]
        slow = picked != faster and auto_over_faster > TOLERANCE
        flag = "  <-- auto slower" if slow else ""
        dtype_name = str(dtype).removeprefix("torch.")
        passes = "fwd+bwd" if backward else "fwd"
        print(f"{dtype_name:<9}{passes:<9}{length:>7}{str(causal):>7}{ms['fused']:>9.2f}{ms['explicit']:>10.2f}"
              f"{ms['auto']:>9.2f}  {picked:<10}  {faster:<8}{auto_over_faster:6.2f}{flag}")
        if slow:
            slow_rows.append(f"{dtype_name} {passes} T={length}{' causal' if causal else ''} x{auto_over_faster:.2f}")
    verdict = "auto never slower than the faster path" if not slow_rows else "auto slower in: " + ", ".join(slow_rows)
    summary = f"attention: {verdict} (tolerance {TOLERANCE - 1:.0%}, {len(lengths)} lengths, {len(dtypes)} dtypes)"
    print(summary)
    return summary


if __name__ == "__main__":
    main()
