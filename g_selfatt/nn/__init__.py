"""Layers of group equivariant self-attention networks."""

from g_selfatt.nn import activations
from g_selfatt.nn.activations import Swish, get_activation
from g_selfatt.nn.attention import (
    GROUP_AXIS_INDICES,
    GroupLocalSelfAttention,
    GroupSelfAttention,
    LiftLocalSelfAttention,
    LiftSelfAttention,
    SelfAttentionCore,
)
from g_selfatt.nn.cropping import Crop
from g_selfatt.nn.init import whitening_init_
from g_selfatt.nn.layers import Conv2d1x1, Conv3d1x1, LayerNorm, PointwiseConv2d, PointwiseConv3d, get_norm, pointwise_conv
from g_selfatt.nn.positional_encoding import PositionalMLP
from g_selfatt.nn.transformer_block import TransformerBlock

# The original's layer API and state-dict loading, attached to the layers above, and its R^2 layer.
from g_selfatt.compat import layer_api as _layer_api  # noqa: E402,F401  isort:skip
from g_selfatt.compat.state_dict import recorded_group_axis_index, set_group_axis_index  # noqa: E402  isort:skip
from g_selfatt.compat.rd_self_attention import RdSelfAttention  # noqa: E402  isort:skip

__all__ = [
    "GROUP_AXIS_INDICES",
    "Conv2d1x1",
    "Conv3d1x1",
    "Crop",
    "GroupLocalSelfAttention",
    "GroupSelfAttention",
    "LayerNorm",
    "LiftLocalSelfAttention",
    "LiftSelfAttention",
    "PointwiseConv2d",
    "PointwiseConv3d",
    "PositionalMLP",
    "RdSelfAttention",
    "SelfAttentionCore",
    "Swish",
    "TransformerBlock",
    "activations",
    "get_activation",
    "get_norm",
    "pointwise_conv",
    "recorded_group_axis_index",
    "set_group_axis_index",
    "whitening_init_",
]
