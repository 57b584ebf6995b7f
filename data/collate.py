"""Preprocessed samples of one source -> one batch dict (the project's batch convention)::

    {"image": uint8 (B, 3, S, S),                        # normalised later, see multimodal.data.loader.finish_batch
     "audio": float (W, T, F), "audio_padding_mask": bool (W, T),  # mask only when a row is padded
     "audio_window_clip": int64 (W,),                    # evaluation only: the sample of each row
     "text": int64 (M, L), "text_padding_mask": bool (M, L),       # from the tokenize callable, L cut to the longest row
     "text_item": int64 (M,),                            # all_captions sources only: the sample of each row
     "label": int64 (B,),                                # only for sources with a label_key
     "__key__": list[str], "__source__": str}

In training W == B (one crop per clip). In evaluation a long clip is covered by
several windows (see :func:`multimodal.data.audio.eval_audio_windows`): "audio" then
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

from multimodal.data.audio import collate_audio
from multimodal.data.augment_image import augment_images
from multimodal.data.image import collate_images

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
    samples: list[dict], tokenize: Tokenize | None, source: str, *, audio_windows: bool = False
) -> dict:
    """Preprocessed samples of one source -> a batch dict (images stay uint8).

    Samples carrying "image_draws" (:func:`multimodal.data.augment_image.draw_image_levers`)
    have their images augmented here, the batch at once (:func:`~multimodal.data.augment_image.augment_images`).

    A sample's "audio" is a list of (T, F) windows: one crop in training; in
    evaluation (``audio_windows=True``) every window of the clip, each a row of
    "audio", with "audio_window_clip" int64 (W,) giving the sample each row belongs
    to. "audio_padding_mask" is present when some row is shorter than the longest.
    A sample's "text" is its caption, or the list of all its captions: then each is a
    row of "text" and "text_item" int64 (M,) gives the sample each row belongs to.
    ``tokenize(captions) -> (ids (B, L), padding_mask (B, L) or None)``; None keeps
    "text" as the list of caption strings.
    """
    batch: dict = {"__key__": [sample["__key__"] for sample in samples], "__source__": source}
    first = samples[0]
    if "image" in first:
        batch["image"] = collate_images([sample["image"] for sample in samples])  # (B, 3, S, S)
        if "image_draws" in first:  # training augmentation, drawn per sample, applied to the batch at once
            batch["image"] = augment_images(batch["image"], [sample["image_draws"] for sample in samples])
    if "audio" in first:
        windows = [window for sample in samples for window in sample["audio"]]
        audio, padding_mask = collate_audio(windows)  # (W, T, F), (W, T)
        batch["audio"] = audio
        if bool(padding_mask.any()):
            batch["audio_padding_mask"] = padding_mask
        if audio_windows:
            owners = [row for row, sample in enumerate(samples) for _ in sample["audio"]]
            batch["audio_window_clip"] = torch.tensor(owners, dtype=torch.int64)  # (W,)
    if "text" in first:
        if isinstance(first["text"], list):  # every caption of each sample (an all_captions source)
            captions = [caption for sample in samples for caption in sample["text"]]
            owners = [row for row, sample in enumerate(samples) for _ in sample["text"]]
            batch["text_item"] = torch.tensor(owners, dtype=torch.int64)  # (M,)
        else:
            captions = [sample["text"] for sample in samples]
        if tokenize is None:
            batch["text"] = captions
        else:
            ids, padding_mask = tokenize(captions)
            if not (isinstance(ids, torch.Tensor) and ids.ndim == 2 and ids.shape[0] == len(captions)):
                raise ValueError(f"tokenize must return ids (M, L) for M={len(captions)} captions, got {ids!r:.80}")
            ids = ids.to(torch.int64)
            if padding_mask is not None:
                if padding_mask.shape != ids.shape:
                    raise ValueError(
                        f"tokenize returned a padding mask {tuple(padding_mask.shape)} for ids {tuple(ids.shape)}"
                    )
                ids, padding_mask = trim_padding_columns(ids, padding_mask.to(torch.bool))
                batch["text_padding_mask"] = padding_mask
            batch["text"] = ids
    if "label" in first:
        batch["label"] = torch.tensor([sample["label"] for sample in samples], dtype=torch.int64)  # (B,)
    return batch


__all__ = ["Tokenize", "collate_samples", "trim_padding_columns"]
