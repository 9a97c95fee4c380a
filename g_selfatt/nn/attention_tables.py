"""The tables of a self-attention layer, as every implementation receives them.

:meth:`g_selfatt.nn.attention.SelfAttentionCore.attention_tables` builds them once per call
(letters as in :mod:`g_selfatt.nn.attention`) and uses them in its reference formulation;
the efficient, fused and flex implementations read nothing else of the layer.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from torch import Tensor


@dataclasses.dataclass(frozen=True)
class AttentionTables:
    """The tables of one self-attention layer that every implementation reads.

    Attributes:
        positional: ``(V, S S, 2D)``: the row and column encodings of the acted offsets
            ``M_v d / r`` for each output element ``v``, offsets ``d`` row-major from
            ``(-r, -r)`` to ``(r, r)``.
        group: ``(V, G, M, D_g)``: the encodings of the group-axis index, ``None`` for
            lifting layers.
        radius: ``r``, the largest offset (``S = 2 r + 1``).
        patch_size: ``P`` of local layers (``P = S``), ``None`` for global layers.
        dropout: the attention-dropout probability in effect (0 outside training).
    """

    positional: Tensor
    group: Optional[Tensor]
    radius: int
    patch_size: Optional[int]
    dropout: float = 0.0

    @property
    def local(self) -> bool:
        return self.patch_size is not None

    @property
    def num_out(self) -> int:
        """``V``, the number of output group elements."""
        return self.positional.shape[0]

    @property
    def pos_channels(self) -> int:
        """``2 D``, the query channels that meet the positional encoding."""
        return self.positional.shape[-1]

    def to_float(self) -> "AttentionTables":
        """The same tables in float32 (under autocast the attention runs in float32)."""
        return dataclasses.replace(self, positional=self.positional.float(),
                                   group=None if self.group is None else self.group.float())
