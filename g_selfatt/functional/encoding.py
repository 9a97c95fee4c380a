"""Extraction of relative-position windows from an offset table."""

import torch
from torch import Tensor


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
    rows = torch.arange(height).view(1, -1) - torch.arange(height).view(-1, 1) + height - 1  # (H, H)
    cols = torch.arange(width).view(1, -1) - torch.arange(width).view(-1, 1) + width - 1  # (W, W)
    gathered = indices[:, rows[:, None, :, None], cols[None, :, None, :]]  # (2, H, W, H, W)
    return gathered.permute(1, 2, 3, 4, 0)
