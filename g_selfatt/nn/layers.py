"""Point-wise convolutions and normalisation layers."""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``y[b, o, ...] = sum_c weight[o, c] x[b, c, ...] + bias[o]``: a convolution with a kernel of one
    pixel, computed as one batched matrix product.

    The matrix product (and its gradients, two more) runs 1.4-2x faster on the CPU than the
    convolution routines at the shapes of the GSA-Nets (``benchmarks/attention.py``, cases g, h).

    Args:
        x: ``(B, C, *S)`` for any spatial (and group) axes ``S``.
        weight: ``(O, C, 1, ..., 1)``, the weight of an ``nn.Conv2d`` or ``nn.Conv3d`` of kernel size 1.
        bias: ``(O,)`` or ``None``.

    Returns:
        ``(B, O, *S)``.
    """
    batch, channels, *spatial = x.shape
    out_channels = weight.shape[0]
    matrix = weight.reshape(out_channels, channels)  # (O, C)
    flat = x.reshape(batch, channels, math.prod(spatial))  # (B, C, N), N = prod(S)
    if bias is None:
        out = torch.matmul(matrix, flat)  # (B, O, N)
    else:
        out = torch.baddbmm(bias.view(1, out_channels, 1), matrix.expand(batch, -1, -1), flat)  # (B, O, N)
    return out.view(batch, out_channels, *spatial)


class _Pointwise:
    """The forward pass of the point-wise convolutions: strides subsample the input, then
    :func:`pointwise_conv` (a kernel of one pixel sees nothing between the strided positions)."""

    stride: Tuple[int, ...]
    weight: torch.Tensor
    bias: Optional[torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(step != 1 for step in self.stride):
            x = x[(slice(None), slice(None), *(slice(None, None, step) for step in self.stride))]
        return pointwise_conv(x, self.weight, self.bias)


class PointwiseConv2d(_Pointwise, nn.Conv2d):
    """A point-wise convolution on images ``(B, C, H, W)``: ``nn.Conv2d`` of kernel size 1 (same
    parameters and state dict) computed by :func:`pointwise_conv`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


class PointwiseConv3d(_Pointwise, nn.Conv3d):
    """A point-wise convolution on group feature maps ``(B, C, G, H, W)``: ``nn.Conv3d`` of kernel
    size 1 (same parameters and state dict) computed by :func:`pointwise_conv`.

    Without stride it mixes channels only, so it commutes with every group action.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


def Conv2d1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> PointwiseConv2d:
    """A point-wise convolution on images ``(B, C, H, W)``, without bias unless asked."""
    return PointwiseConv2d(in_channels, out_channels, stride=stride, bias=bias)


def Conv3d1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> PointwiseConv3d:
    """A point-wise convolution on group feature maps ``(B, C, G, H, W)``, without bias unless asked."""
    return PointwiseConv3d(in_channels, out_channels, stride=stride, bias=bias)


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
