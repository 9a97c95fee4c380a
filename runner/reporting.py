"""Metric logging: absl logging always, Weights & Biases only when asked for.

wandb is imported only when ``config.wandb=True``; the login and the entity come from the
user's environment (``wandb login``, ``WANDB_ENTITY``), never from the code.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import logging as python_logging
import pathlib
import sys
from typing import Any, Iterator, List, Mapping, Optional, Sequence

from absl import logging
from ml_collections import config_dict

from runner.errors import ConfigError
from runner.files import atomic_write


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@contextlib.contextmanager
def log_file(prefix: pathlib.Path, enabled: bool = True) -> Iterator[Optional[pathlib.Path]]:
    """Copies every log line of the run to ``<prefix>.log`` while the block runs.

    A resumed run appends to the file of the run it continues; ``--config.overwrite=True``
    deletes it with the run's other files (``runner.paths.REPORT_SUFFIXES``).
    """
    if not enabled:
        yield None
        return
    path = pathlib.Path(f"{prefix}.log")
    handler = _RunLogHandler(path)
    handler.setFormatter(python_logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(python_logging.INFO)
    logger = logging.get_absl_logger()
    level = logger.level
    logger.setLevel(min(level or python_logging.INFO, python_logging.INFO))  # INFO reaches the file
    logger.addHandler(handler)
    try:
        yield path
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


class _RunLogHandler(python_logging.FileHandler):
    """The run's ``.log`` file; a write that fails (a full disk) stops the copy with one warning
    instead of a traceback for every later line (the lines still reach stderr)."""

    def __init__(self, path: pathlib.Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.failed = False

    def emit(self, record: python_logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):  # the last lines could not be flushed: warned about already
            self.failed = True

    def handleError(self, record: python_logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            print(f"Warning: could not write the run's log file {self.baseFilename}; its lines go to "
                  "stderr only from now on (is the disk full?).", file=sys.stderr, flush=True)


class MetricLogger:
    """Writes metrics to the log and, when enabled, to TensorBoard and a wandb run.

    A training run writes TensorBoard events to ``<prefix>.tensorboard/`` next to its checkpoint
    whenever the ``tensorboard`` package is installed (``torch.utils.tensorboard`` needs it); the
    wandb run (``config.wandb``) is named after the checkpoint's stem.

    Args:
        config: the resolved configuration (sent to wandb as the run's config); ``config.path``
            is the run's checkpoint.
        enabled: False on processes other than the main one: nothing is logged there.
    """

    def __init__(self, config: config_dict.ConfigDict, enabled: bool = True):
        self.enabled = enabled
        self._run = _start_wandb(config) if enabled and config.wandb else None
        trains = enabled and config.train and bool(config.path)  # a test-only run writes no events
        self._events = _start_tensorboard(pathlib.Path(config.path)) if trains else None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Logs ``metrics`` at optimizer step ``step``."""
        if not self.enabled:
            return
        logging.info("step %d: %s", step, _format(metrics))
        if self._run is not None:
            self._run.log(dict(metrics), step=step)
        if self._events is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._events.add_scalar(name, value, step)
            self._events.flush()

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Records final results (best validation accuracy, test accuracy, ...)."""
        if not self.enabled:
            return
        logging.info("summary: %s", _format(metrics))
        if self._run is not None:
            self._run.summary.update(dict(metrics))

    def test_report(self, results: Mapping[str, Any], rotation_png: Optional[pathlib.Path]) -> None:
        """Sends the test's confusion matrix and rotation plot to wandb (when enabled)."""
        if self._run is None:
            return
        wandb = importlib.import_module("wandb")
        matrix = results["confusion_matrix"]
        rows = [[true, predicted, count] for true, counts in enumerate(matrix)
                for predicted, count in enumerate(counts)]
        figures = {"test/confusion_matrix": wandb.Table(columns=["true", "predicted", "count"], data=rows)}
        if rotation_png is not None and rotation_png.is_file():
            figures["test/accuracy_vs_rotation"] = wandb.Image(str(rotation_png))
        self._run.log(figures)

    def close(self) -> None:
        """Finishes the wandb run and closes the TensorBoard events, if any."""
        if self._run is not None:
            self._run.finish()
            self._run = None
        if self._events is not None:
            self._events.close()
            self._events = None


def _format(metrics: Mapping[str, Any]) -> str:
    """``name=value`` pairs with floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in metrics.items())


def _start_wandb(config: config_dict.ConfigDict) -> Optional[Any]:
    """Starts a wandb run for ``config``.

    Raises:
        ConfigError: wandb is not installed.
    """
    try:
        wandb = importlib.import_module("wandb")
    except ImportError as error:
        raise ConfigError(
            "--config.wandb=True needs the wandb package, which is not installed. Install it "
            "with `pip install wandb` and log in with `wandb login`, or leave --config.wandb "
            "at False."
        ) from error
    return wandb.init(project=config.wandb_project, group=config.dataset,
                      name=pathlib.Path(config.path).stem if config.path else None, config=config.to_dict())


def _start_tensorboard(checkpoint: pathlib.Path) -> Optional[Any]:
    """A TensorBoard writer into ``<checkpoint prefix>.tensorboard/``, or ``None`` without tensorboard."""
    try:
        writer = importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        return None
    return writer(log_dir=str(checkpoint.with_suffix(".tensorboard")))


def rounded(value: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (``0.21`` rather than ``0.20999999344348907``)."""
    return float(f"{value:.{digits}g}") if isinstance(value, float) else value


def write_csv(rows: Sequence[Mapping[str, Any]], path: pathlib.Path) -> None:
    """Writes ``rows`` (one dict each, floats rounded) as a CSV file, atomically.

    The columns are the keys of all rows in order of first appearance; missing cells are empty.
    """
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: rounded(value) for key, value in row.items()} for row in rows)

    atomic_write(path, write, text=True)
