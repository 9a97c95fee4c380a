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
from typing import Any, Callable, Optional

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


@dataclasses.dataclass(frozen=True)
class _Slot:
    """The classes that fill one slot (lifting or group layer), per kind of attention.

    Attributes:
        conv: the plain convolution.
        attentive: the full attentive convolution.
        feature_attentive: the feature-map attentive convolution.
        channel: ``channel(grid, out_channels, in_channels, ratio)``, response channel attention.
        spatial: response spatial attention (its constructor takes ``grid, out_channels, kernel_size``).
        feature_channel: ``feature_channel(grid, in_channels, ratio)``, feature-map channel attention.
        feature_spatial: feature-map spatial attention (``grid, kernel_size``).
    """

    conv: type
    attentive: type
    feature_attentive: type
    channel: Callable[[PlanarGrid, int, int, int], nn.Module]
    spatial: type
    feature_channel: Callable[[PlanarGrid, int, int], nn.Module]
    feature_spatial: type


_LIFTING = _Slot(
    LiftingConv, AttentiveLiftingConv, FeatureAttentiveLiftingConv,
    channel=lambda grid, out_channels, in_channels, ratio: ChannelAttention(out_channels, in_channels, ratio),
    spatial=SpatialAttention,
    feature_channel=lambda grid, in_channels, ratio: FeatureChannelAttention(in_channels, ratio),
    feature_spatial=FeatureSpatialAttention,
)
_GROUP = _Slot(
    GroupConv, AttentiveGroupConv, FeatureAttentiveGroupConv,
    channel=GroupChannelAttention,
    spatial=GroupSpatialAttention,
    feature_channel=FeatureGroupChannelAttention,
    feature_spatial=FeatureGroupSpatialAttention,
)


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

    def norm(self, channels: int, eps: float = 2e-5) -> nn.Module:
        """Batch norm over ``(B, C, H, W)`` or ``(B, C, G, H, W)``."""
        return nn.BatchNorm2d(channels, eps=eps) if self.grid is None else nn.BatchNorm3d(channels, eps=eps)

    def lifting(self, in_channels: int, out_channels: int, kernel_size: int, **options: Any) -> nn.Module:
        """The first layer: image ``(B, C, H, W)`` -> group feature map ``(B, O, G, H', W')``.

        Args: those of :meth:`_layer`.
        """
        return self._layer(_LIFTING, in_channels, out_channels, kernel_size, **options)

    def group(self, in_channels: int, out_channels: int, kernel_size: int, **options: Any) -> nn.Module:
        """A hidden layer: ``(B, C, G, H, W) -> (B, O, G, H', W')``.

        Args: those of :meth:`_layer`.
        """
        return self._layer(_GROUP, in_channels, out_channels, kernel_size, **options)

    def _layer(self, slot: _Slot, in_channels: int, out_channels: int, kernel_size: int, *, padding: int = 0,
               stride: int = 1, ratio: int = 1, spatial_kernel: int = 7, spatial_dilation: int = 1) -> nn.Module:
        """A layer of ``slot`` with this factory's group and attention.

        Args:
            slot: :data:`_LIFTING` or :data:`_GROUP`.
            in_channels, out_channels, kernel_size, padding, stride: of the convolution.
            ratio: hidden size ``in_channels // ratio`` of the channel attention.
            spatial_kernel: kernel side of the spatial attention (1 for ``"romhog"``).
            spatial_dilation: dilation of the spatial attention.
        """
        if self.grid is None:
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=self.bias)
        conv = dict(stride=stride, padding=padding, wscale=self.wscale)
        grid, attention = self.grid, self.attention
        if attention == "none":
            return slot.conv(grid, in_channels, out_channels, kernel_size, **conv)
        if attention in _RESPONSE_KINDS:
            channel = slot.channel(grid, out_channels, in_channels, ratio) if attention != "spatial" else None
            spatial = (slot.spatial(grid, out_channels, spatial_kernel, dilation=spatial_dilation,
                                    wscale=self.attention_wscale) if attention != "channel" else None)
            return slot.attentive(grid, in_channels, out_channels, kernel_size, formulation=self.formulation,
                                  channel_attention=channel, spatial_attention=spatial, **conv)
        channel = slot.feature_channel(grid, in_channels, ratio) if attention == "feature" else None
        if attention == "romhog":
            spatial = slot.feature_spatial(grid, 1, in_channels=in_channels, wscale=self.attention_wscale)
        else:
            spatial = slot.feature_spatial(grid, spatial_kernel, dilation=spatial_dilation,
                                           wscale=self.attention_wscale)
        return slot.feature_attentive(grid, in_channels, out_channels, kernel_size, channel_attention=channel,
                                      spatial_attention=spatial, **conv)
