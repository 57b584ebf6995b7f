"""Joining the training processes, again after a restart, and leaving in bounded time when one is lost.

torchrun restarts every process of a job when one dies (``--max-restarts``). Its agent
keeps one key-value store across the restarts, and the process group's rendezvous keys
(each rank's address, NCCL's unique id) stay there from the attempt that died: a
restarted rank reads its dead peer's address and fails (gloo: "connectFullMesh failed
... Connection refused") or waits on it for ever. Each attempt therefore joins under a
prefix of its own, ``attempt-N/`` from torchrun's ``TORCHELASTIC_RESTART_COUNT``.

Every collective call then waits at most ``dist_timeout_s``: a rank whose peer died or
stalled raises instead of waiting on the 30-minute default, and the trainer says so in
one line (:func:`lost_peer_error`, :func:`describe_lost_peer`).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist


def join_process_group(timeout_s: float) -> bool:
    """Joins the processes a torchelastic launcher (torchrun, ``accelerate launch``) started; True if it did.

    Does nothing (False) for one process, outside torchelastic, or when the group exists:
    Accelerate then starts the group itself, with the same ``timeout_s``.
    """
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return False
    timeout = timedelta(seconds=timeout_s)
    # env:// connects to the agent's store (or hosts the store on rank 0), as init_process_group would.
    store, rank, world_size = next(dist.rendezvous("env://", timeout=timeout))
    store.set_timeout(timeout)
    dist.init_process_group(backend=accelerate_backend(), store=dist.PrefixStore(f"attempt-{attempt}", store),
                            rank=rank, world_size=world_size, timeout=timeout)
    return True


def accelerate_backend() -> str:
    """The backend Accelerate would start: gloo on CPUs, NCCL on GPUs (with gloo beside it where its FSDP needs CPU tensors)."""
    if not torch.cuda.is_available():
        return "gloo"
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    cpu_state = (os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true"
                 or os.environ.get("FSDP_STATE_DICT_TYPE", "SHARDED_STATE_DICT") == "FULL_STATE_DICT")
    return "cuda:nccl,cpu:gloo" if fsdp and cpu_state else "nccl"


def lost_peer_error(error: BaseException) -> BaseException | None:
    """The error in ``error``'s chain that says a collective call failed because another process was lost, if any.

    The chain counts: a launcher stopping the job may kill this process's loader workers
    while it handles the collective's error, and the loader's complaint then comes on top.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and any(sign in text for sign in (
                "gloo", "Gloo", "NCCL", "Connection reset", "Connection closed", "Timed out", "timed out", "Broken pipe"))):
            return error
        error = error.__cause__ or error.__context__
    return None


def describe_lost_peer(error: BaseException, rank: int, world_size: int, timeout_s: float) -> str:
    """One line: which rank leaves, why, and what the collective's error said (its first line)."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    peer = f"rank {1 - rank}" if world_size == 2 else "another rank"  # of two, the lost one is the other
    return (f"rank {rank} of {world_size} stops: {peer} died, stalled or left (a collective call failed or waited "
            f"more than --dist_timeout_s {timeout_s:g} s): {first_line}")


def leave_now(status: int) -> None:
    """Exits at once with ``status``: kills this process's children (the loader's workers) and skips clean-up.

    After a peer was lost, tearing down the process group or joining a worker blocked on
    a read could wait without end; the launcher restarts the job from its last checkpoint.
    """
    for child in multiprocessing.active_children():
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
