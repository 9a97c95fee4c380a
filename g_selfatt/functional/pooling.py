"""Pooling over the plane (R^2) and over the group axis.

Spatial pooling with a window and stride that divide the image commutes with
rotations by 90 degrees and mirrors only when the image side is a multiple of
the stride; pooling over the group axis is invariant.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def max_pooling_rd(input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:
    """Max-pooling of images ``(B, C, H, W)``."""
    return F.max_pool2d(input, kernel_size=kernel_size, stride=stride, padding=padding)


def average_pooling_rd(input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:
    """Average-pooling of images ``(B, C, H, W)``."""
    return F.avg_pool2d(input, kernel_size=kernel_size, stride=stride, padding=padding)


def _on_group(pool, input: Tensor, kernel_size: int, stride: int, padding: int) -> Tensor:
    batch, channels, elements, height, width = input.shape
    out = pool(input.reshape(batch, channels * elements, height, width), kernel_size, stride, padding)
    return out.view(batch, channels, elements, *out.shape[-2:])  # (B, C, G, H', W')


def max_pooling_rd_on_G(input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:
    """Spatial max-pooling of group feature maps ``(B, C, G, H, W)``."""
    return _on_group(max_pooling_rd, input, kernel_size, stride, padding)


def average_pooling_rd_on_G(input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:
    """Spatial average-pooling of group feature maps ``(B, C, G, H, W)``."""
    return _on_group(average_pooling_rd, input, kernel_size, stride, padding)


def max_pooling_group(input: Tensor, group_dim: int = 2) -> Tensor:
    """Max over the group axis: ``(B, C, G, H, W) -> (B, C, H, W)``, invariant to the group's permutation."""
    return input.max(dim=group_dim).values
