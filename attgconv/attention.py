"""Channel and spatial attention for attentive group convolutions.

Two families, both returning sigmoid gates in ``[0, 1]`` that the convolutions
use as ``x - gate(x) * x`` (see :func:`attgconv.attentive.attenuate`):

* **Response attention** (full attentive convolutions) acts on the individual
  contributions of every input channel to every output channel, a tensor
  ``(B, O, G, C, [K], H, W)``. Its weights are per output channel, so every
  module takes ``out_channels`` (a slice) to act on a block of output channels.
  :class:`ChannelAttention`, :class:`GroupChannelAttention`,
  :class:`SpatialAttention`, :class:`GroupSpatialAttention`.
* **Feature-map attention** ("fA") acts once on the input feature map
  ``(B, C, [G], H, W)``. :class:`FeatureChannelAttention`,
  :class:`FeatureGroupChannelAttention`, :class:`FeatureSpatialAttention`,
  :class:`FeatureGroupSpatialAttention`.

Channel attention (CBAM-style): ``sigmoid(mlp(mean_x) + mlp(max_x))`` of the
spatial mean and maximum of each channel, without biases. Spatial attention:
a sigmoid of a lifting or group convolution of the channel mean and channel
maximum maps (or, with ``in_channels`` given, of the channels themselves: the
1x1 attention of Romero & Hoogendoorn, 2020).

The group versions transform their weights with the group exactly as the
kernels of :mod:`attgconv.conv`, so the gates are equivariant: for feature maps
``f`` transformed by ``u`` (``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``) the gate of
``u . f`` is ``u`` applied to the gate of ``f``; feature-map lifting spatial
attention is invariant along the group (it takes the max over it).

Shape letters as in :mod:`attgconv.conv`; L is the hidden size of the MLPs
(``C // ratio``), S = 2 the number of statistics (mean, max).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from attgconv.conv import ConvolutionBase, GroupConv, LiftingConv, permutation_table
from attgconv.grids import PlanarGrid

# ------------------------------------------------------------------ helpers


def _hidden_size(in_channels: int, ratio: int) -> int:
    if ratio < 1 or in_channels // ratio < 1:
        raise ValueError(
            f"Channel attention with {in_channels} channels and ratio {ratio} has no hidden unit; "
            f"use a ratio between 1 and {in_channels}."
        )
    return in_channels // ratio


def _mlp_weight(*shape: int) -> nn.Parameter:
    """A bias-free MLP weight, initialised like ``nn.Linear`` (kaiming uniform, a = sqrt(5))."""
    weight = nn.Parameter(torch.empty(*shape))
    _initialise(weight)
    return weight


def _initialise(weight: Tensor) -> None:
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class _MLPAttention(nn.Module):
    """Channel attention with the MLP weights ``weight_fc1`` and ``weight_fc2``."""

    def reset_parameters(self) -> None:
        """Draws both MLP weights again."""
        for weight in (self.weight_fc1, self.weight_fc2):
            _initialise(weight)


def _channel_gate(x: Tensor, mlp: Callable[[Tensor], Tensor]) -> Tensor:
    """``sigmoid(mlp(mean) + mlp(max))`` of the spatial statistics of ``x (..., H, W)``, as ``(..., 1, 1)``."""
    mean = x.mean(dim=(-2, -1))
    maximum = x.amax(dim=(-2, -1))
    return torch.sigmoid(mlp(mean) + mlp(maximum))[..., None, None]


def _channel_statistics(x: Tensor, dim: int) -> Tensor:
    """Mean and max over the channel axis ``dim``, stacked on that axis (size S = 2)."""
    return torch.cat([x.mean(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)], dim=dim)


def _transformed_mlp_weight(weight: Tensor, permutations: Tensor) -> Tensor:
    """``(..., K) -> (..., G, K)``: the last (group) axis read at ``permutations[h]`` for every ``h``."""
    return weight[..., permutations]


# ------------------------------------------------------- channel attention


class ChannelAttention(_MLPAttention):
    """Channel attention on the responses of a lifting convolution.

    One MLP per output channel ``o`` weighs the ``C`` contributions to it:
    ``(B, O, G, C, H, W) -> (B, O, G, C, 1, 1)``. Equivariant (it acts per group element).

    Args:
        out_channels: output channels ``O`` of the convolution.
        in_channels: input channels ``C``.
        ratio: hidden size ``C // ratio``.
    """

    def __init__(self, out_channels: int, in_channels: int, ratio: int = 1):
        super().__init__()
        hidden = _hidden_size(in_channels, ratio)
        self.weight_fc1 = _mlp_weight(out_channels, hidden, in_channels)
        self.weight_fc2 = _mlp_weight(out_channels, in_channels, hidden)

    def forward(self, responses: Tensor, out_channels: slice = slice(None)) -> Tensor:
        fc1, fc2 = self.weight_fc1[out_channels], self.weight_fc2[out_channels]

        def mlp(s: Tensor) -> Tensor:  # (B, O, G, C)
            hidden = torch.relu(torch.einsum("bogc,olc->bogl", s, fc1))
            return torch.einsum("bogl,ocl->bogc", hidden, fc2)

        return _channel_gate(responses, mlp)


class GroupChannelAttention(_MLPAttention):
    """Channel attention on the responses of a group convolution.

    For every output channel ``o``, output element ``h`` and input element ``k`` an
    MLP over the ``C`` input channels, with the weights of the relative element
    ``h^-1 k``: ``(B, O, G, C, K, H, W) -> (B, O, G, C, K, 1, 1)``.

    Args:
        grid: the group.
        out_channels: output channels ``O``.
        in_channels: input channels ``C``.
        ratio: hidden size ``C // ratio``.
        permutations: ``"left"`` (equivariant) or ``"cyclic"``: a cyclic shift of the input-group
            axis, as the original implementation does (the same for p4, not equivariant for p4m).
    """

    def __init__(self, grid: PlanarGrid, out_channels: int, in_channels: int, ratio: int = 1,
                 permutations: str = "left"):
        super().__init__()
        hidden = _hidden_size(in_channels, ratio)
        elements = len(grid)
        self.weight_fc1 = _mlp_weight(out_channels, hidden, in_channels, elements)
        self.weight_fc2 = _mlp_weight(out_channels, in_channels, hidden, elements)
        self.register_buffer("_permutations", permutation_table(grid, permutations), persistent=False)

    def forward(self, responses: Tensor, out_channels: slice = slice(None)) -> Tensor:
        fc1 = _transformed_mlp_weight(self.weight_fc1[out_channels], self._permutations)  # (O, L, C, G, K)
        fc2 = _transformed_mlp_weight(self.weight_fc2[out_channels], self._permutations)  # (O, C, L, G, K)

        def mlp(s: Tensor) -> Tensor:  # (B, O, G, C, K)
            hidden = torch.relu(torch.einsum("bogck,olcgk->boglk", s, fc1))
            return torch.einsum("boglk,oclgk->bogck", hidden, fc2)

        return _channel_gate(responses, mlp)


class FeatureChannelAttention(_MLPAttention):
    """Channel attention on an image: ``(B, C, H, W) -> (B, C, 1, 1)``.

    Invariant under rotations and mirrors of the image.

    Args:
        in_channels: channels ``C``.
        ratio: hidden size ``C // ratio``.
    """

    def __init__(self, in_channels: int, ratio: int = 1):
        super().__init__()
        hidden = _hidden_size(in_channels, ratio)
        self.weight_fc1 = _mlp_weight(hidden, in_channels)
        self.weight_fc2 = _mlp_weight(in_channels, hidden)

    def forward(self, x: Tensor) -> Tensor:
        def mlp(s: Tensor) -> Tensor:  # (B, C)
            return torch.relu(s @ self.weight_fc1.t()) @ self.weight_fc2.t()

        return _channel_gate(x, mlp)


class FeatureGroupChannelAttention(_MLPAttention):
    """Channel attention on a group feature map: ``(B, C, G, H, W) -> (B, C, G, 1, 1)``.

    The MLP is a pair of 1x1 group convolutions on the pooled statistics, so the
    gate is equivariant: ``gate(u . f) = u . gate(f)``.

    Args:
        grid: the group.
        in_channels: channels ``C``.
        ratio: hidden size ``C // ratio``.
    """

    def __init__(self, grid: PlanarGrid, in_channels: int, ratio: int = 1):
        super().__init__()
        hidden = _hidden_size(in_channels, ratio)
        elements = len(grid)
        self.weight_fc1 = _mlp_weight(hidden, in_channels, elements)
        self.weight_fc2 = _mlp_weight(in_channels, hidden, elements)
        self.register_buffer("_permutations", grid.left_permutations(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        fc1 = _transformed_mlp_weight(self.weight_fc1, self._permutations)  # (L, C, G, K)
        fc2 = _transformed_mlp_weight(self.weight_fc2, self._permutations)  # (C, L, G, K)

        def mlp(s: Tensor) -> Tensor:  # (B, C, K)
            hidden = torch.relu(torch.einsum("bck,lcgk->blg", s, fc1))
            return torch.einsum("blk,clgk->bcg", hidden, fc2)

        return _channel_gate(x, mlp)


# ------------------------------------------------------- spatial attention


class _ResponseSpatialAttention(ConvolutionBase):
    """Spatial attention on convolution responses ``(B, O, G, C, [K], H, W)``.

    For each output channel ``o`` and output element ``h``, the mean and max over the
    ``C`` contributions are convolved (separately per input element ``k``) with the
    kernel of ``o`` transformed by ``h`` (a two-channel kernel, one channel per statistic):
    ``-> (B, O, G, 1, [K], H, W)``.
    """

    def __init__(self, grid: PlanarGrid, out_channels: int, kernel_size: int, *, on_group: bool,
                 stride: int = 1, dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, 2, out_channels, kernel_size, on_group=on_group, stride=stride,
                         padding=dilation * (kernel_size // 2), dilation=dilation, wscale=wscale)

    def forward(self, responses: Tensor, out_channels: slice = slice(None)) -> Tensor:
        statistics = _channel_statistics(responses, dim=3)  # (B, O, G, S, [K], H, W)
        statistics = statistics.movedim(3, -3)  # (B, O, G, [K], S, H, W)
        stack = self.kernel_stack(out_channels).movedim(2, -3)  # (O, G, [K], S, k, k)
        maps = stack.shape[:-3].numel()
        out = self.convolve(statistics.reshape(statistics.shape[0], -1, *statistics.shape[-2:]),
                            stack.reshape(maps, *stack.shape[-3:]), groups=maps)  # (B, O*G*[K], H, W)
        out = out.view(*statistics.shape[:-3], 1, *out.shape[-2:])  # (B, O, G, [K], 1, H, W)
        return torch.sigmoid(out.movedim(-3, 3))  # (B, O, G, 1, [K], H, W)


class SpatialAttention(_ResponseSpatialAttention):
    """Spatial attention on the responses of a lifting convolution.

    ``(B, O, G, C, H, W) -> (B, O, G, 1, H, W)``; a lifting kernel ``(O, 2, k, k)``
    transformed by each output element. Equivariant.

    Args:
        grid: the group.
        out_channels: output channels ``O`` of the convolution.
        kernel_size: side of the attention kernel (padding keeps the size).
        stride, dilation: of the attention convolution.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, out_channels, kernel_size, on_group=False, stride=stride, dilation=dilation,
                         wscale=wscale)


class GroupSpatialAttention(_ResponseSpatialAttention):
    """Spatial attention on the responses of a group convolution.

    ``(B, O, G, C, K, H, W) -> (B, O, G, 1, K, H, W)``; a group kernel ``(O, 2, K, k, k)``
    transformed by each output element and applied separately for each input element.
    Equivariant.

    Args:
        grid: the group.
        out_channels: output channels ``O`` of the convolution.
        kernel_size: side of the attention kernel (padding keeps the size).
        stride, dilation: of the attention convolution.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, out_channels: int, kernel_size: int, *, stride: int = 1,
                 dilation: int = 1, wscale: float = 1.0):
        super().__init__(grid, out_channels, kernel_size, on_group=True, stride=stride, dilation=dilation,
                         wscale=wscale)


class FeatureSpatialAttention(LiftingConv):
    """Spatial attention on an image: ``(B, C, H, W) -> (B, 1, H, W)``.

    A lifting convolution of the channel mean and max maps (or, with ``in_channels``,
    of the channels themselves) to one channel, max over the group, sigmoid.
    Equivariant: ``gate(x(M_u^-1 .)) = gate(x)(M_u^-1 .)``.

    Args:
        grid: the group.
        kernel_size: side of the kernel (padding keeps the size).
        stride, dilation: of the convolution.
        in_channels: ``None`` to convolve the 2 channel statistics, else the number of
            image channels to convolve directly.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 in_channels: Optional[int] = None, wscale: float = 1.0):
        super().__init__(grid, in_channels or 2, 1, kernel_size, stride=stride,
                         padding=dilation * (kernel_size // 2), dilation=dilation, wscale=wscale)
        self.use_statistics = in_channels is None

    def forward(self, x: Tensor) -> Tensor:
        inputs = _channel_statistics(x, dim=1) if self.use_statistics else x  # (B, S or C, H, W)
        return torch.sigmoid(super().forward(inputs).amax(dim=2))  # (B, 1, H, W)


class FeatureGroupSpatialAttention(GroupConv):
    """Spatial attention on a group feature map: ``(B, C, G, H, W) -> (B, 1, G, H, W)``.

    A group convolution (with the integration weight of :class:`GroupConv`) of the
    channel mean and max maps (or, with ``in_channels``, of the channels themselves)
    to one channel, sigmoid. Equivariant: ``gate(u . f) = u . gate(f)``.

    Args:
        grid: the group.
        kernel_size: side of the kernel (padding keeps the size).
        stride, dilation: of the convolution.
        in_channels: ``None`` to convolve the 2 channel statistics, else the number of
            channels to convolve directly.
        wscale: initialisation scale.
    """

    def __init__(self, grid: PlanarGrid, kernel_size: int, *, stride: int = 1, dilation: int = 1,
                 in_channels: Optional[int] = None, wscale: float = 1.0):
        super().__init__(grid, in_channels or 2, 1, kernel_size, stride=stride,
                         padding=dilation * (kernel_size // 2), dilation=dilation, wscale=wscale)
        self.use_statistics = in_channels is None

    def forward(self, x: Tensor) -> Tensor:
        inputs = _channel_statistics(x, dim=1) if self.use_statistics else x  # (B, S or C, G, H, W)
        return torch.sigmoid(super().forward(inputs))  # (B, 1, G, H, W)
