"""What the loader's own process needs to finish batches cheaply: reused float buffers, one CPU thread.

The workers send images as uint8; the process that consumes the batches normalises
them to float (see :func:`multimodal.data.pipeline.loader.finish_batch`). Two costs of that
step are not arithmetic, and each has its remedy here: fresh pages for every large
batch (:class:`RecycledBuffers`), and torch's thread pool spinning on cores the
workers are using (:func:`one_cpu_thread`).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


class RecycledBuffers:
    """Float image batches whose memory is reused once nothing refers to it any more.

    A fresh CPU batch above glibc's mmap threshold (32 MiB: 64 images at 224 px) is
    new pages every time, and faulting them in costs several times the arithmetic of
    normalising. The pool keeps a few storages and hands one out again only when its
    use count shows that no tensor or view (nor numpy array) of the consumer still
    holds it, so a batch kept by the consumer is never overwritten.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self.storages: list[torch.UntypedStorage] = []
        # A private torch function; without it every batch is simply allocated anew.
        self._use_count = getattr(torch._C, "_storage_Use_Count", None)

    def empty(self, shape: torch.Size) -> torch.Tensor:
        """An uninitialised contiguous float32 CPU tensor of ``shape``."""
        if self._use_count is None:
            return torch.empty(shape, dtype=torch.float32)
        num_bytes = math.prod(shape) * 4
        for storage in self.storages:
            if storage.nbytes() == num_bytes and self._use_count(storage._cdata) == 1:
                return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        if len(self.storages) >= self.capacity:
            self.storages.pop(0)
        storage = torch.UntypedStorage(num_bytes)
        self.storages.append(storage)
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Runs the body with torch on one CPU thread, then restores the thread count.

    While worker processes decode on the other cores, a parallel region in the main
    process waits at its barrier for a thread that has no core, spinning: on a
    2-core machine next to one busy worker, normalising on two threads cost about 3x
    the CPU time of doing it on one (the CPU time per sample that
    ``python -m bench.bench_data`` prints shows it).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


__all__ = ["RecycledBuffers", "one_cpu_thread"]
