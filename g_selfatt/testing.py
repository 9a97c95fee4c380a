"""Checking equivariance numerically.

One helper serves every test, notebook and report: it applies a module to an
input and to transformed copies of it and compares with the transformed output,

    error(u) = max |f(T_u x) - T'_u f(x)| / max |f(x)|.

The transforms come from :class:`g_selfatt.groups.Group` (or any callables with
the same signature), so the same helper checks lifting layers (image in, group
feature map out), group layers, and invariant models (``T'_u`` = identity).

:func:`rotation_errors` measures the same law for rotations by arbitrary angles,
which only interpolation can apply to a pixel grid, so it is never exact there.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor

from g_selfatt.functional.rotation import disc_mask, rotate_images
from g_selfatt.groups import Group
from g_selfatt.nn.attention import FEATURE_MAP_ACTION

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
        kind: ``"image"`` (``(..., H, W)``), ``"group"`` (``(..., G, H, W)``, a feature map of the
            self-attention layers: the right-regular action, :data:`FEATURE_MAP_ACTION`) or
            ``"invariant"`` (left unchanged). Attentive G-CNN feature maps take their grid's
            :meth:`attgconv.grids.PlanarGrid.transform_feature_map` (the left-regular action).
    """
    table = {
        "image": group.transform_image,
        "group": functools.partial(group.transform_feature_map, action=FEATURE_MAP_ACTION),
        "invariant": identity_transform,
    }
    if kind not in table:
        raise ValueError(f"Unknown signal kind {kind!r}; expected one of {sorted(table)}.")
    return table[kind]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|``, the error measure of exact transforms."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return float((actual - expected).abs().max() / scale)


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
    return {index: relative_error(fn(transform_in(x, index)), transform_out(reference, index))
            for index in elements}


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


def _as_image(t: Tensor, kind: str) -> Tensor:
    """An output as ``(B, C, H, W)`` images: group feature maps averaged over the group axis."""
    if kind == "group":
        return t.mean(dim=-3)  # (B, C, H, W)
    if kind == "image":
        return t
    raise ValueError(f"Unknown output kind {kind!r}; expected 'image', 'group' or 'invariant'.")


@torch.no_grad()
def rotation_errors(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    angles_deg: Iterable[float],
    *,
    output_kind: str,
    margin: float = 1.0,
) -> Dict[float, float]:
    """Relative equivariance error of ``fn`` under rotations by arbitrary angles.

    The input image is rotated with :func:`~g_selfatt.functional.rotation.rotate_images`
    (bilinear; exact for multiples of 90 degrees). Outputs are compared as

    * ``"invariant"``: ``fn(R x)`` against ``fn(x)``;
    * ``"image"``: ``fn(R x)`` against ``R fn(x)``, on the pixels of the inscribed disc
      shrunk by ``margin`` (the corners have no rotated counterpart);
    * ``"group"``: the same after averaging over the group axis. Any group element acts on
      that axis by a permutation, which the average removes, so the comparison is defined
      for every angle, whether or not the rotation is an element of the group.

    The error is the root-mean-square difference divided by the root-mean-square of the
    expected output (over the compared entries), ``||a - b|| / ||b||``, which interpolation
    noise affects less than a maximum would. Use an input that interpolates well, e.g.
    :func:`~g_selfatt.functional.rotation.smooth_disc_images`.

    Args:
        fn: the map, from images ``(B, C, H, W)``.
        x: the input images.
        angles_deg: the angles to measure.
        output_kind: ``"invariant"``, ``"image"`` or ``"group"``.
        margin: pixels removed from the disc's radius.

    Returns:
        The error for every angle.
    """
    reference = fn(x)
    errors = {}
    for angle in angles_deg:
        out = fn(rotate_images(x, angle))
        if output_kind == "invariant":
            actual, expected = out, reference
        else:
            actual = _as_image(out, output_kind)
            expected = rotate_images(_as_image(reference, output_kind), angle)
            inside = disc_mask(*actual.shape[-2:], margin=margin, device=actual.device)
            actual, expected = actual[..., inside], expected[..., inside]
        errors[float(angle)] = float((actual - expected).norm() / expected.norm().clamp_min(1e-30))
    return errors
