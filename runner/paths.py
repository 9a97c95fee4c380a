"""Run identity, checkpoint file names, and which files a run may write.

A checkpoint belongs to exactly one configuration. Its name is the readable stem of the
original GSA-Net code, e.g. ``rotMNIST_model_p4sa_type_Local_patch_5_dpatt_0.1_dpval_0.1_activ_
Swish_norm_LayerNorm_white_1.41421356_optim_Adam_lr_0.001_bs_8_ep_300_wd_0.0001_seed_0_sched_
constant``, followed by ``_`` and the first eight hex digits of the sha256 of the run's
*identity*: every resolved field that changes the data, the trained weights or their selection
(:func:`run_identity`). Settings this project added appear in the readable part only when they
differ from their default, and all of them are in the hash (those added after runs had been
named, :data:`SET_ONLY_IDENTITY`, only when set), so two configurations never share a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Any, Dict, List, Mapping

from ml_collections import config_dict

import config as config_file
from g_selfatt.nn.attention import DEFAULT_GROUP_AXIS_INDEX
from g_selfatt_models import checkpoints
from g_selfatt_models.checkpoints import CheckpointError
from runner.errors import ConfigError

# Fields that change neither the data, the trained weights nor their selection: where the run
# reads and writes, how fast it runs, what it reports, and how it is started or stopped.
# (device, num_workers and the attention implementations compute the same function.)
NOT_IDENTITY = ("train", "test", "pretrained", "checkpoint", "resume", "overwrite", "save_dir", "path",
                "rotation_angles", "log_every", "wandb", "wandb_project", "device", "num_workers",
                "num_threads", "download", "checkpoint_every", "max_nonfinite_steps", "stop_signals",
                "collective_timeout_minutes",
                "attention_impl", "attention_formulation")
# Fields of the self-attention architecture, part of the identity of GSA-Nets only.
GSA_FIELDS = ("norm_type", "attention_type", "activation_function", "patch_size", "dropout_att",
              "dropout_values", "whitening_scale", "group_axis_index", "num_channels", "num_heads",
              "block_sizes")
# Fields added after runs had been named: at their default a run is the one it was before they
# existed, so they join the identity only when they differ from it (and old names stay valid).
SET_ONLY_IDENTITY = ("original_architecture",)
# Fields a resumed run may change: the length of training (more epochs, another step limit).
RESUMABLE_CHANGES = ("epochs", "max_steps")
HASH_DIGITS = 8
# The checkpoints shipped with the project: a run never writes them.
SHIPPED_MANIFEST = pathlib.Path(__file__).resolve().parents[1] / "saved" / "manifest.json"

# The GSA-Net layout fields and their short names in a run's name (only when set).
_LAYOUT_NAMES = {"num_channels": "ch", "num_heads": "heads", "block_sizes": "blocks"}

# Schedulers whose file names carry no decay settings (as in the original code).
_SCHEDULERS_WITHOUT_DECAY = ("constant", "linear_warmup_cosine")


def checkpoint_stem(config: config_dict.ConfigDict, family: str) -> str:
    """The readable part of the name of the run described by ``config`` (no hash, no suffix).

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
        if config.group_axis_index != DEFAULT_GROUP_AXIS_INDEX:
            parts.append(f"gaxis_{config.group_axis_index}")
        changed = _layout_overrides(config)
        parts += [f"{short}_{_name_value(changed[name])}" for name, short in _LAYOUT_NAMES.items() if name in changed]
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
    if config.get("original_architecture", False):
        parts.append("arch_original")
    if config.validation != "held_out":
        parts.append(f"select_{config.validation}")
    if config.comment:
        parts.append(f"comment_{config.comment}")
    return "_".join(parts)


def _layout_overrides(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The GSA-Net layout fields of ``config`` that differ from its dataset's architecture."""
    from g_selfatt_models.gsa_zoo import layout_overrides
    from g_selfatt_models.registry import DATA_SPECS

    spec = DATA_SPECS.get(config.get("dataset"))
    return layout_overrides(config, spec.architecture if spec else "")


def _name_value(value: Any) -> str:
    """A field value as it appears in a run's name: ``(0, 1, 1)`` -> ``0-1-1``."""
    return "-".join(str(item) for item in value) if isinstance(value, (tuple, list)) else str(value)


def run_identity(config: Mapping[str, Any], family: str) -> Dict[str, Any]:
    """The fields that make a run what it is, as plain values.

    Fields missing from ``config`` (a checkpoint written before they existed) take their
    default from ``config.py``.

    Args:
        config: a resolved configuration (ConfigDict or the plain dict of a checkpoint).
        family: the model's family in the registry.
    """
    defaults = config_file.get_config().to_dict()
    values = {name: config.get(name, default) for name, default in defaults.items()}
    excluded = set(NOT_IDENTITY)
    if family != "gsa":
        excluded |= set(GSA_FIELDS)
    elif values["attention_type"] == "Global":
        excluded.add("patch_size")
    excluded |= {name for name in SET_ONLY_IDENTITY if values[name] == defaults[name]}
    if family == "gsa":  # a layout field unset, or at the architecture's own value, is the architecture
        excluded |= set(_LAYOUT_NAMES) - set(_layout_overrides(values))
    identity = {name: _plain(value) for name, value in values.items() if name not in excluded}
    identity["data_root"] = os.path.normpath(str(identity["data_root"]))
    if values["pretrained"] and values["train"]:  # fine-tuning starts from other weights
        identity["initial_weights"] = values["checkpoint"] or "own best checkpoint"
    return identity


def _plain(value: Any) -> Any:
    """Tuples and lists as lists, so that a value from a checkpoint compares equal."""
    return [_plain(item) for item in value] if isinstance(value, (list, tuple)) else value


def identity_hash(identity: Mapping[str, Any]) -> str:
    """The first :data:`HASH_DIGITS` hex digits of the sha256 of ``identity``."""
    text = json.dumps(dict(identity), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         allowed: tuple = ()) -> List[str]:
    """``field: saved -> current`` for every identity field that differs, except ``allowed``."""
    return [f"{name}: {saved.get(name)!r} -> {current.get(name)!r}"
            for name in sorted(set(saved) | set(current))
            if name not in allowed and saved.get(name) != current.get(name)]


def run_name(config: config_dict.ConfigDict, family: str) -> str:
    """The readable stem followed by the identity hash: the name of the run's files."""
    return f"{checkpoint_stem(config, family)}_{identity_hash(run_identity(config, family))}"


def best_checkpoint_path(config: config_dict.ConfigDict, family: str) -> pathlib.Path:
    """``config.path`` when set, else ``<save_dir>/<run name>.pt``: the selected (best) model."""
    if config.path:
        return pathlib.Path(config.path)
    return pathlib.Path(config.save_dir) / f"{run_name(config, family)}.pt"


def last_checkpoint_path(best_path: pathlib.Path) -> pathlib.Path:
    """The checkpoint of the latest training state, next to the best one."""
    return best_path.with_name(f"{best_path.stem}.last{best_path.suffix}")


# Files of the reports, after output_prefix.
REPORT_SUFFIXES = (".test.json", ".rotation.csv", ".rotation.png", ".metrics.csv", ".log")
REPORT_FOLDERS = (".tensorboard",)


def start_or_resume_flag(best_path: pathlib.Path) -> str:
    """The ``main.py`` flag for a scripted run (a table, a search) whose checkpoint is ``best_path``.

    ``--config.resume=True`` when the run's resumable checkpoint exists (an earlier session was cut
    short: the run goes on from its last step), else ``--config.overwrite=True`` (a fresh start).
    """
    return "--config.resume=True" if last_checkpoint_path(best_path).exists() else "--config.overwrite=True"


def output_prefix(best_path: pathlib.Path) -> pathlib.Path:
    """Prefix of the reports (metrics, test results, rotation curve) written next to the checkpoint."""
    return best_path.with_suffix("")


def test_report_prefix(best_path: pathlib.Path, config: Mapping[str, Any]) -> pathlib.Path:
    """Prefix of the test reports: the run's own, except for a test-only run of another checkpoint.

    ``--config.train=False --config.pretrained=True --config.checkpoint=OTHER`` tests OTHER with this
    run's flags; its reports go to ``<prefix>.tested/<OTHER's stem>_<hash of its path>.*``, so they
    never replace the reports of the run's own checkpoint (nor those of a third file).
    """
    prefix = output_prefix(best_path)
    if config["train"] or not config["checkpoint"]:
        return prefix
    other = pathlib.Path(config["checkpoint"]).expanduser().resolve()
    if other == best_path.resolve():
        return prefix
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", other.stem)[:180]  # a file name stays under 255 bytes
    tag = hashlib.sha256(str(other).encode()).hexdigest()[:HASH_DIGITS]
    return prefix.with_name(f"{prefix.name}.tested") / f"{stem}_{tag}"


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


def shipped_checkpoints() -> Dict[str, Dict[str, Any]]:
    """Path relative to saved/ -> record (model, dataset, sha256, ...) of every shipped checkpoint."""
    if not SHIPPED_MANIFEST.is_file():
        return {}
    return json.loads(SHIPPED_MANIFEST.read_text())["checkpoints"]


def is_shipped(path: pathlib.Path) -> bool:
    """Whether ``path`` is one of the shipped checkpoints (or its ``last`` companion)."""
    try:
        relative = pathlib.Path(path).resolve().relative_to(SHIPPED_MANIFEST.parent.resolve())
    except ValueError:
        return False
    names = [pathlib.Path(name) for name in shipped_checkpoints()]
    return relative in set(names) | {last_checkpoint_path(name) for name in names}


def check_run_files(best_path: pathlib.Path, identity: Mapping[str, Any], family: str, *,
                    resume: bool, overwrite: bool) -> None:
    """Refuses to train into files that belong to the project or to another run.

    * The checkpoints shipped in ``saved/`` are never written.
    * A file that holds a run of another configuration (possible only with ``config.path``), or
      that cannot be read as a checkpoint at all, is never overwritten nor deleted.
    * A run of the same configuration is continued only with ``resume`` and replaced only
      with ``overwrite``; ``overwrite`` deletes its files first, so that the two runs' files
      never mix.

    Raises:
        ConfigError: with the way out for each case.
    """
    last_path = last_checkpoint_path(best_path)
    for path in (best_path, last_path):
        if is_shipped(path):
            raise ConfigError(
                f"{path} is a checkpoint shipped with the project; a run never writes it. Test it "
                "with --config.pretrained=True --config.train=False, or train into another file "
                "with --config.save_dir=DIR or --config.path=FILE.")
    existing = [path for path in (best_path, last_path) if path.exists()]
    if not existing or resume:
        return
    state: Mapping[str, Any] = {}
    for path in existing:
        try:
            saved = checkpoints.read(path)
        except CheckpointError as error:  # not provably a file of this runner: never deleted
            raise ConfigError(
                f"{path} exists and cannot be read as a checkpoint ({str(error).splitlines()[0]}); a run "
                "never deletes or replaces a file it cannot identify as its own, --config.overwrite=True "
                "included. Move or delete the file yourself, or choose another --config.path.") from None
        state = saved.get("train_state", {})
        if not checkpoints.is_project_checkpoint(saved):
            raise ConfigError(f"{path} exists and is not a checkpoint of this project's runner; "
                              "choose another --config.path.")
        differences = identity_differences(run_identity(saved["config"], family), identity)
        if differences:
            raise ConfigError(
                f"{path} holds a run of another configuration ({'; '.join(differences)}); a run "
                "never overwrites another one. Choose another --config.path, or delete the file.")
    if overwrite:
        reports = [pathlib.Path(f"{output_prefix(best_path)}{suffix}") for suffix in REPORT_SUFFIXES]
        for path in existing + reports:
            if path.exists():
                path.unlink()
        for suffix in REPORT_FOLDERS:
            shutil.rmtree(f"{output_prefix(best_path)}{suffix}", ignore_errors=True)
        return
    where = f"epoch {state.get('epoch', '?')}, step {state.get('step', '?')}"
    raise ConfigError(
        f"A run of this configuration already exists ({where}; {existing[-1]}). Continue it with "
        "--config.resume=True (after --config.epochs=N for more epochs), test it with "
        "--config.pretrained=True --config.train=False, or train it again from the start with "
        "--config.overwrite=True.")
