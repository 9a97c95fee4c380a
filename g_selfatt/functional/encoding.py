"""Relative offsets between the pixels of an image: the one index of every relative table.

A table of relative offsets ``(..., S, S)``, ``S = 2 r + 1``, holds offset ``(a - r, b - r)``
at ``[..., a, b]``. For query ``(i, j)`` and key ``(k, l)`` the entry is at row
``k - i + r`` and column ``l - j + r``; every reader of such a table (the attention layers'
global positional encodings, their efficient implementations, :func:`extract_patches`) gets
its index from :func:`relative_offsets`.
"""

from typing import Tuple

import torch
from torch import Tensor


def axis_offsets(size: int, radius: int, device=None) -> Tensor:
    """``index[i, k] = k - i + r`` for the ``size`` pixels of one axis, ``(size, size)`` long."""
    steps = torch.arange(size, device=device)
    return steps.view(1, -1) - steps.view(-1, 1) + radius


def relative_offsets(height: int, width: int, radius: int, device=None) -> Tuple[Tensor, Tensor]:
    """Row and column of every (query, key) pair of an ``H x W`` image in an offset table.

    Returns:
        ``(rows, cols)``: ``rows[i, k] = k - i + r``, ``(H, H)``, and ``cols[j, l] = l - j + r``,
        ``(W, W)``, long.
    """
    return axis_offsets(height, radius, device), axis_offsets(width, radius, device)


def flat_relative_offsets(height: int, width: int, radius: int, device=None) -> Tensor:
    """:func:`relative_offsets` as flat positions in the row-major ``S x S`` table, ``(H W, H W)``.

    ``index[i W + j, k W + l] = (k - i + r) S + (l - j + r)``.
    """
    rows, cols = relative_offsets(height, width, radius, device)
    side = 2 * radius + 1
    index = rows[:, None, :, None] * side + cols[None, :, None, :]  # (H, W, H, W)
    return index.reshape(height * width, height * width)


def extract_patches(indices: Tensor) -> Tensor:
    """Reads, for every (query, key) pair of an ``H x W`` image, the entry of a relative table.

    Args:
        indices: table ``(2, 2H - 1, 2W - 1)`` whose centre ``[:, H - 1, W - 1]`` is offset 0.

    Returns:
        ``(H, W, H, W, 2)`` with ``out[i, j, k, l] = indices[:, k - i + H - 1, l - j + W - 1]``.
    """
    if indices.dim() != 3 or indices.shape[0] != 2 or indices.shape[1] % 2 == 0 or indices.shape[2] % 2 == 0:
        raise ValueError(f"Expected a table of shape (2, 2H-1, 2W-1), got {tuple(indices.shape)}.")
    height = (indices.shape[1] + 1) // 2
    width = (indices.shape[2] + 1) // 2
    rows, cols = axis_offsets(height, height - 1), axis_offsets(width, width - 1)
    gathered = indices[:, rows[:, None, :, None], cols[None, :, None, :]]  # (2, H, W, H, W)
    return gathered.permute(1, 2, 3, 4, 0)
