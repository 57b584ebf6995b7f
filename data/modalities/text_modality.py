"""The text modality, defined once: captions, read from a sample's caption keys (see
:mod:`multimodal.data.pipeline.sample_fields`), tokenised in batches; given to the API as strings and to
the command line as caption files (one per line) or folders of ``.txt`` files (one each).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal.data.modalities.base import Modality

# Files a folder gives as captions: one caption per file, its whole text.
TEXT_FILE_EXTENSIONS = ("txt",)


class TextModality(Modality):
    """Text: a sample's caption (or, for an ``all_captions`` evaluation source, every caption, each
    a row with "text_item" naming its sample), tokenised at collation."""

    name = "text"
    batching = "captions"
    one, many = "a caption", "captions"
    cut_to = "context"

    @property
    def folder_extensions(self) -> tuple[str, ...]:
        return TEXT_FILE_EXTENSIONS

    def items_of_file(self, path: Path) -> list[tuple[str, Any]]:
        """A caption file: one caption per line, keyed ``path:line``; a blank line is an empty
        caption, which :meth:`prepare` refuses, so it is named among the skipped inputs."""
        with open(path, encoding="utf-8") as handle:
            return [(f"{path}:{number}", line.strip()) for number, line in enumerate(handle, start=1)]

    def item_of_folder_file(self, path: Path) -> Any:
        """A ``.txt`` file in a folder: one caption, its whole text."""
        return path.read_text(encoding="utf-8").strip()

    def collate_into(self, batch: dict, samples: list[dict], *, tokenize=None, train: bool = True) -> None:
        """``tokenize(captions) -> (ids (M, L), padding_mask (M, L) or None)``; None keeps the strings."""
        import torch

        from multimodal.data.pipeline.batches import trim_padding_columns

        first = samples[0]
        if isinstance(first["text"], list):  # every caption of each sample (an all_captions source)
            captions = [caption for sample in samples for caption in sample["text"]]
            owners = [row for row, sample in enumerate(samples) for _ in sample["text"]]
            batch["text_item"] = torch.tensor(owners, dtype=torch.int64)  # (M,)
        else:
            captions = [sample["text"] for sample in samples]
        if tokenize is None:
            batch["text"] = captions
            return
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

    def prepare(self, item: Any, config: Any = None, **options: Any) -> Any:
        """A caption stays a string (tokenised in batches when encoded); an empty one is refused
        (ValueError): it says nothing, and its embedding would be that of the padding alone."""
        if not isinstance(item, str):
            raise TypeError(f"a caption must be a string, got {type(item).__name__}")
        if not item.strip():
            raise ValueError("the caption is empty (nothing but white space): nothing to embed")
        return item


TEXT = TextModality()

__all__ = ["TEXT", "TEXT_FILE_EXTENSIONS", "TextModality"]
