"""One factory for the convolution layers of every attentive G-CNN architecture.

The architectures differ only in which kind of layer fills each slot:

============  ================================================  =====================
attention     lifting layer (image -> group)                    group layer
============  ================================================  =====================
``none``      :class:`~attgconv.LiftingConv`                     :class:`~attgconv.GroupConv`
``full``      :class:`~attgconv.AttentiveLiftingConv`, channel   :class:`~attgconv.AttentiveGroupConv`
              + spatial response attention
``channel``   as ``full``, channel attention only
``spatial``   as ``full``, spatial attention only
``feature``   :class:`~attgconv.FeatureAttentiveLiftingConv`,    :class:`~attgconv.FeatureAttentiveGroupConv`
              channel + spatial feature-map attention
``romhog``    as ``feature``, 1x1 spatial attention on the
              channels themselves (Romero & Hoogendoorn, 2020)
============  ================================================  =====================

Without a group (``grid=None``) both slots are bias-free ``nn.Conv2d`` (the
plain CNN baselines), and only ``attention="none"`` is allowed.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from torch import nn

from attgconv import (
    AttentiveGroupConv,
    AttentiveLiftingConv,
    ChannelAttention,
    FeatureAttentiveGroupConv,
    FeatureAttentiveLiftingConv,
    FeatureChannelAttention,
    FeatureGroupChannelAttention,
    FeatureGroupSpatialAttention,
    FeatureSpatialAttention,
    GroupChannelAttention,
    GroupConv,
    GroupSpatialAttention,
    LiftingConv,
    PlanarGrid,
    SpatialAttention,
)

ATTENTION_KINDS = ("none", "full", "channel", "spatial", "feature", "romhog")
_RESPONSE_KINDS = ("full", "channel", "spatial")
_FEATURE_KINDS = ("feature", "romhog")


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Builds the convolution layers of one network.

    Attributes:
        grid: the group, or ``None`` for plain ``nn.Conv2d`` layers.
        attention: one of :data:`ATTENTION_KINDS`.
        wscale: initialisation scale of the group convolutions.
        attention_wscale: initialisation scale of the spatial attention convolutions.
        formulation: ``"chunked"`` or ``"full"`` for full attentive convolutions.
        bias: biases in the plain ``nn.Conv2d`` layers (group layers have none).
    """

    grid: Optional[PlanarGrid]
    attention: str = "none"
    wscale: float = 1.0
    attention_wscale: float = 1.0
    formulation: str = "chunked"
    bias: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"Unknown attention {self.attention!r}; expected one of {ATTENTION_KINDS}.")
        if self.grid is None and self.attention != "none":
            raise ValueError("Attention needs a group (p4 or p4m); plain CNNs have attention='none'.")

    @property
    def group_dims(self) -> int:
        """Spatial-plus-group dimensions of the feature maps (2 for plain CNNs, 3 otherwise)."""
        return 2 if self.grid is None else 3

    def norm(self, channels: int, eps: float = 2e-5) -> nn.Module:
        """Batch norm over ``(B, C, H, W)`` or ``(B, C, G, H, W)``."""
        return nn.BatchNorm2d(channels, eps=eps) if self.grid is None else nn.BatchNorm3d(channels, eps=eps)

    def lifting(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
                stride: int = 1, ratio: int = 1, spatial_kernel: int = 7, spatial_dilation: int = 1) -> nn.Module:
        """The first layer: image ``(B, C, H, W)`` -> group feature map ``(B, O, G, H', W')``."""
        if self.grid is None:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=self.bias)
        conv = dict(stride=stride, padding=padding, wscale=self.wscale)
        grid, attention = self.grid, self.attention
        if attention == "none":
            return LiftingConv(grid, in_channels, out_channels, kernel_size, **conv)
        if attention in _RESPONSE_KINDS:
            return AttentiveLiftingConv(
                grid, in_channels, out_channels, kernel_size, formulation=self.formulation,
                channel_attention=(ChannelAttention(out_channels, in_channels, ratio)
                                   if attention != "spatial" else None),
                spatial_attention=(SpatialAttention(grid, out_channels, spatial_kernel, dilation=spatial_dilation,
                                                    wscale=self.attention_wscale)
                                   if attention != "channel" else None),
                **conv)
        return FeatureAttentiveLiftingConv(
            grid, in_channels, out_channels, kernel_size,
            channel_attention=FeatureChannelAttention(in_channels, ratio) if attention == "feature" else None,
            spatial_attention=self._feature_spatial(FeatureSpatialAttention, in_channels, spatial_kernel,
                                                    spatial_dilation),
            **conv)

    def group(self, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
              stride: int = 1, ratio: int = 1, spatial_kernel: int = 7, spatial_dilation: int = 1) -> nn.Module:
        """A hidden layer: ``(B, C, G, H, W) -> (B, O, G, H', W')``."""
        if self.grid is None:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=self.bias)
        conv = dict(stride=stride, padding=padding, wscale=self.wscale)
        grid, attention = self.grid, self.attention
        if attention == "none":
            return GroupConv(grid, in_channels, out_channels, kernel_size, **conv)
        if attention in _RESPONSE_KINDS:
            return AttentiveGroupConv(
                grid, in_channels, out_channels, kernel_size, formulation=self.formulation,
                channel_attention=(GroupChannelAttention(grid, out_channels, in_channels, ratio)
                                   if attention != "spatial" else None),
                spatial_attention=(GroupSpatialAttention(grid, out_channels, spatial_kernel,
                                                         dilation=spatial_dilation, wscale=self.attention_wscale)
                                   if attention != "channel" else None),
                **conv)
        return FeatureAttentiveGroupConv(
            grid, in_channels, out_channels, kernel_size,
            channel_attention=(FeatureGroupChannelAttention(grid, in_channels, ratio)
                               if attention == "feature" else None),
            spatial_attention=self._feature_spatial(FeatureGroupSpatialAttention, in_channels, spatial_kernel,
                                                    spatial_dilation),
            **conv)

    def _feature_spatial(self, cls, in_channels: int, kernel_size: int, dilation: int) -> nn.Module:
        if self.attention == "romhog":
            return cls(self.grid, 1, in_channels=in_channels, wscale=self.attention_wscale)
        return cls(self.grid, kernel_size, dilation=dilation, wscale=self.attention_wscale)
