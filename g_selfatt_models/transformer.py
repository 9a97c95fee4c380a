"""``Transformer``: the original's R^2 self-attention network (deprecated there, kept for its code).

Five transformer blocks of :class:`~g_selfatt.nn.RdSelfAttention` (``kernel_size ** 2`` heads)
on 28x28 images, one 2x2 max-pool, logits summed over space; the layer order and names are the
original's, so its state dicts load strictly. Its logits are translation invariant away from
the border; the GSA-Net of the group z2 (``z2sa``) is the network the paper uses instead.
"""

from __future__ import annotations

import torch
from torch import nn

from g_selfatt.nn import Conv2d1x1, LayerNorm, RdSelfAttention, TransformerBlock

__all__ = ["Transformer"]

_NORMS = {"BatchNorm": nn.BatchNorm3d, "LayerNorm": LayerNorm}


class Transformer(nn.Module):
    """``(B, C_in, S, S) -> (B, 10)`` for images of side ``image_size``.

    Args:
        in_channels: input channels.
        num_channels: channels of every block.
        kernel_size: its square is the number of heads.
        image_size: side of the input images.
        attention_dropout_rate, value_dropout_rate: dropout in the attention layers and blocks.
        use_bias: unused (as in the original).
        norm_type: ``"BatchNorm"`` or ``"LayerNorm"``.
    """

    def __init__(self, in_channels: int, num_channels: int, kernel_size: int, image_size: int,
                 attention_dropout_rate: float, value_dropout_rate: float, use_bias: bool, norm_type: str):
        super().__init__()
        if norm_type not in _NORMS:
            raise ValueError(f"Unknown norm_type {norm_type!r}; expected one of {sorted(_NORMS)}.")

        def block(side: int, crop: int) -> TransformerBlock:
            attention = RdSelfAttention(num_channels, num_channels // 2, num_channels, kernel_size ** 2, side,
                                        attention_dropout_rate)
            return TransformerBlock(num_channels, num_channels, attention, norm_type, "ReLU", crop,
                                    value_dropout_rate, dim_mlp_conv=2)

        after_pool = (image_size - 4) // 2
        self.sequential = nn.Sequential(
            Conv2d1x1(in_channels, num_channels),
            _NORMS[norm_type](num_channels),
            nn.ReLU(),
            block(image_size, 2),
            block(image_size - 4, 0),
            nn.MaxPool2d(kernel_size=2, stride=2),
            block(after_pool, 2),
            block(after_pool - 4, 1),
            block(after_pool - 6, 1),
            Conv2d1x1(num_channels, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x).sum(dim=(-2, -1)).view(x.shape[0], 10)  # (B, 10)
