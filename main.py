"""Trains and tests one model on one dataset.

Usage::

    python main.py                                   # p4sa on rotMNIST5k (real digits)
    python main.py --config.dataset=rotMNIST --config.model=p4sa --config.patch_size=9
    torchrun --nproc_per_node=2 main.py --config.dataset=CIFAR10 --config.model=mz2sa ...

Every field of ``config.py`` can be set with ``--config.<field>=<value>``; unset
hyper-parameters come from the model's defaults for the dataset (see ``runner/defaults.py``).
The commands of the papers' experiments are listed in ``runs/README.md``.
"""

from __future__ import annotations

import runner.threads  # first: sets the OpenMP wait policy before torch loads

import contextlib
import dataclasses
import os
import pathlib
import random
import shlex
import signal
import sys
from typing import Any, Dict, Mapping, Sequence

import numpy as np
import torch
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

import datasets
import g_selfatt_models as models
import tester
import trainer
from g_selfatt.nn import fused_attention
from g_selfatt.nn.attention import SelfAttentionCore
from g_selfatt_models.checkpoints import checkpoint_file, load_weights, model_input
from g_selfatt_models import checkpoints
from runner import allocator, distributed, paths
from runner.data import Loaders, build_loaders
from runner.defaults import check_field_names, field_help, resolve_config
from g_selfatt_models.checkpoints import CheckpointError
from runner.errors import ConfigError, RunInterrupted, RunnerError
from runner.lock import RunLock
from runner.reporting import MetricLogger, log_file
from runner.signals import parse_stop_signals, stop_at_once

# Errors caused by the user's input: reported in one paragraph, without a traceback.
USER_ERRORS = (RunnerError, CheckpointError, datasets.DatasetNotFoundError, datasets.ChecksumError,
               datasets.CorruptFileError, datasets.DownloadError, datasets.RecordError)


def model_spec(config: config_dict.ConfigDict, architecture: str) -> models.ModelSpec:
    """The registered model named in ``config``, checked against the dataset's architecture.

    Raises:
        ConfigError: unknown model, or a model not defined for this dataset.
    """
    try:
        spec = models.get_model_spec(config.model)
        models.check_defined_for(spec, architecture)
    except ValueError as error:
        raise ConfigError(f"{error} (--config.model={config.model}, --config.dataset={config.dataset})") from error
    if config.get("original_architecture", False) and spec.family == "gsa":
        raise ConfigError(
            f"--config.original_architecture=True rebuilds the original attentive G-CNN networks; "
            f"{config.model!r} is a GSA-Net, which the original code built as here except for its "
            "group-axis index: use --config.group_axis_index=original for that.")
    return spec


def data_spec(config: config_dict.ConfigDict) -> models.DataSpec:
    """The DataSpec of the dataset named in ``config``.

    Raises:
        ConfigError: unknown dataset.
    """
    try:
        return datasets.get_data_spec(config.dataset)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def input_spec(config: config_dict.ConfigDict, data: models.DataSpec,
               spec: models.ModelSpec) -> models.DataSpec:
    """The DataSpec of the images as the model sees them, after resizing.

    ``config.image_size`` (0: the dataset's side, enlarged to ``spec.min_image_size`` where
    that is larger) sets their side (:func:`g_selfatt_models.checkpoints.model_input`).

    Raises:
        ConfigError: an image size below the model's minimum.
    """
    try:
        resized = model_input(data, spec, config.get("image_size", 0))
    except ValueError as error:
        raise ConfigError(f"Model {config.model!r} needs images of at least {spec.min_image_size}x"
                          f"{spec.min_image_size} pixels; use --config.image_size={spec.min_image_size} "
                          "or larger (or 0).") from error
    if resized.image_size != data.image_size:
        logging.info("Resizing the %dx%d images of %s to %dx%d for %s.", data.image_size, data.image_size,
                     data.name, resized.image_size, resized.image_size, config.model)
    return resized


def build_model(config: config_dict.ConfigDict, data: models.DataSpec) -> torch.nn.Module:
    """Builds the model; a configuration value the builder rejects is a ConfigError."""
    try:
        return models.create_model(config.model, config, data)
    except ValueError as error:
        raise ConfigError(f"Cannot build model {config.model!r}: {error}") from error


def load_pretrained(model: torch.nn.Module, config: config_dict.ConfigDict,
                    spec: models.ModelSpec, data: models.DataSpec,
                    best_path: pathlib.Path) -> None:
    """Loads ``config.checkpoint`` (or the run's own best checkpoint) strictly into ``model``.

    Raises:
        CheckpointError: no file, unreadable file, or weights that do not fit the model.
    """
    source = config.checkpoint or str(best_path)
    if not pathlib.Path(source).exists():
        raise CheckpointError(
            f"--config.pretrained=True but there is no checkpoint at {source}. Train this "
            "configuration first (without --config.pretrained), or give the file with "
            "--config.checkpoint=PATH."
        )
    source = str(checkpoint_file(source))  # a released run folder of the originals: its model.pth
    load_weights(model, checkpoints.read(source), config.model, spec, data, source,
                 original_architecture=config.original_architecture)
    logging.info("Loaded pretrained weights from %s.", source)


def load_model(path: str | pathlib.Path, model: str = "", dataset: str = "", *,
               original_architecture: bool = False) -> torch.nn.Module:
    """:func:`models.load_model`, with an unknown model or dataset name reported as a ConfigError."""
    try:
        return models.load_model(path, model=model, dataset=dataset, original_architecture=original_architecture)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclasses.dataclass
class RunResult:
    """What a run produced.

    Attributes:
        model: the bare model; on the main process it holds the selected (best) weights.
        metrics: the test metrics (main process only; empty on the others).
        checkpoint: the file of the selected model.
    """

    model: torch.nn.Module
    metrics: Dict[str, Any]
    checkpoint: pathlib.Path


def report_attention_kernel(model: torch.nn.Module, config: config_dict.ConfigDict, device: torch.device) -> None:
    """Logs how the fused attention kernel was obtained (compiled now, or cached) and the threads it runs on,
    before the first step.

    Only for models with self-attention that may run it (``attention_impl`` auto or fused on a CPU).
    """
    if config.attention_impl not in ("auto", "fused") or device.type != "cpu":
        return
    if not any(isinstance(module, SelfAttentionCore) for module in model.modules()):
        return
    report = fused_attention.build_report()
    if report.error:
        logging.warning("The fused attention kernel is not available (%s); attention runs as 'efficient', "
                        "about 5x slower on CPU.", report.error.splitlines()[0])
        return
    threads = f"torch's OpenMP threads ({report.openmp.name})" if report.openmp else "threads of its own"
    if report.compiled:
        logging.info("Compiled the fused attention kernel in %.1f s (once per machine; cached as %s); it runs on %s.",
                     report.seconds, report.path, threads)
    else:
        logging.info("Fused attention kernel: %s (cached); it runs on %s.", report.path, threads)


def report_attention_impls(model: torch.nn.Module, device: torch.device) -> None:
    """Logs which attention implementation each self-attention layer runs on ``device`` (``"auto"`` resolved).

    On CUDA this runs the Triton kernels' one-time self-check (see :mod:`g_selfatt.nn.dispatch`).
    """
    layers = {name: module for name, module in model.named_modules() if isinstance(module, SelfAttentionCore)}
    if not layers:
        return
    probe = torch.empty(0, device=device)  # the projections' device and dtype (float32; autocast runs it so too)
    chosen = ", ".join(f"{name}={layer.resolved_impl(probe)}" for name, layer in layers.items())
    logging.info("Attention implementation of each layer: %s.", chosen)


def run(config: config_dict.ConfigDict) -> RunResult:
    """Resolves ``config``, trains (unless ``config.train=False``) and tests.

    Under torchrun every process calls this; only the main process writes files and tests.
    """
    data = data_spec(config)
    spec = model_spec(config, data.architecture)
    origins = resolve_config(config, spec.defaults.get(data.architecture, {}))
    data = input_spec(config, data, spec)
    context = distributed.setup(config.device, config.collective_timeout_minutes)
    try:
        result = _run(config, context, spec, data, origins)
    except BaseException:
        distributed.teardown(context, together=False)
        raise
    distributed.teardown(context)
    return result


def _run(config: config_dict.ConfigDict, context: distributed.Context, spec: models.ModelSpec,
         data: models.DataSpec, origins: Dict[str, str]) -> RunResult:
    """The body of :func:`run` once the process group is set up."""
    best_path = paths.best_checkpoint_path(config, spec.family)
    config.path = str(best_path)
    if context.is_main:
        paths.prepare_folder(best_path)
    guard = _run_files(config, context, spec.family, best_path) if config.train else contextlib.nullcontext()
    with guard, log_file(paths.output_prefix(best_path), enabled=context.is_main and config.train):
        return _train_and_test(config, context, spec, data, origins, best_path)


def _train_and_test(config: config_dict.ConfigDict, context: distributed.Context, spec: models.ModelSpec,
                    data: models.DataSpec, origins: Dict[str, str], best_path: pathlib.Path) -> RunResult:
    """Builds the model, trains it (``config.train``) and tests it on the main process."""
    if context.is_main:
        logging.info("Configuration (unset values filled from: %s):\n%s", origins, config)
        logging.info("Device %s, %d process(es); checkpoint %s", context.device,
                     context.world_size, best_path)
    threads = runner.threads.configure(config.num_threads or None)
    freed_memory = allocator.configure()
    seed_everything(config.seed)
    model = build_model(config, data).to(context.device)
    if context.is_main:
        logging.info("Model %s: %d parameters; %d CPU threads; freed memory: %s.", config.model,
                     sum(p.numel() for p in model.parameters()), threads, freed_memory)
        report_attention_kernel(model, config, context.device)
        report_attention_impls(model, context.device)
    if config.pretrained:
        load_pretrained(model, config, spec, data, best_path)
    loaders = build_loaders(config, context, data.image_size)
    logger = MetricLogger(config, enabled=context.is_main)
    try:
        if config.train:
            train(model, loaders, config, context, best_path, logger, spec.family)
        if not context.is_main:
            return RunResult(model, {}, best_path)
        if not config.test:
            logging.info("Not tested (config.test=False): the selected model is %s.", best_path)
            return RunResult(model, {}, best_path)
        if not (config.train or config.pretrained):
            logging.warning("Testing an untrained model (config.train=False without "
                            "config.pretrained=True).")
        prefix = paths.test_report_prefix(best_path, config)
        with stop_at_once(parse_stop_signals(config.stop_signals),
                          lambda number: _stopped_in_test(number, config, best_path)):
            results = tester.test(model, loaders.test, loaders.batch_transform, context.device,
                                  amp=config.amp, num_classes=data.num_classes,
                                  num_angles=config.rotation_angles, prefix=prefix,
                                  title=f"{config.model} on {config.dataset}")
        logger.summary({f"test_{k}": v for k, v in results.items()
                        if isinstance(v, float)})
        rotation_png = pathlib.Path(f"{prefix}.rotation.png")
        logger.test_report(results, rotation_png if config.rotation_angles else None)
        return RunResult(model, results, best_path)
    finally:
        logger.close()


def _stopped_in_test(signal_number: int, config: config_dict.ConfigDict, best_path: pathlib.Path) -> RunInterrupted:
    """The error that ends a run whose test a signal stopped (its reports are not written)."""
    trained = (f"training had finished and {best_path} holds the selected model" if config.train
               else "nothing was trained")
    return RunInterrupted(f"Stopped by {signal.Signals(signal_number).name} during the test; {trained}.",
                          signal_number, str(best_path), resumable=False)


@contextlib.contextmanager
def _run_files(config: config_dict.ConfigDict, context: distributed.Context, family: str,
               best_path: pathlib.Path):
    """Holds the run's lock (main process) while it trains and tests, once its files may be written.

    Raises:
        ConfigError: another run holds the lock, or the files belong to the project, to
            another configuration, or to a finished run of this one (see
            :func:`runner.paths.check_run_files`).
    """
    if not context.is_main:
        yield
        return
    with RunLock(best_path):
        paths.check_run_files(best_path, paths.run_identity(config, family), family,
                              resume=config.resume, overwrite=config.overwrite)
        yield


def train(model: torch.nn.Module, loaders: Loaders, config: config_dict.ConfigDict,
          context: distributed.Context, best_path: pathlib.Path, logger: MetricLogger,
          family: str) -> None:
    """Trains ``model`` and leaves the selected (best) weights in it on the main process."""
    run_trainer = trainer.Trainer(model, loaders, config, context, best_path, logger, family)
    if config.resume:
        run_trainer.resume()
    run_trainer.fit()
    if context.is_main:
        run_trainer.restore_best()


def report_user_error(error: BaseException) -> None:
    """Prints ``error`` as one paragraph on stderr."""
    print(f"Error ({type(error).__name__}): {error}", file=sys.stderr)


def resume_command(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> str:
    """The command line that continues the run started by ``argv``, under torchrun when it ran under
    torchrun (with its number of processes per machine and of machines)."""
    kept = [arg for arg in argv[1:] if not arg.startswith(("--config.resume", "--config.overwrite"))]
    command = ["python", argv[0]] if argv[0].endswith(".py") else [pathlib.Path(argv[0]).name]
    if "TORCHELASTIC_RUN_ID" in environ and argv[0].endswith(".py"):
        local = int(environ.get("LOCAL_WORLD_SIZE", "1"))
        machines = int(environ.get("WORLD_SIZE", local)) // local
        command = ["torchrun", f"--nproc_per_node={local}", *([f"--nnodes={machines}"] if machines > 1 else []),
                   argv[0]]
    return shlex.join([*command, *kept, "--config.resume=True"])


def test_command(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> str:
    """The command line that only tests the selected model of the run started by ``argv``."""
    kept = [arg for arg in argv if not arg.startswith(("--config.train", "--config.pretrained"))]
    return resume_command(kept, environ).replace(
        "--config.resume=True", "--config.train=False --config.pretrained=True")


def _is_collective_timeout(error: RuntimeError) -> bool:
    """Whether ``error`` is a collective operation of the process group that timed out."""
    text = str(error).lower()
    return ("timed out" in text or "timeout" in text) and any(
        word in text for word in ("gloo", "nccl", "collective", "process group", "processgroup"))


def _is_killed_worker(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's report of a DataLoader worker that a signal killed."""
    text = str(error)
    return "DataLoader worker" in text and ("killed by signal" in text or "exited unexpectedly" in text)


def run_cli(config: config_dict.ConfigDict, argv: Sequence[str] = ("main.py",)) -> int:
    """Runs ``config``; returns the exit status.

    2 after reporting a user error, 128 + the signal's number after SIGTERM or SIGINT
    stopped the run (a resumable checkpoint is saved then), 0 otherwise.
    """
    try:
        run(config)
    except RunInterrupted as error:
        follow = (f"Resume with: {resume_command(argv)}" if error.resumable else
                  f"Test it with: {test_command(argv)}")
        print(f"{error} {follow}", file=sys.stderr)
        return error.exit_code
    except USER_ERRORS as error:
        report_user_error(error)
        return 2
    except RuntimeError as error:
        if _is_collective_timeout(error):
            print(f"Error: another process of the run did not reach a collective operation within "
                  f"{config.collective_timeout_minutes:g} minutes (--config.collective_timeout_minutes), so this "
                  f"one stops ({str(error).splitlines()[0].strip()}). Checkpoints already written are intact; "
                  f"once every process can run, continue with: {resume_command(argv)}", file=sys.stderr)
            return 2
        if not _is_killed_worker(error):
            raise
        print(f"Error: a data loader worker process was killed ({str(error).splitlines()[0].strip()}), most "
              "often by the out-of-memory killer. Use fewer workers (--config.num_workers=N, 0 loads in the "
              f"main process) or free memory. Checkpoints already written are intact; continue with: "
              f"{resume_command(argv)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted (no training was under way, so nothing needed saving).", file=sys.stderr)
        return 130
    return 0


def log_to_directory(log_dir: str) -> None:
    """absl's ``--log_dir``: its log files go to ``log_dir`` as well (the lines still reach stderr).

    Every run also writes its own ``<checkpoint stem>.log`` next to its checkpoint.
    """
    if not log_dir:
        return
    pathlib.Path(log_dir).mkdir(parents=True, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("g_selfatt", log_dir)


def cli() -> None:
    """The command line: checks the names of the ``--config`` flags, lets absl parse them, runs.

    The flag is defined here, not on import, so that importing this module has no side effect
    and an unknown field is reported in one line before ml_collections parses the flags.
    """
    try:
        check_field_names(sys.argv[1:])
    except ConfigError as error:
        report_user_error(error)
        sys.exit(2)
    config_flag = config_flags.DEFINE_config_file(
        "config", default=str(pathlib.Path(__file__).with_name("config.py")),
        help_string=field_help(), lock_config=True)

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments {argv[1:]}; use --config.<field>=<value>.")
        logging.set_verbosity(logging.INFO)
        logging.set_stderrthreshold(logging.INFO)
        log_to_directory(flags.FLAGS.log_dir)
        sys.exit(run_cli(config_flag.value, sys.argv))

    app.run(main)


if __name__ == "__main__":
    cli()
