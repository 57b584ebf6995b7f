"""``convert_checkpoint``: another project's weights file or directory -> our checkpoint directory."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from multimodal.data.tokenization.clip_tokenizer import END_OF_TEXT_ID, VOCAB_SIZE, ClipTokenizer
from multimodal.data.preprocess.preprocess_config import CLIP_MEAN, CLIP_STD
from multimodal.checkpoint import save_checkpoint
from multimodal.errors import ArgumentNeeded
from multimodal.interop.key_mapping import load_state_file, load_weights_from_directory, read_json
from multimodal.interop.hf_ast import hf_ast_to_model
from multimodal.interop.hf_clip import hf_clip_to_model
from multimodal.interop.open_clip import open_clip_to_model
from multimodal.model import MultimodalModel

SOURCE_KINDS = ("open_clip", "hf-clip", "hf-ast")
# The options of convert_checkpoint each source kind takes (the command line's too, as --kebab-case).
OPTIONS = {
    "open_clip": ("activation", "model_config", "vocab_path", "image_mean", "image_std"),
    "hf-clip": ("config", "vocab_path"),
    "hf-ast": ("config",),
}
ALL_OPTIONS = tuple(dict.fromkeys(name for names in OPTIONS.values() for name in names))
_OPEN_CLIP_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors", "pytorch_model.bin",
)
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def convert_checkpoint(
    source_kind: str,
    source: str | Path,
    output: str | Path,
    *,
    activation: str | None = None,
    model_config: str | Path | dict | None = None,
    config: str | Path | None = None,
    vocab_path: str | Path | None = None,
    image_mean: tuple[float, float, float] | None = None,
    image_std: tuple[float, float, float] | None = None,
) -> Path:
    """Convert another project's weights into a checkpoint directory of ours; returns ``output``.

    SOURCE is a weights file (``.safetensors``, or ``.pt/.pth/.bin`` read with
    ``torch.load(weights_only=True)``) or a directory. Nothing is downloaded.

    Source kinds:

    * ``open_clip``: an open_clip ``CLIP`` with a ViT image tower (``model.state_dict()``,
      or a training checkpoint holding it under ``state_dict``), or an open_clip Hub
      directory (``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` and
      ``open_clip_config.json``). Sizes are read from the weights; heads are width / 64.
      ``activation``: ``gelu`` (open_clip's default) or ``quick_gelu`` (OpenAI's weights and
      every ``*-quickgelu`` model; a wrong choice loads but gives wrong embeddings).
      ``model_config``: an open_clip model config (JSON path or dict, e.g. ``ViT-B-32.json``)
      for heads, activation and options the weights do not show.
      ``image_mean``, ``image_std``: the per-channel normalisation the weights were trained
      with. A Hub directory records it (``preprocess_cfg`` of ``open_clip_config.json``); a
      bare weights file (``epoch_N.pt``, a saved ``state_dict``) does not, and is refused
      without both: OpenAI's and most LAION weights use ``CLIP_MEAN`` / ``CLIP_STD``
      (``multimodal.data.preprocess.preprocess_config``), a model trained with open_clip's ``--image-mean`` /
      ``--image-std`` needs those values. Given, they replace what a directory records.
      The image size is read from the weights.
    * ``hf-clip``: a Hugging Face ``CLIPModel`` directory (``config.json`` and
      ``model.safetensors`` or ``pytorch_model.bin``, sharded or not), or a weights file with
      ``config`` = the path of its ``config.json`` (without it Hugging Face's defaults apply).
    * ``hf-ast``: a Hugging Face ``ASTModel`` or ``ASTForAudioClassification`` directory (its
      classifier head is dropped; ``preprocessor_config.json``, when present, gives the
      filterbank normalisation), or a weights file with ``config``. The result encodes audio
      only: its embedding is AST's pooled output (identity projection).

    For CLIP sources the output also holds CLIP's BPE tokenizer (``tokenizer.json``, read
    with ``multimodal.data.tokenization.clip_tokenizer.ClipTokenizer.load``; config.json says ``"tokenizer":
    {"kind": "clip"}``), built from ``vocab_path`` (``bpe_simple_vocab_16e6.txt.gz``) or
    from the installed open_clip package. Weights are stored in float32.

    Raises ValueError for an unknown kind, an option that does not apply to it, or weights
    whose layout is not the kind's (naming the keys that did not map and those missing).
    """
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {source_kind!r}; expected one of {SOURCE_KINDS}")
    options = {"activation": activation, "model_config": model_config, "config": config, "vocab_path": vocab_path,
               "image_mean": image_mean, "image_std": image_std}
    stray = sorted(name for name, value in options.items() if value is not None and name not in OPTIONS[source_kind])
    if stray:
        raise ValueError(
            f"option(s) {stray} do not apply to {source_kind!r} sources; "
            f"its options are {sorted(OPTIONS[source_kind])}"
        )
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint file or directory at {source}")
    if source_kind == "open_clip":
        model = _convert_open_clip(source, activation, model_config, image_mean, image_std)
    elif source_kind == "hf-clip":
        state, weights, hf_config, _ = _read_hf(source, config)
        model = hf_clip_to_model(state, hf_config, source=str(weights))
    else:
        state, weights, hf_config, preprocessor = _read_hf(source, config)
        model = hf_ast_to_model(state, hf_config, preprocessor, source=str(weights))

    extra: dict[str, Any] = {"converted_from": {"kind": source_kind, "source": str(source)}}
    tokenizer = None
    if source_kind in ("open_clip", "hf-clip"):
        tokenizer = _clip_tokenizer(model, vocab_path)
    return save_checkpoint(model, output, tokenizer=tokenizer, extra_config=extra)


def _convert_open_clip(
    source: Path,
    activation: str | None,
    model_config: str | Path | dict | None,
    image_mean: tuple[float, float, float] | None,
    image_std: tuple[float, float, float] | None,
) -> MultimodalModel:
    preprocess: dict = {}
    hub_config = source / "open_clip_config.json"
    if source.is_dir() and hub_config.is_file():
        hub = read_json(hub_config, "open_clip Hub config")
        model_config = hub.get("model_cfg") if model_config is None else model_config
        preprocess = hub.get("preprocess_cfg") or {}
    # Given values first, else the Hub config's: (values, where they come from).
    mean = (image_mean, "image_mean") if image_mean is not None else (preprocess.get("mean"), "preprocess_cfg.mean")
    std = (image_std, "image_std") if image_std is not None else (preprocess.get("std"), "preprocess_cfg.std")
    if mean[0] is None or std[0] is None:
        # A wrong normalisation loads and runs, and gives embeddings that are subtly off.
        raise ArgumentNeeded(
            f"{source} does not record the image normalisation its weights were trained with; pass {{image_mean}} "
            f"and {{image_std}}: {{clip}} for OpenAI's and most LAION weights, or the values the model was trained "
            "with (open_clip's --image-mean / --image-std)",
            image_mean=("image_mean", "--image-mean R,G,B"),
            image_std=("image_std", "--image-std R,G,B"),
            clip=(
                "image_mean=CLIP_MEAN, image_std=CLIP_STD (multimodal.data.preprocess.preprocess_config)",
                f"--image-mean {','.join(map(str, CLIP_MEAN))} --image-std {','.join(map(str, CLIP_STD))}",
            ),
        )
    if source.is_dir():
        state, weights = load_weights_from_directory(source, _OPEN_CLIP_WEIGHTS)
    else:
        state, weights = load_state_file(source), source
    if isinstance(model_config, (str, Path)):
        model_config = read_json(model_config, "open_clip model config")
    model = open_clip_to_model(state, activation=activation, model_config=model_config, source=str(weights))
    image = model.config.image_preprocess
    image.mean = _channels(*mean)
    image.std = _channels(*std)
    if min(image.std) <= 0:
        raise ValueError(f"{std[1]} must be positive, got {std[0]!r}")
    image.interpolation = preprocess.get("interpolation", image.interpolation)
    return model


def _channels(values, what: str) -> tuple[float, float, float]:
    """Three per-channel numbers (R, G, B); ValueError naming ``what`` otherwise."""
    try:
        channels = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        channels = ()
    if len(channels) != 3:
        raise ValueError(f"{what} must be three numbers (R, G, B), got {values!r}")
    return channels


def _read_hf(source: Path, config: str | Path | None) -> tuple[dict[str, torch.Tensor], Path, dict | None, dict | None]:
    """(state, weights path, config.json, preprocessor_config.json) of a Hugging Face directory or file."""
    preprocessor = None
    if source.is_dir():
        state, weights = load_weights_from_directory(source, _HF_WEIGHTS)
        if config is None and not (source / "config.json").is_file():
            raise FileNotFoundError(f"{source} has no config.json; pass config=PATH to the model's configuration")
        config = config if config is not None else source / "config.json"
        if (source / "preprocessor_config.json").is_file():
            preprocessor = read_json(source / "preprocessor_config.json", "Hugging Face preprocessor config")
    else:
        state, weights = load_state_file(source), source
    hf_config = read_json(config, "Hugging Face config.json") if config is not None else None
    return state, weights, hf_config, preprocessor


def _clip_tokenizer(model: MultimodalModel, vocab_path: str | Path | None) -> ClipTokenizer | None:
    text = model.config.text
    if (text.vocab_size, text.eot_token_id) != (VOCAB_SIZE, END_OF_TEXT_ID):
        warnings.warn(
            f"the text tower has vocab_size={text.vocab_size} and end-of-text id {text.eot_token_id}, not CLIP's "
            f"({VOCAB_SIZE}, {END_OF_TEXT_ID}); no tokenizer is written: add the model's own tokenizer.json",
            stacklevel=3,
        )
        return None
    try:
        return ClipTokenizer.from_bpe_file(vocab_path)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"cannot write the CLIP tokenizer: {error}") from error
