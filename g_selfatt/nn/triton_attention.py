"""Self-attention of :class:`~g_selfatt.nn.attention.SelfAttentionCore` in Triton kernels (GPU path).

``attention_impl="triton"`` computes what ``"reference"`` computes (the formula is in
:mod:`g_selfatt.nn.efficient_attention`) in two flash-attention-style kernels,
:mod:`g_selfatt.nn.triton_kernels`: tiles of queries against tiles of keys, an online softmax
that keeps one log-sum-exp per row for the backward pass, the content logits computed once for
all output elements, attention dropout drawn from a counter-based random number of
``(seed, row, entry)`` (the same mask in both passes, the fused kernel's keep probability and
scaling), and no tensor of scores in memory.

What stays in torch: the group logits ``<q_grp[i, g], E_G[v, g, m]>``, a ``(BN, H W, V, G, M)``
table (``K`` times smaller than the scores) whose gradient the backward kernel returns, and the
sum over ``g`` of the per-element outputs ``(BN, H W, V, G, C)`` that the forward kernel writes
(the backward pass needs each of them for its softmax correction ``dO . O``).

Where it runs: CUDA tensors, float32 or float64 (under autocast the attention runs in float32,
as every implementation does). On the CPU it runs only through Triton's interpreter
(``TRITON_INTERPRET=1`` set before the first use), which is how the test suite checks it.
The backward kernel adds key, value and table gradients atomically, so on a GPU its float32
round-off depends on the order in which programs finish.

On CUDA, ``attention_impl="auto"`` uses this path only after
:func:`~g_selfatt.nn.dispatch.kernel_self_check` has passed on that device and dtype.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from g_selfatt.nn.fused_attention import FusedGeometry, dropout_threshold

DTYPES = (torch.float32, torch.float64)
BLOCK_Q = 16  # query pixels per program (tl.dot needs at least 16 rows)
SQUARE = 4  # local layers: square query tiles of SQUARE x SQUARE = BLOCK_Q pixels (triton_kernels.SQUARE)
TILE_ENTRIES = 4096  # rows x entries of one tile of scores, an upper bound kept by the key tile
_MIN_DOT = 16  # the smallest side of a tl.dot operand


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the ``triton`` package is installed."""
    return importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    """Whether Triton runs its kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supports(t: Tensor) -> bool:
    """Whether the kernels can run on tensors like ``t``: CUDA (or the interpreter on the CPU), float32/64."""
    if not available() or t.dtype not in DTYPES and not torch.is_autocast_enabled(t.device.type):
        return False
    return t.device.type == "cuda" or (t.device.type == "cpu" and interpreted())


def unsupported_reason(t: Tensor) -> str:
    """Why :func:`supports` is false for ``t``, one sentence naming the way out."""
    if not available():
        return "the triton package is not installed (pip install triton)"
    if t.device.type == "cpu" and not interpreted():
        return "Triton kernels run on CUDA; on the CPU only under TRITON_INTERPRET=1 (for testing)"
    if t.device.type not in ("cpu", "cuda"):
        return f"Triton kernels do not run on {t.device.type}"
    return f"the Triton kernels run in float32 or float64, not {t.dtype}"


@functools.lru_cache(maxsize=None)
def _kernels():
    from g_selfatt.nn import triton_kernels  # imports triton: only when this path runs
    return triton_kernels


def _power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class Blocks:
    """Tile sizes of one call, all powers of two (see :mod:`g_selfatt.nn.triton_kernels`).

    ``j`` key pixels per tile, ``j_cols`` of them across (local layers: a ``j / j_cols`` by
    ``j_cols`` piece of the key window; global layers: ``j_cols = j`` consecutive pixels).
    """

    q: int
    v: int
    j: int
    j_cols: int
    m: int
    c: int

    @classmethod
    def for_geometry(cls, geometry: FusedGeometry) -> "Blocks":
        """Tiles for ``geometry``: ``X = J M >= 16`` entries per key tile, at most :data:`TILE_ENTRIES` scores."""
        v = _power_of_two(geometry.num_out)
        m = _power_of_two(geometry.num_key_elements)
        c = max(_MIN_DOT, _power_of_two(geometry.channels))
        fewest = max(1, _MIN_DOT // m)
        most = _power_of_two(max(1, TILE_ENTRIES // (BLOCK_Q * v * m)) + 1) // 2  # the power of two at or below
        if geometry.local:  # the square's key window, (S + 2r) on a side, cut at the image
            across = _power_of_two(min(geometry.width, SQUARE + 2 * geometry.radius))
            down = _power_of_two(min(geometry.height, SQUARE + 2 * geometry.radius))
            j = max(fewest, min(most, across * down))
            return cls(q=BLOCK_Q, v=v, j=j, j_cols=min(across, j), m=m, c=c)
        j = max(fewest, min(most, _power_of_two(geometry.height * geometry.width)))
        return cls(q=BLOCK_Q, v=v, j=j, j_cols=j, m=m, c=c)


def _launch(kernel: str, geometry: FusedGeometry, has_group: bool, *tensors: Tensor) -> None:
    """Runs ``kernel`` of :mod:`g_selfatt.nn.triton_kernels` on ``tensors`` over :func:`_grid`, on their device."""
    scalars, constants = _launch_arguments(geometry)
    device = tensors[0].device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        getattr(_kernels(), kernel)[_grid(geometry)](*tensors, *scalars, HAS_GROUP=has_group, **constants)


def _launch_arguments(geometry: FusedGeometry) -> Tuple[tuple, Dict[str, object]]:
    """The scalar arguments and constexprs the two kernels share."""
    g = geometry
    threshold, scale = dropout_threshold(g.dropout)
    blocks = Blocks.for_geometry(g)
    scalars = (g.seed % 2 ** 31, threshold, scale, g.height * g.width, g.height, g.width, g.num_query_elements,
               g.num_key_elements, g.num_out, g.channels, g.pos_channels, g.side ** 2, g.side, g.radius)
    constants = dict(LOCAL=g.local, DROPOUT=g.dropout > 0, BLOCK_Q=blocks.q, BLOCK_V=blocks.v,
                     BLOCK_J=blocks.j, KEY_COLS=blocks.j_cols, BLOCK_M=blocks.m, BLOCK_C=blocks.c)
    return scalars, constants


def dropout_flags(seed: int, count: int, rate: float, device: torch.device = torch.device("cpu")) -> Tensor:
    """Whether the kernels' dropout keeps the entries with counters ``0 .. count - 1``, ``(count,)`` bool.

    The kernels number entry ``(j, m)`` of row ``((bn H W + i) V + v) G + g`` by the counter
    ``row * H W M + j M + m``; this draws the same decisions, for inspecting them.
    """
    flags = torch.empty(count, dtype=torch.int8, device=device)
    block = 2 ** 16
    _kernels().dropout_flags[(math.ceil(count / block),)](flags, seed % 2 ** 31, dropout_threshold(rate)[0], count,
                                                          BLOCK=block)
    return flags.bool()


def _grid(geometry: FusedGeometry) -> Tuple[int, int, int]:
    """Programs: query tiles (squares of SQUARE x SQUARE pixels for local layers), head-batches, query elements."""
    g = geometry
    if g.local:
        tiles = math.ceil(g.height / SQUARE) * math.ceil(g.width / SQUARE)
    else:
        tiles = math.ceil(g.height * g.width / BLOCK_Q)
    return (tiles, g.heads_batch, g.num_query_elements)


class TritonAttention(torch.autograd.Function):
    """``out[bn, i, v, c]`` from queries ``(BN, HW, G, C)``, keys, values ``(BN, HW, M, C)``,
    the positional table ``(V, T, 2D)`` and the group logits ``(BN, HW, V, G, M)`` (or ``None``)."""

    @staticmethod
    def forward(ctx, geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                group_logits: Optional[Tensor]) -> Tensor:
        g = geometry
        hw = g.height * g.width
        per_element = q.new_empty(g.heads_batch, hw, g.num_out, g.num_query_elements, g.channels)
        lse = q.new_empty(g.heads_batch, hw, g.num_out, g.num_query_elements)
        group = group_logits if group_logits is not None else q  # never read without a group
        _launch("attention_forward", g, group_logits is not None, q, k, v, pos_table, group, per_element, lse)
        ctx.geometry = geometry
        ctx.save_for_backward(q, k, v, pos_table, group_logits, per_element, lse)
        return per_element.sum(3)  # (BN, HW, V, C)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, pos_table, group_logits, per_element, lse = ctx.saved_tensors
        g = ctx.geometry
        grad_out = grad_out.contiguous()
        delta = torch.einsum("bivc,bivgc->bivg", grad_out, per_element).contiguous()  # dO . O per row
        grad_q = torch.zeros_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        grad_pos = torch.zeros_like(pos_table)
        grad_group = None if group_logits is None else torch.zeros_like(group_logits)
        group = group_logits if group_logits is not None else q
        _launch("attention_backward", g, group_logits is not None, q, k, v, pos_table, group, grad_out, lse, delta,
                grad_q, grad_k, grad_v, grad_pos, grad_group if grad_group is not None else q)
        return None, grad_q, grad_k, grad_v, grad_pos, grad_group


def triton_self_attention(geometry: FusedGeometry, q: Tensor, k: Tensor, v: Tensor, pos_table: Tensor,
                          group_table: Optional[Tensor]) -> Tensor:
    """The attention before ``wout``, in the Triton kernels.

    Args:
        geometry: sizes, dropout rate and seed of the call.
        q: queries ``(BN, H W, G, C)``, already divided by ``sqrt(C_in)``.
        k, v: keys and values ``(BN, H W, M, C)``.
        pos_table: encodings of the acted offsets, ``(V, T, 2D)``.
        group_table: ``(V, G, M, D_g)`` or ``None`` (lifting layers).

    Returns:
        ``(BN, H W, V, C)``.
    """
    group_logits = None
    if group_table is not None:  # (BN, HW, V, G, M): K times smaller than the scores
        group_logits = torch.einsum("bigc,vgmc->bivgm", q[..., geometry.pos_channels:], group_table).contiguous()
    return TritonAttention.apply(geometry, q.contiguous(), k.contiguous(), v.contiguous(), pos_table.contiguous(),
                                 group_logits)
