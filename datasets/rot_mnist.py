"""Rotated MNIST (``mnist_rotation_new.zip`` of the "variations on MNIST" benchmark).

Raw data: two ``.amat`` text files, one image per line: 784 floats in [0, 1] followed by the
label. ``..._train_valid.amat`` has 12,000 lines, ``..._test.amat`` 50,000. As in both
original implementations, each row is reshaped row-major to 28 x 28 without transposing.

Pixels are stored as ``uint8`` (``round(255 * x)``); the parsed tensors are cached in
``<root>/rotMNIST/rotMNIST.pt``. Delete that file to parse the raw data again. Where none of
these files exist but the original GSA-Nets code's processed files do
(``<root>/MNIST_rot/processed/{training,test}.pt``, :mod:`datasets.mnist_rot`), those are read;
else att_gconvs' ``train_all.npz`` and ``test.npz`` (in ``<root>/`` or ``<root>/rotMNIST/``).

Splits (``validation="held_out"``): valid = the last ``valid_size`` (default 2,000)
train+valid rows, train = the rows before them (10,000 by default), test = the 50,000 test
rows. With
``validation="test"`` the valid split is the test set and the last ``valid_size`` rows stay
unused, as in the original GSA-Nets code.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from datasets.archives import read_zip_members
from datasets.base import TensorImageDataset, resolve_valid_size, split_tail
from datasets.download import Resource, archive_in, fetch_resource, load_cache, save_cache, save_parse_cache
from datasets.errors import CorruptFileError

FOLDER = "rotMNIST"
ARCHIVE = Resource(
    "mnist_rotation_new.zip",
    ("http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip",),
    "0f9a947ff3d30e95cd685462cbf3b847",
)
TRAIN_VALID_FILE = "mnist_all_rotation_normalized_float_train_valid.amat"
TEST_FILE = "mnist_all_rotation_normalized_float_test.amat"
CACHE_FILE = "rotMNIST.pt"
DEFAULT_VALID_SIZE = 2000
IMAGE_SIZE = 28
_CACHE_KEYS = ("train_valid_images", "train_valid_labels", "test_images", "test_labels")
logger = logging.getLogger(__name__)


def parse_amat(text: bytes, source: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Parses an ``.amat`` file of 28 x 28 images.

    Args:
        text: the file's content.
        source: the file's name for error messages.

    Returns:
        ``uint8`` images (N, 1, 28, 28) and ``int64`` labels (N,).

    Raises:
        CorruptFileError: a row does not hold 785 numbers or a label is not in 0..9.
    """
    columns = IMAGE_SIZE * IMAGE_SIZE + 1
    try:
        rows = np.loadtxt(io.BytesIO(text), dtype=np.float32, ndmin=2)
    except ValueError as error:
        raise CorruptFileError(Path(source), f"unparsable .amat rows: {error}") from error
    if rows.shape[1] != columns or len(rows) == 0:
        raise CorruptFileError(Path(source),
                               f"expected rows of {columns} numbers, got shape {rows.shape}")
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise CorruptFileError(Path(source), f"{len(bad)} row(s) with NaN or infinite values, the first is row {bad[0]}")
    pixels = np.rint(np.clip(rows[:, :-1], 0.0, 1.0) * 255.0).astype(np.uint8)
    labels = np.rint(rows[:, -1]).astype(np.int64)
    if labels.min() < 0 or labels.max() > 9:
        raise CorruptFileError(Path(source), f"labels outside 0..9: {np.unique(labels)}")
    images = pixels.reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)  # (N, 1, H, W), row-major
    return torch.from_numpy(images), torch.from_numpy(labels)


def _raw_texts(folder: Path, download: bool) -> Tuple[Dict[str, bytes], Path]:
    """The two ``.amat`` files' contents, from loose files or from the zip archive.

    Returns:
        The contents by file name, and the folder or archive they were read from.
    """
    loose = [folder / TRAIN_VALID_FILE, folder / TEST_FILE]
    if all(path.exists() for path in loose):
        return {path.name: path.read_bytes() for path in loose}, folder
    archive = archive_in(folder, ARCHIVE, download, "rotMNIST",
                         f"both extracted files\n  {TRAIN_VALID_FILE}\n  {TEST_FILE}")
    return read_zip_members(archive, [TRAIN_VALID_FILE, TEST_FILE]), archive


def load_raw(root: Path, download: bool) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """The 12,000 train+valid and 50,000 test images, parsed once and then cached.

    Returns:
        (train+valid, test) datasets of ``uint8`` images (N, 1, 28, 28).
    """
    folder = Path(root) / FOLDER
    cache = load_cache(folder / CACHE_FILE, _CACHE_KEYS)
    if cache is None and not download and not _has_raw_files(folder):
        if has_original_processed(root):
            return _original_processed(root)
        npz = _attgconv_files(root)
        if npz is not None:
            return _attgconv_arrays(*npz)
    if cache is None:
        texts, origin = _raw_texts(folder, download)
        train_images, train_labels = parse_amat(texts[TRAIN_VALID_FILE],
                                                f"{origin / TRAIN_VALID_FILE}")
        test_images, test_labels = parse_amat(texts[TEST_FILE], f"{origin / TEST_FILE}")
        cache = dict(zip(_CACHE_KEYS, (train_images, train_labels, test_images, test_labels)))
        save_parse_cache(cache, folder / CACHE_FILE)
    return (TensorImageDataset(cache["train_valid_images"], cache["train_valid_labels"], folder),
            TensorImageDataset(cache["test_images"], cache["test_labels"], folder))


def _has_raw_files(folder: Path) -> bool:
    return (folder / ARCHIVE.filename).exists() or all((folder / name).exists() for name in (TRAIN_VALID_FILE, TEST_FILE))


# ----- the original GSA-Nets code's processed files: <root>/MNIST_rot/processed/{training,test}.pt,
# each torch.save((uint8 images (N, 28, 28), labels (N,))); training: the first 10,000 train+valid rows.
ORIGINAL_FOLDER = "MNIST_rot"
ORIGINAL_FILES = ("training.pt", "test.pt")
ORIGINAL_TRAINING_ROWS = 10_000


def original_processed_folder(root: Path) -> Path:
    """``<root>/MNIST_rot/processed``, where the original code kept its processed files."""
    return Path(root) / ORIGINAL_FOLDER / "processed"


def read_original_processed(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images (N, 28, 28), labels (N,))`` of one processed file.

    Raises:
        CorruptFileError: not a pair of tensors of those shapes.
    """
    try:
        images, labels = torch.load(path, weights_only=True)
    except Exception as error:  # noqa: BLE001  (any unreadable file is reported the same way)
        raise CorruptFileError(Path(path), f"not a processed MNIST_rot file (a pair of tensors): {error}") from error
    if images.dim() != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or labels.shape != images.shape[:1]:
        raise CorruptFileError(Path(path), f"holds images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                               "expected (N, 28, 28) and (N,).")
    return images, labels


def write_original_processed(root: Path) -> Path:
    """Downloads (md5-verified) and parses the archive into the original code's processed files.

    The raw archive goes to ``<root>/MNIST_rot/raw/``; each file is written to a temporary file and
    renamed. Pixels are ``round(255 x)`` (the original's ``round(256 x)`` wrapped the brightest
    pixels, ``x = 1``, around to 0 in ``uint8``); labels are ``uint8``, as the original's.

    Returns:
        The processed folder.
    """
    raw = Path(root) / ORIGINAL_FOLDER / "raw"
    fetch_resource(ARCHIVE, raw)
    texts = read_zip_members(raw / ARCHIVE.filename, [TRAIN_VALID_FILE, TEST_FILE])
    folder = original_processed_folder(root)
    for name, text, rows in ((ORIGINAL_FILES[0], texts[TRAIN_VALID_FILE], ORIGINAL_TRAINING_ROWS),
                             (ORIGINAL_FILES[1], texts[TEST_FILE], None)):
        images, labels = parse_amat(text, str(raw / ARCHIVE.filename))  # (N, 1, 28, 28)
        save_cache((images[:rows, 0].contiguous(), labels[:rows].to(torch.uint8)), folder / name)
    return folder


def has_original_processed(root: Path) -> bool:
    """Whether both of the original code's processed files are under ``root``."""
    folder = original_processed_folder(root)
    return all((folder / name).is_file() for name in ORIGINAL_FILES)


def _original_processed(root: Path) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """The original GSA-Nets code's processed files (``<root>/MNIST_rot/processed/``), as train+valid and test.

    Their training file holds the first 10,000 train+valid rows (the original dropped the other 2,000),
    so the held-out validation split is the last ``valid_size`` of those.
    """
    folder = original_processed_folder(root)
    parts = [read_original_processed(folder / name) for name in ORIGINAL_FILES]
    logger.info("rotMNIST: reading the original code's processed files in %s (%d training rows, %d test rows).",
                folder, len(parts[0][0]), len(parts[1][0]))
    return tuple(TensorImageDataset(images.unsqueeze(1).contiguous(), labels.long(), folder)  # (N, 1, 28, 28)
                 for images, labels in parts)


# att_gconvs' rotMNIST files (Cohen & Welling's preprocessing), in <root>/ or <root>/rotMNIST/.
NPZ_FILES = ("train_all.npz", "test.npz")


def _attgconv_files(root: Path) -> Optional[Tuple[Path, Path]]:
    for folder in (Path(root), Path(root) / FOLDER):
        if all((folder / name).is_file() for name in NPZ_FILES):
            return folder / NPZ_FILES[0], folder / NPZ_FILES[1]
    return None


def _attgconv_arrays(train_path: Path, test_path: Path) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """att_gconvs' ``train_all.npz`` (the 12,000 train+valid rows) and ``test.npz``: ``data`` in [0, 1]
    ``(N, 1, 28, 28)`` (or ``(N, 28, 28)``) and ``labels``, read as float images."""
    parts = []
    for path in (train_path, test_path):
        try:
            with np.load(path) as arrays:
                images, labels = np.asarray(arrays["data"], dtype=np.float32), np.asarray(arrays["labels"])
            images = torch.from_numpy(images).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
            labels = torch.from_numpy(labels).long().flatten()
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as error:
            raise CorruptFileError(path, f"not an .npz file with arrays 'data' ({IMAGE_SIZE}x{IMAGE_SIZE} images) "
                                         f"and 'labels': {error}") from error
        if len(images) != len(labels):
            raise CorruptFileError(path, f"{len(images)} images but {len(labels)} labels")
        parts.append(TensorImageDataset(images, labels, path))
    logger.info("rotMNIST: reading att_gconvs' %s and %s (%d and %d rows).", train_path, test_path,
                len(parts[0]), len(parts[1]))
    return parts[0], parts[1]


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[TensorImageDataset, ...]:
    """(train, valid, test) as described in the module docstring; ``seed`` is unused."""
    train_valid, test = load_raw(root, download)
    train, held_out = split_tail(train_valid, resolve_valid_size(valid_size, DEFAULT_VALID_SIZE),
                                 "rotMNIST")
    return train, (test if validation == "test" else held_out), test
