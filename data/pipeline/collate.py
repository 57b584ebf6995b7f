"""Preprocessed samples of one source -> one batch dict (the project's batch convention)::

    {"image": uint8 (B, 3, S, S),                        # normalised later, see multimodal.data.pipeline.loader.finish_batch
     "audio": float (W, T, F), "audio_padding_mask": bool (W, T),  # mask only when a row is padded
     "audio_window_clip": int64 (W,),                    # evaluation only: the sample of each row
     "text": int64 (M, L), "text_padding_mask": bool (M, L),       # from the tokenize callable, L cut to the longest row
     "text_item": int64 (M,),                            # all_captions sources only: the sample of each row
     "label": int64 (B,),                                # only for sources with a label_key
     "__key__": list[str], "__source__": str}

In training W == B (one crop per clip). In evaluation a long clip is covered by
several windows (see :func:`multimodal.data.preprocess.audio_features.eval_audio_windows`): "audio" then
has one row per window (W >= B rows) and "audio_window_clip" says which sample each
row belongs to; embed the rows and average them per sample. Every evaluation batch
with audio carries it (``arange(B)`` when each clip fits in one window).

"text" has one row per sample (M == B), except from a source read with
``all_captions`` (evaluation: COCO-style items with several captions each): then every
caption of every sample is a row, in sample order, and "text_item" says which sample
each row belongs to. Caption embeddings are never averaged: retrieval ranks each
caption on its own and counts an item found when any of its captions is.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from multimodal.data.modalities.registry import MEDIA_FIRST, get_modality


Tokenize = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


def trim_padding_columns(ids: torch.Tensor, padding_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops the trailing columns that are padding in every row: (M, L) -> (M, L'), L' the longest caption.

    A tokenizer pads every caption to the context length (16 in the tiny preset, 77 in
    CLIP's), where the demo's captions hold at most 8 tokens: the text tower would spend
    half its work on padding. Padded positions are masked keys and come after the
    end-of-text token, so no output changes (tests compare the embeddings).
    """
    used = (~padding_mask).any(dim=0).nonzero()  # columns holding a token in some row
    longest = int(used[-1]) + 1 if len(used) else 1
    if longest >= ids.shape[1]:
        return ids, padding_mask
    return ids[:, :longest].contiguous(), padding_mask[:, :longest].contiguous()


def collate_samples(
    samples: list[dict], tokenize: Tokenize | None, source: str, *, train: bool = True
) -> dict:
    """Preprocessed samples of one source -> a batch dict (images stay uint8).

    Samples carrying "image_draws" (:func:`multimodal.data.preprocess.augment_image.draw_image_levers`)
    have their images augmented here, the batch at once (:func:`~multimodal.data.preprocess.augment_image.augment_images`).

    A sample's "audio" is a list of (T, F) windows: one crop in training; in
    evaluation (``train=False``) every window of the clip, each a row of
    "audio", with "audio_window_clip" int64 (W,) giving the sample each row belongs
    to. "audio_padding_mask" is present when some row is shorter than the longest.
    A sample's "text" is its caption, or the list of all its captions: then each is a
    row of "text" and "text_item" int64 (M,) gives the sample each row belongs to.
    ``tokenize(captions) -> (ids (B, L), padding_mask (B, L) or None)``; None keeps
    "text" as the list of caption strings.
    """
    batch: dict = {"__key__": [sample["__key__"] for sample in samples], "__source__": source}
    first = samples[0]
    for modality in MEDIA_FIRST:  # members, then captions: the order batches have always been built in
        if modality in first:
            get_modality(modality).collate_into(batch, samples, tokenize=tokenize, train=train)
    if "label" in first:
        batch["label"] = torch.tensor([sample["label"] for sample in samples], dtype=torch.int64)  # (B,)
    return batch


__all__ = ["Tokenize", "collate_samples", "trim_padding_columns"]
