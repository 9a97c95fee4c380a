"""Writing the runner's checkpoints (reading and loading them is :mod:`g_selfatt_models.checkpoints`).

A checkpoint written by the runner is a dict (see :func:`make_checkpoint`) with the model's
name, architecture, the full configuration, the weights, and the training state (epoch, step,
optimizer, scheduler and loss-scaler states, random states, best validation metric), with a
sha256 checksum of all its tensors. Files are written atomically: a temporary file in the same
folder is renamed over the target, so a run killed while saving leaves the previous checkpoint
intact. They are created with the permissions of the user's umask.
"""

from __future__ import annotations

import pathlib
from typing import Any, Dict, Mapping

import torch

from g_selfatt_models.checkpoints import (  # noqa: F401  (the runner reads checkpoints through this module)
    CHECKSUM_KEY,
    FORMAT,
    REQUIRED_KEYS,
    CheckpointError,
    check_project_checkpoint,
    is_project_checkpoint,
    load_strict,
    read,
    strip_wrapper_prefixes,
    tensor_checksum,
    weights_from,
)
from runner.files import atomic_write

# Keys a resumable checkpoint adds to those of every checkpoint.
RESUMABLE_KEYS = ("optimizer", "scheduler", "scaler", "train_state")


def save_atomic(payload: Mapping[str, Any], path: pathlib.Path) -> None:
    """Writes ``payload`` with ``torch.save`` to ``path`` so that ``path`` is never partial."""
    atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def check_resumable(obj: Mapping[str, Any], source: pathlib.Path) -> None:
    """Raises :class:`CheckpointError` unless ``obj`` holds a whole training state."""
    missing = [key for key in RESUMABLE_KEYS if key not in obj]
    if missing:
        raise CheckpointError(
            f"The checkpoint {source} cannot be resumed from: it lacks {missing}. Start the "
            "run without --config.resume (add --config.overwrite=True to replace it).")


def make_checkpoint(*, model_name: str, architecture: str, config: Mapping[str, Any],
                    state_dict: Mapping[str, torch.Tensor],
                    **training_state: Any) -> Dict[str, Any]:
    """The dict saved by the runner.

    Args:
        model_name: the registry name of the model.
        architecture: the dataset architecture the model was built for.
        config: the resolved configuration, as a plain dict.
        state_dict: the unwrapped model's weights.
        **training_state: epoch, step, optimizer, scheduler, scaler, best_metric, ...

    Returns:
        The dict, with the sha256 ``checksum`` of all its tensors.
    """
    payload = {"format": FORMAT, "model": model_name, "architecture": architecture,
               "config": dict(config), "state_dict": dict(state_dict), **training_state}
    payload[CHECKSUM_KEY] = tensor_checksum(payload)
    return payload