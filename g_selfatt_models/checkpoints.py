"""Checkpoints in one place: their format, checksum, reading, verification and loading into
models, and the conversion of the originals' files (without the experiment runner).

A checkpoint of this project (:func:`make_checkpoint`) is a dict with the model's registry name, the
dataset architecture, the full resolved configuration (from which the model is rebuilt), the
weights and the training state. It carries a sha256 checksum of all its tensors, verified
whenever it is read, so a damaged copy (one flipped bit) is reported instead of loaded.

Weights are always loaded strictly. Besides the project's checkpoints, :func:`weights_from`
accepts a bare ``state_dict`` as saved by the original implementations, with or without the
``module.`` prefix of ``nn.DataParallel``, translated by the model's ``convert_checkpoint``;
the authors' released files are recognised by their sha256 (:mod:`g_selfatt_models.released`).

    model = load_model("saved/rotMNIST5k_model_p4sa_....pt").eval()
    model = load_model("model.pth", model="att_p4cnn", dataset="rotMNIST").eval()

The runner writes the dict to disk atomically (:func:`runner.files.save_checkpoint`) and names the
files after the run's identity (:mod:`runner.paths`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import types
import zipfile
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Union

import torch
from torch import nn

from g_selfatt.compat.state_dict import derived_state_shapes, recorded_group_axis_index
from g_selfatt_models import released
from g_selfatt_models.registry import (DataSpec, ModelSpec, check_defined_for, create_model, get_data_spec, get_model_spec,
                             model_settings)

logger = logging.getLogger(__name__)

# Key prefixes added by wrappers: nn.DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Marks the checkpoints written by this project.
FORMAT = "g_selfatt.checkpoint.v1"
# Keys every checkpoint of this project has.
REQUIRED_KEYS = ("model", "architecture", "config", "state_dict")
CHECKSUM_KEY = "checksum"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or made for another model."""


# Keys a resumable checkpoint adds to those of every checkpoint.
RESUMABLE_KEYS = ("optimizer", "scheduler", "scaler", "train_state")


def make_checkpoint(*, model_name: str, architecture: str, config: Mapping[str, Any],
                    state_dict: Mapping[str, torch.Tensor],
                    **training_state: Any) -> Dict[str, Any]:
    """The dict of a checkpoint of this project.

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


def check_resumable(obj: Mapping[str, Any], source: pathlib.Path) -> None:
    """Raises :class:`CheckpointError` unless ``obj`` holds a whole training state."""
    missing = [key for key in RESUMABLE_KEYS if key not in obj]
    if missing:
        raise CheckpointError(
            f"The checkpoint {source} cannot be resumed from: it lacks {missing}. Start the "
            "run without --config.resume (add --config.overwrite=True to replace it).")


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


# The file inside a run folder of the original implementations (``saved/model_<...>_seed_0/``).
ORIGINAL_FILE_NAME = "model.pth"


def checkpoint_file(path: Union[str, pathlib.Path]) -> pathlib.Path:
    """``path``, or the ``model.pth`` inside it when it is a run folder of the originals, as released."""
    path = pathlib.Path(path)
    if path.is_dir():
        inside = path / ORIGINAL_FILE_NAME
        if not inside.is_file():
            raise CheckpointError(f"The checkpoint path {path} is a folder without a {ORIGINAL_FILE_NAME}; "
                                  "give the checkpoint file itself.")
        return inside
    return path


def read(path: pathlib.Path) -> Any:
    """Loads a checkpoint file on the CPU, tensors and plain Python values only.

    A checkpoint of this project is also checked: its keys, and the checksum of its tensors.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a PyTorch file, holds
            other Python objects than tensors and plain values, or is a checkpoint of this
            project whose content does not match its checksum or lacks keys.
    """
    path = checkpoint_file(path)
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


def is_project_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` was written by :func:`make_checkpoint`."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


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
                source: pathlib.Path, *, index_recorded: bool = True) -> None:
    """Loads every parameter and buffer of ``model`` from ``state_dict``.

    ``index_recorded``: the model was built with the group-axis index its weights were trained
    with (the runner's checkpoints record it); ``False`` for files of the original
    implementations, whose group self-attention layers then load with the original index
    (:mod:`g_selfatt.nn.attention`).

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
    with recorded_group_axis_index() if index_recorded else contextlib.nullcontext():
        model.load_state_dict(state_dict, strict=True)


def _abridge(items: list, limit: int = 20) -> str:
    """The first ``limit`` items of a list, with a count of the rest."""
    shown = ", ".join(items[:limit]) or "none"
    return shown if len(items) <= limit else f"{shown}, ... and {len(items) - limit} more"


def model_input(data: DataSpec, spec: ModelSpec, requested: int = 0) -> DataSpec:
    """The DataSpec of the images as the model sees them: ``requested`` pixels a side, or (0)
    the dataset's side enlarged to the model's ``min_image_size`` where that is larger.

    Raises:
        ValueError: a requested side below the model's minimum.
    """
    size = requested or max(data.image_size, spec.min_image_size)
    if size < spec.min_image_size:
        raise ValueError(f"Model {spec.name!r} needs images of at least {spec.min_image_size}x"
                         f"{spec.min_image_size} pixels; use an image size of {spec.min_image_size} or larger (or 0).")
    return dataclasses.replace(data, image_size=size)


def report_origin(path: pathlib.Path, model_name: str, original_architecture: bool = False) -> None:
    """Logs whether a file that this project did not write is one of the authors' released files,
    and warns where it holds another network than ``model_name`` (built with
    ``original_architecture``).

    Raises:
        CheckpointError: a damaged copy of a released file.
    """
    try:
        entry = released.identify(path)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if entry is None:
        logger.info("%s is not one of the authors' released checkpoints; its weights are loaded "
                    "strictly, but no checksum vouches for them.", path)
        return
    logger.info("%s is the authors' released %s checkpoint (%s, sha256 verified).", path,
                entry.model, entry.dataset)
    if not entry.loads_into(model_name, original_architecture):
        also = (f", or into --config.model={entry.original_name} with --config.original_architecture=True "
                "(the original script's network for that name)" if entry.original_name else "")
        logger.warning("The released file of folder %s holds %s (%s); it loads into --config.model=%s%s, "
                       "not into %s.", entry.folder, entry.model, entry.note or "as its name says",
                       entry.model, also, model_name)


def check_attention_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], spec: ModelSpec,
                            source: Union[str, pathlib.Path]) -> None:
    """Refuses, with the model it belongs to, a checkpoint without attention weights for a model with them.

    Raises:
        CheckpointError: ``spec`` is attentive, ``model`` has attention weights and ``weights`` none.
    """
    if not spec.plain_model or not any("attention" in key for key in model.state_dict()):
        return
    if not any("attention" in key for key in weights):
        raise CheckpointError(
            f"The checkpoint {source} has no attention weights, so it belongs to the plain model "
            f"{spec.plain_model!r}; load it with --config.model={spec.plain_model} (or, where the original "
            f"script trained {spec.name!r} without attention, with --config.original_architecture=True).")


def load_weights(model: nn.Module, saved: Any, model_name: str, spec: ModelSpec,
                 data: DataSpec, source: Union[str, pathlib.Path], *, original_architecture: bool = False) -> None:
    """Loads what :func:`read` returned strictly into ``model``.

    ``original_architecture``: ``model`` was built as the original scripts built ``model_name``.

    Raises:
        CheckpointError: a checkpoint of another model, or weights that do not fit.
    """
    if not is_project_checkpoint(saved):
        report_origin(pathlib.Path(source), model_name, original_architecture)
    try:
        weights = weights_from(saved, model_name=model_name, architecture=data.architecture,
                               convert=spec.convert_checkpoint, source=source)
    except ValueError as error:
        raise CheckpointError(f"Cannot use {source} for {model_name!r}: {error}") from error
    check_attention_weights(model, weights, spec, source)
    load_strict(model, weights, source, index_recorded=is_project_checkpoint(saved))


def load_model(path: Union[str, pathlib.Path], model: str = "", dataset: str = "", *,
               original_architecture: bool = False) -> nn.Module:
    """Builds a model and loads a checkpoint into it strictly.

    A checkpoint written by this project's runner names its model and holds its whole
    configuration, so the path is enough::

        model = load_model("saved/rotMNIST5k_model_p4sa_....pt").eval()

    A state_dict of the original implementations (the authors' released ``model.pth``
    files, with or without the ``module.`` prefix) needs the model and dataset names; the
    model is built with its defaults for that dataset and the keys are converted by its
    registered converter::

        model = load_model("model.pth", model="att_p4cnn", dataset="rotMNIST").eval()

    Args:
        path: the checkpoint file.
        model: registered model name (for files of the original implementations).
        dataset: dataset name, which selects the architecture (likewise).
        original_architecture: build ``model`` as the original scripts built that name
            (likewise; e.g. the released ``f_att_p4m_densenet`` folder holds a plain P4MDenseNet).

    Raises:
        CheckpointError: no such file, a file of the original implementations without
            ``model`` and ``dataset``, or weights that do not fit.
        ValueError: an unknown model or dataset name.
    """
    path = checkpoint_file(path)
    return model_from(read(path), path, model, dataset, original_architecture=original_architecture)


def model_from(saved: Any, path: pathlib.Path, model: str = "", dataset: str = "", *,
               original_architecture: bool = False) -> nn.Module:
    """:func:`load_model` for a checkpoint already read from ``path`` (by :func:`read`).

    For callers that need the checkpoint's other entries too, so the file is read once.
    """
    if is_project_checkpoint(saved):
        config = dict(saved["config"])
        for name, asked, held in (("model", model, saved["model"]), ("dataset", dataset, config["dataset"])):
            if asked and asked != held:
                raise CheckpointError(
                    f"{path} holds {saved['model']} trained on {config['dataset']}, not the {name} {asked!r} "
                    f"asked for; leave {name}= out (a checkpoint of this project names its model and dataset) "
                    "or give another file.")
        model, dataset = saved["model"], config["dataset"]
    elif not (model and dataset):
        raise CheckpointError(
            f"{path} is not a checkpoint written by this project's runner, so it does not say which "
            "model it holds; give it with load_model(path, model=..., dataset=...)."
        )
    spec, data = get_model_spec(model), get_data_spec(dataset)
    check_defined_for(spec, data.architecture)
    if is_project_checkpoint(saved):  # its configuration is already resolved
        settings: Any = types.SimpleNamespace(**config)
        data_in = model_input(data, spec, config.get("image_size", 0))  # absent from older files
    else:
        settings = model_settings(model, data, {"original_architecture": original_architecture})
        data_in = model_input(data, spec)
    network = create_model(model, settings, data_in)
    load_weights(network, saved, model, spec, data, path,
                 original_architecture=getattr(settings, "original_architecture", False))
    return network
