"""Point-wise convolutions and normalisation layers."""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn


def Conv2d1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """A point-wise convolution on images ``(B, C, H, W)``."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


def Conv3d1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv3d:
    """A point-wise convolution on group feature maps ``(B, C, G, H, W)``.

    It mixes channels only, so it commutes with every group action.
    """
    return nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


class LayerNorm(nn.Module):
    """Normalises each sample over all channels and positions, with a per-channel affine map.

    Implemented as ``GroupNorm(1, num_channels, eps)``; the statistics are taken
    over the whole feature map, so the layer is invariant to any permutation of
    positions and group elements.
    """

    def __init__(self, num_channels: int, eps: float = 1e-12):
        super().__init__()
        self.layer_norm = nn.GroupNorm(1, num_channels=num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x)


def _batch_norm(dims: int) -> Callable[[int], nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


NORMS: Dict[str, Callable[[int], Callable[[int], nn.Module]]] = {
    "BatchNorm": _batch_norm,
    "LayerNorm": lambda dims: LayerNorm,
}


def get_norm(name: str, num_channels: int, dims: int = 3) -> nn.Module:
    """Builds the normalisation named ``name`` for ``num_channels`` channels.

    Args:
        name: ``"BatchNorm"`` or ``"LayerNorm"``.
        num_channels: number of channels ``C``.
        dims: 2 for images ``(B, C, H, W)``, 3 for group feature maps ``(B, C, G, H, W)``.
    """
    if name not in NORMS:
        raise ValueError(f"Unknown norm_type {name!r}; expected one of {sorted(NORMS)}.")
    return NORMS[name](dims)(num_channels)
