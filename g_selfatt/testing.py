"""Checking equivariance numerically.

One helper serves every test, notebook and report: it applies a module to an
input and to transformed copies of it and compares with the transformed output,

    error(u) = max |f(T_u x) - T'_u f(x)| / max |f(x)|.

The transforms come from :class:`g_selfatt.groups.Group` (or any callables with
the same signature), so the same helper checks lifting layers (image in, group
feature map out), group layers, and invariant models (``T'_u`` = identity).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor

from g_selfatt.groups import Group

Transform = Callable[[Tensor, int], Tensor]

# The largest relative error accepted for exact (grid) transforms, per dtype.
TOLERANCES: Dict[torch.dtype, float] = {torch.float32: 1e-5, torch.float64: 1e-10}


def identity_transform(x: Tensor, index: int) -> Tensor:
    """``T_u x = x``: the output of an invariant map."""
    return x


def transforms_for(group: Group, kind: str) -> Transform:
    """The action of ``group`` on a signal of the given kind.

    Args:
        group: the group.
        kind: ``"image"`` (``(..., H, W)``), ``"group"`` (``(..., G, H, W)``) or
            ``"invariant"`` (left unchanged).
    """
    table = {
        "image": group.transform_image,
        "group": group.transform_feature_map,
        "invariant": identity_transform,
    }
    if kind not in table:
        raise ValueError(f"Unknown signal kind {kind!r}; expected one of {sorted(table)}.")
    return table[kind]


@torch.no_grad()
def equivariance_errors(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    transform_in: Transform,
    transform_out: Transform,
    elements: Iterable[int],
) -> Dict[int, float]:
    """Relative equivariance error of ``fn`` for each element index in ``elements``."""
    reference = fn(x)
    scale = reference.abs().max().clamp_min(torch.finfo(reference.dtype).tiny)
    errors = {}
    for index in elements:
        transformed = fn(transform_in(x, index))
        expected = transform_out(reference, index)
        errors[index] = float((transformed - expected).abs().max() / scale)
    return errors


def assert_equivariant(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    group: Group,
    *,
    input_kind: str,
    output_kind: str,
    elements: Optional[Iterable[int]] = None,
    tolerance: Optional[float] = None,
    transform_in: Optional[Transform] = None,
    transform_out: Optional[Transform] = None,
) -> Dict[int, float]:
    """Asserts ``fn(T_u x) = T'_u fn(x)`` for the grid-exact elements of ``group``.

    Args:
        fn: the map to check (a module in eval mode, usually).
        x: a generic input (random, not constant along the group axis).
        group: the group whose elements act.
        input_kind, output_kind: ``"image"``, ``"group"`` or ``"invariant"``.
        elements: element indices to check; default all grid-exact ones.
        tolerance: largest relative error; default from :data:`TOLERANCES` by dtype.
        transform_in, transform_out: override the actions (for layers whose group
            axis follows another convention).

    Returns:
        The error of every checked element.
    """
    transform_in = transform_in or transforms_for(group, input_kind)
    transform_out = transform_out or transforms_for(group, output_kind)
    elements = list(group.grid_exact() if elements is None else elements)
    tolerance = TOLERANCES[x.dtype] if tolerance is None else tolerance
    errors = equivariance_errors(fn, x, transform_in, transform_out, elements)
    if not all(error <= tolerance for error in errors.values()):  # NaN fails too
        raise AssertionError(
            f"Not equivariant: relative errors above {tolerance:.1e} "
            f"(per element: { {k: f'{v:.2e}' for k, v in errors.items()} })."
        )
    return errors
