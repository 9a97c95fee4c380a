"""Relative positional encodings acted on by the group.

A relative offset ``d = (row, col)`` between a query and a key pixel, divided by
the radius ``r`` of the neighbourhood so that it lies in [-1, 1], is acted on by
every group element: ``M_g d / r``. One small MLP per axis maps the row and the
column coordinate of the acted offset to an embedding vector.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from g_selfatt.groups import Group
from g_selfatt.nn.activations import Swish
from g_selfatt.nn.layers import LayerNorm

HIDDEN_CHANNELS = 16


class PositionalMLP(nn.Sequential):
    """``1 -> 16 -> LayerNorm -> Swish -> out_channels``, applied to each coordinate.

    Holds its parameters as 1x1 convolutions so that their names match the original
    (``0.weight``, ``1.layer_norm.weight``, ``3.weight``, ...); calling it embeds coordinates
    (:meth:`embed`).
    """

    def __init__(self, out_channels: int):
        super().__init__(
            nn.Conv2d(1, HIDDEN_CHANNELS, kernel_size=1),
            LayerNorm(HIDDEN_CHANNELS),
            Swish(),
            nn.Conv2d(HIDDEN_CHANNELS, out_channels, kernel_size=1),
        )

    def forward(self, coordinates: Tensor) -> Tensor:
        return self.embed(coordinates)

    def embed(self, coordinates: Tensor) -> Tensor:
        """Maps coordinates of any shape ``S`` to embeddings of shape ``S + (out_channels,)``.

        The MLP runs once per distinct coordinate value and every coordinate takes its value's
        row, so equal coordinates get bitwise equal embeddings wherever they stand (the group
        permutes the offsets of a patch, and the attention layers rely on it). Each operation
        is an element-wise one or a reduction over a few values: none is large enough for torch
        to split it across threads, which on busy cores would wait for a descheduled thread.
        """
        first, norm, activation, last = self
        values, index = torch.unique(coordinates, return_inverse=True)  # (U,), S
        hidden = values[:, None] * first.weight.view(1, -1) + first.bias  # (U, 16)
        hidden = activation(_normalise_rows(hidden, norm.layer_norm))  # (U, 16)
        out = (hidden[:, None, :] * last.weight.flatten(1)).sum(-1) + last.bias  # (U, D)
        return out[index]  # S + (D,)


def _normalise_rows(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm`` (one group) applied to each row of ``x (U, C)``: each row minus its mean, over its
    standard deviation (biased, ``eps`` added to the variance), then ``norm``'s per-channel scale
    and shift."""
    centred = x - x.mean(-1, keepdim=True)  # (U, C)
    variance = centred.square().mean(-1, keepdim=True)  # (U, 1)
    return centred * torch.rsqrt(variance + norm.eps) * norm.weight + norm.bias


def acted_offset_table(group: Group, radius: int) -> Tensor:
    """The normalised offsets of a ``(2r+1) x (2r+1)`` neighbourhood acted on by every element.

    Args:
        group: the group whose elements act.
        radius: ``r``, the largest offset along each axis.

    Returns:
        float64 tensor ``(G, 2, S, S)`` with ``S = 2 r + 1``;
        ``table[g, :, a, b] = M_g (a - r, b - r) / r``. The offsets are exact
        integers before the division, so the table is exactly symmetric and the
        rotations by 90 degrees map it exactly onto itself.

        Each entry is ``M[o, 0] row + M[o, 1] col`` with two separate roundings (no
        fused multiply-add, whose rounding depends on the order of the terms): the
        matrices of ``v`` and ``v u`` for a grid-exact ``u`` have the same entries up
        to order and sign, so ``table[v u](d) = table[v](M_u d)`` holds bitwise for
        every element ``v``, also for those that are off the pixel grid.
    """
    if radius < 1:
        raise ValueError(f"The neighbourhood radius must be at least 1, got {radius}.")
    steps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    offsets = torch.stack(torch.meshgrid(steps, steps, indexing="ij"))  # (2, S, S)
    matrices = group.matrices()[:, :, :, None, None]  # (G, 2, 2, 1, 1)
    acted = matrices[:, :, 0] * offsets[0] + matrices[:, :, 1] * offsets[1]  # (G, 2, S, S)
    return acted / radius
