"""Which number format computes fastest here: one answer for training, inference and the benchmarks.

bf16 pays off only where the hardware multiplies bf16 natively: CUDA devices that
support it, and CPUs with AVX512-BF16 or AMX tiles. Elsewhere PyTorch emulates bf16
matrix products, slower than fp32 (oneDNN reports bf16 "supported" on any AVX-512 CPU,
emulated or not, so it is not asked).
"""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16) or AMX tiles."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is None:
            continue
        try:
            if check():
                return True
        except RuntimeError:  # a probe this build cannot run tells nothing
            continue
    return False


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` (a CPU or a CUDA device) computes bf16 natively."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_dtype(precision: str, device: torch.device | str) -> torch.dtype:
    """The weight dtype for ``precision`` ("auto", "bf16", "fp32") on ``device``: "auto" is bf16 where native."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device) else torch.float32
