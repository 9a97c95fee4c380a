"""Spatial cropping."""

import torch
from torch import nn


class Crop(nn.Module):
    """Removes ``crop_size`` pixels from each side of the last two axes (H, W).

    Cropping commutes with rotations by 90 degrees and mirrors, so it preserves
    equivariance.
    """

    def __init__(self, crop_size: int):
        super().__init__()
        if crop_size < 0:
            raise ValueError(f"crop_size must be non-negative, got {crop_size}.")
        self.crop_size = crop_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop_size == 0:
            return x
        height, width = x.shape[-2:]
        if 2 * self.crop_size >= min(height, width):
            raise ValueError(
                f"Cannot crop {self.crop_size} pixels from each side of a {height}x{width} input."
            )
        c = self.crop_size
        return x[..., c : height - c, c : width - c]

    def extra_repr(self) -> str:
        return f"crop_size={self.crop_size}"
