"""Attentive group equivariant convolutions (Romero et al., ICML 2020) on p4 and p4m.

* :mod:`attgconv.grids` - the element order of the group axis (:class:`PlanarGrid`).
* :mod:`attgconv.conv` - the kernel core, lifting and group convolutions.
* :mod:`attgconv.attention` - channel and spatial attention (response and feature-map).
* :mod:`attgconv.attentive` - full attentive and feature-map attentive convolutions.

Feature maps are ``(B, C, G, H, W)``; every layer is equivariant under
``[u . f](g, x) = f(u^-1 g, M_u^-1 x)``. Spatial pooling of such maps and pooling
over the group come from :mod:`g_selfatt.functional` (re-exported here).
"""

from g_selfatt.functional import average_pooling_rd_on_G, max_pooling_group, max_pooling_rd_on_G

from attgconv.attention import (
    ChannelAttention,
    FeatureChannelAttention,
    FeatureGroupChannelAttention,
    FeatureGroupSpatialAttention,
    FeatureSpatialAttention,
    GroupChannelAttention,
    GroupSpatialAttention,
    SpatialAttention,
)
from attgconv.attentive import (
    FORMULATIONS,
    AttentiveGroupConv,
    AttentiveLiftingConv,
    FeatureAttentiveGroupConv,
    FeatureAttentiveLiftingConv,
    attenuate,
)
from attgconv.conv import GroupConv, GroupKernel, LiftingConv, transform_kernels
from attgconv.grids import PlanarGrid, get_grid

# The original API (its module paths and names; see attgconv.compat): ``attgconv.layers(group)``.
# Imported through the module path attgconv.layers, so that the package's name ``layers`` ends as
# the factory, not the module.
from attgconv.layers import (  # noqa: E402  (after the layers it subclasses)
    AttConvGGLayer,
    AttConvRnGLayer,
    ConvGGLayer,
    ConvRnGLayer,
    ConvRnRnLayer,
    fAttConvGGLayer,
    fAttConvRnGLayer,
    layers,
)

__all__ = [
    "AttConvGGLayer",
    "AttConvRnGLayer",
    "ConvGGLayer",
    "ConvRnGLayer",
    "ConvRnRnLayer",
    "FORMULATIONS",
    "AttentiveGroupConv",
    "AttentiveLiftingConv",
    "ChannelAttention",
    "FeatureAttentiveGroupConv",
    "FeatureAttentiveLiftingConv",
    "FeatureChannelAttention",
    "FeatureGroupChannelAttention",
    "FeatureGroupSpatialAttention",
    "FeatureSpatialAttention",
    "GroupChannelAttention",
    "GroupConv",
    "GroupKernel",
    "GroupSpatialAttention",
    "LiftingConv",
    "PlanarGrid",
    "SpatialAttention",
    "attenuate",
    "fAttConvGGLayer",
    "fAttConvRnGLayer",
    "layers",
    "average_pooling_rd_on_G",
    "get_grid",
    "max_pooling_group",
    "max_pooling_rd_on_G",
    "transform_kernels",
]
