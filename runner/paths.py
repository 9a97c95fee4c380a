"""Checkpoint file names derived from the configuration.

The name lists the settings that distinguish runs, in the order of the original GSA-Net code,
e.g. ``rotMNIST_model_p4sa_type_Local_patch_5_dpatt_0.1_dpval_0.1_activ_Swish_norm_LayerNorm_
white_1.41421356_optim_Adam_lr_0.001_bs_8_ep_300_wd_0.0001_seed_0_sched_constant.pt``.
Settings this project added appear only when they differ from their default, so runs with the
original's settings keep the original's names.
"""

from __future__ import annotations

import os
import pathlib

from ml_collections import config_dict

from runner.errors import ConfigError

# Schedulers whose file names carry no decay settings (as in the original code).
_SCHEDULERS_WITHOUT_DECAY = ("constant", "linear_warmup_cosine")


def checkpoint_stem(config: config_dict.ConfigDict, family: str) -> str:
    """The file name (without suffix) of the run described by ``config``.

    Args:
        config: the resolved configuration.
        family: the model's family in the registry; self-attention models (``"gsa"``) add
            their attention settings to the name.
    """
    parts = [config.dataset]
    if config.augment or config.dataset == "CIFAR10":
        parts.append(f"augm_{config.augment}")
    parts.append(f"model_{config.model}")
    if config.get("image_size", 0):
        parts.append(f"img_{config.image_size}")
    if family == "gsa":
        parts.append(f"type_{config.attention_type}")
        if config.attention_type == "Local":
            parts.append(f"patch_{config.patch_size}")
        parts.append(
            f"dpatt_{config.dropout_att}_dpval_{config.dropout_values}"
            f"_activ_{config.activation_function}_norm_{config.norm_type}"
            f"_white_{config.whitening_scale}"
        )
        if config.group_axis_index != "relative":
            parts.append(f"gaxis_{config.group_axis_index}")
    parts.append(f"optim_{config.optimizer}")
    if config.optimizer == "SGD":
        parts.append(f"momentum_{config.optimizer_momentum}")
    parts.append(
        f"lr_{config.lr}_bs_{config.batch_size}_ep_{config.epochs}_wd_{config.weight_decay}"
        f"_seed_{config.seed}_sched_{config.scheduler}"
    )
    if config.scheduler not in _SCHEDULERS_WITHOUT_DECAY:
        parts.append(f"schdec_{config.sched_decay_factor}")
        if config.scheduler == "multistep":
            parts.append(f"schsteps_{config.sched_decay_steps}")
    if config.validation != "held_out":
        parts.append(f"select_{config.validation}")
    if config.comment:
        parts.append(f"comment_{config.comment}")
    return "_".join(parts)


def best_checkpoint_path(config: config_dict.ConfigDict, family: str) -> pathlib.Path:
    """``config.path`` when set, else ``<save_dir>/<stem>.pt``: the selected (best) model."""
    if config.path:
        return pathlib.Path(config.path)
    return pathlib.Path(config.save_dir) / f"{checkpoint_stem(config, family)}.pt"


def last_checkpoint_path(best_path: pathlib.Path) -> pathlib.Path:
    """The checkpoint of the latest training state, next to the best one."""
    return best_path.with_name(f"{best_path.stem}.last{best_path.suffix}")


def output_prefix(best_path: pathlib.Path) -> pathlib.Path:
    """Prefix of the test reports (CSV, PNG) written next to the checkpoint."""
    return best_path.with_suffix("")


def prepare_folder(best_path: pathlib.Path) -> None:
    """Creates the folder of ``best_path`` so that a run fails before training, not after.

    Raises:
        ConfigError: the folder cannot be created or is not writable.
    """
    folder = pathlib.Path(best_path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"Cannot create the checkpoint folder {folder} ({error.strerror}). Choose another "
            "one with --config.save_dir=PATH (or --config.path=FILE)."
        ) from error
    if not os.access(folder, os.W_OK):
        raise ConfigError(
            f"The checkpoint folder {folder} is not writable. Choose another one with "
            "--config.save_dir=PATH (or --config.path=FILE)."
        )
