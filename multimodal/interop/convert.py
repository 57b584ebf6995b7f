"""``convert_checkpoint``: another project's weights file or directory -> our checkpoint directory."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from multimodal.data.clip_tokenizer import END_OF_TEXT_ID, VOCAB_SIZE, ClipTokenizer
from multimodal.checkpoint import save_checkpoint
from multimodal.interop.common import load_state_file, load_weights_from_directory, read_json
from multimodal.interop.hf_ast import hf_ast_to_model
from multimodal.interop.hf_clip import hf_clip_to_model
from multimodal.interop.open_clip import open_clip_to_model
from multimodal.model import MultimodalModel

SOURCE_KINDS = ("open_clip", "hf-clip", "hf-ast")
_OPTIONS = {
    "open_clip": {"activation", "model_config", "vocab_path"},
    "hf-clip": {"config", "vocab_path"},
    "hf-ast": {"config"},
}
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
    * ``hf-clip``: a Hugging Face ``CLIPModel`` directory (``config.json`` and
      ``model.safetensors`` or ``pytorch_model.bin``, sharded or not), or a weights file with
      ``config`` = the path of its ``config.json`` (without it Hugging Face's defaults apply).
    * ``hf-ast``: a Hugging Face ``ASTModel`` or ``ASTForAudioClassification`` directory (its
      classifier head is dropped; ``preprocessor_config.json``, when present, gives the
      filterbank normalisation), or a weights file with ``config``. The result encodes audio
      only: its embedding is AST's pooled output (identity projection).

    For CLIP sources the output also holds CLIP's BPE tokenizer (``tokenizer.json``, read
    with ``multimodal.data.clip_tokenizer.ClipTokenizer.load``; config.json says ``"tokenizer":
    {"kind": "clip"}``), built from ``vocab_path`` (``bpe_simple_vocab_16e6.txt.gz``) or
    from the installed open_clip package. Weights are stored in float32.

    Raises ValueError for an unknown kind, an option that does not apply to it, or weights
    whose layout is not the kind's (naming the keys that did not map and those missing).
    """
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {source_kind!r}; expected one of {SOURCE_KINDS}")
    given = {
        name for name, value in
        (("activation", activation), ("model_config", model_config), ("config", config), ("vocab_path", vocab_path))
        if value is not None
    }
    stray = sorted(given - _OPTIONS[source_kind])
    if stray:
        raise ValueError(
            f"option(s) {stray} do not apply to {source_kind!r} sources; "
            f"its options are {sorted(_OPTIONS[source_kind])}"
        )
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint file or directory at {source}")
    if source_kind == "open_clip":
        model = _convert_open_clip(source, activation, model_config)
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


def _convert_open_clip(source: Path, activation: str | None, model_config: str | Path | dict | None) -> MultimodalModel:
    preprocess = None
    if source.is_dir():
        state, weights = load_weights_from_directory(source, _OPEN_CLIP_WEIGHTS)
        hub_config = source / "open_clip_config.json"
        if hub_config.is_file():
            hub = read_json(hub_config, "open_clip Hub config")
            model_config = hub.get("model_cfg") if model_config is None else model_config
            preprocess = hub.get("preprocess_cfg")
    else:
        state, weights = load_state_file(source), source
    if isinstance(model_config, (str, Path)):
        model_config = read_json(model_config, "open_clip model config")
    model = open_clip_to_model(state, activation=activation, model_config=model_config, source=str(weights))
    if preprocess:
        image = model.config.image_preprocess
        image.mean = tuple(float(v) for v in preprocess.get("mean", image.mean))
        image.std = tuple(float(v) for v in preprocess.get("std", image.std))
        image.interpolation = preprocess.get("interpolation", image.interpolation)
    return model


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
