"""``RdSelfAttention``: the original's global self-attention on R^2 with learned offset embeddings.

The original marked it deprecated (its networks use the group z2 instead) but its z2 demo
builds it. It is :class:`~g_selfatt.nn.attention.LiftSelfAttention` on z2 with two changes:
the encoding of an offset ``(a, b)`` is looked up in two tables, ``[E_row[a], E_col[b]]``
(``nn.Embedding`` of ``2 M - 1`` offsets per axis), instead of computed by the MLPs, and the
output has no group axis, ``(B, C_in, H, W) -> (B, C_out, H, W)``. It is translation
equivariant, ``SA(f(. - t)) = SA(f)(. - t)`` away from the border. Parameter and buffer names
are the original's, so its state dicts load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from g_selfatt.groups import get_group
from g_selfatt.nn.attention import LiftSelfAttention


class RdSelfAttention(LiftSelfAttention):
    """Global self-attention on R^2 with a learned embedding per relative offset.

    Args:
        in_channels, mid_channels, out_channels, num_heads: as for the other layers
            (``mid_channels`` even: half of it meets each axis' embedding).
        max_pos_embedding: the largest image side ``M``.
        attention_dropout_rate: dropout on the attention probabilities.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, num_heads: int,
                 max_pos_embedding: int, attention_dropout_rate: float, attention_impl: str = "auto"):
        if mid_channels % 2:
            raise ValueError(f"RdSelfAttention needs an even mid_channels (half per axis), got {mid_channels}.")
        group = get_group("z2")
        super().__init__(group, in_channels, mid_channels, out_channels, num_heads, max_pos_embedding,
                         attention_dropout_rate, attention_impl=attention_impl)
        # The original layer has no group submodule: keep the group out of the state dict.
        del self._modules["group"]
        object.__setattr__(self, "group", group)
        side = 2 * max_pos_embedding - 1
        self.row_embedding = nn.Embedding(side, mid_channels // 2)
        self.col_embedding = nn.Embedding(side, mid_channels // 2)
        steps = torch.arange(max_pos_embedding)
        self.register_buffer("relative_indices", steps.view(1, -1) - steps.view(-1, 1) + max_pos_embedding - 1)
        self.wout = nn.Conv2d(mid_channels * num_heads, out_channels, kernel_size=1)

    def positional_encodings(self) -> Tensor:
        """``[E_row[a], E_col[b]]`` for every offset ``(a, b)`` of the ``S x S`` table, ``(1, S, S, 2D)``."""
        rows, cols = self.row_embedding.weight, self.col_embedding.weight  # (S, D) each
        side = rows.shape[0]
        return torch.cat([rows[:, None].expand(side, side, -1), cols[None].expand(side, side, -1)], dim=-1)[None]

    def _output(self, out: Tensor) -> Tensor:
        return self.wout(out.squeeze(2))  # (B, C N, 1, H, W) -> (B, C_out, H, W)

    def compute_attention_scores(self, x: Tensor) -> Tensor:
        """The original's scores ``(B, N, H, W, H, W)``."""
        return super().compute_attention_scores(x)[:, :, 0]

    @property
    def dp_att(self) -> nn.Dropout:
        return self.dropout_attention
