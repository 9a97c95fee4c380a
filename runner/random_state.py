"""Every random state of a training process, saved in checkpoints for exact resumption.

A resumed run draws the same random numbers as the uninterrupted run only if it continues
from the same state of every generator: torch's CPU and CUDA generators (parameter
initialisation, dropout, the seeds of the attention-dropout masks), NumPy's and Python's
global generators, and the run's own generators (augmentation). The data order needs no state:
it is a function of (seed, epoch), and the position in the epoch is in the training state.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Mapping

import numpy as np
import torch


def capture(generators: Mapping[str, torch.Generator]) -> Dict[str, Any]:
    """The states of the global generators and of ``generators``, as tensors and plain values.

    Everything returned loads with ``torch.load(..., weights_only=True)``.
    """
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "position": int(position), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _to_lists(random.getstate()),
        "generators": {name: generator.get_state() for name, generator in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Sets every generator to the state that :func:`capture` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached"]))
    random.setstate(_to_tuples(state["python"]))
    for name, generator in generators.items():
        generator.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(item) for item in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(item) for item in value) if isinstance(value, list) else value
