"""Fetching, verifying and caching raw dataset files.

Every file is written atomically: it is first written to a temporary file in the target
folder and only renamed to its final name once it is complete (and, for downloads, once its
MD5 checksum matches). An interrupted download or cache write therefore never leaves a file
that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from datasets.errors import ChecksumError, CorruptFileError, DownloadError, missing_files_error

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Resource:
    """A downloadable raw file.

    Attributes:
        filename: name of the file on disk.
        urls: where to download it from, tried in order (mirrors).
        md5: its published MD5 checksum.
    """

    filename: str
    urls: Tuple[str, ...]
    md5: str


def md5_of(path: Path) -> str:
    """The hexadecimal MD5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raises :class:`ChecksumError` (keeping the file) if ``path`` does not match ``expected``."""
    actual = md5_of(path)
    if actual != expected:
        raise ChecksumError(path, expected, actual, removed=False)


def _temporary_path(destination: Path) -> Path:
    """A fresh, empty temporary file next to ``destination``."""
    handle, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.",
                                    suffix=".part")
    os.close(handle)
    return Path(name)


def _stream_to_file(url: str, target: Path) -> str:
    """Writes the body of ``url`` to ``target`` and returns its MD5.

    Raises:
        DownloadError: the connection failed or the body is shorter than announced.
    """
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            announced = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"Could not download {url}: {error}") from error
    if announced is not None and received != int(announced):
        raise DownloadError(
            f"Download of {url} stopped after {received} of {announced} bytes."
        )
    return digest.hexdigest()


def download_file(url: str, destination: Path, md5: str) -> Path:
    """Downloads ``url`` to ``destination`` and checks its MD5.

    The body goes to a temporary file next to ``destination``, which is renamed only when the
    checksum matches; on any failure the temporary file is deleted.

    Args:
        url: an ``http(s)://`` or ``file://`` URL.
        destination: final path of the file.
        md5: expected MD5 of the file.

    Returns:
        ``destination``.

    Raises:
        DownloadError: the download failed.
        ChecksumError: the downloaded bytes have another MD5 (nothing is kept).
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(destination)
    try:
        logger.info("Downloading %s to %s", url, destination)
        actual = _stream_to_file(url, temporary)
        if actual != md5:
            raise ChecksumError(destination, md5, actual, removed=True)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return destination


def fetch_resource(resource: Resource, folder: Path) -> Path:
    """Makes sure ``folder / resource.filename`` exists with the published checksum.

    An existing file is verified (and kept on mismatch, so that it can be inspected); a missing
    one is downloaded from the first of ``resource.urls`` that answers.

    Returns:
        Path of the verified file.

    Raises:
        ChecksumError: the existing or downloaded file has another MD5.
        DownloadError: no URL could be downloaded.
    """
    path = Path(folder) / resource.filename
    if path.exists():
        verify_md5(path, resource.md5)
        return path
    failures = []
    for url in resource.urls:
        try:
            return download_file(url, path, resource.md5)
        except DownloadError as error:
            failures.append(str(error))
    raise DownloadError(
        "\n".join(failures) + f"\nDownload {resource.filename} by hand into {folder} "
        "or check the network connection."
    )


def archive_in(folder: Path, resource: Resource, download: bool, dataset: str, extracted: str) -> Path:
    """The archive ``folder / resource.filename``, downloaded first if ``download``.

    Args:
        folder: the dataset's folder.
        resource: the archive.
        download: fetch it (verified against its MD5) if it is missing.
        dataset: the dataset's name, for the error.
        extracted: what else would have done instead of the archive (its extracted files), as
            the error lists it.

    Raises:
        DatasetNotFoundError: neither the archive nor ``download``; names both and the flag.
    """
    archive = folder / resource.filename
    if download:
        fetch_resource(resource, folder)
    elif not archive.exists():
        raise missing_files_error(dataset, folder, f"  {resource.filename}\nor {extracted}",
                                  f"Run with --config.download=True to download it from {resource.urls[0]}.")
    return archive


def save_cache(tensors: Any, path: Path) -> None:
    """Atomically ``torch.save``s ``tensors`` (a dict or tuple of them) to ``path`` (temporary file, then
    :func:`os.replace`), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_path(path)
    try:
        torch.save(tensors, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_parse_cache(tensors: Any, path: Path) -> None:
    """:func:`save_cache` for a cache that only saves time: where it cannot be written (a read-only
    or full dataset folder, shared by a cluster's users) it is skipped with one log line."""
    try:
        save_cache(tensors, path)
    except OSError as error:
        logger.warning("Could not write the parse cache %s (%s); the raw files are parsed again next time.",
                       path, error.strerror or error)


def load_cache(path: Path, keys: Tuple[str, ...]) -> Optional[Dict[str, Any]]:
    """Loads a cache written by :func:`save_cache`; ``None`` when there is none.

    Raises:
        CorruptFileError: the cache cannot be read or lacks one of ``keys``.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for a damaged file
        raise CorruptFileError(path, f"unreadable parsed cache: {error}") from error
    missing = [key for key in keys if key not in tensors]
    if missing:
        raise CorruptFileError(path, f"parsed cache lacks {missing}")
    return tensors


TRAIN_TEST_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def cached_train_test(cache_path: Path, parse: Callable[[], Dict[str, torch.Tensor]]) -> Tuple["TensorImageDataset", ...]:
    """(train, test) datasets from the parse cache ``cache_path`` (keys :data:`TRAIN_TEST_KEYS`),
    else from ``parse()`` (which reads the raw files), then cached with :func:`save_parse_cache`."""
    from datasets.base import TensorImageDataset

    cache = load_cache(cache_path, TRAIN_TEST_KEYS)
    if cache is None:
        cache = parse()
        save_parse_cache(cache, cache_path)
    folder = Path(cache_path).parent
    return (TensorImageDataset(cache["train_images"], cache["train_labels"], folder),
            TensorImageDataset(cache["test_images"], cache["test_labels"], folder))
