"""Stopping a run cleanly on SIGTERM (a cluster's preemption) or Ctrl-C."""
from __future__ import annotations

import signal

import torch


class StopRequest:
    """SIGTERM (a cluster's preemption) or Ctrl-C: finish the current step, save a checkpoint, exit.

    A second Ctrl-C interrupts at once. With several processes the flag is shared by an
    all-reduce at every step, so all of them stop after the same step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame) -> None:
        if self.signal_number is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = number

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop (a collective call when there are several)."""
        return self.agreed_with_checkpoint(accelerator, False)[0]

    def agreed_with_checkpoint(self, accelerator, checkpoint_due: bool) -> tuple[bool, bool]:
        """Whether any process was asked to stop, and whether the main process finds a checkpoint due.

        One collective call for both, so that every process stops, and saves, after the
        same step. ``checkpoint_due`` counts on the main process only: its clock decides
        for all (the processes' clocks differ by a little, and a save is collective).
        """
        due = checkpoint_due and accelerator.is_main_process
        if accelerator.num_processes == 1:
            return self.signal_number is not None, due
        flags = torch.tensor([0 if self.signal_number is None else self.signal_number, int(due)],
                             device=accelerator.device)
        flags = accelerator.reduce(flags, reduction="sum")
        stop, due = int(flags[0].item()) > 0, int(flags[1].item()) > 0
        if self.signal_number is None and stop:
            self.signal_number = signal.SIGTERM
        return stop, due
