"""The pre-activation transformer block around a self-attention layer."""

from __future__ import annotations

import torch
from torch import nn

from g_selfatt.nn.activations import get_activation
from g_selfatt.nn.cropping import Crop
from g_selfatt.nn.layers import PointwiseConv2d, PointwiseConv3d, get_norm

_CONVOLUTIONS = {2: PointwiseConv2d, 3: PointwiseConv3d}


class TransformerBlock(nn.Module):
    """``x -> crop(attention(x)) + crop(shortcut(x)) = y -> mlp(y) + y``.

    ``attention`` is norm, activation, the attention layer, norm, activation and
    dropout; ``mlp`` is two point-wise convolutions (``C -> C/2 -> C``) with norms
    and an activation between them; ``shortcut`` is a point-wise convolution when
    the channel count changes and the identity otherwise.

    Every part is equivariant when the attention layer is, so the block is too.

    Args:
        in_channels: input channels.
        out_channels: output (and hidden) channels.
        attention_layer: a self-attention module mapping ``in_channels`` to ``out_channels``.
        norm_type: ``"BatchNorm"`` or ``"LayerNorm"``.
        activation_function: ``"ReLU"`` or ``"Swish"``.
        crop_size: pixels removed from each side of the output.
        value_dropout_rate: dropout after the attention branch.
        dim_mlp_conv: 2 for images ``(B, C, H, W)``, 3 for group feature maps.
    """

    def __init__(self, in_channels: int, out_channels: int, attention_layer: nn.Module,
                 norm_type: str, activation_function: str, crop_size: int,
                 value_dropout_rate: float, dim_mlp_conv: int):
        super().__init__()
        if dim_mlp_conv not in _CONVOLUTIONS:
            raise ValueError(f"dim_mlp_conv must be 2 or 3, got {dim_mlp_conv!r}.")
        if out_channels < 2:
            raise ValueError(f"out_channels must be at least 2 (the MLP halves it), got {out_channels}.")
        conv = _CONVOLUTIONS[dim_mlp_conv]

        def norm(channels: int) -> nn.Module:
            return get_norm(norm_type, channels, dim_mlp_conv)

        self.crop_size = crop_size
        self.crop = Crop(crop_size)
        self.attention = nn.Sequential(
            norm(in_channels),
            get_activation(activation_function),
            attention_layer,
            norm(out_channels),
            get_activation(activation_function),
            nn.Dropout(value_dropout_rate),
        )
        self.mlp = nn.Sequential(
            conv(out_channels, out_channels // 2),
            norm(out_channels // 2),
            get_activation(activation_function),
            conv(out_channels // 2, out_channels),
            norm(out_channels),
        )
        shortcut = [conv(in_channels, out_channels)] if in_channels != out_channels else []
        self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Cropping before the sum keeps the intermediate small.
        out = self.crop(self.attention(x)) + self.crop(self.shortcut(x))
        return self.mlp(out) + out
