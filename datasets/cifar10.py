"""CIFAR10 from the python-pickle tarball ``cifar-10-python.tar.gz``.

The archive holds ``cifar-10-batches-py/data_batch_1`` ... ``data_batch_5`` and
``test_batch``: pickled dicts with ``data`` (10,000 x 3,072 ``uint8``: the red, green and blue
32 x 32 planes, each row-major) and ``labels``. An already extracted
``<root>/CIFAR10/cifar-10-batches-py/`` folder is used as is. The pickles are read with an
unpickler that only accepts plain containers and numpy arrays, so a tampered archive cannot
run code. The parsed tensors are cached in ``<root>/CIFAR10/CIFAR10.pt``.

Splits (``validation="held_out"``): valid = ``valid_size`` (default 5,000) training images
chosen by a permutation seeded with ``seed``, train = the other 45,000, test = the 10,000 test
images. With ``validation="test"`` the model trains on all 50,000 and the valid split is the
test set, as in the original code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from datasets.archives import read_tar_members
from datasets.base import TensorImageDataset, resolve_valid_size, split_random
from datasets.download import Resource, archive_in, cached_train_test
from datasets.errors import CorruptFileError

FOLDER = "CIFAR10"
ARCHIVE = Resource(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "c58f30108f718f92721af3b95e74349a",
)
EXTRACTED_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CACHE_FILE = "CIFAR10.pt"
DEFAULT_VALID_SIZE = 5000
IMAGE_SIZE = 32
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except those needed for numpy arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def parse_batch(data: bytes, source: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Parses one pickled CIFAR10 batch.

    Returns:
        ``uint8`` images (N, 3, 32, 32) and ``int64`` labels (N,).

    Raises:
        CorruptFileError: not a pickled batch of the expected shape.
    """
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
        batch = {key.decode() if isinstance(key, bytes) else key: value
                 for key, value in batch.items()}
        pixels = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError,
            ValueError) as error:
        raise CorruptFileError(Path(source), f"not a CIFAR10 batch: {error}") from error
    if pixels.ndim != 2 or pixels.shape[1] != 3 * IMAGE_SIZE**2 or len(pixels) != len(labels):
        raise CorruptFileError(Path(source), f"data {pixels.shape} and {labels.shape} labels")
    images = pixels.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)  # (N, C, H, W)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _raw_batches(folder: Path, download: bool) -> Tuple[Dict[str, bytes], Path]:
    """The six pickled batches, from the extracted folder or the tarball.

    Returns:
        The contents by batch name, and the folder or archive they were read from.
    """
    names: List[str] = [*TRAIN_BATCHES, TEST_BATCH]
    # <root>/CIFAR10/cifar-10-batches-py, or where torchvision (and so the original code) put it:
    # <root>/cifar-10-batches-py.
    for extracted in (folder / EXTRACTED_FOLDER, folder.parent / EXTRACTED_FOLDER):
        if all((extracted / name).exists() for name in names):
            return {name: (extracted / name).read_bytes() for name in names}, extracted
    archive = archive_in(folder, ARCHIVE, download, "CIFAR10",
                         f"the extracted folder\n  {EXTRACTED_FOLDER}/" + ", ".join(names))
    return read_tar_members(archive, names), archive


def load_raw(root: Path, download: bool) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """The 50,000 training and 10,000 test images, parsed once and then cached."""
    folder = Path(root) / FOLDER

    def parse() -> Dict[str, torch.Tensor]:
        batches, origin = _raw_batches(folder, download)
        train = [parse_batch(batches[name], f"{origin / name}") for name in TRAIN_BATCHES]
        test_images, test_labels = parse_batch(batches[TEST_BATCH], f"{origin / TEST_BATCH}")
        return {"train_images": torch.cat([images for images, _ in train]),
                "train_labels": torch.cat([labels for _, labels in train]),
                "test_images": test_images, "test_labels": test_labels}

    return cached_train_test(folder / CACHE_FILE, parse)


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[TensorImageDataset, ...]:
    """(train, valid, test) as described in the module docstring."""
    full_train, test = load_raw(root, download)
    if validation == "test":
        return full_train, test, test
    train, valid = split_random(full_train, resolve_valid_size(valid_size, DEFAULT_VALID_SIZE),
                                seed, "CIFAR10")
    return train, valid, test
