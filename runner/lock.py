"""The lock that keeps two runs of one configuration out of each other's files."""

from __future__ import annotations

import fcntl
import os
import pathlib
import socket
import time
from typing import Any, Optional

from absl import logging

from runner.errors import ConfigError


def lock_path(best_path: pathlib.Path) -> pathlib.Path:
    """The lock file of the run whose best checkpoint is ``best_path``."""
    return best_path.with_name(f"{best_path.stem}.lock")


class RunLock:
    """An exclusive lock on a run's files, held while the run trains.

    It is an ``flock`` on ``<name>.lock``, so the operating system releases it when the
    process ends in any way (a SIGKILL too); the file itself records who holds it.

    Args:
        best_path: the best checkpoint of the run.
    """

    def __init__(self, best_path: pathlib.Path):
        self.path = lock_path(pathlib.Path(best_path))
        self._handle: Optional[Any] = None

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            ConfigError: another process holds it (with its pid, host and start time).
        """
        while True:
            try:
                handle = open(self.path, "a+")
            except OSError as error:
                raise ConfigError(
                    f"Cannot create the run's lock file {self.path} ({error.strerror or error}): the run "
                    "could not write its checkpoints there either. Choose a writable folder with "
                    "--config.save_dir=DIR or --config.path=FILE.") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "an unknown process"
                handle.close()
                raise ConfigError(
                    f"Another run of this configuration is training into "
                    f"{self.path.with_suffix('.pt')} ({holder}). Wait for it to finish, or tell "
                    "this run apart with --config.comment=NAME (or another --config.seed or "
                    "--config.path)."
                ) from None
            except OSError as error:  # the filesystem has no flock (some network filesystems)
                logging.warning(
                    "The filesystem of %s does not support locks (%s): this run goes on without one, so "
                    "nothing keeps a second run of this configuration out of its files; start only one.",
                    self.path.parent, error.strerror or error)
                handle.close()
                return
            if _same_file(handle, self.path):
                break
            handle.close()  # the holder removed the file as we locked it: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Releases the lock and removes its file."""
        if self._handle is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()


def _same_file(handle: Any, path: pathlib.Path) -> bool:
    """Whether the open ``handle`` is still the file at ``path``."""
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
