"""Writing files so that a reader never sees a partial one and two runs never mix.

:func:`atomic_write` writes to a temporary file in the target's folder, flushes it to disk and
renames it over the target: a process killed at any moment leaves either the old file or the
new one (and at most a hidden ``.<name>.*.tmp`` file, safe to delete). The file gets the
permissions of the user's umask (``mkstemp`` alone would make it readable by its owner only).
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import IO, Any, Callable, Mapping

import torch

from runner.errors import StorageError


def atomic_write(path: pathlib.Path, write: Callable[[IO], None], *, text: bool = False) -> None:
    """Creates or replaces ``path`` with what ``write(handle)`` writes.

    Args:
        path: the target file; its folder is created if needed.
        write: writes the content into the open handle.
        text: open the handle in text mode (newline="") instead of binary mode.
    """
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise StorageError(_storage_message(path, error)) from None
    try:
        with os.fdopen(handle, "w" if text else "wb", **({"newline": ""} if text else {})) as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o666 & ~umask())
        os.replace(tmp_name, path)
    except BaseException as error:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(error, OSError) or (isinstance(error, RuntimeError) and _is_write_failure(error)):
            raise StorageError(_storage_message(path, error)) from None
        raise


def save_checkpoint(payload: Mapping[str, Any], path: pathlib.Path) -> None:
    """Writes a checkpoint (:func:`g_selfatt_models.checkpoints.make_checkpoint`) with ``torch.save``
    so that ``path`` is never partial."""
    atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def _is_write_failure(error: RuntimeError) -> bool:
    """Whether torch.save's ``RuntimeError`` reports a failed write (a full disk, for one)."""
    text = str(error)
    return "inline_container" in text or "file write failed" in text or "unexpected pos" in text


def _storage_message(path: pathlib.Path, error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
    return (f"Could not write {path} ({reason}): the disk is full or the folder is not writable. The "
            "previous version of the file, if there was one, is intact. Free space or make the folder "
            "writable (or write elsewhere: --config.save_dir=DIR), then go on with --config.resume=True "
            "if the run had started training.")


def umask() -> int:
    """The process's umask (reading it requires setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
