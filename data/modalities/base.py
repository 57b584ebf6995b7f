"""What a modality is, as the data side sees it: the interface each modality's definition fills in.

A definition (:mod:`multimodal.data.modalities.image_modality`, :mod:`~multimodal.data.modalities.audio_modality`,
:mod:`~multimodal.data.modalities.text_modality`) says everything that makes its modality itself:

- the files and shard members it is read from (extensions, in the order they are
  tried, and the media type each is served as);
- how a member is checked when shards are written, and turned into a training or
  evaluation sample (decoding, crops or windows, its augmentation levers);
- how a batch of its samples is collated;
- how the inference API takes its inputs (one item or a collection; one item ->
  model-ready form) and how prepared items are batched (:attr:`Modality.batching`);
- how a page shows it (a thumbnail, a player).

The registry (:mod:`multimodal.data.modalities.registry`) lists the definitions; every command
asks it instead of branching on a modality's name. Definitions import torch and the
decoders only inside their methods, so listing files and asking what an extension is
cost nothing.

The interface names nothing one modality alone needs. A caller passes what it has, by
name, as ``options`` (the shard writer its ``background``; the inference API a bare
waveform's ``sample_rate``): each definition reads the ones it knows and ignores the rest,
so a caller never asks which modality it is handing them to.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

# How the inference API batches a modality's prepared items (see ``multimodal.apps.api``):
# "stack": equal-shape tensors stacked into (B, ...); "windows": each item a list of
# (T_i, F) windows, padded, masked and averaged per item; "captions": strings tokenised.
BATCHINGS = ("stack", "windows", "captions")


class Modality:
    """One modality's definition (see the module docstring). Subclasses set the class attributes.

    Attributes:
        name: the batch key and config prefix ("image": ``model.image``, ``model.image_preprocess``,
            a source's ``image_keys``, an augmentation's ``image`` levers: settings the registry
            makes for each definition, see :func:`~multimodal.data.modalities.registry.fields_per_modality`).
        extensions: file and shard-member extensions it is read from, in the order shards
            are searched; empty for a modality read from captions (text).
        media_types: the MIME type each extension is served as.
        batching: one of :data:`BATCHINGS`.
        page_element: the HTML element a page shows it with ("img", "audio"), None for text.
        one / many: how a sentence names one item and several ("an image", "images").
        class_caption: the caption a file in a class folder is written with, ``{}`` its class name.
    """

    name: ClassVar[str]
    extensions: ClassVar[tuple[str, ...]] = ()
    media_types: ClassVar[Mapping[str, str]] = {}
    batching: ClassVar[str] = "stack"
    page_element: ClassVar[str | None] = None
    one: ClassVar[str]
    many: ClassVar[str]
    class_caption: ClassVar[str] = "{}"
    # How a folder report calls its files ("pictures"); None: "<name> files".
    files_called: ClassVar[str | None] = None
    # Whether the shard writer measures this modality's members per split (image_stats.json beside
    # the shards), for training to compare with its preprocessing (:meth:`statistics_warnings`).
    writer_measures: ClassVar[bool] = False
    # The model's preprocessing config of this modality (``model.<name>_preprocess``) and its
    # augmentation levers (a source's ``augment.<name>``); None where it has no such setting.
    preprocess_config: ClassVar[type | None] = None
    augment_config: ClassVar[type | None] = None
    # What training cuts of a long item (see multimodal.data.lengths): "window" (a clip longer
    # than the model's window), "context" (a caption longer than the text context), or None.
    cut_to: ClassVar[str | None] = None

    # What it is read from

    @property
    def reads_files(self) -> bool:
        """True when an item is a file or a shard member of its own (image, audio); False for captions."""
        return bool(self.extensions)

    @property
    def default_keys(self) -> str:
        """The shard members a source reads it from by default: every extension its decoder reads, in order."""
        return ";".join(self.extensions)

    def recognises(self, path: Path, head: bytes) -> bool:
        """Whether a file with no known extension holds this modality, judged by its first 16 bytes
        (``head``) or by opening ``path``."""
        return False

    @property
    def folder_extensions(self) -> tuple[str, ...]:
        """The files a folder gives as items of this modality (``multimodal embed`` a folder)."""
        return self.extensions

    def items_of_file(self, path: Path) -> list[tuple[str, Any]]:
        """A file given as input -> its (key, item) pairs: the file itself, keyed by its path."""
        return [(str(path), path)]

    def item_of_folder_file(self, path: Path) -> Any:
        """A file found in a folder input -> its item: the file itself."""
        return path

    # The model's preprocessing

    def preprocess_for(self, tower: Any) -> Any:
        """The preprocessing that fits an encoder of config ``tower`` (``model.<name>``), when a
        model config gives none; None for a modality without a preprocessing config."""
        return self.preprocess_config() if self.preprocess_config is not None else None

    def check_preprocess(self, preprocess: Any, tower: Any) -> None:
        """Raises ValueError when a given preprocessing config does not fit the encoder ``tower``."""

    def fill_earlier_settings(self, tower: Any, preprocess: Any) -> None:
        """Fills in place what a checkpoint's config (``model.<name>`` and ``model.<name>_preprocess``,
        plain dicts or None) written before a setting existed meant by leaving it out; nothing by default."""

    def statistics_warnings(self, folder: Path, preprocess: Any) -> list[str]:
        """One sentence per way the statistics measured in ``folder`` (see :attr:`writer_measures`)
        miss the preprocessing ``preprocess``; none by default or when nothing was measured."""
        return []

    # Writing shards

    def check_decodes(self, data: bytes, **options: Any) -> object:
        """Decodes a member as training will (raises ValueError when it does not); returns what is
        worth measuring of it (an image's pixels), or None. ``options``: the writer's settings
        (see the module docstring)."""
        raise NotImplementedError(f"{self.name} is not read from files")

    # Training and evaluation samples

    def load_member(
        self, data: bytes, config: Any, *, train: bool, rng: random.Random | None, levers: Any
    ) -> dict[str, Any]:
        """A member's bytes -> the sample entries it gives (``{"image": uint8 (3, S, S)}``...).

        ``config``: the model's preprocessing config of this modality; ``levers``: its
        augmentation levers when they apply (training, some lever on), else None.
        Raises ValueError when the bytes do not read.
        """
        raise NotImplementedError(f"{self.name} is not read from files")

    def collate_into(self, batch: dict, samples: list[dict], *, tokenize: Callable | None, train: bool) -> None:
        """Adds this modality's entries of ``samples`` (all holding it) to ``batch`` (see :func:`multimodal.data.pipeline.batches.collate_samples`).

        ``train``: False for an evaluation batch, whose entries may say which sample each row is of.
        """
        raise NotImplementedError

    def after_loader(self, batch: dict, config: Any, *, buffers: Any = None, workers_busy: bool = False) -> None:
        """Finishes this modality's entries of ``batch`` in place, in the process that consumes the
        batches, once the loader delivered them to their device (:func:`multimodal.data.pipeline.loader.finish_batch`).
        Nothing by default.

        What is cheaper to send between processes than to compute on (uint8 pixels) is made
        model-ready here. ``config``: the model's preprocessing config of this modality;
        ``buffers``: reusable float CPU memory (:class:`multimodal.data.pipeline.main_process.RecycledBuffers`)
        or None; ``workers_busy``: loader workers are using the CPU's other cores, so CPU work here
        should take one thread (:func:`multimodal.data.pipeline.main_process.one_cpu_thread`).
        """

    def check_levers(self, levers: Any, config: Any, where: str) -> None:
        """Raises ValueError when augmentation ``levers`` of this modality cannot act on items
        preprocessed with ``config`` (``where`` names the setting); nothing to check by default."""

    # Inference inputs

    def is_single_input(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one item of this modality rather than a collection of them."""
        return isinstance(inputs, (str, bytes, bytearray, memoryview, Path))

    def split_batch(self, inputs: Any) -> list | None:
        """A batch given as one object (an (N, 3, H, W) array) -> its items; None when it is not one."""
        return None

    def prepare(self, item: Any, config: Any, **options: Any) -> Any:
        """One raw input -> its model-ready form, with the preprocessing ``config`` describes.

        ``options``: what the caller says of its inputs (see the module docstring)."""
        raise NotImplementedError

    # Showing it

    def thumbnail(self, data: bytes, max_pixels: int) -> Any:
        """A PIL image of at most ``max_pixels`` on its longer side, decoded as training decodes;
        None when the modality has no picture or the bytes do not decode."""
        return None

    def __repr__(self) -> str:
        return f"<modality {self.name}>"


__all__ = ["BATCHINGS", "Modality"]
