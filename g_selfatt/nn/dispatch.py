"""Which implementation of self-attention runs: ``attention_impl`` resolved for an input.

Every implementation computes the same function of the same tables
(:class:`~g_selfatt.nn.attention_tables.AttentionTables`); they differ in where they run
and how fast. ``"auto"`` picks the fastest one that handles the input; on CUDA it trusts the
Triton kernels only once they have passed :func:`kernel_self_check` on that device and dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Callable, Dict, Optional, Set, Tuple

import torch
from torch import Tensor

from g_selfatt.nn import flex_attention, fused_attention, triton_attention
from g_selfatt.nn.efficient_attention import efficient_attention

@dataclasses.dataclass(frozen=True)
class Implementation:
    """One way of computing the self-attention of a layer (all compute the same function).

    Attributes:
        where: where it runs, for the documentation.
        summary: what it is, for the documentation.
        refusal: ``refusal(q, key_elements, dropout)`` is ``None`` where it can run on projections
            like ``q``, else why not and what to use instead (the text of the error).
        run: ``run(tables, q, k, v, in_channels)``, the attention before ``wout``
            ``(B, C, N, V, H, W)`` (see :func:`~g_selfatt.nn.efficient_attention.efficient_attention`);
            ``None`` for ``"reference"``, which the layer computes itself, as the formula reads.
    """

    where: str
    summary: str
    refusal: Callable[[Tensor, int, float], Optional[str]]
    run: Optional[Callable[..., Tensor]]


def _fused_refusal(q: Tensor, key_elements: int, dropout: float) -> Optional[str]:
    if fused_attention.supports(q, key_elements, autocast=torch.is_autocast_enabled(q.device.type)):
        return None
    reason = fused_attention.build_report().error if q.device.type == "cpu" else None
    return (f"attention_impl='fused' runs on the CPU in float32/float64, got a {q.dtype} tensor on "
            f"{q.device}{f' ({reason})' if reason else ''}; use attention_impl='auto' or 'efficient'.")


def _triton_refusal(q: Tensor, key_elements: int, dropout: float) -> Optional[str]:
    if triton_attention.supports(q):
        return None
    return f"attention_impl='triton' cannot run here: {triton_attention.unsupported_reason(q)}; use attention_impl='auto'."


def _flex_refusal(q: Tensor, key_elements: int, dropout: float) -> Optional[str]:
    if not flex_attention.available():
        return "attention_impl='flex' needs torch's FlexAttention, which this torch build lacks; use attention_impl='auto'."
    if q.device.type != "cuda" and q.requires_grad:
        return (f"attention_impl='flex' trains on CUDA only (FlexAttention has no backward pass "
                f"on {q.device.type}); use attention_impl='auto'.")
    if dropout > 0:
        return ("attention_impl='flex' has no attention dropout; use attention_impl='auto' "
                "or 'efficient'.")
    return None


def _runs_anywhere(q: Tensor, key_elements: int, dropout: float) -> Optional[str]:
    return None


# name -> implementation; "auto" (resolve_impl) chooses among them.
IMPLEMENTATIONS: Dict[str, Implementation] = {
    "fused": Implementation(
        "CPU (float32, float64, autocast)",
        "one C++ kernel per layer (g_selfatt/nn/fused_attention.cpp), compiled on first use; no score tensor",
        _fused_refusal, functools.partial(efficient_attention, impl="fused")),
    "triton": Implementation(
        "CUDA (float32, float64, autocast); the CPU only through Triton's interpreter",
        "two flash-attention-style Triton kernels (g_selfatt/nn/triton_kernels.py); no score tensor",
        _triton_refusal, functools.partial(efficient_attention, impl="triton")),
    "flex": Implementation(
        "CUDA (training without attention dropout); its forward pass also on the CPU",
        "torch's FlexAttention with the positional and group terms in score_mod",
        _flex_refusal, functools.partial(efficient_attention, impl="flex")),
    "efficient": Implementation(
        "any device",
        "chunks of torch operations, recomputed in the backward pass; a chunk of scores at a time",
        _runs_anywhere, functools.partial(efficient_attention, impl="efficient")),
    "reference": Implementation(
        "any device",
        "the formula as written, with every (B, N, V, G, H, W, M, K) score tensor in memory",
        _runs_anywhere, None),
}
ATTENTION_IMPLS = ("auto",) + tuple(IMPLEMENTATIONS)


def resolve_impl(requested: str, q: Tensor, key_elements: int, dropout: float) -> str:
    """The implementation that runs for projections like ``q``: ``requested`` with ``"auto"`` resolved.

    ``"auto"`` is ``"fused"`` where the fused kernel handles the input (CPU, float32 or
    float64 or autocast, a compiled kernel), ``"triton"`` on CUDA once the Triton kernels have
    passed :func:`kernel_self_check` there, and ``"efficient"`` elsewhere (with one log line
    saying why, where ``"triton"`` was passed over on CUDA). ``"flex"`` runs only when asked for.

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
            return accelerator_choice(q)
        return "efficient" if _fused_refusal(q, key_elements, dropout) else "fused"
    refusal = IMPLEMENTATIONS[requested].refusal(q, key_elements, dropout)
    if refusal:
        raise ValueError(refusal)
    return requested


_self_checks: Dict[Tuple[str, torch.dtype], Optional[str]] = {}  # (device, dtype) -> None or why not
_fallbacks_said: Set[Tuple[str, torch.dtype]] = set()
log = logging.getLogger(__name__)


def accelerator_choice(q: Tensor) -> str:
    """``"auto"`` on an accelerator: ``"triton"`` if its kernels pass their self-check there, else ``"efficient"``."""
    reason = triton_attention.unsupported_reason(q) if not triton_attention.supports(q) else None
    if reason is None:
        reason = kernel_self_check(q.device, kernel_dtype(q))
    if reason is None:
        return "triton"
    key = (str(q.device), kernel_dtype(q))
    if key not in _fallbacks_said:
        _fallbacks_said.add(key)
        log.warning("attention_impl='auto' runs 'efficient' on %s (%s): %s.", q.device, kernel_dtype(q), reason)
    return "efficient"


def kernel_dtype(q: Tensor) -> torch.dtype:
    """The dtype the attention kernels see for projections like ``q`` (float32 under autocast)."""
    return torch.float32 if torch.is_autocast_enabled(q.device.type) else q.dtype


def kernel_self_check(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """``None`` once the Triton kernels agree with ``"efficient"`` on ``device`` and ``dtype``, else why not.

    Run once per device and dtype (the answer is kept): the attention of a small local p4 group
    layer and of a small global lifting layer, forward and backward, in both implementations on
    the same random projections and tables; the outputs and the gradients of every input must
    agree within ``1e-4`` of their scale (float32 round-off of these sizes is below ``1e-6``; a
    wrong kernel is off by the scale itself). It draws from its own generator, so the caller's
    random number streams are left untouched.
    """
    key = (str(device), dtype)
    if key not in _self_checks:
        try:
            _self_checks[key] = _compare_with_efficient(device, dtype)
        except Exception as error:  # a kernel that does not compile or launch here
            _self_checks[key] = f"the Triton kernels failed their self-check ({type(error).__name__}: {error})"
    return _self_checks[key]


# The self-check's cases: (name, query elements G, key elements M, output elements V, patch size or None).
_SELF_CHECK_CASES = (("local p4 group layer", 4, 4, 4, 3), ("global lifting layer", 1, 1, 4, None))


def _compare_with_efficient(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    from g_selfatt.nn.attention_tables import AttentionTables

    generator = torch.Generator().manual_seed(0)
    channels, heads, height, width, pos_channels = 6, 1, 4, 5, 4

    def random(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).to(device).requires_grad_(True)

    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for name, elements, key_elements, outputs, patch in _SELF_CHECK_CASES:
            radius = patch // 2 if patch else max(height, width) - 1
            side = 2 * radius + 1
            inputs = [random(1, channels, heads, elements, height, width),
                      random(1, channels, heads, key_elements, height, width),
                      random(1, channels, heads, key_elements, height, width),
                      random(outputs, side * side, pos_channels)]
            if key_elements > 1:
                inputs.append(random(outputs, elements, key_elements, channels - pos_channels))
            grad_out = torch.randn(1, channels, heads, outputs, height, width, generator=generator, dtype=dtype)
            results = []
            for impl in ("efficient", "triton"):
                tables = AttentionTables(positional=inputs[3], group=inputs[4] if key_elements > 1 else None,
                                         radius=radius, patch_size=patch)
                out = efficient_attention(tables, *inputs[:3], in_channels=3, impl=impl)
                grads = torch.autograd.grad(out, inputs, grad_out.to(device), allow_unused=True)
                results.append([out] + [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)])
            for what, expected, actual in zip(["output"] + ["gradient"] * len(inputs), *results):
                scale = expected.abs().max().item()
                error = (actual - expected).abs().max().item()
                if not error <= 1e-4 * scale:
                    return (f"the Triton kernels' {what} of a {name} is off by {error:.3g} (scale {scale:.3g}) "
                            f"on {device} ({dtype})")
    return None
