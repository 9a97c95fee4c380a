"""Errors raised by the dataset loaders, each naming the problem and its fix."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are not where they were expected.

    The message names the folder that was searched, the expected file layout and how to
    obtain the files (``--config.download=True`` or manual steps).
    """


class ChecksumError(RuntimeError):
    """A file's MD5 checksum differs from the published one.

    Attributes:
        path: the file that was checked.
        expected: the published MD5.
        actual: the MD5 of the file.
        removed: whether the file was deleted.
    """

    def __init__(self, path: Path, expected: str, actual: str, *, removed: bool) -> None:
        self.path = Path(path)
        self.expected = expected
        self.actual = actual
        self.removed = removed
        fate = (
            "The file was removed; run again with --config.download=True to fetch it again."
            if removed
            else "The file was kept for inspection; delete it and run again with "
            "--config.download=True to fetch a fresh copy."
        )
        super().__init__(
            f"Checksum mismatch for {self.path}: expected md5 {expected}, got {actual}. {fate}"
        )


class CorruptFileError(RuntimeError):
    """A raw file or archive is truncated or not in the expected format."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path} is corrupt or truncated ({problem}). Delete it and download it again "
            "(--config.download=True where a download URL exists)."
        )


class RecordError(ValueError):
    """Records of a split (labels, image shapes) that the dataset cannot hold."""


class DownloadError(OSError):
    """A file could not be downloaded from any of its URLs."""


def missing_files_error(dataset: str, folder: Path, layout: str,
                        remedy: str) -> DatasetNotFoundError:
    """Builds the :class:`DatasetNotFoundError` for a dataset whose files are missing.

    Args:
        dataset: the dataset's name.
        folder: where the files were expected.
        layout: the expected files, one per line, relative to ``folder``.
        remedy: how to obtain them.
    """
    return DatasetNotFoundError(
        f"{dataset} files not found in {Path(folder).resolve()}.\n"
        f"Expected layout (relative to that folder):\n{layout}\n{remedy}"
    )
