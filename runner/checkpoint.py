"""Reading and writing checkpoints.

A checkpoint written by this project is a dict (see :func:`make_checkpoint`) with the model's
name, architecture, the full configuration, the weights, and the training state (epoch, step,
optimizer, scheduler and loss-scaler states, best validation metric). Files are written
atomically: a temporary file in the same folder is renamed over the target, so a run killed
while saving leaves the previous checkpoint intact.

Weights are always loaded strictly. Besides the project's checkpoints, :func:`load_weights`
accepts a bare ``state_dict`` as saved by the original implementations, with or without the
``module.`` prefix of ``nn.DataParallel``, translated by the model's ``convert_checkpoint``.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn

from runner.errors import CheckpointError

# Key prefixes added by wrappers: nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Marks the checkpoints written by this project.
FORMAT = "g_selfatt.checkpoint.v1"


def save_atomic(payload: Mapping[str, Any], path: pathlib.Path) -> None:
    """Writes ``payload`` with ``torch.save`` to ``path`` so that ``path`` is never partial."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as tmp_file:
            torch.save(dict(payload), tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def read(path: pathlib.Path) -> Any:
    """Loads a checkpoint file on the CPU, tensors and plain Python values only.

    Raises:
        CheckpointError: the file is missing or cannot be read.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(f"Cannot read the checkpoint {path}: {error}") from error


def is_project_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` was written by :func:`make_checkpoint`."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


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
    """
    return {"format": FORMAT, "model": model_name, "architecture": architecture,
            "config": dict(config), "state_dict": dict(state_dict), **training_state}


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Removes the ``module.`` / ``_orig_mod.`` prefixes that wrappers add to every key."""
    stripped = {}
    for key, value in state_dict.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        stripped[key] = value
    return stripped


def weights_from(obj: Any, *, model_name: str, architecture: str,
                 convert: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]],
                 source: pathlib.Path) -> Dict[str, torch.Tensor]:
    """The model weights held by a loaded checkpoint, with this project's key names.

    Args:
        obj: what :func:`read` returned.
        model_name: the model the weights are for.
        architecture: the dataset architecture the model was built for.
        convert: the model's ``convert_checkpoint`` (for original-implementation files).
        source: the file, for error messages.

    Raises:
        CheckpointError: a project checkpoint of another model or architecture, or a file
            that holds no state_dict.
    """
    if is_project_checkpoint(obj):
        if (obj["model"], obj["architecture"]) != (model_name, architecture):
            raise CheckpointError(
                f"The checkpoint {source} holds model {obj['model']!r} for the "
                f"{obj['architecture']} architecture, but this run builds {model_name!r} for "
                f"{architecture}. Pick the matching --config.model/--config.dataset or "
                "another --config.checkpoint."
            )
        return dict(obj["state_dict"])
    if not (isinstance(obj, Mapping) and obj and all(
            isinstance(value, torch.Tensor) for value in obj.values())):
        raise CheckpointError(
            f"{source} is neither a checkpoint of this project nor a state_dict of tensors."
        )
    state_dict = strip_wrapper_prefixes(obj)
    return dict(convert(state_dict)) if convert is not None else state_dict


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                source: pathlib.Path) -> None:
    """Loads every parameter and buffer of ``model`` from ``state_dict``.

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches, when the
            two do not match exactly.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"The checkpoint {source} does not fit the model (was it trained for another "
            f"model, dataset or setting?). Missing keys ({len(missing)}): {_abridge(missing)}. "
            f"Unexpected keys ({len(unexpected)}): {_abridge(unexpected)}. "
            f"Shape mismatches ({len(mismatched)}): {_abridge(mismatched)}."
        )
    model.load_state_dict(state_dict, strict=True)


def _abridge(items: list, limit: int = 20) -> str:
    """The first ``limit`` items of a list, with a count of the rest."""
    shown = ", ".join(items[:limit]) or "none"
    return shown if len(items) <= limit else f"{shown}, ... and {len(items) - limit} more"
