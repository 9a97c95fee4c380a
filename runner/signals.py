"""Stopping a run cleanly on SIGTERM and SIGINT.

SLURM and Kubernetes send SIGTERM some time before they kill a job; Ctrl-C sends SIGINT. While
:class:`StopRequest` is installed, the first of these signals only records that the run should
stop: the training loop finishes its current step, writes a resumable checkpoint and ends. A
second signal stops the process at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, Dict, Optional

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Records the first SIGTERM or SIGINT while installed (a context manager).

    Attributes:
        signal_number: the signal received, or ``None``.
    """

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
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
            for number in HANDLED:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
