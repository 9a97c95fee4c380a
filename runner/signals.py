"""Stopping a run cleanly on SIGTERM, SIGINT, SIGUSR1 and SIGHUP (``config.stop_signals``).

SLURM and Kubernetes send SIGTERM some time before they kill a job (SLURM's ``--signal=USR1``
sends SIGUSR1); Ctrl-C sends SIGINT; a closed terminal sends SIGHUP. While :class:`StopRequest`
is installed, the first of these signals only records that the run should stop: the training
loop finishes its current step, writes a resumable checkpoint and ends. A second signal stops
the process at once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

HANDLED = (signal.SIGTERM, signal.SIGINT)  # always
OPTIONAL = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGHUP") if hasattr(signal, name))


def parse_stop_signals(text: str) -> Tuple[int, ...]:
    """``config.stop_signals`` (e.g. ``"SIGUSR1,SIGHUP"``, or ``""``) as signal numbers.

    Raises:
        ValueError: a name that is not one of :data:`OPTIONAL`, with the valid ones.
    """
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    valid = {signal.Signals(number).name: number for number in OPTIONAL}
    unknown = [name for name in names if name not in valid]
    if unknown:
        raise ValueError(f"unknown signal(s) {unknown}; give a comma-separated list of some of {sorted(valid)} "
                         "(SIGTERM and SIGINT always stop a run cleanly), or an empty string")
    return tuple(valid[name] for name in names)


class StopRequest:
    """Records the first SIGTERM, SIGINT or one of ``extra`` while installed (a context manager).

    Args:
        extra: more signals that stop the run the same way (e.g. SIGUSR1, SIGHUP).

    Attributes:
        signal_number: the signal received, or ``None``.
    """

    def __init__(self, extra: Tuple[int, ...] = ()) -> None:
        self.signal_number: Optional[int] = None
        self.handled = HANDLED + tuple(extra)
        self._previous: Dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signal_number is not None

    def _handle(self, signal_number: int, frame: Optional[FrameType]) -> None:
        if self.signal_number is not None:
            print(f"Second {signal.Signals(signal_number).name}: stopping at once, without saving.",
                  file=sys.stderr, flush=True)
            sys.exit(128 + signal_number)
        self.signal_number = signal_number
        print(f"Received {signal.Signals(signal_number).name}: the run stops after the current "
              "step and saves a resumable checkpoint (send it again to stop at once).",
              file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in self.handled:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()


class _StopNow(BaseException):
    """Carries a signal out of the code it interrupts.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that no ``except Exception`` on the way
    out swallows it: a logging handler that is writing when the signal arrives, for one, would
    print a traceback and let the run go on.
    """

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


@contextlib.contextmanager
def stop_at_once(extra: Tuple[int, ...], error: Callable[[int], BaseException]) -> Iterator[None]:
    """While active, the first SIGTERM, SIGINT or one of ``extra`` raises ``error(signal_number)`` at once.

    For the phases after training (the test), which have nothing left to save: the run ends with
    its own message instead of being killed silently or reporting a ``KeyboardInterrupt``. The
    signal travels as a ``BaseException`` until it leaves the block, wherever it arrived.
    """
    def handle(signal_number: int, frame: Optional[FrameType]) -> None:
        raise _StopNow(signal_number)

    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in HANDLED + tuple(extra):
            previous[number] = signal.signal(number, handle)
    try:
        yield
    except _StopNow as stop:
        raise error(stop.signal_number) from None
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_to_completion(command: Sequence[str], cwd: Union[str, Path], label: str) -> None:
    """Runs a ``main.py`` command line (from a tool that runs several) and returns when it succeeded.

    The run shares the tool's process group, so Ctrl-C in a terminal, or a signal to the group,
    reaches it directly, and it stops cleanly after its current step, saving a resumable
    checkpoint. Meanwhile the tool lets the stop signals pass instead of dying of them (a
    ``KeyboardInterrupt`` in ``subprocess.run`` would kill the run before it has saved). A run that
    a stop signal ended (exit status 128 + the signal) ends the tool too, with the same status and
    a line saying that the same tool command resumes it, not with a traceback.

    Raises:
        SystemExit: the run was stopped by a signal.
        subprocess.CalledProcessError: the run failed otherwise.
    """
    numbers = HANDLED + OPTIONAL
    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in numbers:  # a Python handler, not SIG_IGN: the run starts with the default action
            previous[number] = signal.signal(number, lambda signal_number, frame: None)
    try:
        status = subprocess.run(list(command), cwd=cwd).returncode
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if status == 0:
        return
    stop_signals = {128 + number: signal.Signals(number).name for number in numbers}
    if status in stop_signals:
        print(f"{label}: stopped by {stop_signals[status]}; run the same command again to resume it.",
              file=sys.stderr, flush=True)
        raise SystemExit(status)
    raise subprocess.CalledProcessError(status, list(command))
