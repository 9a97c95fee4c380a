"""The original ``GroupTransformer``'s enums and attributes, attached to this project's model.

Code written for the original builds its networks with the enums :class:`NormType` and
:class:`Activation` and reads the pieces a network was built from through the attributes of
:class:`OriginalGroupTransformerAPI`; each is answered by
:class:`~g_selfatt_models.group_transformer.GroupTransformer` (no second copy of a layer).
"""

from __future__ import annotations

import enum
import functools
from typing import Callable

from torch import nn

from g_selfatt.compat.attach import attach
from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention, TransformerBlock, get_activation, get_norm
from g_selfatt_models.group_transformer import GroupTransformer

__all__ = ["Activation", "NormType", "OriginalGroupTransformerAPI"]


class NormType(str, enum.Enum):
    """The ``norm_type`` names (the original's enum; plain strings work too)."""

    BATCH_NORM = "BatchNorm"
    LAYERN_NORM = "LayerNorm"  # (sic) the original's member name


class Activation(str, enum.Enum):
    """The ``activation_function`` names (the original's enum; plain strings work too)."""

    RELU = "ReLU"
    SWISH = "Swish"


class OriginalGroupTransformerAPI:
    """The original's names for the pieces a network is built from."""

    def transformer_layer(self, *, max_pos_embedding: int, crop_size: int, in_channels: int,
                          out_channels: int) -> TransformerBlock:
        """One block (``max_pos_embedding``: the image side of global layers; local ones use the patch)."""
        return self._block(in_channels, out_channels, crop_size, max_pos_embedding)

    @property
    def Norm(self) -> Callable[[int], nn.Module]:  # noqa: N802  (the original's attribute)
        """The normalisation layer's constructor, given the number of channels."""
        return functools.partial(get_norm, self.norm_type)

    @property
    def Activation(self) -> Callable[[], nn.Module]:  # noqa: N802
        """The activation layer's constructor."""
        return functools.partial(get_activation, self.activation_function)

    @property
    def GroupSA(self) -> type:  # noqa: N802
        """The class of the group self-attention layers (local if the network has a patch size)."""
        return GroupLocalSelfAttention if self.patch_size else GroupSelfAttention


attach(GroupTransformer, OriginalGroupTransformerAPI)
