"""What a training run is configured by, and how its configuration is read.

``TrainConfig`` is the whole tree of dotted keys (``--optim.lr``, ``--data.train``); the
command line, a ``--config`` file and a preset give it its values (:func:`parse_config`),
and a resumed run restores its own (:mod:`multimodal.training.resumed_config`). The trainer
(:mod:`multimodal.training.trainer`) runs what this describes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from multimodal.training import preflight, data_sources
from multimodal.checkpoint import read_config
from multimodal.config_parser import (
    apply_overrides, flatten, from_dict, load_config_file, merged, parse_override_args, to_dict,
)
from multimodal.data.modalities.registry import MEDIA_MODALITIES
from multimodal.data.preprocess.preprocess_config import take_retired_masks
from multimodal.model import ModelConfig
from multimodal.training.ema import EmaConfig
from multimodal.training.optimizer import OptimConfig, fine_tuning_optim
from multimodal.presets import PRESETS, preset
from multimodal.pretrained import init_model_config, pretrained_towers_that_train
from multimodal.training.resumed_config import resumed_config
from multimodal.training.retired_masks import move_masks_to_levers, refuse_retired_mask_overrides, refuse_retired_masks
from multimodal.training.run_checkpoints import find_resume_checkpoint

RUN_CONFIG_FILE = "config.json"
MACHINE_KEY = "machine"  # in a run's config.json: the cores, threads and workers the run chose



class StartError(ValueError):
    """The run could not start: a setting, a file or the data is wrong (the message says which)."""



@dataclass
class TrainConfig:
    preset: str = "tiny"
    model: ModelConfig | None = None  # None: the preset's
    data: data_sources.DataConfig = field(default_factory=data_sources.DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    # "ddp": every process holds the whole model (DistributedDataParallel); "fsdp": weights, gradients
    # and optimiser state sharded over the processes (FSDP2, see multimodal/training/fsdp.py). An
    # `accelerate config` with distributed_type FSDP selects "fsdp" too.
    distributed: str = "ddp"
    # "auto": bf16 where the CPU or GPU computes it natively (see multimodal/precision.py), else fp32;
    # or "no", "bf16", "fp16", through Accelerate.
    mixed_precision: str = "auto"
    seed: int = 0
    # torch's compute threads in each training process; None: chosen from the cores the process
    # gets, less the loader's workers and cores other work keeps busy (see multimodal/training/threads.py).
    threads: int | None = None
    output_dir: str = "runs"
    run_name: str | None = None  # None: a time stamp
    log_every: int = 20
    eval_every: int = 0  # steps between evaluations during training; 0: only at the end
    checkpoint_every: int = 400  # steps between checkpoints (the last step, SIGTERM and Ctrl-C always save one)
    # Also a checkpoint once this many minutes passed since the last (the main process's clock decides for
    # all): bounds the work a preemption without warning loses. None: by steps only.
    checkpoint_every_minutes: float | None = None
    # Seconds any collective call waits for the other processes before this one leaves, naming itself:
    # a rank whose peer died or stalled stops within this time (raise it if the main process's
    # evaluation or checkpoint takes longer, as the others wait for it).
    dist_timeout_s: float = 300.0
    keep_last: int = 2  # checkpoints kept; older ones are deleted
    # "latest" or a checkpoint directory: continue that run with its own settings; "auto": the run's
    # latest complete checkpoint if it has one, else start it (one command for a start and every restart)
    resume: str | None = None
    # A checkpoint to start from (ours, or converted from open_clip / Hugging Face): the towers it
    # holds come with its architecture, preprocessing, weights and tokenizer; towers only this
    # run's model has start fresh (see multimodal/pretrained.py).
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)  # towers that stay fixed (locked-image tuning, binding)
    freeze_unlocked_blocks: int = 0  # the last blocks (and head) of each frozen tower that still train
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile each transformer block (regional: one compiled block serves the stack)
    tensorboard: bool = False
    wandb: bool = False  # log to Weights & Biases (WANDB_MODE=offline writes the run locally, no network)
    wandb_project: str = "multimodal"
    plot: bool = True

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; available: {sorted(PRESETS)}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'auto', 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ValueError(f"distributed must be 'ddp' or 'fsdp', got {self.distributed!r}")
        if self.distributed == "fsdp" and self.mixed_precision == "fp16":
            raise ValueError("distributed fsdp computes in bf16 or fp32 (mixed_precision bf16, no or auto), not fp16")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or null: chosen from the cores), got {self.threads}")
        if self.data.num_workers is not None and self.data.num_workers < 0:
            raise ValueError(f"data.num_workers must be at least 0 (or null: chosen), got {self.data.num_workers}")
        if self.checkpoint_every_minutes is not None and not self.checkpoint_every_minutes > 0:
            raise ValueError(f"checkpoint_every_minutes must be above 0 (or null: by steps only), "
                             f"got {self.checkpoint_every_minutes}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be above 0 seconds, got {self.dist_timeout_s}")
        for name in ("log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_unlocked_blocks < 0:
            raise ValueError(f"freeze_unlocked_blocks must be 0 or more, got {self.freeze_unlocked_blocks}")
        if self.optim.layer_decay is not None and not 0.0 < self.optim.layer_decay <= 1.0:
            raise ValueError(f"optim.layer_decay must be in (0, 1], e.g. 0.75; got {self.optim.layer_decay}")
        if self.optim.accum_steps < 1 or self.optim.steps < 1:
            raise ValueError("optim.steps and optim.accum_steps must be at least 1")
        if self.ema.decay is not None and not 0.0 < self.ema.decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), e.g. 0.999; got {self.ema.decay}")


def parse_config(argv: list[str]) -> TrainConfig:
    """``--preset NAME``, ``--config FILE`` (JSON/YAML) and dotted overrides, applied in that order.

    With ``--resume``, the run's saved configuration is the base instead, and the
    settings given may change only ``RESUMABLE_KEYS`` (see :func:`resumed_config`).
    ``--resume auto`` on a run with no checkpoint yet is a new run (``resume`` None).
    """
    overrides = parse_override_args(argv)
    config = fresh_config(overrides)
    if config.resume is None:
        return config
    checkpoint = find_resume_checkpoint(config)
    if checkpoint is None:  # --resume auto and the run has no checkpoint yet: it starts, as a new run
        return fresh_config({**overrides, "resume": "null"})  # (null over a config file's "auto" too)
    return resumed_config(config, checkpoint, given=overrides)


def fresh_config(overrides: dict[str, str]) -> TrainConfig:
    """The configuration of a new run: the preset, then ``--config``'s file, then the dotted overrides."""
    overrides = refuse_retired_mask_overrides(dict(overrides))
    preset_name = overrides.pop("preset", "tiny")
    config_file = overrides.pop("config", None)
    data = {"preset": preset_name}
    masks = {}
    if config_file is not None:
        data.update(load_config_file(config_file))
        # A run's config.json records the threads it chose on its machine: a record, not a setting.
        if data.pop(MACHINE_KEY, None) is not None:  # a run's own record: its SpecAugment set the old way trains on
            masks = take_retired_masks(data.get("model"))
        else:
            refuse_retired_masks(data.get("model"), config_file)
    # A file's model section changes the preset's model (`image_preprocess: {mean: ...}`
    # alone keeps every encoder); `audio: null` drops one.
    file_model = data.get("model") if isinstance(data.get("model"), dict) else None
    if file_model is not None and data.get("preset") in PRESETS:
        data["model"] = _model_changed_by(to_dict(preset(data["preset"])), file_model)
    config = from_dict(TrainConfig, data)
    if config.model is None:
        config.model = preset(config.preset)
    config = apply_overrides(config, overrides)
    move_masks_to_levers(config, masks, config_file)
    if config.init_from is not None and config.resume is None:
        # The checkpoint's towers keep its architecture; what the command line says of them applies on top.
        try:
            preflight.check_checkpoint_dir(config.init_from, "init_from")
        except ValueError as error:
            raise StartError(str(error)) from None  # a wrong path, not a wrong setting: no pointer to --help
        config.model = init_model_config(config.model, config.init_from)
        # The checkpoint's towers came with its preprocessing, once SpecAugment's masks included: they train on.
        move_masks_to_levers(config, take_retired_masks(read_config(config.init_from, as_written=True)["model"]),
                             config.init_from)
        if file_model is not None:  # the file's model section, then the command line's, on top of the checkpoint's
            config.model = from_dict(ModelConfig, _model_changed_by(to_dict(config.model), file_model), "model")
        config = apply_overrides(config, {k: v for k, v in overrides.items() if k.startswith("model.")})
        # Fine-tuning's own learning rate, warm-up and length, unless given (a run whose training towers all
        # start fresh, binding a new tower into a locked space, keeps the from-scratch ones).
        if pretrained_towers_that_train(config.model, config.init_from, config.freeze, config.freeze_unlocked_blocks):
            config.optim = fine_tuning_optim(config.optim, [*overrides, *flatten(data)])
    return config


def _model_changed_by(model: dict, changes: dict) -> dict:
    """A model config tree with a file's ``model`` section applied; an encoder set to null takes its preprocessing along."""
    model = merged(model, changes)
    for modality in MEDIA_MODALITIES:
        if model.get(modality) is None:
            model[f"{modality}_preprocess"] = None
    return model


__all__ = ["MACHINE_KEY", "RUN_CONFIG_FILE", "StartError", "TrainConfig", "fresh_config", "parse_config"]
