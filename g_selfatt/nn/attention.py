"""Lifting and group self-attention, global and local, on one shared core.

Letters used in shapes and einsum subscripts throughout this module:

====  ==========================================================
B     batch
C     channels per head (``mid_channels``), or input channels
N     attention heads
V     output group element (the element that acts on the encoding)
G     query group element (1 for lifting layers)
M     key group element (1 for lifting layers)
H, W  image height and width; ``i, j`` index the query pixel
K     key positions: all ``H * W`` pixels (global) or the ``P * P``
      neighbourhood of the query (local)
S     side of the offset table (``2 r + 1``)
D     channels of the positional encoding
====  ==========================================================

For the output element ``v`` a query ``(g, i)`` attends to the keys ``(m, j)``
with logits

    < q(g, i), k(m, j) > + < q_pos(g, i), E(M_v (j - i) / r) > + < q_grp(g, i), E_G(m g^-1) >

divided by ``sqrt(in_channels)``; the softmax runs over ``(m, j)`` and the
result is summed over ``g``. Because the spatial encoding is acted on by
``M_v`` and the group encoding depends on ``m g^-1`` only, every layer
satisfies

    SA(u . f) = u . SA(f),    [u . f](g, x) = f(g u, M_u^-1 x),

for every element ``u`` whose matrix maps the pixel grid onto itself (see
:class:`g_selfatt.groups.Group`); lifting layers map an image ``f(x)`` to a
group feature map with the same law, ``[u . f](x) = f(M_u^-1 x)``.

The original implementation indexes the group encoding by ``(m + v - g) mod n``
instead, which breaks equivariance; ``group_axis_index="original"`` reproduces
it (for loading its checkpoints and for comparison).

What exists only for the original's code and checkpoints (its layers' method names, the derived
tables its state dicts hold, the group-axis index of a state dict that does not record it) is
attached to these layers by :mod:`g_selfatt.compat`.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from g_selfatt.functional.encoding import flat_relative_offsets
from g_selfatt.groups import Group
from g_selfatt.nn import input_space_lifting
from g_selfatt.nn.dispatch import ATTENTION_IMPLS, IMPLEMENTATIONS, resolve_impl
from g_selfatt.nn.layers import PointwiseConv2d, PointwiseConv3d
from g_selfatt.nn.attention_tables import AttentionTables
from g_selfatt.nn.positional_encoding import PositionalMLP, acted_offset_table

GROUP_AXIS_INDICES = ("relative", "original")
DEFAULT_GROUP_AXIS_INDEX = GROUP_AXIS_INDICES[0]  # exactly equivariant
# The group feature maps of every layer here transform under the right-regular action of the group
# (g_selfatt.groups, module docstring): the positional encoding of output element g is read at M_g (j - i).
FEATURE_MAP_ACTION = "right"

def original_group_indices(group: Group) -> Tensor:
    """The original's group-axis index ``(m + v - g) mod n`` (for rotations), ``(V, G, M)``."""
    table = group.relative_positions
    return torch.stack([group.left_action_on_H(h, table) for h in group.elements])


def relative_group_indices(group: Group) -> Tensor:
    """The equivariant group-axis index ``m g^-1`` for every ``v``, ``(V, G, M)``."""
    table = group.relative_index_table()
    return table.unsqueeze(0).expand(group.num_elements, -1, -1).contiguous()


class SelfAttentionCore(nn.Module):
    """The shared implementation of the four self-attention layers.

    Subclasses choose ``lifting`` (input ``(B, C, H, W)``, no group encoding)
    versus group input ``(B, C, G, H, W)``; the constructor argument
    ``patch_size`` (local) versus ``max_pos_embedding`` (global) chooses the
    neighbourhood. Nothing else differs.

    Args:
        group: the group ``G``.
        in_channels: input channels.
        mid_channels: channels per head of queries, keys and values.
        out_channels: output channels.
        num_heads: number of heads.
        attention_dropout_rate: dropout on the attention probabilities.
        patch_size: odd side of the local neighbourhood (local layers).
        max_pos_embedding: largest image side (global layers).
        group_axis_index: ``"relative"`` (equivariant, default) or ``"original"``.
        attention_impl: ``"auto"`` (default, see :func:`~g_selfatt.nn.dispatch.resolve_impl`) or
            a name of :data:`~g_selfatt.nn.dispatch.IMPLEMENTATIONS` (``"fused"``, ``"triton"``,
            ``"flex"``, ``"efficient"``, ``"reference"``).
            All compute the same function.
    """

    lifting: bool = False

    def __init__(
        self,
        group: Group,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        num_heads: int,
        attention_dropout_rate: float,
        *,
        patch_size: Optional[int] = None,
        max_pos_embedding: Optional[int] = None,
        group_axis_index: str = DEFAULT_GROUP_AXIS_INDEX,
        attention_impl: str = "auto",
    ):
        super().__init__()
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"Unknown attention_impl {attention_impl!r}; expected one of {ATTENTION_IMPLS}.")
        self.attention_impl = attention_impl
        _check_arguments(self.lifting, in_channels, mid_channels, out_channels, num_heads,
                         patch_size, max_pos_embedding, group_axis_index)
        self.group = group
        self.num_heads = num_heads
        self.in_channels = in_channels
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.max_pos_embedding = max_pos_embedding
        self.group_axis_index = group_axis_index
        self.local = patch_size is not None

        if self.lifting:
            self.dim_pos_encoding = mid_channels // 2
            self.dim_group_encoding = 0
        else:
            self.dim_pos_encoding = mid_channels // 3
            self.dim_group_encoding = mid_channels - 2 * self.dim_pos_encoding
        self.row_embedding = PositionalMLP(self.dim_pos_encoding)
        self.col_embedding = PositionalMLP(self.dim_pos_encoding)
        if not self.lifting:
            self.group_embedding = nn.Embedding(group.num_elements, self.dim_group_encoding)
        self._register_indices()

        projection = PointwiseConv2d if self.lifting else PointwiseConv3d
        self.query = projection(in_channels, mid_channels * num_heads)
        self.key = projection(in_channels, mid_channels * num_heads)
        self.value = projection(in_channels, mid_channels * num_heads)
        self.wout = PointwiseConv3d(mid_channels * num_heads, out_channels)
        self.dropout_attention = nn.Dropout(attention_dropout_rate)

    # ------------------------------------------------------------ buffers
    @property
    def radius(self) -> int:
        """Largest relative offset along an axis."""
        return self.patch_size // 2 if self.local else self.max_pos_embedding - 1

    def _register_indices(self) -> None:
        table = acted_offset_table(self.group, self.radius)  # (V, 2, S, S) float64
        self.register_buffer("offset_table", table.to(torch.float32), persistent=False)
        if not self.lifting:
            self.use_group_axis_index(self.group_axis_index)

    def use_group_axis_index(self, group_axis_index: str) -> None:
        """Indexes the group encoding by ``group_axis_index`` from now on (group layers only)."""
        if group_axis_index not in GROUP_AXIS_INDICES:
            raise ValueError(f"Unknown group_axis_index {group_axis_index!r}; expected one of {GROUP_AXIS_INDICES}.")
        if self.lifting:
            raise ValueError("Lifting layers have no group axis to index.")
        make = relative_group_indices if group_axis_index == "relative" else original_group_indices
        device = self.offset_table.device
        self.register_buffer("g_indices", make(self.group).to(device), persistent=False)
        self.group_axis_index = group_axis_index

    # ------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Applies self-attention.

        Args:
            x: ``(B, C_in, H, W)`` for lifting layers, ``(B, C_in, G, H, W)`` otherwise.

        Returns:
            ``(B, C_out, G, H, W)``.
        """
        height, width = self._check_input(x)
        q = self._project(self.query, x)  # (B, C, N, G, H, W)
        impl = self.resolved_impl(q)
        if impl == "fused" and input_space_lifting.applies(self.lifting, self.local, self.in_channels,
                                                           self.mid_channels):
            return input_space_lifting.lifting_attention(self.attention_tables(), x, self.query, self.key,
                                                         self.value, self.wout, self.num_heads)
        out = self._attend(impl, x, q)  # (B, C, N, V, H, W)
        out = out.reshape(x.shape[0], self.mid_channels * self.num_heads, self.group.num_elements, height, width)
        return self._output(out)  # (B, C_out, V, H, W)

    def _attend(self, impl: str, x: Tensor, q: Tensor) -> Tensor:
        """The attention before ``wout``, ``(B, C, N, V, H, W)``, computed by ``impl``."""
        k = self._project(self.key, x)
        v = self._project(self.value, x)
        run = IMPLEMENTATIONS[impl].run
        if run is not None:
            return run(self.attention_tables(), q, k, v, x.shape[1])
        probs = self.dropout_attention(self._probabilities(q, k, x.shape[1]))  # (B, N, V, G, H, W, M, K)
        keys = self._key_subscripts()
        return torch.einsum(f"bnvgijmk,bcnmk{keys}->bcnvij", probs, self._neighbourhood(v))

    def _output(self, out: Tensor) -> Tensor:
        """The output projection ``wout`` of ``(B, C N, V, H, W)``."""
        return self.wout(out)

    def resolved_impl(self, q: Tensor) -> str:
        """The implementation that runs for projections like ``q`` (:func:`~g_selfatt.nn.dispatch.resolve_impl`)."""
        key_elements = 1 if self.lifting else self.group.num_elements
        return resolve_impl(self.attention_impl, q, key_elements, self._active_dropout())

    def _active_dropout(self) -> float:
        return self.dropout_attention.p if self.training else 0.0

    def attention_probabilities(self, x: Tensor) -> Tensor:
        """The attention probabilities of every query over its keys (before attention dropout).

        Computed as the reference formulation does, with all score tensors in memory:
        meant for inspecting and plotting attention, not for training.

        Equivariance: for ``u . f`` the probabilities of output element ``v``, query
        ``(g, i)`` over key ``(m, j)`` are those of ``f`` at ``(v u, g u, M_u^-1 i)`` over
        ``(m u, M_u^-1 j)``.

        Args:
            x: ``(B, C_in, H, W)`` for lifting layers, ``(B, C_in, G, H, W)`` otherwise.

        Returns:
            ``(B, N, V, G, H, W, M, K)``: ``K`` runs over all ``H W`` pixels (global layers,
            row-major) or over the ``P x P`` neighbourhood of the query (local layers,
            row-major offsets from ``(-r, -r)`` to ``(r, r)``; zero outside the image).
        """
        self._check_input(x)
        q = self._project(self.query, x)  # (B, C, N, G, H, W)
        k = self._project(self.key, x)
        return self._probabilities(q, k, x.shape[1])

    def _probabilities(self, q: Tensor, k: Tensor, in_channels: int) -> Tensor:
        """Softmax over ``(M, K)`` of :meth:`attention_logits`, ``(B, N, V, G, H, W, M, K)``."""
        logits = self.attention_logits(q, k, in_channels)
        return logits.flatten(-2).softmax(dim=-1).view_as(logits)

    def attention_logits(self, q: Tensor, k: Tensor, in_channels: int) -> Tensor:
        """Unnormalised attention logits.

        Args:
            q, k: projections ``(B, C, N, G, H, W)``.
            in_channels: number of input channels (the logits are divided by its root).

        Returns:
            ``(B, N, V, G, H, W, M, K)``; keys outside the image are ``-inf``.
        """
        height, width = q.shape[-2:]
        tables = self.attention_tables()
        keys = self._key_subscripts()
        content = torch.einsum(f"bcngij,bcnmk{keys}->bngijmk", q, self._neighbourhood(k))
        d = tables.pos_channels
        pos_subscripts = "" if self.local else "ij"
        positional = torch.einsum(
            f"bcngij,v{pos_subscripts}kc->bnvgijk", q[:, :d], self.positional_encodings_per_key(height, width, tables)
        )
        logits = content.unsqueeze(2) + positional.unsqueeze(-2)
        if tables.group is not None:  # (V, G, M, D_g)
            logits = logits + torch.einsum("bcngij,vgmc->bnvgijm", q[:, d:], tables.group).unsqueeze(-1)
        logits = logits / math.sqrt(in_channels)
        if self.local:
            inside = self._inside_image(height, width, q.device)  # (H, W, K)
            logits = logits.masked_fill(~inside[:, :, None, :], float("-inf"))
        return logits

    def attention_tables(self) -> AttentionTables:
        """The layer's tables, as every implementation receives them (built once per call).

        The positional table is the row and column encodings of :attr:`offset_table`
        (``M_v d / r``), ``(V, S S, 2D)``; the group table the group embedding at
        :attr:`g_indices`, ``(V, G, M, D_g)``.
        """
        positional = self.positional_encodings()  # (V, S, S, 2D)
        return AttentionTables(
            positional=positional.flatten(1, 2),
            group=None if self.lifting else self.group_embedding(self.g_indices),
            radius=self.radius,
            patch_size=self.patch_size,
            dropout=self._active_dropout(),
        )

    def positional_encodings(self) -> Tensor:
        """The row and column encodings of the acted offsets :attr:`offset_table`, ``(V, S, S, 2D)``."""
        table = self.offset_table  # (V, 2, S, S)
        return torch.cat([self.row_embedding.embed(table[:, 0]), self.col_embedding.embed(table[:, 1])], dim=-1)

    def positional_encodings_per_key(self, height: int, width: int, tables: Optional[AttentionTables] = None) -> Tensor:
        """Row and column encodings of the acted offset of every key, concatenated along ``D``
        (:meth:`positional_encodings` is the whole ``S x S`` table of offsets).

        Returns:
            ``(V, K, 2 D)`` for local layers (the same for every query) and
            ``(V, H, W, K, 2 D)`` for global layers.
        """
        positional = (tables or self.attention_tables()).positional  # (V, S S, 2D)
        if self.local:
            return positional  # (V, K, 2D)
        index = flat_relative_offsets(height, width, self.radius, positional.device)  # (H W, H W)
        return positional[:, index].view(positional.shape[0], height, width, height * width, -1)  # (V, H, W, K, 2D)

    # ------------------------------------------------------------ helpers
    def _key_subscripts(self) -> str:
        """Einsum subscripts after ``k`` of the neighbourhood tensor: local keys depend on the query."""
        return "ij" if self.local else ""

    def _project(self, layer: nn.Module, x: Tensor) -> Tensor:
        """A 1x1 projection split into channels and heads, ``(B, C, N, G, H, W)``.

        Channel ``c * num_heads + n`` of the projection belongs to head ``n``.
        """
        out = layer(x)  # (B, C*N, [G,] H, W)
        batch, _, *rest = out.shape
        if self.lifting:
            rest = [1] + rest
        return out.view(batch, self.mid_channels, self.num_heads, *rest)

    def _neighbourhood(self, t: Tensor) -> Tensor:
        """The key positions each query sees.

        Args:
            t: ``(B, C, N, M, H, W)``.

        Returns:
            ``(B, C, N, M, K)`` for global layers, ``(B, C, N, M, K, H, W)`` for local
            layers (zero outside the image; those logits are masked).
        """
        batch, channels, heads, elements, height, width = t.shape
        if not self.local:
            return t.flatten(-2)
        patches = F.unfold(
            t.reshape(batch, channels * heads * elements, height, width),
            kernel_size=self.patch_size,
            padding=self.patch_size // 2,
        )  # (B, C*N*M*P*P, H*W)
        return patches.view(batch, channels, heads, elements, self.patch_size ** 2, height, width)

    def _inside_image(self, height: int, width: int, device: torch.device) -> Tensor:
        """Which neighbourhood positions of each pixel lie inside the image, ``(H, W, K)`` bool."""
        ones = torch.ones(1, 1, height, width, device=device)
        inside = F.unfold(ones, kernel_size=self.patch_size, padding=self.patch_size // 2)  # (1, K, H*W)
        return inside.view(-1, height, width).permute(1, 2, 0) > 0.5

    def _check_input(self, x: Tensor) -> Tuple[int, int]:
        expected = "(B, C, H, W)" if self.lifting else "(B, C, G, H, W)"
        if x.dim() != (4 if self.lifting else 5):
            raise ValueError(f"{type(self).__name__} expects an input of shape {expected}, got {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channels, "
                f"but the input has {x.shape[1]} (shape {tuple(x.shape)})."
            )
        if not self.lifting and x.shape[2] != self.group.num_elements:
            raise ValueError(
                f"{type(self).__name__} expects a group axis of size {self.group.num_elements}, "
                f"got {x.shape[2]} (shape {tuple(x.shape)})."
            )
        height, width = x.shape[-2:]
        if not self.local and max(height, width) > self.max_pos_embedding:
            raise ValueError(
                f"The {height}x{width} input is larger than max_pos_embedding={self.max_pos_embedding}; "
                "build the layer with max_pos_embedding >= the image side."
            )
        return height, width

    def extra_repr(self) -> str:
        extent = f"patch_size={self.patch_size}" if self.local else f"max_pos_embedding={self.max_pos_embedding}"
        text = (f"in_channels={self.in_channels}, mid_channels={self.mid_channels}, "
                f"out_channels={self.out_channels}, num_heads={self.num_heads}, {extent}")
        if not self.lifting:
            text += f", group_axis_index={self.group_axis_index!r}"
        return text


def check_patch_size(patch_size: int) -> None:
    """Raises ``ValueError`` unless ``patch_size`` is an odd integer >= 3 (a centred neighbourhood)."""
    if not isinstance(patch_size, int) or patch_size < 3 or patch_size % 2 == 0:
        raise ValueError(
            f"patch_size must be an odd integer >= 3 so that the neighbourhood is centred "
            f"on the query, got {patch_size!r}."
        )


def _check_arguments(lifting, in_channels, mid_channels, out_channels, num_heads, patch_size,
                     max_pos_embedding, group_axis_index) -> None:
    for name, value in (("in_channels", in_channels), ("mid_channels", mid_channels),
                        ("out_channels", out_channels), ("num_heads", num_heads)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if lifting and mid_channels % 2:
        raise ValueError(
            f"Lifting self-attention splits mid_channels into a row and a column half; "
            f"mid_channels must be even, got {mid_channels}."
        )
    if not lifting and mid_channels < 3:
        raise ValueError(
            f"Group self-attention splits mid_channels into row, column and group parts; "
            f"mid_channels must be at least 3, got {mid_channels}."
        )
    if (patch_size is None) == (max_pos_embedding is None):
        raise ValueError("Give exactly one of patch_size (local attention) and max_pos_embedding (global).")
    if patch_size is not None:
        check_patch_size(patch_size)
    if max_pos_embedding is not None and (not isinstance(max_pos_embedding, int) or max_pos_embedding < 2):
        raise ValueError(f"max_pos_embedding must be an integer >= 2, got {max_pos_embedding!r}.")
    if group_axis_index not in GROUP_AXIS_INDICES:
        raise ValueError(f"Unknown group_axis_index {group_axis_index!r}; expected one of {GROUP_AXIS_INDICES}.")


class LiftSelfAttention(SelfAttentionCore):
    """Global lifting self-attention: ``(B, C_in, H, W) -> (B, C_out, G, H, W)``.

    Equivariance: ``SA(f(M_u^-1 .))(g, x) = SA(f)(g u, M_u^-1 x)`` for every grid-exact ``u``.
    Inputs may be at most ``max_pos_embedding`` pixels on each side.
    """

    lifting = True

    def __init__(self, group: Group, in_channels: int, mid_channels: int, out_channels: int,
                 num_heads: int, max_pos_embedding: int, attention_dropout_rate: float,
                 attention_impl: str = "auto"):
        super().__init__(group, in_channels, mid_channels, out_channels, num_heads,
                         attention_dropout_rate, max_pos_embedding=max_pos_embedding,
                         attention_impl=attention_impl)


class LiftLocalSelfAttention(SelfAttentionCore):
    """Lifting self-attention over a ``patch_size x patch_size`` neighbourhood.

    Same shapes and equivariance law as :class:`LiftSelfAttention`.
    """

    lifting = True

    def __init__(self, group: Group, in_channels: int, mid_channels: int, out_channels: int,
                 num_heads: int, patch_size: int, attention_dropout_rate: float,
                 attention_impl: str = "auto"):
        super().__init__(group, in_channels, mid_channels, out_channels, num_heads,
                         attention_dropout_rate, patch_size=patch_size, attention_impl=attention_impl)


class GroupSelfAttention(SelfAttentionCore):
    """Global group self-attention: ``(B, C_in, G, H, W) -> (B, C_out, G, H, W)``.

    Equivariance (default ``group_axis_index="relative"``):
    ``SA(u . f) = u . SA(f)`` with ``[u . f](g, x) = f(g u, M_u^-1 x)``.
    """

    def __init__(self, group: Group, in_channels: int, mid_channels: int, out_channels: int,
                 num_heads: int, max_pos_embedding: int, attention_dropout_rate: float,
                 group_axis_index: str = DEFAULT_GROUP_AXIS_INDEX, attention_impl: str = "auto"):
        super().__init__(group, in_channels, mid_channels, out_channels, num_heads,
                         attention_dropout_rate, max_pos_embedding=max_pos_embedding,
                         group_axis_index=group_axis_index, attention_impl=attention_impl)


class GroupLocalSelfAttention(SelfAttentionCore):
    """Group self-attention over a ``patch_size x patch_size`` neighbourhood.

    Same shapes and equivariance law as :class:`GroupSelfAttention`.
    """

    def __init__(self, group: Group, in_channels: int, mid_channels: int, out_channels: int,
                 num_heads: int, patch_size: int, attention_dropout_rate: float,
                 group_axis_index: str = DEFAULT_GROUP_AXIS_INDEX, attention_impl: str = "auto"):
        super().__init__(group, in_channels, mid_channels, out_channels, num_heads,
                         attention_dropout_rate, patch_size=patch_size,
                         group_axis_index=group_axis_index, attention_impl=attention_impl)
