"""In-memory image datasets and the helpers that split them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset

from datasets.transforms import rotate_images


class TensorImageDataset(Dataset):
    """Images and labels held in two tensors.

    Args:
        images: (N, C, H, W), ``uint8`` in [0, 255] or floating in [0, 1].
        labels: (N,) integer class labels.
        source: where the data was read from (named in error messages).

    Attributes:
        images: the images, for code that moves whole splits to a device at once.
        labels: the labels as ``int64``.
        source: where the data was read from.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 source: Optional[Path] = None) -> None:
        if images.dim() != 4:
            raise ValueError(f"Expected images of shape (N, C, H, W), got {tuple(images.shape)}.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images = images
        self.labels = labels.long()
        self.source = source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: torch.Tensor) -> "TensorImageDataset":
        """A new dataset with the rows ``indices`` (copied)."""
        return TensorImageDataset(self.images[indices], self.labels[indices], self.source)


def rotate_sources(upright: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Each upright image rotated once by its own angle: float32 in [0, 1], shape of ``upright``.

    The one recipe of datasets made by rotating upright images (bilinear, zero fill, clamped to
    [0, 1] against the round-off of the interpolation).
    """
    return rotate_images(upright, angles_deg).clamp(0.0, 1.0)


class RotatedImageDataset(TensorImageDataset):
    """Images made by rotating upright images, which are kept with their angles.

    A further rotation by ``t`` can then be applied to the source, ``R(angle + t) upright`` (one
    interpolation, as the dataset's own images were made), rather than to the rotated image,
    ``R(t) R(angle) upright`` (a second interpolation, which also blurs the image).

    Args:
        upright: (N, C, H, W) upright images, ``uint8`` or floating in [0, 1].
        angles: (N,) rotation of each image in degrees.
        labels: (N,) integer class labels.
        source: where the data was read from.

    Attributes:
        images: ``rotate_sources(upright, angles)``.
        upright: the upright images.
        angles: the angles, ``float64``.
    """

    def __init__(self, upright: torch.Tensor, angles: torch.Tensor, labels: torch.Tensor,
                 source: Optional[Path] = None, images: Optional[torch.Tensor] = None) -> None:
        super().__init__(rotate_sources(upright, angles) if images is None else images, labels, source)
        if len(upright) != len(angles):
            raise ValueError(f"{len(upright)} upright images but {len(angles)} angles.")
        self.upright = upright
        self.angles = angles.double()

    def subset(self, indices: torch.Tensor) -> "RotatedImageDataset":
        """A new dataset with the rows ``indices`` (copied)."""
        return RotatedImageDataset(self.upright[indices], self.angles[indices], self.labels[indices],
                                   self.source, images=self.images[indices])

    def rotated_by(self, angle_deg: float) -> TensorImageDataset:
        """The images made again from their sources, each rotated by its angle plus ``angle_deg``."""
        return TensorImageDataset(rotate_sources(self.upright, self.angles + angle_deg), self.labels, self.source)


def check_valid_size(valid_size: int, available: int, name: str) -> None:
    """Raises ``ValueError`` unless 0 < ``valid_size`` < ``available``."""
    if not 0 < valid_size < available:
        raise ValueError(
            f"{name}: valid_size={valid_size} must be positive and smaller than the {available} "
            "training images (tiny test data needs a small valid_size, e.g. 2; on the command "
            "line --config.valid_size=2)."
        )


def split_tail(data: TensorImageDataset, valid_size: int,
               name: str) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """Splits off the last ``valid_size`` rows: (first rows, last rows)."""
    check_valid_size(valid_size, len(data), name)
    cut = len(data) - valid_size
    return (TensorImageDataset(data.images[:cut], data.labels[:cut], data.source),
            TensorImageDataset(data.images[cut:], data.labels[cut:], data.source))


def split_random(data: TensorImageDataset, valid_size: int, seed: int,
                 name: str) -> Tuple[TensorImageDataset, TensorImageDataset]:
    """Splits off ``valid_size`` rows chosen by a seeded permutation: (rest, chosen).

    Both parts keep the original order of their rows.
    """
    check_valid_size(valid_size, len(data), name)
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(data), generator=generator)
    valid_rows, _ = permutation[:valid_size].sort()
    train_rows, _ = permutation[valid_size:].sort()
    return data.subset(train_rows), data.subset(valid_rows)


def resolve_valid_size(valid_size: Optional[int], default: int) -> int:
    """``valid_size`` or, when it is ``None``, the dataset's ``default``."""
    return default if valid_size is None else int(valid_size)
