"""Filling the configuration's unset fields and checking its values.

A field created with ``config_dict.placeholder`` in ``config.py`` is unset (``None``) until the
user sets it. :func:`resolve_config` fills every unset field, in this order of precedence:

1. the value given on the command line (the field is already set and is left alone);
2. the model's defaults for the dataset's architecture (``ModelSpec.defaults[architecture]``);
3. :data:`FALLBACKS` below.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

from ml_collections import config_dict

import config as config_file
from runner.errors import ConfigError

# Values used when neither the command line nor the model's defaults set a field. They make
# the quick start (p4sa on rotDigits) train in well under two minutes on a laptop CPU.
FALLBACKS: Dict[str, Any] = {
    "optimizer": "Adam",
    "optimizer_momentum": 0.9,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 32,
    "epochs": 3,
    "scheduler": "constant",
    "sched_decay_steps": (),
    "sched_decay_factor": 2.0,
    "sched_patience": 20,
    "warmup_epochs": 10.0,
    "grad_clip": 0.0,
    "amp": "none",
    "augment": False,
    "norm_type": "LayerNorm",
    "attention_type": "Local",
    "activation_function": "Swish",
    "patch_size": 5,
    "dropout_att": 0.1,
    "dropout_values": 0.1,
    "whitening_scale": 1.41421356,
    "valid_size": None,
}

# The values each enumerated field accepts.
CHOICES: Dict[str, tuple] = {
    "optimizer": ("SGD", "Adam"),
    "scheduler": ("constant", "multistep", "linear_warmup_cosine", "plateau"),
    "amp": ("none", "fp16", "bf16"),
    "validation": ("held_out", "test"),
    "device": ("auto", "cpu", "cuda"),
    "attention_type": ("Local", "Global"),
    "group_axis_index": ("relative", "original"),
    "attention_impl": ("reference", "efficient"),
    "attention_formulation": ("chunked", "full"),
}

# Numeric fields that may not be negative (0 means "off" or "all" for most of them).
NON_NEGATIVE = ("optimizer_momentum", "weight_decay", "grad_clip", "warmup_epochs",
                "sched_patience", "max_examples", "max_steps", "num_workers", "num_threads",
                "rotation_angles", "log_every", "image_size")


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
    check_config(config)
    return origins


def _as_field_type(value: Any) -> Any:
    """Lists become tuples (the type of sequence fields in config.py)."""
    return tuple(value) if isinstance(value, list) else value


def check_config(config: config_dict.ConfigDict) -> None:
    """Raises :class:`ConfigError` for a value outside its accepted range."""
    for name, valid in CHOICES.items():
        if config[name] not in valid:
            raise ConfigError(
                f"Unknown {name} {config[name]!r}; expected one of {list(valid)} "
                f"(set it with --config.{name}=...)."
            )
    for name in ("batch_size", "epochs"):
        if config[name] < 1:
            raise ConfigError(f"config.{name} must be at least 1, got {config[name]}.")
    for name in NON_NEGATIVE:
        if config[name] < 0:
            raise ConfigError(
                f"config.{name} must be 0 or more, got {config[name]} "
                f"(set it with --config.{name}=...)."
            )
    if config.lr <= 0:
        raise ConfigError(f"config.lr must be positive, got {config.lr}.")
    if config.scheduler in ("multistep", "plateau") and config.sched_decay_factor <= 1:
        raise ConfigError(
            f"The {config.scheduler} scheduler divides the learning rate by "
            f"config.sched_decay_factor, which must be above 1; got {config.sched_decay_factor}."
        )
    if config.resume and not config.train:
        raise ConfigError("config.resume=True continues training; it needs config.train=True.")
