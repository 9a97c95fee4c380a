"""Reading and writing checkpoints.

A checkpoint written by this project is a dict (see :func:`make_checkpoint`) with the model's
name, architecture, the full configuration and its run identity, the weights, and the training
state (epoch, step, optimizer, scheduler and loss-scaler states, random states, best validation
metric). It carries a sha256 checksum of all its tensors, verified whenever it is read, so a
damaged copy (one flipped bit) is reported instead of loaded. Files are written atomically: a
temporary file in the same folder is renamed over the target, so a run killed while saving
leaves the previous checkpoint intact. They are created with the permissions of the user's umask.

Weights are always loaded strictly. Besides the project's checkpoints, :func:`weights_from`
accepts a bare ``state_dict`` as saved by the original implementations, with or without the
``module.`` prefix of ``nn.DataParallel``, translated by the model's ``convert_checkpoint``.
"""

from __future__ import annotations

import hashlib
import pathlib
import zipfile
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

import torch
from torch import nn

from g_selfatt.nn.attention import derived_state_shapes
from runner.errors import CheckpointError
from runner.files import atomic_write

# Key prefixes added by wrappers: nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Marks the checkpoints written by this project.
FORMAT = "g_selfatt.checkpoint.v1"
# Keys every checkpoint of this project has, and those a resumable one adds.
REQUIRED_KEYS = ("model", "architecture", "config", "state_dict")
RESUMABLE_KEYS = ("optimizer", "scheduler", "scaler", "train_state")
CHECKSUM_KEY = "checksum"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def tensor_checksum(obj: Any) -> str:
    """sha256 over every tensor in a nested structure of dicts, lists and tuples.

    Each tensor contributes its path in the structure, dtype, shape and raw bytes, in a
    fixed order, so the digest changes with any weight, optimizer or random-state bit.
    """
    digest = hashlib.sha256()
    for path, tensor in _tensors(obj, ""):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{path}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _tensors(obj: Any, path: str) -> Iterator[tuple]:
    """``(path, tensor)`` for every tensor below ``obj``, dict keys in sorted order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            if not (path == "" and key == CHECKSUM_KEY):
                yield from _tensors(obj[key], f"{path}/{key}")
    elif isinstance(obj, (list, tuple)):
        for index, item in enumerate(obj):
            yield from _tensors(item, f"{path}/{index}")


def save_atomic(payload: Mapping[str, Any], path: pathlib.Path) -> None:
    """Writes ``payload`` with ``torch.save`` to ``path`` so that ``path`` is never partial."""
    atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def read(path: pathlib.Path) -> Any:
    """Loads a checkpoint file on the CPU, tensors and plain Python values only.

    A checkpoint of this project is also checked: its keys, and the checksum of its tensors.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a PyTorch file, holds
            other Python objects than tensors and plain values, or is a checkpoint of this
            project whose content does not match its checksum or lacks keys.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise CheckpointError(f"The checkpoint path {path} is a folder, not a file.")
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}.")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"The checkpoint {path} is empty (0 bytes): it was cut off while being written or "
            "copied. Copy it again, or use another checkpoint.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types; each is explained below
        raise CheckpointError(f"Cannot read the checkpoint {path} ({size:,} bytes): "
                              f"{_diagnose(path, error)}") from error
    if is_project_checkpoint(obj):
        check_project_checkpoint(obj, path)
    return obj


def _diagnose(path: pathlib.Path, error: Exception) -> str:
    """What is wrong with a file that ``torch.load`` could not read, in one sentence."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return ("the file is truncated (its zip archive has no end record): it was cut off "
                    "while being written or copied. Copy it again, or use another checkpoint.")
        if "weights only" in str(error).lower():
            return ("it holds Python objects other than tensors and plain values, which are "
                    "not loaded for safety. Save the model's state_dict() instead "
                    f"(torch said: {_first_line(error)}).")
        return ("its archive is damaged (torch said: "
                f"{_first_line(error)}). Copy it again, or use another checkpoint.")
    if head.startswith(_PICKLE_MAGIC):
        return (f"the file in torch's legacy format is truncated or damaged (torch said: "
                f"{_first_line(error)}).")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "it is not a PyTorch checkpoint (it starts with neither a zip nor a pickle header)."
    return f"it is not a PyTorch checkpoint but a text file (it starts with {text[:40]!r})."


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def check_project_checkpoint(obj: Mapping[str, Any], source: pathlib.Path) -> None:
    """Checks the keys and the checksum of a checkpoint written by :func:`make_checkpoint`.

    Raises:
        CheckpointError: a required key is missing, or the tensors do not match the checksum.
    """
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise CheckpointError(
            f"The checkpoint {source} is marked as this project's but lacks {missing}: it was "
            "edited or written by another program. Use another checkpoint.")
    recorded = obj.get(CHECKSUM_KEY)
    if recorded is not None and recorded != tensor_checksum(obj):
        raise CheckpointError(
            f"The checkpoint {source} is damaged: its tensors do not match the sha256 checksum "
            "recorded when it was written (a changed bit in a copy or on the disk). Copy it "
            "again from where it was made, or use another checkpoint.")


def check_resumable(obj: Mapping[str, Any], source: pathlib.Path) -> None:
    """Raises :class:`CheckpointError` unless ``obj`` holds a whole training state."""
    missing = [key for key in RESUMABLE_KEYS if key not in obj]
    if missing:
        raise CheckpointError(
            f"The checkpoint {source} cannot be resumed from: it lacks {missing}. Start the "
            "run without --config.resume (add --config.overwrite=True to replace it).")


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

    Returns:
        The dict, with the sha256 ``checksum`` of all its tensors.
    """
    payload = {"format": FORMAT, "model": model_name, "architecture": architecture,
               "config": dict(config), "state_dict": dict(state_dict), **training_state}
    payload[CHECKSUM_KEY] = tensor_checksum(payload)
    return payload


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
    derived = derived_state_shapes(model)  # accepted, not required: older files hold them
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected) - set(derived))
    shapes = {**derived,
              **{key: value.shape for key, value in expected.items()}}
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(shape)}"
        for key, shape in shapes.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape)
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
