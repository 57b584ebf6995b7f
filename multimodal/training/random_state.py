"""The random states a run seeds, saves in its checkpoints and restores when it resumes."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """torch's random state (and every GPU's, when there are GPUs), to restore with :func:`set_rng_state`."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores a state :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def python_rng_state() -> list:
    """Python's random state as JSON-ready values (a list where Python keeps a tuple)."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list) -> None:
    """Restores a state :func:`python_rng_state` returned."""
    version, internal, gauss = state
    random.setstate((version, tuple(internal), gauss))
