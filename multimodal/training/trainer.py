"""Contrastive training of text, image and audio encoders on streamed shards, with Accelerate.

    python train.py                                  # the demo: spoken and handwritten digits, on CPU
    python train.py --preset small --data.train '[{"shards": "img-{000..099}.tar", "modalities": ["image", "text"]}]'
    python train.py --config run.yaml --optim.lr 3e-4
    accelerate launch --multi_gpu train.py --preset base ...
    python train.py --run_name demo --resume latest  # continue where a run stopped, with its own settings
    torchrun --nproc_per_node 2 --max-restarts 2 train.py --run_name demo --resume auto  # restarts itself

(also ``python -m multimodal.training.trainer`` or ``multimodal-train`` from any directory.)

Reads top to bottom: the run's start (Accelerator, data and tokenizer, model, optimiser),
the loop (with evaluation, checkpoints, and a checkpoint on SIGTERM or Ctrl-C), the command
line. The parts live beside it in multimodal/training/: train_config (the settings and how
they are read; a resumed run restores its own through resumed_config), run (what the loop
works with), model_setup, optimizer, step (one optimiser step), run_checkpoints, run_log,
stop_request, periodic_evaluation. A caller steps into a run through its hooks (hooks.TrainerHooks:
after each step, while a checkpoint is written, the checkpoint clock, the batches, leaving after
a lost peer), never by patching this module.
"""
from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib.util
import json
import logging
import math
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from multimodal.training import preflight, report, data_sources
from multimodal.training.alignment import drift_warnings
from multimodal.checkpoint import read_config
from multimodal.config_parser import describe_keys, flatten, parse_override_args, to_dict
from multimodal.data.pipeline.allocator import retain_freed_memory
from multimodal.data.atomic_files import write_text_atomically
from multimodal.data.seeds import stable_int
from multimodal.data.pipeline.source_spec import SourceSpec
from multimodal.training.ema import WeightAverage
from multimodal.training.model_setup import build_model, choose_tokenizer, fit_text_to_tokenizer, locked_modalities
from multimodal.training.optimizer import build_optimizer, cosine_with_warmup
from multimodal.precision import native_bf16
from multimodal.pretrained import keep_locked_in_eval
from multimodal.training.random_state import seed_everything
from multimodal.training.hooks import TrainerHooks
from multimodal.training.run import Run
from multimodal.training.resumed_config import RESUMABLE_KEYS
from multimodal.training.train_config import MACHINE_KEY, RUN_CONFIG_FILE, StartError, TrainConfig, fresh_config, parse_config
from multimodal.training.process_group import describe_lost_peer, join_process_group, lost_peer_error
from multimodal.training.run_checkpoints import (
    CheckpointClock,
    check_run_dir_is_free,
    find_resume_checkpoint,
    load_training_state,
    load_weights,
    remove_unfinished_checkpoints,
    resolve_run_dir,
    save_training_checkpoint,
)
from multimodal.training.run_log import LossWindow, MetricsLog
from multimodal.training.fsdp import shard_model
from multimodal.training.stop_request import StopRequest
from multimodal.training.threads import ThreadPlan, apply_plan, plan_threads
from multimodal.training.periodic_evaluation import EVAL_ERROR, evaluate_run
from multimodal.training.step import train_step
from multimodal.training.truncation import measure_sources, truncation_lines

logger = logging.getLogger("multimodal.training.trainer")


# --------------------------------------------------------------------------- the run's start


class DataError(ValueError):
    """The training data failed during the run (the message says what, and where training stopped)."""


def start_run(config: TrainConfig) -> Run:
    """Data, tokenizer, model and optimiser for ``config``, restored from its checkpoint when resuming.

    Everything a user can get wrong (a shard path, a modality, a tokenizer, nothing to
    resume) is checked before the run directory is created, so a failed start leaves
    nothing behind.
    """
    resume_from = find_resume_checkpoint(config) if config.resume is not None else None
    check_run_inputs(config)
    # The evaluation sets given are checked before anything starts or the demo (if it trains) is built;
    # a zero-shot set given no class names takes those its data record.
    config.data.eval = preflight.check_eval_sets(config.data.eval, config.model)
    thread_plan = plan_machine(config)
    apply_plan(thread_plan)
    accelerator = make_accelerator(config, Path(config.output_dir))
    run_dir, resume_from = shared_run_dir(accelerator, config, resume_from)
    if resume_from is None:
        check_run_dir_is_free(run_dir)
    preflight.check_output_dir(run_dir)
    if accelerator.is_main_process:  # what a process killed while saving left: never resumed, now removed
        for removed in remove_unfinished_checkpoints(run_dir):
            logger.warning(f"removed {removed}: a checkpoint left unfinished by a process that stopped while saving")
    seed_everything(config.seed)

    data = prepare_data(config, accelerator, resume_from, thread_plan)
    model = build_model(config, accelerator.print)
    if resume_from is not None:
        load_weights(resume_from, model)
    sharded = uses_fsdp(config) and accelerator.num_processes > 1  # one process: nothing to shard
    if sharded:
        bf16 = resolve_mixed_precision(config.mixed_precision) == "bf16"
        shard_model(model, torch.bfloat16 if bf16 else None)
    optimizer = build_optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(config.optim))
    ema = WeightAverage(model, config.ema.decay) if config.ema.decay is not None else None
    start_step = 0
    if resume_from is not None:
        start_step = load_training_state(resume_from, model, optimizer, scheduler, ema)
    # The schedule counts optimiser steps, so the scheduler is not handed to Accelerate
    # (which would step it once per process). A sharded model is already distributed:
    # Accelerate would wrap it in DDP.
    if sharded:
        optimizer = accelerator.prepare(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)

    record_run(accelerator, config, run_dir, thread_plan, resumed=resume_from is not None)
    accelerator.print(thread_plan.describe())
    if resume_from is not None:
        accelerator.print(f"resumed from {resume_from} at step {start_step}")
    return Run(config, accelerator, run_dir, data, model, optimizer, scheduler, start_step, resume_from, ema)


def check_run_inputs(config: TrainConfig) -> None:
    """The files a new run reads besides its data (checked in resolve_sources): a typo fails in seconds.

    A resumed run reads its weights and tokenizer from its checkpoint instead.
    """
    if config.resume is not None:
        return
    if config.init_from is not None:
        preflight.check_checkpoint_dir(config.init_from, "init_from")
    if config.data.tokenizer is not None:
        preflight.check_tokenizer_path(config.data.tokenizer, "data.tokenizer")
    missing = [m for m in config.freeze if m not in config.model.modalities]
    if missing:
        raise ValueError(f"freeze: this model has no {' or '.join(map(repr, missing))} tower "
                         f"(it has {', '.join(config.model.modalities)})")


def plan_machine(config: TrainConfig) -> ThreadPlan:
    """Chooses the compute threads, and the loader's workers and niceness where unset (``apply_plan`` sets them).

    Chosen before anything starts: the neighbours counted are other work, not this run's loader.
    The choice is recorded under ``machine`` in the run's config.json, never as the run's
    settings: a run resumed on another machine chooses again.
    """
    thread_plan = plan_threads(config.threads, config.data.num_workers, on_gpu=torch.cuda.is_available(),
                               local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return thread_plan


def make_accelerator(config: TrainConfig, run_dir: Path):
    """The run's Accelerator: its processes, device, mixed precision and trackers."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    trackers = [name for name, wanted in (("tensorboard", config.tensorboard), ("wandb", config.wandb)) if wanted]
    for tracker in trackers:
        if importlib.util.find_spec(tracker) is None:
            raise ValueError(f"--{tracker} true needs the {tracker} package: pip install -e '.[{tracker}]'")
    # A batch may hold only some modalities (image-text from one source, audio-text from
    # another), so some encoders are unused in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Under torchrun, the group is joined here so that a restarted job joins afresh (see
    # multimodal/training/process_group.py); elsewhere Accelerate starts it. Either way every collective
    # call waits at most dist_timeout_s, so a rank whose peer died or stalled leaves.
    join_process_group(config.dist_timeout_s)
    group = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=config.dist_timeout_s))
    # Under FSDP the sharding's precision policy computes in bf16 (see shard_model), not autocast.
    return Accelerator(
        # Without a GPU, say so: otherwise Accelerate under torchrun joins the processes'
        # group but reports one process of its own, and each trains alone.
        cpu=not torch.cuda.is_available(),
        mixed_precision="no" if uses_fsdp(config) else resolve_mixed_precision(config.mixed_precision),
        kwargs_handlers=[ddp, group],
        log_with=trackers or None,
        project_dir=str(run_dir),
    )


def uses_fsdp(config: TrainConfig) -> bool:
    """``--distributed fsdp``, or an Accelerate launch configured for FSDP."""
    return config.distributed == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def resolve_mixed_precision(setting: str) -> str:
    """``"auto"``: bf16 where the hardware computes it natively, else full precision."""
    if setting != "auto":
        return setting
    return "bf16" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "no"


def shared_run_dir(accelerator, config: TrainConfig, resume_from: Path | None) -> tuple[Path, Path | None]:
    """The run directory chosen by the main process (time stamps could differ), and the checkpoint it resumes.

    Every process found its checkpoint to resume (``--resume auto``, ``latest``) by itself;
    one that found another than the main process's would train another model: refused.
    """
    from accelerate.utils import broadcast_object_list

    mine = str(resume_from) if resume_from is not None else None
    holder = [str(resolve_run_dir(config)), mine] if accelerator.is_main_process else [None, None]
    if accelerator.num_processes > 1:
        broadcast_object_list(holder)
    run_dir, chosen = holder
    if chosen != mine:
        raise ValueError(f"rank {accelerator.process_index} would resume {mine or 'nothing'} but the main process "
                         f"resumes {chosen or 'nothing'}: every process must see the run directory {run_dir} "
                         "(a file system all nodes share)")
    return Path(run_dir), resume_from


def prepare_data(config: TrainConfig, accelerator, resume_from: Path | None,
                 thread_plan: ThreadPlan) -> data_sources.PreparedData:
    """The training and evaluation data with the run's tokenizer, read by the workers ``thread_plan`` chose.

    Fits ``config.model``'s text tower to the tokenizer and records the evaluation sets
    in ``config.data.eval``, so the run's config and checkpoints say what was used.
    """
    resolved = data_sources.resolve_sources(config.data, config.model, progress=accelerator.is_main_process)
    resolved.train = trained_sources(resolved, locked_modalities(config), accelerator.print)
    if config.init_from is not None and resume_from is None and accelerator.is_main_process:
        # A tower the run does not train, aligned to one it moves, loses its alignment without a word otherwise.
        for warning in drift_warnings(config.init_from, config.model, [s.modalities for s in resolved.train],
                                      locked_modalities(config)):
            logger.warning(warning)
    # A pretrained tower keeps the preprocessing its weights learned with, whatever the data measure.
    # (A resumed run said so at its start, and its init_from checkpoint may have moved since: not read again.)
    if config.init_from is None:
        pretrained = set()
    elif resume_from is not None:
        pretrained = set(config.model.modalities)
    else:
        init_model = read_config(config.init_from)["model"]
        pretrained = {modality for modality in config.model.modalities if init_model.get(modality)}
    if accelerator.is_main_process:
        for warning in data_sources.statistics_warnings(resolved, config.model, pretrained):
            logger.warning(warning)
    tokenizer = choose_tokenizer(config, resolved, resume_from)
    config.model = fit_text_to_tokenizer(config.model, tokenizer)
    if accelerator.is_main_process and resolved.demo is None:
        # What the model's audio window and text context cut of the data, from the first samples of each source.
        for line in truncation_lines(measure_sources(resolved.train, config.model, tokenizer)):
            logger.warning(line)
    nice = config.data.worker_nice if config.data.worker_nice is not None else thread_plan.worker_nice
    loading = dataclasses.replace(config.data, num_workers=thread_plan.workers, worker_nice=nice)
    data = data_sources.prepare(loading, config.model, tokenizer, resolved)
    # Recorded in the run's config and its checkpoints: `multimodal eval` and the classifier
    # then prompt with the templates the run was evaluated with (the demo's, say).
    config.data.eval = list(resolved.eval_sets)
    return data


def trained_sources(resolved: data_sources.ResolvedSources, locked: set[str], say=print) -> list[SourceSpec]:
    """The training sources with a tower to train: one whose towers are all locked has nothing to learn.

    Binding audio into a locked image-text model (ImageBind's recipe) leaves the demo's
    image-text source out this way: its batches are not drawn.
    """
    kept = []
    for index, source in enumerate(resolved.train):
        if set(source.modalities) <= locked:
            name = "the demo's" if resolved.demo is not None else f"data.train[{index}]:"
            say(f"{name} {'-'.join(source.modalities)} pairs are not trained: those towers are all frozen")
        else:
            kept.append(source)
    if not kept:
        raise ValueError(f"freeze: every training source's towers are frozen ({', '.join(sorted(locked))}); "
                         "nothing would train")
    return kept


def record_run(accelerator, config: TrainConfig, run_dir: Path, thread_plan: ThreadPlan, *, resumed: bool) -> None:
    """Creates the run directory with the resolved config.json, and starts the trackers asked for."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resumed:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a start that failed before its first checkpoint
        record = {**to_dict(config), MACHINE_KEY: dataclasses.asdict(thread_plan)}
        write_text_atomically(run_dir / RUN_CONFIG_FILE, json.dumps(record, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if config.tensorboard or config.wandb:
        accelerator.init_trackers(
            config.wandb_project if config.wandb else run_dir.name, config=_tracker_config(config),
            init_kwargs={"wandb": {"name": run_dir.name, "dir": str(run_dir), "resume": "allow", "id": _run_id(run_dir)}},
        )


def _tracker_config(config: TrainConfig) -> dict:
    """The settings as flat scalars, the only values every tracker accepts (lists as JSON text)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in flatten(to_dict(config)).items()}


def _run_id(run_dir: Path) -> str:
    """A tracker id that stays the same when the run is resumed (a resumed run continues its curves)."""
    return f"{run_dir.name}-{stable_int(str(run_dir.resolve())) % 10**8:08d}"


# --------------------------------------------------------------------------- the loop


class PeerLost(RuntimeError):
    """Another training process died, stalled or left: this one stops (the message names the rank)."""


def train(config: TrainConfig, hooks: TrainerHooks = TrainerHooks()) -> dict:
    """Runs training as configured, with the caller's ``hooks``; returns the final evaluation results and paths.

    Raises :class:`PeerLost` when a collective call fails because another process died or
    stalled (after at most ``dist_timeout_s``), so that a launcher restarts the job.
    """
    try:
        return train_or_fail(config, hooks)
    except Exception as error:  # noqa: BLE001 - only a lost peer is translated; everything else is raised as it is
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        lost = lost_peer_error(error) if world_size > 1 and not isinstance(error, (StartError, DataError)) else None
        if lost is not None:
            rank = int(os.environ.get("RANK", "0"))
            raise PeerLost(describe_lost_peer(lost, rank, world_size, config.dist_timeout_s)) from error
        raise


def train_or_fail(config: TrainConfig, hooks: TrainerHooks = TrainerHooks()) -> dict:
    """:func:`train` without the translation of a lost peer's errors."""
    started = time.time()
    try:
        run = start_run(config)
    except (ValueError, TypeError, OSError) as error:
        raise StartError(str(error)) from error
    accelerator, run_dir = run.accelerator, run.run_dir
    log = MetricsLog(accelerator, run_dir)
    plot = accelerator.is_main_process and config.plot
    try:
        with StopRequest() as stop:
            result = run_loop(run, log, stop, hooks)
    except DataError:
        if plot and log.path.is_file():  # the curves up to the failure are worth seeing
            report.plot_curves(log.path, run_dir / "curves.png")
        raise
    result["wall_seconds"] = time.time() - started
    # Gathers' autograd nodes hold the process group; free them before end_training tears
    # it down, or gloo can abort at interpreter exit.
    del run
    gc.collect()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if plot and log.path.is_file():
        result["plot"] = str(report.plot_curves(log.path, run_dir / "curves.png"))
    return result


def run_loop(run: Run, log: MetricsLog, stop: StopRequest, hooks: TrainerHooks = TrainerHooks()) -> dict:
    """The steps from ``run.start_step`` with log lines, evaluations and checkpoints; then the final evaluation.

    ``hooks`` are called after each step, while a checkpoint is written, for the time and
    around the batches (see :class:`~multimodal.training.hooks.TrainerHooks`).

    Returns the final checkpoint, the run directory, the step reached and the results
    (or, when a signal stopped the run, which signal instead of results).
    """
    config, accelerator, optim = run.config, run.accelerator, run.config.optim
    unwrapped = accelerator.unwrap_model(run.model)
    progress = progress_bar(run)
    batches = None
    saved = SavedCheckpoint(run, hooks.while_saving)
    window = LossWindow()
    train_mode(run.model)
    if run.start_step >= optim.steps:
        accelerator.print(f"the run has trained its {optim.steps} steps already (raise --optim.steps to train on); "
                          "evaluating its last checkpoint")
    clock = CheckpointClock(config.checkpoint_every_minutes, clock=hooks.clock)
    done = run.start_step
    for step in range(run.start_step, optim.steps):
        if batches is None:  # the start, and after every checkpoint: see segment_seed
            batches = hooks.batches(train_batches(run, step))
        fetch_started = time.time()
        try:
            micro_batches = [next(batches) for _ in range(optim.accum_steps)]
        except (ValueError, OSError) as error:
            progress.close()
            raise data_failure(error, saved, done) from error
        window.waited += time.time() - fetch_started
        loss, per_pair = train_step(accelerator, run.model, run.optimizer, run.scheduler, micro_batches,
                                    optim.grad_clip)
        hooks.after_step(step + 1)
        if run.ema is not None:
            run.ema.update(unwrapped)
        done = step + 1
        window.add(loss, per_pair)
        progress.update(1)
        if done % config.log_every == 0 or done == optim.steps:
            log_window(run, log, progress, window, done)
            window = LossWindow()
        if config.eval_every and done % config.eval_every == 0 and done != optim.steps:
            log.write(done, evaluate_run(run, done))
            train_mode(run.model)
        by_steps = (config.checkpoint_every and done % config.checkpoint_every == 0) or done == optim.steps
        stopping, by_time = stop.agreed_with_checkpoint(accelerator, clock.due())
        if by_steps or by_time or (stopping and saved.step != done):
            saved.save(done)
            clock.saved()
            batches = None
        if stopping:
            break
    progress.close()
    return finish_run(run, log, stop, saved, done)


def train_mode(model: nn.Module) -> None:
    """Training mode, with locked towers kept in evaluation mode (their dropout and drop-path off)."""
    model.train()
    keep_locked_in_eval(model)


def progress_bar(run: Run):
    """The steps' progress bar, on the main process."""
    from tqdm.auto import tqdm

    # Live in a terminal; in a log file (a cluster job's) a line every 30 s, not one per step.
    return tqdm(total=run.config.optim.steps, initial=run.start_step, disable=not run.accelerator.is_main_process,
                desc="training", dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)


def train_batches(run: Run, step: int):
    """The training batches from ``step`` on, on the accelerator's device (see :func:`segment_seed`)."""
    accelerator = run.accelerator
    loader = run.data.train_loader(
        seed=segment_seed(run.config.seed, step),
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        device=accelerator.device,
    )
    return iter(loader)


def segment_seed(seed: int, step: int) -> int:
    """The data stream restarts after every checkpoint with a seed derived from its step.

    An uninterrupted run and a run resumed from that checkpoint then read exactly the
    same batches from there on, without replaying the stream (time-based checkpoints
    too: a run restarts its stream wherever it saved).
    """
    return (seed * 1_000_003 + step) % 2**31


class SavedCheckpoint:
    """The run's latest checkpoint and the step it holds; :meth:`save` writes a newer one."""

    def __init__(self, run: Run, while_saving: Callable[[int, Path], None] | None = None) -> None:
        self.run = run
        self.while_saving = while_saving
        # A resumed run's latest checkpoint is the one it resumed from until it saves another.
        self.path: Path | None = run.resumed_from
        self.step = run.start_step

    def save(self, step: int) -> None:
        """A training checkpoint of ``step`` (every process calls it)."""
        run = self.run
        self.path = save_training_checkpoint(run.accelerator, run.model, run.optimizer, run.scheduler,
                                             run.data.tokenizer, run.config, run.run_dir, step, run.ema,
                                             self.while_saving)
        self.step = step


def data_failure(error: Exception, saved: SavedCheckpoint, done: int) -> DataError:
    """The error to stop with when the data failed (a source with no valid sample, say) after step ``done``.

    The model is at a clean step boundary: it is kept in a checkpoint first (on one
    process only; with several, the others wait in a collective call and a save would hang).
    """
    if saved.run.accelerator.num_processes == 1 and done > saved.step:
        saved.save(done)
    kept = f"checkpoint at step {saved.step}: {saved.path}" if saved.path else "no checkpoint yet"
    return DataError(f"{error} (training stopped after step {done}; {kept})")


def log_window(run: Run, log: MetricsLog, progress, window: LossWindow, step: int) -> None:
    """Logs the window's mean losses, learning rate, temperatures and throughput, and shows them on the bar."""
    accelerator = run.accelerator
    samples_per_step = run.config.data.batch_size * run.config.optim.accum_steps * accelerator.num_processes
    elapsed = time.time() - window.started
    loss_value, pair_losses = window.means(accelerator)
    logit_scales = accelerator.unwrap_model(run.model).logit_scales
    temperatures = {f"temperature/{k}": math.exp(v.item()) for k, v in logit_scales.items()}
    values = {
        "loss": loss_value,
        **{f"loss/{k}": v for k, v in pair_losses.items()},
        "lr": run.scheduler.get_last_lr()[0],
        **temperatures,
        "samples_per_s": window.steps * samples_per_step / max(elapsed, 1e-9),
        # The share of the window the trainer waited for its batches: well above 0,
        # the data pipeline limits training (more workers if cores idle, else cheaper levers).
        "data_wait": min(1.0, window.waited / max(elapsed, 1e-9)),
        "skipped": run.data.skipped_total(),
    }
    log.write(step, values)
    # The bar shows the scale of the pairs the window trained (image-audio may never train).
    trained = [temperatures[f"temperature/{pair}"] for pair in pair_losses]
    shown = sum(trained) / len(trained)
    progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{values['lr']:.2e}", scale=f"{shown:.1f}",
                         sps=f"{values['samples_per_s']:.0f}")


def finish_run(run: Run, log: MetricsLog, stop: StopRequest, saved: SavedCheckpoint, done: int) -> dict:
    """The loop's result; the final evaluation, unless a signal stopped the run."""
    result = {"checkpoint": str(saved.path) if saved.path else None, "run_dir": str(run.run_dir), "step": done}
    if stop.signal_number is not None:
        result["stopped_by"] = signal.Signals(stop.signal_number).name
        return result
    results = evaluate_run(run, done)
    log.write(done, results)
    if EVAL_ERROR in results:
        result[EVAL_ERROR] = results.pop(EVAL_ERROR)
    return {"results": results, **result}


# --------------------------------------------------------------------------- the command line


USAGE = """usage: train.py [--preset NAME] [--config FILE] [--dotted.key VALUE ...]

Trains on the built-in demo data unless data.train is set. Settings apply in
order: the preset (tiny, small, base), then the JSON/YAML file, then each
--dotted.key override (also written --dotted.key=VALUE; lists as JSON).
--resume latest (with --run_name) or --resume CHECKPOINT_DIR continues a run with
its own saved settings; only these may change then: {resumable}.
--resume auto (with --run_name) continues the run's latest complete checkpoint, or
starts the run when it has none: one command for a first start and every restart.
SIGTERM or Ctrl-C saves a checkpoint at the current step before exiting."""


def main(argv: list[str] | None = None, *, hooks: TrainerHooks = TrainerHooks()) -> dict:
    """The command line: trains as ``argv`` says (``sys.argv`` by default), with the caller's ``hooks``."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        try:
            print_help([arg for arg in argv if arg not in ("-h", "--help")])
        except (ValueError, TypeError, OSError) as error:  # a wrong preset or file beside --help
            print(f"train.py: error: {error}\n(train.py --help alone lists every setting)", file=sys.stderr)
            raise SystemExit(2) from None
        raise SystemExit(0)
    # The training step allocates and frees the same activations every step; keeping
    # freed memory in the process spares the page faults of fresh allocations
    # (python -m bench train_step shows the step time with and without).
    retain_freed_memory()
    # A wrong setting, file or data: one line that says which, without a traceback.
    try:
        config = parse_config(argv)
    except StartError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except (ValueError, TypeError, OSError) as error:
        print(f"train.py: error: {error}\n(train.py --help lists every setting)", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        result = train(config, hooks)
    except (StartError, DataError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2 if isinstance(error, StartError) else 1) from None
    except PeerLost as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        # The process group and the loader's workers may wait on the lost peer: no clean-up that could hang.
        hooks.leave(1)
    if int(os.environ.get("RANK", "0")) == 0:
        if "stopped_by" in result:
            print(f"stopped by {result['stopped_by']} after step {result['step']}; checkpoint: {result['checkpoint']}\n"
                  f"continue with: {resume_command(Path(result['run_dir']))}")
        elif EVAL_ERROR in result:
            print(f"train.py: error: the final evaluation failed: {result[EVAL_ERROR]}\n"
                  f"training finished and its checkpoint is kept: {result['checkpoint']}; evaluate it with "
                  f"multimodal eval --checkpoint {result['checkpoint']} ...", file=sys.stderr)
        else:
            print(report.format_results(result["results"]))
            print(f"checkpoint: {result['checkpoint']}")
            print(f"wall time: {result['wall_seconds']:.0f} s")
    if "stopped_by" in result:
        raise SystemExit(128 + int(signal.Signals[result["stopped_by"]]))
    if EVAL_ERROR in result:
        raise SystemExit(1)
    return result


def resume_command(run_dir: Path) -> str:
    """A command that continues the run in ``run_dir`` from any working directory."""
    run_dir = run_dir.absolute()
    return shlex.join([sys.executable, "-m", "multimodal.training.trainer", "--output_dir", str(run_dir.parent),
                       "--run_name", run_dir.name, "--resume", "latest"])


def print_help(argv: list[str]) -> None:
    """The usage and every setting with its default, for the preset (and config file) on the command line."""
    overrides = parse_override_args(argv)
    keep = {key: overrides[key] for key in ("preset", "config") if key in overrides}
    config = fresh_config(keep)
    print(USAGE.format(resumable=", ".join(RESUMABLE_KEYS)))
    print(f"\nsettings and their defaults ({config.preset} preset"
          f"{', ' + keep['config'] if 'config' in keep else ''}):")
    print("\n".join(describe_keys(config)))


if __name__ == "__main__":
    main()
