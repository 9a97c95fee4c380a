"""Shared pieces of the original attgconv API (:mod:`attgconv.group`, :mod:`attgconv.layers`,
:mod:`attgconv.attention_layers`, :mod:`attgconv.RomHog_attention`, all in :mod:`attgconv.compat`).

The original described a group by a module (``attgconv.group.SE2`` or ``.E2``) and a sampling of
it by a grid object (``H.grid_global(N)``); here both stand for a :class:`~attgconv.grids.PlanarGrid`.
Each original class is a thin subclass of this project's layer: its constructor takes the original
arguments (and defaults: padding 1), sets the original's attributes, and the computation, the
parameters and their names are the layer's own.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Optional

import torch
from torch import Tensor

from attgconv.grids import PlanarGrid, get_grid

# Original group name (G.name) and grid size -> the CLI name of the group.
GROUPS = {("SE(2)", 4): "p4", ("E(2)", 8): "p4m"}
_BY_SIZE = {4: "p4", 8: "p4m"}


def group_module(group: Any) -> Any:
    """The original group module of ``group``: the module itself, or its name ``"SE2"`` / ``"E2"``."""
    if not isinstance(group, str):
        return group
    if group not in ("SE2", "E2"):
        raise ValueError(f"Unknown group {group!r}; expected 'SE2' or 'E2'.")
    return importlib.import_module(f"attgconv.group.{group}")


def grid_size(h_grid: Any) -> int:
    """The number of elements of an original grid object (or of a plain size)."""
    return int(h_grid) if isinstance(h_grid, int) else int(h_grid.grid.shape[0])


def planar_grid(group: Any, h_grid: Any) -> PlanarGrid:
    """The :class:`PlanarGrid` of an original group module and grid (``None``: by the grid's size).

    Raises:
        ValueError: a group or size other than SE2 with 4 or E2 with 8 elements (p4, p4m).
    """
    size = grid_size(h_grid)
    if group is None:
        if size not in _BY_SIZE:
            raise ValueError(f"Unsupported group size {size}; expected 4 (p4) or 8 (p4m).")
        return get_grid(_BY_SIZE[size])
    key = (group_module(group).G.name, size)
    if key not in GROUPS:
        raise ValueError(f"Unsupported group {key[0]!r} with {size} elements; the layers act exactly only for "
                         "p4 and p4m (SE2 with 4, E2 with 8 elements).")
    return get_grid(GROUPS[key])


def element(grid: PlanarGrid, h: Tensor) -> int:
    """The element index (in ``grid.group``) of an original element: an angle, or (angle, mirror) for E2."""
    values = torch.as_tensor(h).reshape(-1)
    steps = int(round(float(values[0]) / (math.pi / 2))) % grid.num_rotations
    mirrored = values.numel() > 1 and float(values[-1]) < 0
    return grid.elements[steps + (grid.num_rotations if mirrored else 0)]


def check_same_grid(h_grid: Any, input_h_grid: Optional[Any]) -> None:
    if input_h_grid is not None and grid_size(input_h_grid) != grid_size(h_grid):
        raise ValueError("Input and output grids of a group layer must agree (h_grid == input_h_grid).")


def check_dense(conv_groups: int, name: str = "conv_groups") -> None:
    if conv_groups != 1:
        raise ValueError(f"{name}={conv_groups!r} is not supported; only 1 (a dense convolution) is.")


def feature_spatial_arguments(group: Any, grid_like: Any, kernel_size: int, stride: int, dilation: int,
                              groups: int, wscale: float, in_channels: Optional[int]) -> dict:
    """The arguments of :class:`~attgconv.attention.FeatureSpatialAttention` (and its group version)
    from the original's fSpatialAttention arguments."""
    check_dense(groups, "groups")
    return dict(grid=planar_grid(group, grid_like), kernel_size=kernel_size, stride=stride,
                dilation=dilation, in_channels=in_channels, wscale=wscale)
