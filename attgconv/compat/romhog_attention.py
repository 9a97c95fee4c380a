"""The original ``attgconv.RomHog_attention``: the 1x1 feature-map spatial attention of Romero &
Hoogendoorn (2020), a learned 1x1 convolution of the input's channels instead of their statistics."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from attgconv import attention
from attgconv.compat.original import feature_spatial_arguments


class fSpatialAttention(attention.FeatureSpatialAttention):  # noqa: N801
    """1x1 spatial attention of an input image."""

    def __init__(self, group: Any, N_in: int, h_grid: Any, stride: int = 1, dilation: int = 1,  # noqa: N803
                 groups: int = 1, wscale: float = 1.0):
        super().__init__(**feature_spatial_arguments(group, h_grid, 1, stride, dilation, groups, wscale, N_in))
        self.group, self.h_grid, self.N_in = group, h_grid, N_in

    def f_att_conv2d(self, input: Tensor, visualize: bool = False) -> Tensor:
        return self(input)


class fSpatialAttentionGG(attention.FeatureGroupSpatialAttention):  # noqa: N801
    """1x1 spatial attention of an input feature map on the group."""

    def __init__(self, group: Any, N_in: int, input_h_grid: Any, stride: int = 1, padding: int = 0,  # noqa: N803
                 dilation: int = 1, groups: int = 1, wscale: float = 1.0):
        super().__init__(**feature_spatial_arguments(group, input_h_grid, 1, stride, dilation, groups, wscale,
                                            N_in))
        self.group, self.input_h_grid, self.N_in = group, input_h_grid, N_in

    def f_att_conv_GG(self, input: Tensor, visualize: bool = False) -> Tensor:  # noqa: N802
        return self(input)
