"""The original ``attgconv.layers``: the ``layers(group)`` factory and its layer classes.

Each ``*Layer`` is this project's layer (:mod:`attgconv.conv`, :mod:`attgconv.attentive`) built from
the original's arguments, with the original's attributes (``group``, ``G``, ``H``, ``Rn``, ``N_in``,
``N_out``, ``kernel_size``, ``h_grid``, ``N_h``, ...) and methods (``kernel(h)``, ``conv_Rn_G``, ...);
see :mod:`attgconv.compat.original`. Equivariance is the layers': ``L(u . f) = u . L(f)`` for
``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from attgconv.compat import original
from attgconv.attentive import (AttentiveGroupConv, AttentiveLiftingConv, FeatureAttentiveGroupConv,
                                FeatureAttentiveLiftingConv)
from attgconv.conv import GroupConv, LiftingConv
from g_selfatt.functional import average_pooling_rd_on_G, max_pooling_rd_on_G


class _OriginalAttributes:
    """The attributes the original layers set, and their ``kernel(h)``."""

    kernel_type = "Rn"

    def _set_original(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any = None,  # noqa: N803
                      input_h_grid: Any = None, conv_groups: int = 1) -> None:
        group = original.group_module(group)
        self.group, self.G, self.H, self.Rn = group, group.G, group.H, group.Rn
        self.N_in, self.N_out, self.conv_groups = N_in, N_out, conv_groups
        if h_grid is not None:
            self.h_grid, self.N_h = h_grid, original.grid_size(h_grid)
        if input_h_grid is not None:
            self.input_h_grid, self.N_h_in = input_h_grid, original.grid_size(input_h_grid)

    def kernel(self, h: Optional[Tensor] = None) -> Tensor:
        """The kernel transformed by ``h`` (default: the identity), as the original sampled it."""
        if h is None:
            return self.weight
        if self.kernel_type == "G":
            return self.H.left_representation_on_G(h, self.weight)
        return self.H.left_representation_on_Rn(h, self.weight)


class ConvRnRnLayer(_OriginalAttributes, nn.Conv2d):
    """A plain convolution ``(B, C, H, W) -> (B, O, H, W)`` (no bias), the original's initialisation."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, stride: int = 1,  # noqa: N803
                 padding: int = 1, dilation: int = 1, conv_groups: int = 1, wscale: float = 1.0):
        super().__init__(N_in, N_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=conv_groups, bias=False)
        self._set_original(group, N_in, N_out, kernel_size, conv_groups=conv_groups)
        bound = wscale / math.sqrt(N_in * kernel_size ** 2)
        nn.init.uniform_(self.weight, -bound, bound)

    def conv_Rn_Rn(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class ConvRnGLayer(_OriginalAttributes, LiftingConv):
    """:class:`~attgconv.conv.LiftingConv` from the original's arguments."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any, stride: int = 1,  # noqa: N803
                 padding: int = 1, dilation: int = 1, conv_groups: int = 1, wscale: float = 1.0):
        original.check_dense(conv_groups)
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid, conv_groups=conv_groups)

    def conv_Rn_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class ConvGGLayer(_OriginalAttributes, GroupConv):
    """:class:`~attgconv.conv.GroupConv` from the original's arguments."""

    kernel_type = "G"

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 input_h_grid: Any = None, stride: int = 1, padding: int = 1, dilation: int = 1,
                 conv_groups: int = 1, wscale: float = 1.0):
        original.check_dense(conv_groups)
        original.check_same_grid(h_grid, input_h_grid)
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid, input_h_grid or h_grid, conv_groups)

    def conv_G_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class AttConvRnGLayer(_OriginalAttributes, AttentiveLiftingConv):
    """:class:`~attgconv.attentive.AttentiveLiftingConv` from the original's arguments."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 stride: int = 1, padding: int = 1, dilation: int = 1, wscale: float = 1.0):
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid, conv_groups=N_in)

    def att_conv_Rn_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class AttConvGGLayer(_OriginalAttributes, AttentiveGroupConv):
    """:class:`~attgconv.attentive.AttentiveGroupConv` from the original's arguments."""

    kernel_type = "G"

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 input_h_grid: Any = None, stride: int = 1, padding: int = 1, dilation: int = 1,
                 wscale: float = 1.0):
        original.check_same_grid(h_grid, input_h_grid)
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, dilation=dilation, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid, input_h_grid or h_grid, N_in)

    def att_conv_G_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class fAttConvRnGLayer(_OriginalAttributes, FeatureAttentiveLiftingConv):  # noqa: N801
    """:class:`~attgconv.attentive.FeatureAttentiveLiftingConv` from the original's arguments."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 stride: int = 1, padding: int = 1, wscale: float = 1.0):
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid)

    def feat_att_conv_Rn_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class fAttConvGGLayer(_OriginalAttributes, FeatureAttentiveGroupConv):  # noqa: N801
    """:class:`~attgconv.attentive.FeatureAttentiveGroupConv` from the original's arguments."""

    kernel_type = "G"

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 channel_attention: Optional[nn.Module] = None, spatial_attention: Optional[nn.Module] = None,
                 input_h_grid: Any = None, stride: int = 1, padding: int = 1, wscale: float = 1.0):
        original.check_same_grid(h_grid, input_h_grid)
        super().__init__(original.planar_grid(group, h_grid), N_in, N_out, kernel_size,
                         channel_attention=channel_attention, spatial_attention=spatial_attention, stride=stride,
                         padding=padding, wscale=wscale)
        self._set_original(group, N_in, N_out, kernel_size, h_grid, input_h_grid or h_grid)

    def feat_att_conv_G_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class layers(nn.Module):  # noqa: N801  (the original's factory)
    """``layers(attgconv.group.SE2)``: builds the layers of one group, with the original's defaults."""

    def __init__(self, group: Any):
        super().__init__()
        group = original.group_module(group)
        self.group, self.G, self.Rn, self.H = group, group.G, group.Rn, group.H

    def ConvRnRn(self, N_in, N_out, kernel_size, stride=1, padding=1, dilation=1, conv_groups=1,  # noqa: N802,N803
                 wscale=1.0) -> ConvRnRnLayer:
        return ConvRnRnLayer(self.group, N_in, N_out, kernel_size, stride, padding, dilation, conv_groups, wscale)

    def ConvRnG(self, N_in, N_out, kernel_size, h_grid, stride=1, padding=1, dilation=1, conv_groups=1,  # noqa: N802,N803
                wscale=1.0) -> ConvRnGLayer:
        return ConvRnGLayer(self.group, N_in, N_out, kernel_size, h_grid, stride, padding, dilation, conv_groups,
                            wscale)

    def ConvGG(self, N_in, N_out, kernel_size, h_grid, input_h_grid=None, stride=1, padding=1, dilation=1,  # noqa: N802,N803
               conv_groups=1, wscale=1.0) -> ConvGGLayer:
        return ConvGGLayer(self.group, N_in, N_out, kernel_size, h_grid, input_h_grid, stride, padding, dilation,
                           conv_groups, wscale)

    def AttConvRnG(self, N_in, N_out, kernel_size, h_grid, channel_attention=None, spatial_attention=None,  # noqa: N802,N803
                   stride=1, padding=1, dilation=1, wscale=1.0) -> AttConvRnGLayer:
        return AttConvRnGLayer(self.group, N_in, N_out, kernel_size, h_grid, channel_attention, spatial_attention,
                               stride, padding, dilation, wscale)

    def AttConvGG(self, N_in, N_out, kernel_size, h_grid, channel_attention=None, spatial_attention=None,  # noqa: N802,N803
                  input_h_grid=None, stride=1, padding=1, dilation=1, wscale=1.0) -> AttConvGGLayer:
        return AttConvGGLayer(self.group, N_in, N_out, kernel_size, h_grid, channel_attention, spatial_attention,
                              input_h_grid, stride, padding, dilation, wscale)

    def fAttConvRnG(self, N_in, N_out, kernel_size, h_grid, channel_attention=None, spatial_attention=None,  # noqa: N802,N803
                    stride=1, padding=1, wscale=1.0) -> fAttConvRnGLayer:
        return fAttConvRnGLayer(self.group, N_in, N_out, kernel_size, h_grid, channel_attention, spatial_attention,
                                stride, padding, wscale)

    def fAttConvGG(self, N_in, N_out, kernel_size, h_grid, channel_attention=None, spatial_attention=None,  # noqa: N802,N803
                   input_h_grid=None, stride=1, padding=1, wscale=1.0) -> fAttConvGGLayer:
        return fAttConvGGLayer(self.group, N_in, N_out, kernel_size, h_grid, channel_attention, spatial_attention,
                               input_h_grid, stride, padding, wscale)

    def max_pooling_Rn(self, input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:  # noqa: N802
        """Spatial max-pooling of a feature map on the group ``(B, C, G, H, W)``."""
        return max_pooling_rd_on_G(input, kernel_size, stride, padding)

    def average_pooling_Rn(self, input: Tensor, kernel_size: int, stride: int, padding: int = 1) -> Tensor:  # noqa: N802
        """Spatial average pooling of a feature map on the group ``(B, C, G, H, W)``."""
        return average_pooling_rd_on_G(input, kernel_size, stride, padding)
