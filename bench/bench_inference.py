"""Inference embedding throughput: images/s, texts/s, clips/s, ours against open_clip and Hugging Face's AST.

Images and texts: the ViT-B-32 architecture (``bench_train_step.CONFIGS["vit_b_32"]``),
open_clip's ``encode_image`` / ``encode_text`` under ``torch.no_grad()`` in fp32 (its
default) and under bf16 autocast, against our ``MultimodalModel.encode`` in fp32 and
with bf16 weights (``model.to(torch.bfloat16)``, no autocast) under ``no_grad`` and
under ``inference_mode``. Our model is open_clip's random weights converted by the
shipped converter (``multimodal convert --from open_clip``), so the fp32 rows give the
same embeddings; every row prints the
smallest cosine similarity between its embeddings and ours in fp32, which for the bf16
rows should be above 0.99.

Clips: our audio encoder (1,214 tokens, width 256, 6 layers) against Hugging Face's
``ASTModel`` of the same configuration in fp32 (``bench_audio``'s configuration).

Run: ``python -m bench.bench_inference [--quick] [--rounds N]``.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.bench_audio import FULL as AUDIO_FULL
from bench.bench_audio import QUICK as AUDIO_QUICK
from bench.bench_audio import hugging_face_encoder, our_encoder
from bench.bench_train_step import CONFIGS, make_batch, open_clip_config, open_clip_model
from bench.common import alternate, bf16_supported, machine_summary, noise_note, parse_args
from multimodal.interop.open_clip import open_clip_to_model
from multimodal.model import MultimodalModel

TARGET = 3.5  # our bf16 images/s over open_clip's default fp32 encode_image, ViT-B-32 at batch 64
IMAGE_BATCH = 64
TEXT_BATCH = 64
AUDIO_BATCH = 8


def converted_pair(config) -> tuple[nn.Module, MultimodalModel]:
    """open_clip's ``CLIP`` with random weights, and ours converted from it by the shipped converter."""
    theirs = open_clip_model(config).eval()
    ours = open_clip_to_model(theirs.state_dict(), activation="gelu", model_config=open_clip_config(config),
                              eot_token_id=config.vocab_size - 1)  # make_batch ends captions with the largest id
    return theirs, ours


def embed(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, mode: str = "no_grad",
          autocast: bool = False) -> Callable[[], torch.Tensor]:
    """A callable embedding ``inputs`` under ``no_grad`` or ``inference_mode``, optionally under bf16 autocast."""
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run() -> torch.Tensor:
        with context(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return fn(inputs)

    return run


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The smallest row-wise cosine similarity between two (B, E) embedding batches."""
    return float(F.cosine_similarity(a.float(), b.float(), dim=-1).min())


def report(title: str, runners: dict[str, Callable[[], torch.Tensor]], reference: str, items: int, unit: str,
           rounds: int) -> dict[str, float]:
    """Times the runners alternately, prints throughput, speed-up over ``reference`` and cosine to ``ours fp32``."""
    outputs = {name: runner() for name, runner in runners.items()}  # also the warm-up
    comparison = alternate(runners, rounds=rounds, warmup=0)
    print(f"\n{title}")
    ratios = {}
    for name in runners:
        ratios[name] = comparison.ratio(reference, name)
        print(f"  {comparison.describe(name, items, unit)}  x{ratios[name]:.2f} vs {reference}  "
              f"min cosine to ours fp32 {min_cosine(outputs[name], outputs['ours fp32']):.6f}")
    print(f"  {noise_note(comparison)}")
    return ratios


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv, __doc__.splitlines()[0])
    rounds = args.rounds or (1 if args.quick else 5)
    config = CONFIGS["tiny" if args.quick else "vit_b_32"]
    bf16 = bf16_supported()
    print(f"inference: {machine_summary()}")
    torch.manual_seed(0)
    theirs, ours = converted_pair(config)
    ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16) if bf16 else None
    batch = make_batch(config)
    images = batch["image"][:1].expand(IMAGE_BATCH, -1, -1, -1).clone() + torch.randn(IMAGE_BATCH, 1, 1, 1)
    text = batch["text"][torch.arange(TEXT_BATCH) % config.batch_size]

    image_runners = {
        "open_clip fp32": embed(lambda x: theirs.encode_image(x, normalize=True), images),
        "ours fp32": embed(lambda x: ours.encode("image", x), images),
    }
    text_runners = {
        "open_clip fp32": embed(lambda x: theirs.encode_text(x, normalize=True), text),
        "ours fp32": embed(lambda x: ours.encode("text", x), text),
    }
    if bf16:
        image_runners["open_clip bf16 autocast"] = embed(lambda x: theirs.encode_image(x, normalize=True), images,
                                                         autocast=True)
        image_runners["ours bf16"] = embed(lambda x: ours_bf16.encode("image", x), images.bfloat16())
        image_runners["ours bf16 inference_mode"] = embed(lambda x: ours_bf16.encode("image", x), images.bfloat16(),
                                                          mode="inference_mode")
        text_runners["open_clip bf16 autocast"] = embed(lambda x: theirs.encode_text(x, normalize=True), text,
                                                        autocast=True)
        text_runners["ours bf16"] = embed(lambda x: ours_bf16.encode("text", x), text)
    image_ratios = report(f"images: {config.name}, batch {IMAGE_BATCH}", image_runners, "open_clip fp32",
                          IMAGE_BATCH, "images/s", rounds)
    text_ratios = report(f"texts: {config.name}, batch {TEXT_BATCH} x {config.context_length} tokens", text_runners,
                         "open_clip fp32", TEXT_BATCH, "texts/s", rounds)

    audio_config = AUDIO_QUICK if args.quick else AUDIO_FULL
    frames = torch.randn(AUDIO_BATCH, audio_config.num_frames, audio_config.num_mel_bins)
    hf_ast = hugging_face_encoder(audio_config).eval()
    ours_audio = our_encoder(audio_config).eval()
    audio_runners = {
        "hf_ast fp32": embed(lambda x: hf_ast(input_values=x).pooler_output, frames),
        "ours fp32": embed(ours_audio, frames),
    }
    if bf16:
        ours_audio_bf16 = copy.deepcopy(ours_audio).to(torch.bfloat16)
        audio_runners["ours bf16"] = embed(ours_audio_bf16, frames.bfloat16())
    audio_ratios = report(f"clips: {audio_config.num_frames} frames x {audio_config.num_mel_bins} mel bins, "
                          f"batch {AUDIO_BATCH}", audio_runners, "hf_ast fp32", AUDIO_BATCH, "clips/s", rounds)

    best_image = "ours bf16" if bf16 else "ours fp32"
    summary = (
        f"inference: ours vs open_clip fp32 no_grad: images x{image_ratios[best_image]:.2f} ({best_image}"
        f"{'' if args.quick else f'; target {TARGET}x'}), texts x{text_ratios[best_image]:.2f}; "
        f"clips vs Hugging Face AST fp32 x{audio_ratios[best_image]:.2f}"
    )
    print(summary)
    return summary


if __name__ == "__main__":
    main()
