"""The original ``attgconv.attention_layers``: channel and spatial attention from the original's arguments.

Each class is this project's module of :mod:`attgconv.attention` with the original constructor and
attribute names (see :mod:`attgconv.compat.original`). ``ChannelAttentionGG`` shifts the input-group axis
cyclically, as the original did (an action of p4, not of p4m).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from attgconv import attention
from attgconv.compat import original


class ChannelAttention(attention.ChannelAttention):
    """Channel attention of a lifting convolution's responses."""

    def __init__(self, N_out: int, N_in: int, ratio: int = 1):  # noqa: N803
        super().__init__(N_out, N_in, ratio)
        self.N_out, self.N_in = N_out, N_in
        self.linear = F.linear
        self.avg_pool, self.max_pool = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)


class ChannelAttentionGG(attention.GroupChannelAttention):
    """Channel attention of a group convolution's responses (the original's cyclic shift)."""

    def __init__(self, N_h: int, N_out: int, N_h_in: int, N_in: int, ratio: int = 1,  # noqa: N803
                 bias: bool = False):
        if N_h != N_h_in:
            raise ValueError("ChannelAttentionGG needs N_h == N_h_in.")
        super().__init__(original.planar_grid(None, N_h), N_out, N_in, ratio, permutations="cyclic")
        self.N_h, self.N_h_in, self.N_out, self.N_in = N_h, N_h_in, N_out, N_in


class SpatialAttention(attention.SpatialAttention):
    """Spatial attention of a lifting convolution's responses."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any, stride: int,  # noqa: N803
                 dilation: int = 1, wscale: float = 1.0):
        super().__init__(original.planar_grid(group, h_grid), N_out, kernel_size, stride=stride, dilation=dilation,
                         wscale=wscale)
        self.group, self.h_grid, self.N_in, self.N_out = group, h_grid, N_in, N_out

    def conv_Rn_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class SpatialAttentionGG(attention.GroupSpatialAttention):
    """Spatial attention of a group convolution's responses."""

    def __init__(self, group: Any, N_in: int, N_out: int, kernel_size: int, h_grid: Any,  # noqa: N803
                 input_h_grid: Any, stride: int, dilation: int = 1, wscale: float = 1.0):
        original.check_same_grid(h_grid, input_h_grid)
        super().__init__(original.planar_grid(group, h_grid), N_out, kernel_size, stride=stride, dilation=dilation,
                         wscale=wscale)
        self.group, self.h_grid, self.input_h_grid, self.N_in, self.N_out = group, h_grid, input_h_grid, N_in, N_out

    def conv_G_G(self, input: Tensor) -> Tensor:  # noqa: N802
        return self(input)


class fChannelAttention(attention.FeatureChannelAttention):  # noqa: N801
    """Channel attention of an input image (fA)."""

    def __init__(self, N_in: int, ratio: int = 1):  # noqa: N803
        super().__init__(N_in, ratio)
        self.N_in, self.ratio = N_in, ratio


class fChannelAttentionGG(attention.FeatureGroupChannelAttention):  # noqa: N801
    """Channel attention of an input feature map on the group (fA)."""

    def __init__(self, N_h_in: int, N_in: int, ratio: int = 1, group: Any = "SE2"):  # noqa: N803
        grid = original.planar_grid(group, N_h_in)
        super().__init__(grid, N_in, ratio)
        self.N_h_in = self.N_h = N_h_in
        self.N_in, self.ratio = N_in, ratio
        self.h_grid = grid
        self.action = grid.transform_feature_map


class fSpatialAttention(attention.FeatureSpatialAttention):  # noqa: N801
    """Spatial attention of an input image (fA): a lifting convolution of its channel statistics."""

    def __init__(self, group: Any, kernel_size: int, h_grid: Any, stride: int = 1, dilation: int = 1,
                 groups: int = 1, wscale: float = 1.0):
        super().__init__(**original.feature_spatial_arguments(group, h_grid, kernel_size, stride, dilation, groups,
                                            wscale, None))
        self.group, self.h_grid = group, h_grid

    def f_att_conv2d(self, input: Tensor, visualize: bool = False) -> Tensor:
        return self(input)


class fSpatialAttentionGG(attention.FeatureGroupSpatialAttention):  # noqa: N801
    """Spatial attention of an input feature map on the group (fA)."""

    def __init__(self, group: Any, kernel_size: int, input_h_grid: Any, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, wscale: float = 1.0):
        super().__init__(**original.feature_spatial_arguments(group, input_h_grid, kernel_size, stride, dilation, groups,
                                            wscale, None))
        self.group, self.input_h_grid = group, input_h_grid

    def f_att_conv_GG(self, input: Tensor, visualize: bool = False) -> Tensor:  # noqa: N802
        return self(input)
