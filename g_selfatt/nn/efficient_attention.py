"""Self-attention of :class:`~g_selfatt.nn.attention.SelfAttentionCore` without full score tensors.

This module computes exactly what ``attention_impl="reference"`` computes (letters
as in :mod:`g_selfatt.nn.attention`)::

    logits[b,n,v,g,ij,m,k] = ( <q[g,ij], k[m,key k]>
                               + <q_pos[g,ij], E(M_v (key - ij) / r)>
                               + <q_grp[g,ij], E_G[g_indices[v,g,m]]> ) / sqrt(C_in)
    p   = softmax over (m, k) of logits     (then attention dropout)
    out[c,n,v,ij] = sum_{g,m,k} p[n,v,g,ij,m,k] val[c,n,m,k]

but never holds the ``(B, N, V, G, H, W, M, K)`` logits or probabilities of all
queries at once:

* The queries are processed in chunks of ``Q`` pixels (all heads, all ``v`` and
  ``g`` of a pixel together), sized so that one chunk of scores has about
  :data:`CHUNK_ELEMENTS` entries and stays in the CPU caches.
* The three logit terms are computed separately at their own, smaller sizes: the
  content term ``(Q, G, K, M)`` (no ``v``), the positional term ``(Q, V, G, K)``
  (no ``m``; gathered from the ``(V, S, S, D)`` table of acted offsets, whose
  encoding is evaluated once per call) and the group term ``(Q, V, G, M)`` (no
  ``k``); they are broadcast-added only inside the chunk.
* The sum over ``g`` is taken on the probabilities before they meet the values,
  so the value contraction and its gradient are ``G`` times smaller.
* A custom :class:`torch.autograd.Function` stores only its inputs; the backward
  pass recomputes each chunk of probabilities and applies the softmax gradient
  ``dS = P (dP - sum(P dP))`` in place of autograd's full-size intermediates.
  Attention-dropout masks are drawn from a seeded generator per chunk and drawn
  again, identically, in the backward pass.

Local layers gather the ``P x P`` neighbourhood of each query of a chunk from
zero-padded keys and values (keys outside the image get ``-inf`` logits, as in
the reference); global layers see all ``H W`` keys.

:func:`efficient_attention` is also the entry point of ``"fused"``, ``"triton"`` and ``"flex"``
(:mod:`g_selfatt.nn.fused_attention`, :mod:`g_selfatt.nn.triton_attention`,
:mod:`g_selfatt.nn.flex_attention`). It receives
the layer's tables as one :class:`AttentionTables` (built once per call by the core,
:meth:`~g_selfatt.nn.attention.SelfAttentionCore.attention_tables`), makes the scaled
queries and the dropout seed and hands them to whichever implementation runs.

On CPU the chunk loop can be given its own number of intra-op threads,
:data:`CHUNK_THREADS` (default: torch's setting), see there.

Under autocast the core runs in float32 (the reference runs its softmax in
float32 as well); the output then re-enters the autocast region at ``wout``.

Layouts used below (``BN`` = batch times heads, ``X = K M`` = all keys of a query,
``HW'`` = ``H W`` for global layers and ``(H + 2r) (W + 2r)`` for local ones)::

    queries        (BN, H W, G, C)    already divided by sqrt(C_in)
    keys, values   (BN, HW', M, C)
    scores chunk   (BN, Q, V, G, K, M)
    output         (BN, H W, V, C)
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from g_selfatt.functional.encoding import flat_relative_offsets
from g_selfatt.nn.attention_tables import AttentionTables
from g_selfatt.nn.flex_attention import flex_self_attention
from g_selfatt.nn.fused_attention import FusedGeometry, fused_attention
from g_selfatt.nn.layouts import from_pixel_major, pixel_major
from g_selfatt.nn.triton_attention import triton_self_attention

# Target number of score entries (B N Q V G K M) per chunk: 2**21 (8 MiB in
# float32); the backward pass holds about four chunk-sized temporaries. Buffers
# of this size stay below glibc's largest mmap threshold (32 MiB), so they are
# reused from the heap instead of being mapped and faulted in for every chunk;
# much smaller chunks multiply the number of small operations, whose fixed cost
# dominates when the CPU cores are shared.
CHUNK_ELEMENTS = 2 ** 21

# Values of the 15-bit random numbers that decide attention dropout (see dropout_mask).
_LANE_VALUES = 2 ** 15

# Intra-op threads for the chunk loop on CPU (``None``: leave torch's setting).
# Each chunk is a few dozen operations on a few MiB, and each one ends in a
# barrier of the intra-op threads. On idle cores all threads pay off (2 threads
# against 1 on a 2-core machine: global p4 layer 1.9x vs 1.2x faster than the
# reference); on cores shared with other processes the barriers wait for
# descheduled threads (measured 3-5x slower with 2 threads than with 1 under a
# load of 7), where 1 is the better choice. The setting is restored afterwards.
CHUNK_THREADS: Optional[int] = None


@dataclasses.dataclass
class _Geometry:
    """What the chunk loop needs to know about the layer and the input (no tensors that need grad).

    Attributes:
        heads_batch: ``BN``.
        num_queries: ``H W``.
        num_out: ``V``, the number of output group elements.
        num_query_elements: ``G``.
        num_key_elements: ``M``.
        num_keys: ``K``.
        pos_channels: ``2 D``, the query channels that meet the positional encoding.
        local: neighbourhood attention (keys gathered per query) or global.
        key_index: local ``(H W, K)`` flat indices into the padded key grid; global
            ``(H W, K)`` flat indices into the ``S x S`` offset table.
        outside_bias: local ``(H W, K)``, ``0`` inside the image and ``-inf`` outside.
        chunk: queries per chunk.
        dropout: attention-dropout probability (0 when not training).
        seed: seed of the dropout masks.
    """

    heads_batch: int
    num_queries: int
    num_out: int
    num_query_elements: int
    num_key_elements: int
    num_keys: int
    pos_channels: int
    local: bool
    key_index: Tensor
    outside_bias: Optional[Tensor]
    chunk: int
    dropout: float = 0.0
    seed: int = 0

    def chunks(self) -> Iterator[Tuple[int, slice]]:
        """``(number, query slice)`` of every chunk."""
        for number, start in enumerate(range(0, self.num_queries, self.chunk)):
            yield number, slice(start, min(start + self.chunk, self.num_queries))


# ---------------------------------------------------------------- index tables
def neighbourhood_index(height: int, width: int, patch_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Where the ``P x P`` neighbours of every pixel lie in the zero-padded grid.

    Returns:
        ``(index, bias)``: ``index[ij, ab]`` is the flat position of key ``(i + a - r,
        j + b - r)`` in the ``(H + 2r) x (W + 2r)`` padded grid, ``(H W, P P)`` long;
        ``bias`` is ``0`` where that key lies inside the image and ``-inf`` outside,
        ``(H W, P P)`` float32. The order of ``ab`` is that of ``F.unfold``.
    """
    radius = patch_size // 2
    padded_width = width + 2 * radius
    steps = torch.arange(patch_size, device=device)
    rows = torch.arange(height, device=device).view(-1, 1, 1, 1) + steps.view(1, 1, -1, 1)
    cols = torch.arange(width, device=device).view(1, -1, 1, 1) + steps.view(1, 1, 1, -1)
    index = (rows * padded_width + cols).reshape(height * width, patch_size ** 2)  # (H W, K)
    inside = ((rows >= radius) & (rows < height + radius) & (cols >= radius) & (cols < width + radius))
    bias = torch.zeros(inside.shape, device=device).masked_fill_(~inside, float("-inf"))  # (H, W, P, P)
    return index, bias.reshape(height * width, patch_size ** 2)


# ---------------------------------------------------------------- neighbourhoods
def gather_keys(geometry: _Geometry, t: Tensor, queries: slice) -> Tensor:
    """The keys (or values) that the queries of a chunk see.

    Args:
        t: ``(BN, HW', M, C)``.

    Returns:
        global: ``(BN, K M, C)`` (all keys, shared by every query);
        local: ``(BN, Q, K M, C)``.
    """
    if not geometry.local:
        return t.flatten(1, 2)  # (BN, K M, C)
    index = geometry.key_index[queries].flatten()  # (Q K,)
    gathered = t.index_select(1, index)  # (BN, Q K, M, C)
    return gathered.view(t.shape[0], -1, geometry.num_keys * t.shape[2], t.shape[3])  # (BN, Q, K M, C)


def scatter_keys(geometry: _Geometry, grad_t: Tensor, grad_chunk: Tensor, queries: slice) -> None:
    """Adds the gradient of :func:`gather_keys` for one chunk into ``grad_t`` ``(BN, HW', M, C)``."""
    if not geometry.local:
        grad_t.view_as(grad_chunk).add_(grad_chunk)  # (BN, K M, C)
        return
    index = geometry.key_index[queries].flatten()  # (Q K,)
    bn, _, elements, channels = grad_t.shape
    grad_t.index_add_(1, index, grad_chunk.reshape(bn, -1, elements, channels))  # (BN, Q K, M, C)


def contract(x: Tensor, keys: Tensor) -> Tensor:
    """``out[bn,q,r,y] = sum_x x[bn,q,r,x] keys[bn,(q,)x,y]``: one matrix product per query.

    Global keys are shared by every query (one ``bmm`` over all ``Q R`` rows); local keys are
    each query's own neighbourhood.

    Args:
        x: ``(BN, Q, R, X)``.
        keys: ``(BN, X, Y)`` (global) or ``(BN, Q, X, Y)`` (local).

    Returns:
        ``(BN, Q, R, Y)``.
    """
    if keys.dim() == 3:
        bn, queries, rows, width = x.shape
        out = torch.bmm(x.reshape(bn, queries * rows, width), keys)  # (BN, Q R, Y)
        return out.view(bn, queries, rows, -1)
    return torch.matmul(x, keys)


def keys_gradient(p: Tensor, x: Tensor, local: bool) -> Tensor:
    """``out[bn,(q,)x,c] = sum_{(q,)r} p[bn,q,r,x] x[bn,q,r,c]``, the gradient of the key side.

    Args:
        p: ``(BN, Q, R, X)``.
        x: ``(BN, Q, R, C)``.

    Returns:
        ``(BN, Q, X, C)`` for local layers, ``(BN, X, C)`` (summed over ``Q``) for global ones.
    """
    if local:
        return torch.matmul(p.transpose(-1, -2), x)  # (BN, Q, X, C)
    bn, queries, rows, width = p.shape
    return torch.bmm(p.reshape(bn, queries * rows, width).transpose(1, 2), x.reshape(bn, queries * rows, -1))


# ---------------------------------------------------------------- logit terms
def chunk_positional_table(geometry: _Geometry, table: Tensor, queries: slice) -> Tensor:
    """Encodings of the acted offsets seen by a chunk.

    Args:
        table: ``(V, K, 2D)`` (local) or ``(V, S S, 2D)`` (global).

    Returns:
        ``(V, K, 2D)`` (local, the same for every query) or ``(V, Q, K, 2D)`` (global).
    """
    if geometry.local:
        return table
    return table[:, geometry.key_index[queries]]  # (V, Q, K, 2D)


def positional_logits(q_pos: Tensor, embeddings: Tensor) -> Tensor:
    """``<q_pos[g, q], E[v, (q,) k]>``: ``(BN, Q, G, 2D)`` x embeddings -> ``(BN, Q, V, G, K)``."""
    if embeddings.dim() == 3:
        return torch.einsum("bqgc,vkc->bqvgk", q_pos, embeddings)
    return torch.einsum("bqgc,vqkc->bqvgk", q_pos, embeddings)


def positional_gradients(grad_pos: Tensor, q_pos: Tensor, embeddings: Tensor) -> Tuple[Tensor, Tensor]:
    """Gradients of :func:`positional_logits` w.r.t. ``q_pos`` and ``embeddings``."""
    if embeddings.dim() == 3:
        return (torch.einsum("bqvgk,vkc->bqgc", grad_pos, embeddings),
                torch.einsum("bqvgk,bqgc->vkc", grad_pos, q_pos))
    return (torch.einsum("bqvgk,vqkc->bqgc", grad_pos, embeddings),
            torch.einsum("bqvgk,bqgc->vqkc", grad_pos, q_pos))


def group_logits(q_group: Tensor, group_table: Tensor) -> Tensor:
    """``<q_grp[g, q], E_G[v, g, m]>``: ``(BN, Q, G, D_g)`` x ``(V, G, M, D_g)`` -> ``(BN, Q, V, G, M)``."""
    return torch.einsum("bqgc,vgmc->bqvgm", q_group, group_table)


def group_gradients(grad_group: Tensor, q_group: Tensor, group_table: Tensor) -> Tuple[Tensor, Tensor]:
    """Gradients of :func:`group_logits` w.r.t. ``q_group`` and ``group_table``."""
    return (torch.einsum("bqvgm,vgmc->bqgc", grad_group, group_table),
            torch.einsum("bqvgm,bqgc->vgmc", grad_group, q_group))


def chunk_logits(geometry: _Geometry, queries: slice, q: Tensor, k: Tensor, pos_table: Tensor,
                 group_table: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The scaled logits of one chunk of queries.

    Returns:
        ``(logits, keys)``: logits ``(BN, Q, V, G, K, M)`` (``-inf`` for keys outside the
        image) and the keys the chunk sees (see :func:`gather_keys`).
    """
    bn, _, elements, _ = q.shape
    q_chunk = q[:, queries]  # (BN, Q, G, C)
    count = q_chunk.shape[1]
    keys = gather_keys(geometry, k, queries)
    content = contract(q_chunk, keys.transpose(-1, -2))  # (BN, Q, G, K M)
    content = content.view(bn, count, 1, elements, geometry.num_keys, geometry.num_key_elements)
    embeddings = chunk_positional_table(geometry, pos_table, queries)
    positional = positional_logits(q_chunk[..., :geometry.pos_channels], embeddings)  # (BN, Q, V, G, K)
    if geometry.outside_bias is not None:
        positional = positional + geometry.outside_bias[queries][None, :, None, None, :]
    logits = q.new_empty(bn, count, geometry.num_out, elements, geometry.num_keys, geometry.num_key_elements)
    torch.add(content, positional.unsqueeze(-1), out=logits)  # (BN, Q, V, G, K, M), contiguous
    if group_table is not None:
        grouped = group_logits(q_chunk[..., geometry.pos_channels:], group_table)  # (BN, Q, V, G, M)
        logits.add_(grouped.unsqueeze(-2))
    return logits, keys


def chunk_probabilities(geometry: _Geometry, queries: slice, q: Tensor, k: Tensor, pos_table: Tensor,
                        group_table: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Softmax over ``(k, m)`` of :func:`chunk_logits`: ``(BN, Q, V, G, K M)`` and the keys."""
    logits, keys = chunk_logits(geometry, queries, q, k, pos_table, group_table)
    return torch.softmax(logits.flatten(-2), dim=-1), keys  # (BN, Q, V, G, K M)


def dropout_mask(geometry: _Geometry, number: int, like: Tensor) -> Tensor:
    """The (scaled) dropout mask of chunk ``number``; the same in the forward and backward pass.

    Drawing random numbers is the slowest part of a chunk with dropout on the CPU (one draw
    per score entry, serially). So each 63-bit draw of the generator is cut into four 15-bit
    numbers (``int64`` viewed as four ``int16`` lanes, sign bits cleared), four times fewer
    draws than one float per entry, and an entry is kept when its number is below
    ``round(keep * 2^15)``. The keep probability is thus a multiple of ``2^-15`` (off by at
    most ``1.5e-5``), and kept entries are scaled by its exact inverse, so the mask is unbiased.
    """
    generator = torch.Generator(device=like.device)
    generator.manual_seed(geometry.seed + number)
    threshold = round((1.0 - geometry.dropout) * _LANE_VALUES)
    if threshold >= _LANE_VALUES:  # a rate below 2^-16: nothing is dropped (and 2^15 is no int16)
        return torch.ones_like(like)
    count = like.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=like.device).random_(generator=generator)
    lanes = draws.view(torch.int16).bitwise_and_(_LANE_VALUES - 1)  # (4 * draws,) uniform in [0, 2^15)
    mask = lanes[:count].view(like.shape).lt(threshold).to(like.dtype)
    return mask.mul_(_LANE_VALUES / threshold) if threshold > 0 else mask


# ---------------------------------------------------------------- autograd
@contextlib.contextmanager
def chunk_threads(device: torch.device):
    """Runs the chunk loop with :data:`CHUNK_THREADS` intra-op threads (CPU only)."""
    previous = torch.get_num_threads()
    change = device.type == "cpu" and CHUNK_THREADS is not None and CHUNK_THREADS != previous
    if change:
        torch.set_num_threads(CHUNK_THREADS)
    try:
        yield
    finally:
        if change:
            torch.set_num_threads(previous)


class ChunkedAttention(torch.autograd.Function):
    """``out[bn, ij, v, c] = sum_{g,m,k} p[bn,v,g,ij,m,k] val[bn,m,k,c]``, chunk by chunk.

    Inputs are the layouts of the module docstring plus the positional table
    ``(V, K, 2D)``/``(V, S S, 2D)`` and the group table ``(V, G, M, D_g)`` (or ``None``).
    """

    @staticmethod
    def forward(ctx, geometry: _Geometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                group_table: Optional[Tensor]) -> Tensor:
        out = q.new_empty(geometry.heads_batch, geometry.num_queries, geometry.num_out, v.shape[-1])
        with chunk_threads(q.device):
            for number, queries in geometry.chunks():
                probs, _ = chunk_probabilities(geometry, queries, q, k, pos_table, group_table)
                if geometry.dropout > 0:
                    probs.mul_(dropout_mask(geometry, number, probs))
                values = gather_keys(geometry, v, queries)
                out[:, queries] = contract(probs.sum(3), values)  # (BN, Q, V, C)
        ctx.geometry = geometry
        ctx.save_for_backward(q, k, v, pos_table, group_table)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        with torch.autocast(grad_out.device.type, enabled=False), chunk_threads(grad_out.device):
            return (None,) + _backward(ctx.geometry, grad_out.contiguous(), *ctx.saved_tensors)


def _backward(geometry: _Geometry, grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
              group_table: Optional[Tensor]):
    """Gradients of :class:`ChunkedAttention` w.r.t. ``q, k, v, pos_table, group_table``."""
    grad_q = torch.empty_like(q)
    grad_k = torch.zeros_like(k)
    grad_v = torch.zeros_like(v)
    grad_pos = torch.zeros_like(pos_table)
    grad_group = None if group_table is None else torch.zeros_like(group_table)
    d = geometry.pos_channels
    bn, _, elements, _ = q.shape
    for number, queries in geometry.chunks():
        probs, keys = chunk_probabilities(geometry, queries, q, k, pos_table, group_table)  # (BN,Q,V,G,X)
        count = probs.shape[1]
        values = gather_keys(geometry, v, queries)
        grad_chunk = grad_out[:, queries]  # (BN, Q, V, C)
        grad_dropped = contract(grad_chunk, values.transpose(-1, -2)).unsqueeze(3)  # (BN, Q, V, 1, X)
        if geometry.dropout > 0:
            mask = dropout_mask(geometry, number, probs)
            dropped = probs * mask
            grad_probs = grad_dropped * mask  # (BN, Q, V, G, X)
        else:
            dropped, grad_probs = probs, grad_dropped
        scatter_keys(geometry, grad_v, keys_gradient(dropped.sum(3), grad_chunk, geometry.local), queries)
        # sum_x P dP per (v, g): the softmax gradient's correction.
        delta = torch.matmul(dropped, grad_dropped.transpose(-1, -2))  # (BN, Q, V, G, 1)
        grad_logits = (grad_probs - delta).mul_(probs)  # (BN, Q, V, G, X)
        del probs, dropped, grad_probs, grad_dropped
        grad_logits = grad_logits.view(bn, count, geometry.num_out, elements, geometry.num_keys, -1)
        grad_content = grad_logits.sum(2).flatten(-2)  # (BN, Q, G, K M)
        grad_positional = grad_logits.sum(-1)  # (BN, Q, V, G, K)
        q_chunk = q[:, queries]  # (BN, Q, G, C)
        grad_q_chunk = contract(grad_content, keys)  # (BN, Q, G, C)
        scatter_keys(geometry, grad_k, keys_gradient(grad_content, q_chunk, geometry.local), queries)
        embeddings = chunk_positional_table(geometry, pos_table, queries)
        grad_q_pos, grad_embeddings = positional_gradients(grad_positional, q_chunk[..., :d], embeddings)
        grad_q_chunk[..., :d] += grad_q_pos
        _accumulate_positional(geometry, grad_pos, grad_embeddings, queries)
        if group_table is not None:
            grad_grouped = grad_logits.sum(-2)  # (BN, Q, V, G, M)
            grad_q_group, grad_table = group_gradients(grad_grouped, q_chunk[..., d:], group_table)
            grad_q_chunk[..., d:] += grad_q_group
            grad_group += grad_table
        grad_q[:, queries] = grad_q_chunk
    return grad_q, grad_k, grad_v, grad_pos, grad_group


def _accumulate_positional(geometry: _Geometry, grad_table: Tensor, grad_embeddings: Tensor,
                           queries: slice) -> None:
    """Adds the gradient of :func:`chunk_positional_table` into ``grad_table``."""
    if geometry.local:
        grad_table += grad_embeddings  # (V, K, 2D)
        return
    index = geometry.key_index[queries].flatten()  # (Q K,)
    out, _, _, channels = grad_embeddings.shape
    grad_table.index_add_(1, index, grad_embeddings.reshape(out, -1, channels))  # (V, Q K, 2D)


# ---------------------------------------------------------------- entry point
def key_layout(t: Tensor, radius: int) -> Tensor:
    """``(B, C, N, M, H, W)`` -> ``(B N, HW', M, C)``, zero-padded by ``radius`` on each side."""
    if radius:
        t = F.pad(t, (radius, radius, radius, radius))  # (B, C, N, M, H + 2r, W + 2r)
    return pixel_major(t)


def chunk_size(heads_batch: int, scores_per_query: int, budget: Optional[int] = None) -> int:
    """Queries per chunk so that a chunk holds about ``budget`` score entries (at least one query)."""
    budget = CHUNK_ELEMENTS if budget is None else budget
    return max(1, budget // (heads_batch * scores_per_query))


def efficient_attention(tables: AttentionTables, q: Tensor, k: Tensor, v: Tensor, in_channels: int,
                        chunk_elements: Optional[int] = None, impl: str = "efficient") -> Tensor:
    """Self-attention of projections ``q, k, v`` with a layer's ``tables``, before ``wout``.

    Equivariance is the layer's (:mod:`g_selfatt.nn.attention`): every implementation
    computes the reference's function of the same tables.

    Args:
        tables: the layer's positional and group encodings, extent and dropout.
        q, k, v: projections ``(B, C, N, G, H, W)`` (``M`` key elements for ``k`` and ``v``).
        in_channels: input channels (the logits are divided by their root).
        chunk_elements: score entries per chunk (default :data:`CHUNK_ELEMENTS`).
        impl: ``"efficient"`` (the chunk loop), ``"fused"`` (the CPU kernel of
            :mod:`g_selfatt.nn.fused_attention`), ``"triton"`` (the kernels of
            :mod:`g_selfatt.nn.triton_attention`) or ``"flex"`` (FlexAttention,
            :mod:`g_selfatt.nn.flex_attention`): the same tables, the same result.

    Returns:
        ``(B, C, N, V, H, W)``, the output of the reference's value contraction.
    """
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return _attention(tables.to_float(), q.float(), k.float(), v.float(), in_channels, chunk_elements, impl)
    return _attention(tables, q, k, v, in_channels, chunk_elements, impl)


def _attention(tables: AttentionTables, q: Tensor, k: Tensor, v: Tensor, in_channels: int,
               chunk_elements: Optional[int], impl: str) -> Tensor:
    batch, channels, heads, elements, height, width = q.shape
    num_out = tables.num_out
    if batch == 0:  # nothing to attend; keep the graph so that backward gives empty gradients
        return q.new_zeros(0, channels, heads, num_out, height, width) + 0 * (q.sum() + k.sum() + v.sum())
    key_elements = k.shape[3]
    seed = int(torch.randint(0, 2 ** 62, ())) if tables.dropout > 0 else 0
    if impl in ("fused", "flex", "triton"):
        geometry = FusedGeometry(
            heads_batch=batch * heads, height=height, width=width, num_query_elements=elements,
            num_key_elements=key_elements, num_out=num_out, channels=channels,
            pos_channels=tables.pos_channels, local=tables.local, patch_size=tables.patch_size or 0,
            radius=tables.radius, dropout=tables.dropout, seed=seed,
        )
        if impl == "fused":
            return fused_attention(geometry, q * in_channels ** -0.5, k, v, tables.positional, tables.group)
        run = flex_self_attention if impl == "flex" else triton_self_attention
        out = run(geometry, pixel_major(q * in_channels ** -0.5), pixel_major(k), pixel_major(v),
                  tables.positional, tables.group)
        return from_pixel_major(out, batch, heads, height, width)  # from (BN, H W, V, C)
    scaled_q = pixel_major(q * in_channels ** -0.5)  # (BN, H W, G, C)
    if tables.local:
        radius = tables.radius
        key_index, outside_bias = neighbourhood_index(height, width, tables.patch_size, q.device)
        outside_bias = outside_bias.to(q.dtype)
    else:
        radius = 0
        key_index = flat_relative_offsets(height, width, tables.radius, q.device)  # (H W, H W) into S S
        outside_bias = None
    num_keys = key_index.shape[1]
    geometry = _Geometry(
        heads_batch=batch * heads, num_queries=height * width, num_out=num_out,
        num_query_elements=elements, num_key_elements=key_elements, num_keys=num_keys,
        pos_channels=tables.pos_channels, local=tables.local, key_index=key_index,
        outside_bias=outside_bias,
        chunk=chunk_size(batch * heads, num_out * elements * num_keys * key_elements, chunk_elements),
        dropout=tables.dropout, seed=seed,
    )
    out = ChunkedAttention.apply(geometry, scaled_q, key_layout(k, radius), key_layout(v, radius),
                                 tables.positional, tables.group)  # (BN, H W, V, C)
    return from_pixel_major(out, batch, heads, height, width)
