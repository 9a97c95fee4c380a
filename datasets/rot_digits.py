"""rotDigits: randomly rotated scikit-learn digits, built in memory with no download.

Recipe (fixed, independent of the experiment's seed):

1. scikit-learn's ``load_digits()``: 1,797 images of 8 x 8 pixels in 0..16, divided by 16;
2. zero-padded by 2 pixels per side to 12 x 12, so that the 8 x 8 square (half-diagonal
   4 * sqrt(2) ~ 5.7 pixels) lies inside the disc inscribed in the image and no ink is cut off
   by a rotation;
3. resized bilinearly to 16 x 16;
4. each image rotated by its own angle, uniform in [0, 360) degrees, drawn from a generator
   seeded with :data:`SEED` (bilinear, zero fill, see :func:`datasets.base.rotate_sources`);
5. split by a permutation from the same generator: 500 test images, ``valid_size`` (default
   297) validation images, the rest (default 1,000) for training.

Images are ``float32`` in [0, 1], shape (1, 16, 16). Built once per process (cached in memory)
in a fraction of a second after scikit-learn is imported.

Normalisation: :data:`MEAN` and :data:`STD` are the pixel mean and standard deviation of the
default 1,000-image training split.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from datasets.base import RotatedImageDataset, TensorImageDataset, check_valid_size, resolve_valid_size, rotate_sources

SEED = 0
IMAGE_SIZE = 16
PADDING = 2
TEST_SIZE = 500
DEFAULT_VALID_SIZE = 297
MEAN = 0.1357
STD = 0.2426


class RotDigits(NamedTuple):
    """The whole rotDigits data in the original order of ``load_digits()``.

    Attributes:
        images: rotated images, ``float32`` (1797, 1, 16, 16).
        upright: the same images before rotation.
        labels: ``int64`` (1797,).
        angles: rotation angle of each image in degrees, ``float64`` (1797,).
        order: the seeded permutation that defines the splits: test = ``order[:500]``,
            then validation, then training.
    """

    images: torch.Tensor
    upright: torch.Tensor
    labels: torch.Tensor
    angles: torch.Tensor
    order: torch.Tensor


def upright_digits() -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 1 to 3 of the recipe: ``float32`` images (1797, 1, 16, 16) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # (N, 1, 8, 8)
    padded = F.pad(images, (PADDING,) * 4)  # (N, 1, 12, 12)
    resized = F.interpolate(padded, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                            align_corners=False)  # (N, 1, 16, 16)
    return resized.clamp(0.0, 1.0), torch.from_numpy(digits.target).long()


@functools.lru_cache(maxsize=1)
def rot_digits() -> RotDigits:
    """The rotated digits, built on first call and cached (treat the tensors as read-only)."""
    upright, labels = upright_digits()
    generator = torch.Generator().manual_seed(SEED)
    angles = torch.rand(len(labels), generator=generator, dtype=torch.float64) * 360.0
    order = torch.randperm(len(labels), generator=generator)
    images = rotate_sources(upright, angles)
    return RotDigits(images, upright, labels, angles, order)


def build_splits(root: Path, *, validation: str, download: bool, seed: int,
                 valid_size: Optional[int]) -> Tuple[TensorImageDataset, ...]:
    """(train, valid, test) as described in the module docstring.

    ``root``, ``download`` and ``seed`` are unused: the data is fixed. With
    ``validation="test"`` the valid split is the test set and the training split is unchanged.
    """
    data = rot_digits()
    valid_size = resolve_valid_size(valid_size, DEFAULT_VALID_SIZE)
    check_valid_size(valid_size, len(data.order) - TEST_SIZE, "rotDigits")
    test_rows = data.order[:TEST_SIZE]
    valid_rows = data.order[TEST_SIZE:TEST_SIZE + valid_size]
    train_rows = data.order[TEST_SIZE + valid_size:]
    everything = RotatedImageDataset(data.upright, data.angles, data.labels, images=data.images)
    test = everything.subset(test_rows)
    valid = test if validation == "test" else everything.subset(valid_rows)
    return everything.subset(train_rows), valid, test
