"""Which implementation of self-attention runs: ``attention_impl`` resolved for an input.

Every implementation computes the same function of the same tables
(:class:`~g_selfatt.nn.attention_tables.AttentionTables`); they differ in where they run
and how fast. ``"auto"`` picks the fastest one that handles the input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from g_selfatt.nn import flex_attention, fused_attention

ATTENTION_IMPLS = ("auto", "fused", "flex", "efficient", "reference")


def resolve_impl(requested: str, q: Tensor, key_elements: int, dropout: float) -> str:
    """The implementation that runs for projections like ``q``: ``requested`` with ``"auto"`` resolved.

    ``"auto"`` is ``"fused"`` where the fused kernel handles the input (CPU, float32 or
    float64 or autocast, a compiled kernel), ``"flex"`` on CUDA without active attention
    dropout, and ``"efficient"`` elsewhere.

    Args:
        requested: one of :data:`ATTENTION_IMPLS`.
        q: a projection ``(B, C, N, G, H, W)`` (its device, dtype and ``requires_grad`` decide).
        key_elements: ``M``, the group elements of the keys (1 for lifting layers).
        dropout: the attention-dropout probability in effect.

    Raises:
        ValueError: an explicit choice that cannot run here, naming the choice that can.
    """
    if requested == "auto":
        if q.device.type == "cuda":
            return "flex" if flex_attention.supports(q, dropout) else "efficient"
        return "fused" if _fused_handles(q, key_elements) else "efficient"
    if requested == "fused":
        _check_fused(q, key_elements)
    elif requested == "flex":
        _check_flex(q, dropout)
    return requested


def _fused_handles(q: Tensor, key_elements: int) -> bool:
    return fused_attention.supports(q, key_elements, autocast=torch.is_autocast_enabled(q.device.type))


def _check_fused(q: Tensor, key_elements: int) -> None:
    if _fused_handles(q, key_elements):
        return
    reason = fused_attention.build_report().error if q.device.type == "cpu" else None
    raise ValueError(
        f"attention_impl='fused' runs on the CPU in float32/float64, got a {q.dtype} tensor on "
        f"{q.device}{f' ({reason})' if reason else ''}; use attention_impl='auto' or 'efficient'."
    )


def _check_flex(q: Tensor, dropout: float) -> None:
    if not flex_attention.available():
        raise ValueError("attention_impl='flex' needs torch's FlexAttention, which this torch build lacks; "
                         "use attention_impl='auto'.")
    if q.device.type != "cuda" and q.requires_grad:
        raise ValueError(f"attention_impl='flex' trains on CUDA only (FlexAttention has no backward pass "
                         f"on {q.device.type}); use attention_impl='auto'.")
    if dropout > 0:
        raise ValueError("attention_impl='flex' has no attention dropout; use attention_impl='auto' "
                         "(which runs 'efficient' while attention dropout is active) or 'efficient'.")
