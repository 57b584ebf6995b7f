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
        if accelerator.num_processes == 1:
            return self.signal_number is not None
        flag = torch.tensor([0 if self.signal_number is None else self.signal_number], device=accelerator.device)
        flag = accelerator.reduce(flag, reduction="sum")
        if self.signal_number is None and int(flag.item()):
            self.signal_number = signal.SIGTERM
        return int(flag.item()) > 0
