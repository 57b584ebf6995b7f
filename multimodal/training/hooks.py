"""Where a caller steps into a training run without patching the trainer: :class:`TrainerHooks`.

A run takes its hooks from its caller (``trainer.main(argv, hooks=...)``,
``trainer.train(config, hooks)``), and each default is what a run does on its own, so
``TrainerHooks()`` is the plain run. They let a test strike at an exact step whatever the
machine's speed (a signal or a kill after a step, a kill half-way through a checkpoint), read
a checkpoint clock that counts steps instead of seconds, or slow the loader down; they can
equally count, trace or time a run.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from multimodal.training.process_group import leave_now

Batches = Iterator[dict]


def do_nothing(*arguments) -> None:
    """The default of a hook that only observes: a run alone does nothing there."""


def batches_as_they_are(batches: Batches) -> Batches:
    """The default ``batches`` hook: the loader's batches, unchanged."""
    return batches


@dataclass(frozen=True)
class TrainerHooks:
    """The points where a caller steps into a run; the defaults are the run's own behaviour.

    Attributes:
        after_step: called with the number of steps done right after each optimiser step,
            before anything else sees it (the log, an evaluation, a checkpoint).
        while_saving: called with the step and the checkpoint's unfinished folder while the
            main process writes a training checkpoint: its weights are written there, its
            training state is not yet (a process killed here must never be resumed from it).
        clock: the seconds that time-based checkpoints (``--checkpoint_every_minutes``) read.
        batches: wraps the training batches of each stretch between checkpoints (the stream
            starts again after each, see ``trainer.segment_seed``); the trainer's wait for
            its batches counts the time spent in it.
        leave: how a process exits, given its exit status, after it lost a peer: at once, with
            no clean-up that could wait on the lost process.
    """

    after_step: Callable[[int], None] = do_nothing
    while_saving: Callable[[int, Path], None] = do_nothing
    clock: Callable[[], float] = time.monotonic
    batches: Callable[[Batches], Batches] = batches_as_they_are
    leave: Callable[[int], None] = leave_now
