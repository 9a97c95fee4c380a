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
from typing import IO, Callable


def atomic_write(path: pathlib.Path, write: Callable[[IO], None], *, text: bool = False) -> None:
    """Creates or replaces ``path`` with what ``write(handle)`` writes.

    Args:
        path: the target file; its folder is created if needed.
        write: writes the content into the open handle.
        text: open the handle in text mode (newline="") instead of binary mode.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w" if text else "wb", **({"newline": ""} if text else {})) as tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o666 & ~umask())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def umask() -> int:
    """The process's umask (reading it requires setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
