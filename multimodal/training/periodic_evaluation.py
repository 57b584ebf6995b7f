"""Evaluation during training: on the main process, on the trained or the averaged weights, never fatal."""
from __future__ import annotations

import logging
import traceback
from pathlib import Path

from multimodal.apps import evaluation
from multimodal.checkpoint import load_state_checked
from multimodal.model import MultimodalModel
from multimodal.training.run_checkpoints import whole_weights
from multimodal.training.fsdp import is_sharded
from multimodal.training.run import Run

# The trainer's messages, under one name wherever they are written.
logger = logging.getLogger("multimodal.training.trainer")

EVAL_ERROR = "eval_error"  # in evaluation results: why the evaluation failed (the results are then empty)
EVAL_ERRORS_FILE = "eval-errors.log"  # in the run directory: the tracebacks of failed evaluations


def evaluate_run(run: Run, step: int) -> dict:
    """The evaluation sets on the trained weights, and on the averaged ones (results under ``ema/``) when kept."""
    results = evaluate(run.accelerator, evaluation_model(run), run.data, run.run_dir, step)
    if run.ema is not None and run.config.ema.evaluate and EVAL_ERROR not in results:
        averaged = evaluate(run.accelerator, evaluation_model(run, averaged=True), run.data, run.run_dir, step)
        results.update({f"ema/{key}": value for key, value in averaged.items()})
    return results


def evaluation_model(run: Run, *, averaged: bool = False) -> MultimodalModel | None:
    """The model evaluation runs on the main process: the trained one, or a whole copy.

    A sharded model cannot run on one process alone, so its weights are gathered (a
    collective call) into a whole copy; so are the averaged weights (``averaged``).
    Other processes get None.
    """
    unwrapped = run.accelerator.unwrap_model(run.model)
    if not averaged and not is_sharded(unwrapped):
        return unwrapped
    if not run.data.eval_sets:  # the same on every process: none of them gathers
        return None
    weights = whole_weights(unwrapped)
    if averaged:
        weights = {**weights, **run.ema.state_dict()}
    if not run.accelerator.is_main_process:
        return None
    copy = MultimodalModel(run.config.model)
    load_state_checked(copy, weights, "the trained weights")
    return copy.to(run.accelerator.device)


def evaluate(accelerator, model: MultimodalModel | None, data, run_dir: Path, step: int) -> dict:
    """The configured evaluation sets, on the main process (evaluation sets are small).

    Samples of a set's shards that lack its modality are counted at every evaluation and
    said once (:meth:`multimodal.training.data_sources.PreparedData.say_not_evaluated`).
    An evaluation that fails (a shard deleted mid-run, a set that cannot be read) costs
    its results, not the run: the error is logged in one line, its traceback appended
    to ``eval-errors.log`` in the run directory, and ``{"eval_error": message}`` returned.
    """
    results: dict = {}
    if accelerator.is_main_process and data.eval_sets:
        model.eval()
        try:
            # Samples without a set's modality (shards mixing pictures and sounds) are said at the first evaluation.
            results = evaluation.run_evaluations(model, data.eval_sets, data.tokenizer, device=accelerator.device,
                                                 say_not_evaluated=data.say_not_evaluated)
        except Exception as error:  # noqa: BLE001 - whatever failed, training and its checkpoints go on
            message = f"{type(error).__name__}: {error}"
            with open(run_dir / EVAL_ERRORS_FILE, "a") as handle:
                handle.write(f"step {step}\n{traceback.format_exc()}\n")
            logger.error("evaluation at step %d failed: %s (traceback in %s)", step, message,
                         run_dir / EVAL_ERRORS_FILE)
            results = {EVAL_ERROR: message}
    accelerator.wait_for_everyone()
    return results
