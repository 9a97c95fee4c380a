"""In-memory image datasets and the helpers that split them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset


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
