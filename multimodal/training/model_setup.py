"""The tokenizer and the model a run trains: where each comes from, and what is locked or compiled."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from multimodal.training import data_sources
from multimodal.training.demo_sources import demo_tokenizer
from multimodal.checkpoint import load_tokenizer as checkpoint_tokenizer
from multimodal.config_parser import apply_overrides
from multimodal.encoders import Block
from multimodal.model import ModelConfig, MultimodalModel
from multimodal.training.optimizer import fine_tuning_line
from multimodal.pretrained import load_pretrained, lock_towers, pretrained_towers_that_train, same_tokenizer
from multimodal.training.optimizer import OptimConfig

if TYPE_CHECKING:
    from multimodal.training.train_config import TrainConfig


def choose_tokenizer(config: TrainConfig, resolved: data_sources.ResolvedSources, resume_from: Path | None):
    """The tokenizer of the run: the resumed checkpoint's, a file, the init_from checkpoint's, or the demo's."""
    if config.model.text is None:
        return None
    if resume_from is not None:
        return data_sources.load_tokenizer(resume_from)
    if config.data.tokenizer is not None:
        try:
            tokenizer = data_sources.load_tokenizer(config.data.tokenizer)
        except (ValueError, OSError) as error:
            raise ValueError(f"data.tokenizer: {error}") from None
        if config.init_from is not None and not same_tokenizer(config.data.tokenizer, config.init_from):
            # The checkpoint's text tower is loaded: its embedding rows are its own tokenizer's ids.
            raise ValueError(f"data.tokenizer: {config.data.tokenizer} is not the tokenizer of init_from "
                             f"{config.init_from}, whose text tower reads that checkpoint's ids; leave "
                             "data.tokenizer unset to use the checkpoint's")
        return tokenizer
    if config.init_from is not None:
        tokenizer = checkpoint_tokenizer(config.init_from)
        if tokenizer is not None:  # an audio-only checkpoint (AST) has none: the data's then
            return tokenizer
    if resolved.demo is not None:
        return demo_tokenizer(resolved.demo, config.data.tokenizer_vocab_size)
    return None


def fit_text_to_tokenizer(model: ModelConfig, tokenizer) -> ModelConfig:
    """The model config with the text tower's vocabulary size and end-of-text id taken from ``tokenizer``.

    The text tower pools at the end-of-text token, so its id must be the tokenizer's:
    a preset's default (ours: 2; CLIP's: 49407) would otherwise pool at the wrong place
    without a word.
    """
    if model.text is None or tokenizer is None:
        return model
    return apply_overrides(model, {"text.vocab_size": tokenizer.vocab_size, "text.eot_token_id": tokenizer.eot_id})


def compile_blocks(model: nn.Module) -> int:
    """``torch.compile`` every transformer block in place; returns how many.

    Regional compilation: blocks of one stack share their code, so compiling costs
    about one block per input shape rather than a whole model, and the parts that vary
    (stems, pooling, the loss) stay eager.
    """
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        block.compile()
    return len(blocks)


def build_model(config: TrainConfig, say=print) -> MultimodalModel:
    """The model from its config; the towers ``init_from`` holds; locked towers; gradient checkpointing.

    ``say`` prints what was loaded and locked (the start-up log).
    """
    model_config = config.model
    for modality in model_config.modalities:
        getattr(model_config, modality).transformer.grad_checkpointing = config.grad_checkpointing
    model = MultimodalModel(model_config)
    if config.init_from is not None and config.resume is None:  # a resumed run loads its own weights
        loaded = load_pretrained(model, config.init_from)
        fresh = f"; {', '.join(loaded['fresh'])} start(s) fresh" if loaded["fresh"] else ""
        pairs = f" and the {', '.join(loaded['temperatures'])} temperature(s)" if loaded["temperatures"] else ""
        say(f"init_from {config.init_from}: loaded the {', '.join(loaded['loaded'])} tower(s){pairs}{fresh}")
        fine_tuned = pretrained_towers_that_train(config.model, config.init_from, config.freeze,
                                                  config.freeze_unlocked_blocks)
        locked = locked_modalities(config)
        fresh = [m for m in loaded["fresh"] if m not in locked]
        say(fine_tuning_line(config.optim, OptimConfig(), fine_tuned, fresh))
    if config.freeze:
        locked = lock_towers(model, config.freeze, config.freeze_unlocked_blocks)
        for modality, counts in locked["towers"].items():
            say(f"freeze {modality}: {counts['locked']:,} parameters locked, {counts['trainable']:,} train"
                + (f" (its last {counts['unlocked_blocks']} block(s) and head)" if counts["unlocked_blocks"] else ""))
    if config.compile:
        compile_blocks(model)
    return model


def locked_modalities(config: TrainConfig) -> set[str]:
    """The towers that do not train at all (frozen with no block unlocked)."""
    return set(config.freeze) if config.freeze_unlocked_blocks == 0 else set()
