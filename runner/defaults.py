"""Filling the configuration's unset fields and checking its values.

A field created with ``config_dict.placeholder`` in ``config.py`` is unset (``None``) until the
user sets it. :func:`resolve_config` fills every unset field, in this order of precedence:

1. the value given on the command line (the field is already set and is left alone);
2. the model's defaults for the dataset's architecture (``ModelSpec.defaults[architecture]``);
3. :data:`FALLBACKS` below.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
from typing import Any, Dict, Mapping, Sequence, Tuple

from absl import logging
from ml_collections import config_dict

import config as config_file
from attgconv.attentive import FORMULATIONS
from datasets import VALIDATION_MODES
from g_selfatt.nn.attention import GROUP_AXIS_INDICES, check_patch_size
from g_selfatt.nn.dispatch import ATTENTION_IMPLS
from g_selfatt_models.gsa_zoo import ATTENTION_TYPES
from g_selfatt_models.hyperparameters import GSAHyperParameters
from runner.distributed import DEVICES
from runner.errors import ConfigError
from runner.precision import AMP_DTYPES
from runner.schedulers import SCHEDULERS
from runner.signals import parse_stop_signals

# Values used when neither the command line nor the model's defaults set a field: the defaults of
# the hyper-parameter records (a short run that a laptop CPU finishes in minutes), and the fields
# of the runner itself.
FALLBACKS: Dict[str, Any] = {
    **GSAHyperParameters(),
    "grad_clip": 0.0,
    "amp": "none",
    "valid_size": None,  # None: the dataset's usual size
}

# The values each enumerated field accepts.
# (the modules that use a field own its values).
OPTIMIZERS = ("SGD", "Adam", "AdamW")  # trainer.build_optimizer
CHOICES: Dict[str, tuple] = {
    "optimizer": OPTIMIZERS,
    "scheduler": SCHEDULERS,
    "amp": tuple(AMP_DTYPES),
    "validation": VALIDATION_MODES,
    "device": DEVICES,
    "attention_type": ATTENTION_TYPES,
    "group_axis_index": GROUP_AXIS_INDICES,
    "attention_impl": ATTENTION_IMPLS,
    "attention_formulation": FORMULATIONS,
}

# Values of the original g_selfatt config.py that this configuration spells otherwise: the same
# meaning, read as ours (its default device "" ran on the CPU).
ORIGINAL_VALUES: Dict[str, Dict[Any, Any]] = {"device": {"": "cpu"}}

# Numeric fields that may not be negative (0 means "off" or "all" for most of them).
NON_NEGATIVE = ("optimizer_momentum", "weight_decay", "grad_clip", "warmup_epochs",
                "sched_patience", "max_examples", "max_steps", "num_workers", "num_threads",
                "rotation_angles", "log_every", "image_size", "seed")
# Fields that are fractions: [low, high).
UNIT_INTERVAL = {"dropout_att": (0.0, 1.0), "dropout_values": (0.0, 1.0),
                 "optimizer_momentum": (0.0, 1.0)}
# Fields that become part of a file or run name.
NAME_FIELDS = ("comment", "wandb_project")
_NAME_PATTERN = re.compile(r"[A-Za-z0-9._+-]*")
_EVERY_PATTERN = re.compile(r"(\d+(?:\.\d*)?)\s*(s|sec|min|m|h)?")
_SECONDS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def placeholder_fields() -> set:
    """Names of the fields that ``config.py`` leaves unset (created with ``placeholder``)."""
    fresh = config_file.get_config()
    return {name for name in fresh.keys() if fresh[name] is None}


def resolve_config(config: config_dict.ConfigDict,
                   model_defaults: Mapping[str, Any]) -> Dict[str, str]:
    """Fills the unset fields of ``config`` in place and checks the result.

    Args:
        config: the (locked) experiment configuration.
        model_defaults: the model's defaults for the dataset's architecture.

    Returns:
        For every field that was unset, where its value came from: ``"model"`` or
        ``"fallback"``.

    Raises:
        ValueError: ``model_defaults`` names a field that is not a placeholder of config.py
            (a mistake in the model registry).
        ConfigError: a value is not one of the accepted ones.
    """
    unset_names = placeholder_fields()
    unknown = sorted(set(model_defaults) - unset_names)
    if unknown:
        raise ValueError(
            f"Model defaults set {unknown}, which are not unset fields of config.py; "
            f"they may set only {sorted(unset_names)}."
        )
    origins = {}
    for name in sorted(unset_names):
        if config[name] is not None:
            continue
        if name in model_defaults:
            config[name] = _as_field_type(model_defaults[name])
            origins[name] = "model"
        else:
            config[name] = FALLBACKS[name]
            origins[name] = "fallback"
    _read_original_values(config)
    check_config(config)
    return origins


def _read_original_values(config: config_dict.ConfigDict) -> None:
    """Replaces the original configuration's spellings (:data:`ORIGINAL_VALUES`) by ours."""
    for name, spellings in ORIGINAL_VALUES.items():
        if config[name] in spellings:
            logging.info("config.%s=%r (the original configuration's value) means %r here.", name,
                         config[name], spellings[config[name]])
            config[name] = spellings[config[name]]


def _as_field_type(value: Any) -> Any:
    """Lists become tuples (the type of sequence fields in config.py)."""
    return tuple(value) if isinstance(value, list) else value


def check_config(config: config_dict.ConfigDict) -> None:
    """Checks every field of a resolved configuration; the one place where values are checked.

    Raises:
        ConfigError: naming the field, the bad value and what is accepted.
    """
    for name, valid in CHOICES.items():
        if config[name] not in valid:
            raise ConfigError(
                f"Unknown {name} {config[name]!r}; expected one of {list(valid)} "
                f"(set it with --config.{name}=...)."
            )
    for name, value in config.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config.{name} must be a finite number, got {value}.")
    for name in ("batch_size", "epochs", "max_nonfinite_steps"):
        if config[name] < 1:
            raise ConfigError(f"config.{name} must be at least 1, got {config[name]}.")
    for name in NON_NEGATIVE:
        if config[name] < 0:
            raise ConfigError(
                f"config.{name} must be 0 or more, got {config[name]} "
                f"(set it with --config.{name}=...)."
            )
    for name, (low, high) in UNIT_INTERVAL.items():
        if not low <= config[name] < high:
            raise ConfigError(f"config.{name} must lie in [{low}, {high}), got {config[name]}.")
    for name in ("lr", "whitening_scale", "collective_timeout_minutes"):
        if config[name] <= 0:
            raise ConfigError(f"config.{name} must be positive, got {config[name]}.")
    _check_schedule(config)
    _check_layout(config)
    if config.attention_type == "Local":
        try:
            check_patch_size(config.patch_size)
        except ValueError as error:
            raise ConfigError(
                f"Local attention needs an odd config.patch_size of at least 3 (the neighbourhood "
                f"is centred on the query), got {config.patch_size}; for attention over the whole "
                "image use --config.attention_type=Global.") from error
    for name in NAME_FIELDS:
        if not _NAME_PATTERN.fullmatch(config[name]) or ".." in config[name]:
            raise ConfigError(
                f"config.{name}={config[name]!r} becomes part of a file or run name; use only "
                "letters, digits and . _ + - (no '/', no '..').")
    _check_file_path(config.path)
    parse_checkpoint_every(config.checkpoint_every)
    try:
        parse_stop_signals(config.stop_signals)
    except ValueError as error:
        raise ConfigError(f"config.stop_signals={config.stop_signals!r}: {error}.") from None
    if not (config.train or config.test):
        raise ConfigError("config.train=False and config.test=False leave nothing to do; set one of them "
                          "to True.")
    if config.resume and not config.train:
        raise ConfigError("config.resume=True continues training; it needs config.train=True.")
    if config.resume and config.overwrite:
        raise ConfigError("config.resume=True continues a run and config.overwrite=True starts it "
                          "again; give one of them.")


def _check_layout(config: config_dict.ConfigDict) -> None:
    """The GSA-Net layout fields that are set (unset ones take the dataset's layout)."""
    if config.num_channels is not None and (config.num_channels < 4 or config.num_channels % 4):
        raise ConfigError(
            f"config.num_channels must be a positive multiple of 4 (the lifting layer splits each "
            f"head's num_channels / 2 channels into a row and a column half), got {config.num_channels}.")
    if config.num_heads is not None and config.num_heads < 1:
        raise ConfigError(f"config.num_heads must be at least 1, got {config.num_heads}.")
    if config.block_sizes is not None and (
            not config.block_sizes or any(not isinstance(n, int) or n < 0 for n in config.block_sizes)):
        raise ConfigError(
            f"config.block_sizes must be a tuple of block counts (0 or more), one per stage, e.g. "
            f"--config.block_sizes='(0,1,1)'; got {config.block_sizes!r}.")


def _check_schedule(config: config_dict.ConfigDict) -> None:
    """The decay settings of the schedulers that use them."""
    if config.scheduler in ("multistep", "plateau") and config.sched_decay_factor < 1:
        raise ConfigError(
            f"The {config.scheduler} scheduler divides the learning rate by "
            f"config.sched_decay_factor, which must be at least 1 (1, the original configuration's "
            f"default, keeps the learning rate); got {config.sched_decay_factor}."
        )
    steps = config.sched_decay_steps
    if not (isinstance(steps, tuple) and all(isinstance(s, int) and not isinstance(s, bool)
                                             and s > 0 for s in steps)
            and list(steps) == sorted(set(steps))):
        raise ConfigError(
            f"config.sched_decay_steps must be increasing positive epoch numbers, e.g. "
            f"--config.sched_decay_steps='(200, 250, 300)'; got {steps!r}.")


def _check_file_path(path: str) -> None:
    """``config.path``, when given, must name a file (not a folder)."""
    if not path:
        return
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ConfigError(
            f"config.path={path!r} is a folder; it must name the checkpoint file, e.g. "
            f"--config.path={os.path.join(path.rstrip('/') or '.', 'run.pt')} (or use "
            "--config.save_dir for the folder).")
    parent = os.path.dirname(path)
    if parent and os.path.isfile(parent):
        raise ConfigError(f"config.path={path!r}: {parent!r} is a file, not a folder.")


def parse_checkpoint_every(text: str) -> Tuple[int, float]:
    """``config.checkpoint_every`` as ``(steps, seconds)``; one of them is 0.

    Raises:
        ConfigError: neither a whole number of steps nor a duration like ``10min``.
    """
    match = _EVERY_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"config.checkpoint_every={text!r} is neither a number of steps (e.g. 500) nor a "
            f"duration (e.g. 30s, 10min, 2h); 0 writes checkpoints only at the end of epochs.")
    number, unit = match.groups()
    if not unit:
        if float(number) != int(float(number)):
            raise ConfigError(f"config.checkpoint_every={text!r}: a number of steps must be whole.")
        return int(float(number)), 0.0
    return 0, float(number) * _SECONDS[unit]


def flag_value(value: Any) -> str:
    """``value`` as a ``--config.<field>=`` flag spells it for ``main.py`` (tuples without spaces)."""
    if isinstance(value, tuple):
        return "(" + ",".join(str(item) for item in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def parse_with_config_flags(parser: "argparse.ArgumentParser", argv: Sequence[str]) -> "argparse.Namespace":
    """``parser``'s options from ``argv``, with the ``--config.<field>=<value>`` flags it leaves in
    ``extra`` (for scripts that pass them on to ``main.py``); anything else is refused by ``parser``."""
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if not arg.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; only --config.<field>=<value> is passed to main.py")
    args.extra = extra
    return args


def check_field_names(argv: Sequence[str]) -> None:
    """Checks that every ``--config.<field>`` flag names a field of ``config.py``.

    Raises:
        ConfigError: for the first unknown field, with the closest names.
    """
    fields = list(config_file.get_config().keys())
    for argument in argv:
        for prefix in ("--config.", "--noconfig.", "-config."):
            if argument.startswith(prefix):
                name = argument[len(prefix):].split("=", 1)[0].split(".", 1)[0]
                if name not in fields:
                    raise ConfigError(unknown_field_message(name, fields))


def unknown_field_message(name: str, fields: Sequence[str]) -> str:
    """``Unknown field 'lrr'; did you mean 'lr'?`` and where the fields are listed."""
    close = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return (f"Unknown field {name!r}{hint} The fields are listed by `python main.py --help` "
            "(and in config.py).")


_FIELD_LINE = re.compile(r"\s*config\.(\w+)\s*=")
_GROUP_LINE = re.compile(r"\s*# -+ (.+?) -+\s*$")


def field_help() -> str:
    """Every field of ``config.py`` with its default and meaning, grouped as in the file.

    The text is read from the comments above each field in ``config.py``, so the listing and
    the file never disagree; a placeholder shows that the model's default fills it, and the
    fallback (:data:`FALLBACKS`, the defaults of the hyper-parameter records) where the model has none.
    """
    defaults = config_file.get_config()
    lines, comment = [], []
    for line in inspect.getsource(config_file).splitlines():
        group, field = _GROUP_LINE.match(line), _FIELD_LINE.match(line)
        if group:
            lines.append(f"\n  {group.group(1)}:")
            comment = []
        elif field and field.group(1) in defaults:
            name = field.group(1)
            value = defaults[name]
            shown = f"(the model's default, else {FALLBACKS[name]!r})" if value is None else repr(value)
            meaning = " ".join(comment) or ""
            lines.append(f"    --config.{name}={shown}\n        {meaning}")
            comment = []
        elif line.strip().startswith("#"):
            comment.append(line.strip().lstrip("#").strip())
        else:
            comment = []
    return "The experiment configuration; set any field with --config.<field>=<value>.\n" + "\n".join(lines)
