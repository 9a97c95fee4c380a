"""Reading members of zip and tar.gz archives without unpacking them to disk.

Damaged archives (truncated downloads, bad CRCs, wrong formats) raise
:class:`~datasets.errors.CorruptFileError` naming the archive.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Sequence

from datasets.errors import CorruptFileError

_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError)


def _missing(archive: Path, wanted: Sequence[str], found: Dict[str, bytes]) -> None:
    """Raises :class:`CorruptFileError` if some of ``wanted`` were not found."""
    missing = [name for name in wanted if name not in found]
    if missing:
        raise CorruptFileError(archive, f"the archive lacks {missing}")


def read_zip_members(archive: Path, names: Sequence[str]) -> Dict[str, bytes]:
    """The bytes of the members of a zip archive whose base names are ``names``.

    Members are matched by base name, so the archive may keep them in a subfolder.

    Raises:
        CorruptFileError: the archive is unreadable, fails its CRC check or lacks a member.
    """
    found: Dict[str, bytes] = {}
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                base = posixpath.basename(info.filename)
                if base in names and base not in found:
                    found[base] = zipped.read(info)
    except _READ_ERRORS as error:
        raise CorruptFileError(archive, f"{type(error).__name__}: {error}") from error
    _missing(archive, names, found)
    return found


def read_tar_members(archive: Path, names: Sequence[str]) -> Dict[str, bytes]:
    """The bytes of the members of a (compressed) tar archive whose base names are ``names``.

    Raises:
        CorruptFileError: the archive is unreadable or truncated, or lacks a member.
    """
    found: Dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = posixpath.basename(member.name)
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
    except _READ_ERRORS as error:
        raise CorruptFileError(archive, f"{type(error).__name__}: {error}") from error
    _missing(archive, names, found)
    return found
