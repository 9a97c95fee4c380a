"""Local lifting self-attention on few input channels, computed in the input space.

A lifting layer's projections are affine in its input ``x`` (``C_in`` channels): for head ``n``,
``q = A_q x + b_q``, ``k = A_k x + b_k``, ``v = A_v x + b_v`` with ``A`` of shape ``C x C_in``.
Its logits for query pixel ``i``, key ``j`` at patch offset ``t`` and output element ``v``
(letters as in :mod:`g_selfatt.nn.attention`) are therefore, up to ``<q_i, b_k>``, which is the
same for every key of the row and so leaves the softmax unchanged,

    < A_k^T q_i, x_j > + < x_i, A_q^T E(v, t) > + < b_q, E(v, t) >,

and the output is ``sum_j p_j v_j = A_v (sum_j p_j x_j) + b_v (sum_j p_j)`` (``p`` after attention
dropout, so ``sum_j p_j`` need not be 1). The fused kernel thus runs on ``2 C_in + 1`` channels
instead of ``C``: queries ``(x_i, 1, A_k^T q_i)``, keys ``(0, 0, x_j)``, values ``(x_j, 1, 0)``, and
one positional table per head, ``(A_q^T E, b_q . E)``. It computes the layer's function, with the
same attention-dropout mask (rows and entries are numbered as in the plain call), in fewer
multiply-adds: on one input channel (rotMNIST) 3 channels per head instead of the layer's 12.
The layer's output projection ``wout`` (``C N -> C_out``) is linear too, so it meets ``A_v`` and
``b_v`` in one ``C_out x N (C_in + 1)`` matrix, applied to the kernel's sums: the values' ``C N``
channels are never formed (on rotMNIST5k's p4sa, 6 channels per pixel instead of 72).
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from g_selfatt.nn.attention_tables import AttentionTables
from g_selfatt.nn.fused_attention import FusedGeometry, fused_attention, shared_tables
from g_selfatt.nn.layers import pointwise_conv


def kernel_channels(in_channels: int) -> int:
    """Channels per head of the kernel call: ``x``, a constant 1 and ``A_k^T q``."""
    return 2 * in_channels + 1


def applies(lifting: bool, local: bool, in_channels: int, mid_channels: int) -> bool:
    """Whether a layer computes its fused attention here: local lifting layers whose input has
    fewer channels than this needs (``2 C_in + 1``) than the layer has per head."""
    return lifting and local and kernel_channels(in_channels) < mid_channels


def _per_head(projection: nn.Module, heads: int) -> Tuple[Tensor, Tensor]:
    """A 1x1 projection's weight ``(C, N, C_in)`` and bias ``(C, N)`` (channel ``c N + n`` is head ``n``'s ``c``)."""
    weight = projection.weight.flatten(1)  # (C N, C_in)
    bias = projection.bias if projection.bias is not None else weight.new_zeros(weight.shape[0])
    return weight.view(-1, heads, weight.shape[1]), bias.view(-1, heads)


def lifting_attention(tables: AttentionTables, x: Tensor, query: nn.Module, key: nn.Module, value: nn.Module,
                      output: nn.Module, heads: int) -> Tensor:
    """The output of a local lifting layer, its output projection included, from its input and projections.

    Equivariance is the layer's: this is the same function of the same tables and weights.

    Args:
        tables: the layer's tables (local, no group table).
        x: the input ``(B, C_in, H, W)``.
        query, key, value: the layer's 1x1 projections ``C_in -> C N``.
        output: the layer's output projection ``wout``, a point-wise convolution ``C N -> C_out``.
        heads: ``N``.

    Returns:
        ``(B, C_out, V, H, W)``, as the layer's ``wout`` of the attention.
    """
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            sums = _weighted_inputs(tables.to_float(), x.float(), query, key, heads)
    else:
        sums = _weighted_inputs(tables, x, query, key, heads)  # (B, N, C_in + 1, V, H, W)
    # wout(A_v s + b_v s_1) = (W_out [A_v, b_v]) (s, s_1), per head: the value projection and the output
    # projection as one (C_out, N (C_in + 1)) matrix, applied (under autocast, at its precision) to the
    # kernel's sums instead of to the C N channels of the values.
    w_v, b_v = _per_head(value, heads)  # (C, N, C_in), (C, N)
    w_out = output.weight.reshape(output.weight.shape[0], -1, heads)  # (C_out, C, N): channel c N + n is head n's c
    weight = torch.cat([w_v, b_v.unsqueeze(-1)], dim=-1).to(w_out.dtype)  # (C, N, C_in + 1)
    matrix = torch.einsum("ocn,cna->ona", w_out, weight).flatten(1)  # (C_out, N (C_in + 1))
    return pointwise_conv(sums.flatten(1, 2), matrix, output.bias)  # (B, C_out, V, H, W)


def _weighted_inputs(tables: AttentionTables, x: Tensor, query: nn.Module, key: nn.Module, heads: int) -> Tensor:
    """``(sum_j p_j x_j, sum_j p_j)`` of every head, query and output element: ``(B, N, C_in + 1, V, H, W)``."""
    batch, in_channels, height, width = x.shape
    w_q, b_q = (t.to(x.dtype) for t in _per_head(query, heads))  # (C, N, C_in), (C, N)
    w_k, b_k = (t.to(x.dtype) for t in _per_head(key, heads))
    # A_k^T q_i = (A_k^T A_q) x_i + A_k^T b_q, per head.
    content = (torch.einsum("cna,cnb,zbhw->zanhw", w_k, w_q, x)
               + torch.einsum("cna,cn->an", w_k, b_q)[None, :, :, None, None])  # (B, C_in, N, H, W)
    # b_k shifts every logit of a row alike: its gradient is zero. It stays in the graph so that an
    # optimizer treats it as the plain computation makes it do (a zero gradient, not none).
    content = content + 0 * b_k.sum()
    inputs = x.unsqueeze(2).expand(-1, -1, heads, -1, -1)  # (B, C_in, N, H, W)
    ones = x.new_ones(batch, 1, heads, height, width)
    zeros = x.new_zeros(batch, in_channels + 1, heads, height, width)
    scale = in_channels ** -0.5
    q = (torch.cat([inputs, ones, content], dim=1) * scale).unsqueeze(3)  # (B, C', N, 1, H, W)
    k = torch.cat([zeros, inputs], dim=1).unsqueeze(3)
    v = torch.cat([inputs, ones, zeros[:, :in_channels]], dim=1).unsqueeze(3)
    positional = tables.positional.to(x.dtype)  # (V, T, C)
    shared = shared_tables(positional)  # base tables that the V tables permute, if fewer than V
    perm = None
    if shared is not None:
        bases, perm = shared
        positional = positional[bases]  # (U, T, C)
    pos_table = torch.cat([torch.einsum("cnb,vtc->nvtb", w_q, positional),
                           torch.einsum("cn,vtc->nvt", b_q, positional).unsqueeze(-1)], dim=-1)  # (N, V or U, T, C_in + 1)
    geometry = FusedGeometry(
        heads_batch=batch * heads, height=height, width=width, num_query_elements=1, num_key_elements=1,
        num_out=tables.num_out, channels=kernel_channels(in_channels), pos_channels=in_channels + 1, local=True,
        patch_size=tables.patch_size, radius=tables.radius, dropout=tables.dropout,
        seed=int(torch.randint(0, 2 ** 62, ())) if tables.dropout > 0 else 0, pos_heads=heads,
    )
    out = fused_attention(geometry, q, k, v, pos_table, None, perm)  # (B, C', N, V, H, W)
    return out[:, :in_channels + 1].transpose(1, 2)  # (B, N, C_in + 1, V, H, W)
