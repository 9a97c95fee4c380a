"""The Z2 CNN baseline of rotated MNIST (Cohen & Welling, 2016)."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

__all__ = ["CNN"]


def _conv_bn_relu(in_channels: int, out_channels: int, eps: float, bias: bool) -> List[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=bias),
        nn.BatchNorm2d(num_features=out_channels, eps=eps),
        nn.ReLU(),
    ]


class CNN(nn.Module):
    """Seven 3x3/4x4 convolutions with batch norm, one max-pool, no padding.

    Translation equivariant only. Needs 28x28 inputs (the last 4x4 convolution
    produces a 1x1 map of ``num_classes`` logits).

    Args:
        in_channels: image channels.
        num_channels: channels of the hidden layers (20 in the paper).
        bn_epsilon: batch-norm epsilon (2e-5 in the paper).
        dropout_rate: dropout after layers 1, 3, 4, 5 and 6.
        use_bias: biases in the convolutions.
        num_classes: number of logits.
    """

    def __init__(self, in_channels: int, num_channels: int, bn_epsilon: float, dropout_rate: float,
                 use_bias: bool = False, num_classes: int = 10):
        super().__init__()
        self.num_classes = num_classes
        layers: List[nn.Module] = []
        layers += _conv_bn_relu(in_channels, num_channels, bn_epsilon, use_bias) + [nn.Dropout(dropout_rate)]
        layers += _conv_bn_relu(num_channels, num_channels, bn_epsilon, use_bias)
        layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        for _ in range(4):
            layers += _conv_bn_relu(num_channels, num_channels, bn_epsilon, use_bias) + [nn.Dropout(dropout_rate)]
        layers += [nn.Conv2d(num_channels, num_classes, kernel_size=4, bias=use_bias)]
        self.sequential = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, 28, 28)``."""
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"CNN needs 28x28 inputs, got {tuple(x.shape[-2:])}.")
        return self.sequential(x).view(x.shape[0], self.num_classes)
