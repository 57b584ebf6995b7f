"""Audio encoder forward + backward: our AST against Hugging Face's ``ASTModel``, same configuration.

128 mel bins x 1,024 frames cut into 16x16 patches at stride 10 give a 12 x 101 grid,
1,212 patches + 2 prefix tokens = 1,214 tokens; width 256, 6 layers, 4 heads, GELU,
LayerNorm epsilon 1e-12, no dropout, random weights. The loss is the mean square of
the pooled features (the average of the two prefix tokens on both sides).

Rows: Hugging Face in fp32 (its default attention implementation) and under bf16
autocast; ours in fp32, under bf16 autocast, and with bf16 weights (the training
recipe of ``bench_train_step.Bf16MasterWeights``, without the optimiser). The target
compares our fastest numerically sound row with Hugging Face in fp32.

Run: ``python -m bench.bench_audio [--quick] [--rounds N]``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from bench.common import alternate, bf16_supported, count_flops, machine_summary, matmul_peaks, noise_note, parse_args
from multimodal.encoders import AudioConfig, AudioEncoder, TransformerConfig

TARGET = 1.5  # our fastest row over Hugging Face's AST in fp32


@dataclass(frozen=True)
class AudioBenchConfig:
    num_mel_bins: int
    num_frames: int
    width: int
    depth: int
    num_heads: int
    batch_size: int


FULL = AudioBenchConfig(num_mel_bins=128, num_frames=1024, width=256, depth=6, num_heads=4, batch_size=4)
QUICK = AudioBenchConfig(num_mel_bins=32, num_frames=64, width=64, depth=2, num_heads=2, batch_size=2)


def our_encoder(c: AudioBenchConfig) -> AudioEncoder:
    transformer = TransformerConfig(width=c.width, depth=c.depth, num_heads=c.num_heads, norm_eps=1e-12)
    return AudioEncoder(AudioConfig(num_mel_bins=c.num_mel_bins, max_frames=c.num_frames, transformer=transformer))


def hugging_face_encoder(c: AudioBenchConfig) -> nn.Module:
    from transformers import ASTConfig, ASTModel

    config = ASTConfig(
        hidden_size=c.width, num_hidden_layers=c.depth, num_attention_heads=c.num_heads, intermediate_size=4 * c.width,
        num_mel_bins=c.num_mel_bins, max_length=c.num_frames, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return ASTModel(config)


def forward_backward(encode: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, frames: torch.Tensor,
                     autocast: bool = False) -> Callable[[], None]:
    """One forward and backward of ``encode(frames)`` -> pooled features; gradients cleared after."""
    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            pooled = encode(frames)
        pooled.float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return run


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    c = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 5)
    print(f"audio: {machine_summary()}")
    torch.manual_seed(0)
    frames = torch.randn(c.batch_size, c.num_frames, c.num_mel_bins)
    theirs = hugging_face_encoder(c).train()
    ours = our_encoder(c).train()
    runners = {
        "hf_ast fp32": forward_backward(lambda x: theirs(input_values=x).pooler_output, theirs, frames),
        "ours fp32": forward_backward(ours, ours, frames),
    }
    if bf16_supported():
        ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
        runners["hf_ast bf16 autocast"] = forward_backward(
            lambda x: theirs(input_values=x).pooler_output, theirs, frames, autocast=True
        )
        runners["ours bf16 autocast"] = forward_backward(ours, ours, frames, autocast=True)
        runners["ours bf16 weights"] = forward_backward(ours_bf16, ours_bf16, frames.bfloat16())
    tokens = ours.config.num_prefix_tokens + ours.config.grid_size[0] * ours.config.grid_size[1]
    print(f"{tokens} tokens, width {c.width}, {c.depth} layers, {c.num_heads} heads, batch {c.batch_size}; "
          f"Hugging Face attention: {theirs.config._attn_implementation}")
    flops = {name: count_flops(runner) for name, runner in runners.items()}  # also the warm-up
    peaks = matmul_peaks(sizes=(512,) if args.quick else (1024,))
    comparison = alternate(runners, rounds=rounds, warmup=0)
    print(f"{flops['ours fp32'] / 1e9:.1f} GFLOP per forward+backward (Hugging Face counted "
          f"{flops['hf_ast fp32'] / 1e9:.1f}); matmul peak " +
          ", ".join(f"{str(d).removeprefix('torch.')} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    for name in runners:
        peak = peaks[torch.float32] if "fp32" in name else peaks[torch.bfloat16]
        utilisation = flops["ours fp32"] / comparison.median(name) / 1e9 / peak
        print(f"  {comparison.describe(name, c.batch_size, 'clips/s')}  MFU {utilisation:5.1%}  "
              f"x{comparison.ratio('hf_ast fp32', name):.2f} vs hf_ast fp32")
    print(f"  {noise_note(comparison)}")
    ours_rows = [name for name in runners if name.startswith("ours")]
    best = min(ours_rows, key=comparison.median)
    summary = (
        f"audio: ours vs Hugging Face AST fp32, forward+backward, {tokens} tokens: "
        f"fp32 x{comparison.ratio('hf_ast fp32', 'ours fp32'):.2f}, best ({best.removeprefix('ours ')}) "
        f"x{comparison.ratio('hf_ast fp32', best):.2f}{'' if args.quick else f' (target {TARGET}x)'}, "
        f"{c.batch_size / comparison.median(best):.2f} clips/s"
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
