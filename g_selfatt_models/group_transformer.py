"""GSA-Nets: a lifting self-attention layer followed by blocks of group self-attention."""

from __future__ import annotations

import itertools
from typing import Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from g_selfatt.groups import Group
from g_selfatt.nn.attention import DEFAULT_GROUP_AXIS_INDEX
from g_selfatt.nn.init import WHITENING_SCALE
from g_selfatt.nn import (
    Conv3d1x1,
    GroupLocalSelfAttention,
    GroupSelfAttention,
    LiftLocalSelfAttention,
    LiftSelfAttention,
    SelfAttentionCore,
    TransformerBlock,
    get_activation,
    get_norm,
    whitening_init_,
)
from g_selfatt_models.hyperparameters import GSAHyperParameters

__all__ = ["GroupTransformer"]

def _values(value: Union[int, Sequence[int]], count: int, name: str) -> Iterator[int]:
    """Repeats an int or iterates a sequence of exactly ``count`` values."""
    if isinstance(value, int):
        return itertools.repeat(value)
    if len(value) != count:
        raise ValueError(f"{name} has {len(value)} entries, but there are {count} of them to set.")
    return iter(value)


SPATIAL_POOLINGS = ("sum", "mean")


class GroupTransformer(nn.Module):
    """A group equivariant self-attention network for classification.

    ``image -> lifting self-attention -> norm -> activation -> blocks -> 1x1x1 conv
    -> sum (or mean) over space -> max over the group``. A spatial max-pool (1, 2, 2) follows
    every block except the last (and the last too if ``maxpool_after_last_block``),
    empty blocks included.

    With the default ``group_axis_index="relative"`` the logits are invariant:
    ``model(f(M_u^-1 .)) = model(f)`` for every element ``u`` of the group that maps
    the pixel grid onto itself, provided every pooling sees an even image side.

    Args:
        group: the group.
        in_channels: image channels.
        num_channels: channels after the lifting layer.
        num_heads: heads of every attention layer.
        norm_type: ``"LayerNorm"`` or ``"BatchNorm"``.
        block_sizes: number of transformer blocks per stage.
        expansion_per_block: channel multiplier at the first layer of each stage.
        crop_per_layer: pixels cropped from each side after each layer.
        normalize_between_layers: insert norm + activation after every block.
        maxpool_after_last_block: pool after the last stage too.
        dropout_rate_after_maxpooling: dropout after each pool (0 = none; adds modules).
        image_size: input side (sets ``max_pos_embedding`` of global layers).
        patch_size: local neighbourhood side; ``None`` or 0 for global attention.
        activation_function: ``"Swish"`` or ``"ReLU"``.
        attention_dropout_rate: dropout on attention probabilities.
        value_dropout_rate: dropout after each attention branch.
        input_dropout_rate: dropout on the input image.
        num_classes: number of logits.
        whitening_scale: convolution weights start as N(0, (scale / sqrt(fan_in))^2).
        group_axis_index: ``"relative"`` (equivariant) or ``"original"``.
        attention_impl: ``"auto"`` (default), ``"fused"``, ``"efficient"`` or ``"reference"`` for
            every attention layer (see :class:`~g_selfatt.nn.attention.SelfAttentionCore`).
        spatial_pooling: how the head reduces the last feature map over space: ``"sum"`` (the
            paper's; logits grow with the number of final pixels) or ``"mean"`` (logits of the
            scale of one pixel's, which lets small networks start training at once).
    """

    def __init__(
        self,
        *,
        group: Group,
        in_channels: int,
        num_channels: int,
        num_heads: int,
        norm_type: str = GSAHyperParameters.norm_type,
        block_sizes: Sequence[int],
        expansion_per_block: Optional[Union[int, Sequence[int]]],
        crop_per_layer: Optional[Union[int, Sequence[int]]],
        normalize_between_layers: bool,
        maxpool_after_last_block: bool,
        dropout_rate_after_maxpooling: float = 0.0,
        image_size: int,
        patch_size: Optional[int] = None,
        activation_function: str,
        attention_dropout_rate: float,
        value_dropout_rate: float,
        input_dropout_rate: float = 0.0,
        num_classes: int = 10,
        whitening_scale: float = WHITENING_SCALE,
        group_axis_index: str = DEFAULT_GROUP_AXIS_INDEX,
        attention_impl: str = "auto",
        spatial_pooling: str = "sum",
    ):
        super().__init__()
        self.group = group
        self.num_channels = num_channels
        self.num_heads = num_heads
        self.norm_type = norm_type
        self.activation_function = activation_function
        self.attention_dropout_rate = attention_dropout_rate
        self.value_dropout_rate = value_dropout_rate
        self.num_classes = num_classes
        self._group_axis_index = group_axis_index
        self.attention_impl = attention_impl
        if spatial_pooling not in SPATIAL_POOLINGS:
            raise ValueError(f"Unknown spatial_pooling {spatial_pooling!r}; expected one of {SPATIAL_POOLINGS}.")
        self.spatial_pooling = spatial_pooling
        self.patch_size = patch_size if patch_size else None
        if self.patch_size and self.patch_size > image_size:
            raise ValueError(
                f"patch_size={self.patch_size} is larger than the {image_size}x{image_size} input image; "
                "use a smaller patch or global attention (patch_size=None)."
            )

        crops = _values(crop_per_layer or 0, sum(block_sizes), "crop_per_layer")
        expansions = _values(expansion_per_block or 1, len(block_sizes), "expansion_per_block")

        self.input_dropout = nn.Dropout(input_dropout_rate)
        self.lifting_self_attention = self._lifting_layer(in_channels, image_size)
        self.lifting_normalization = get_norm(norm_type, num_channels)
        self.lifting_activation = get_activation(activation_function)

        layers: List[nn.Module] = []
        channels = num_channels
        for stage, block_size in enumerate(block_sizes):
            out_channels = next(expansions) * channels
            for _ in range(block_size):
                crop = next(crops)
                layers.append(self._block(channels, out_channels, crop, image_size))
                if normalize_between_layers:
                    layers += [get_norm(norm_type, out_channels), get_activation(activation_function)]
                image_size -= 2 * crop
                channels = out_channels
            if stage < len(block_sizes) - 1 or maxpool_after_last_block:
                layers.append(nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2)))
                if dropout_rate_after_maxpooling > 0.0:
                    layers.append(nn.Dropout(dropout_rate_after_maxpooling))
                image_size //= 2
        if image_size < 1:
            raise ValueError("The crops and poolings of this architecture leave no pixel of the input image.")
        layers.append(Conv3d1x1(channels, num_classes))
        self.transformer = nn.Sequential(*layers)
        self.initialize_network(whitening_scale)

    def _lifting_layer(self, in_channels: int, image_size: int) -> nn.Module:
        args = (self.group, in_channels, self.num_channels // 2, self.num_channels, self.num_heads)
        if self.patch_size:
            return LiftLocalSelfAttention(*args, self.patch_size, self.attention_dropout_rate,
                                          attention_impl=self.attention_impl)
        return LiftSelfAttention(*args, image_size, self.attention_dropout_rate, attention_impl=self.attention_impl)

    def _block(self, in_channels: int, out_channels: int, crop: int, image_size: int) -> TransformerBlock:
        layer = GroupLocalSelfAttention if self.patch_size else GroupSelfAttention
        extent = self.patch_size if self.patch_size else image_size
        attention = layer(self.group, in_channels, out_channels // 2, out_channels, self.num_heads,
                          extent, self.attention_dropout_rate, group_axis_index=self._group_axis_index,
                          attention_impl=self.attention_impl)
        return TransformerBlock(
            in_channels=in_channels,
            out_channels=out_channels,
            attention_layer=attention,
            norm_type=self.norm_type,
            activation_function=self.activation_function,
            crop_size=crop,
            value_dropout_rate=self.value_dropout_rate,
            dim_mlp_conv=3,
        )

    def initialize_network(self, whitening_scale: float) -> None:
        """Draws convolution weights from N(0, (whitening_scale / sqrt(fan_in))^2), zero biases."""
        whitening_init_(self, whitening_scale)

    @property
    def group_axis_index(self) -> str:
        """The group-axis index of the group layers (``"original"`` after loading an original state dict)."""
        kinds = {module.group_axis_index for module in self.modules()
                 if isinstance(module, SelfAttentionCore) and not module.lifting}
        return kinds.pop() if len(kinds) == 1 else self._group_axis_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        out = self.input_dropout(x)
        out = self.lifting_self_attention(out)  # (B, C, G, H, W)
        out = self.lifting_normalization(out)
        out = self.lifting_activation(out)
        out = self.transformer(out)  # (B, classes, G, H', W')
        if self.spatial_pooling == "mean":
            out = out.mean(dim=(-2, -1))  # (B, classes, G)
        else:
            out = out.sum(dim=(-2, -1))  # (B, classes, G)
        return out.max(dim=-1).values  # (B, classes)
