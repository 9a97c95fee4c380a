"""Builds the original group-module classes ``Rn``, ``H`` and ``G`` for one planar grid."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from attgconv.compat import original
from attgconv.grids import get_grid


def group_classes(grid_name: str, group_name: str, subgroup_name: str) -> Tuple[type, type, type]:
    """``(Rn, H, G)`` with the original's attributes; the actions are :class:`PlanarGrid`'s."""
    grid = get_grid(grid_name)
    mirrors = grid.num_rotations < len(grid)

    class Rn:
        name = "R^2"
        n = 2
        e = torch.tensor([0.0, 0.0])

    class H:
        name = subgroup_name
        n = 2 if mirrors else 1
        e = torch.tensor([0.0, 1.0]) if mirrors else torch.tensor([0.0])
        haar_meas = None

        @staticmethod
        def left_representation_on_Rn(h: Tensor, xx: Tensor) -> Tensor:
            """``xx(M_h^-1 .)`` on the last two axes."""
            return grid.group.transform_image(xx, original.element(grid, h))

        @staticmethod
        def left_representation_on_G(h: Tensor, fx: Tensor) -> Tensor:
            """A kernel on the group ``(O, C, G, k, k)`` transformed by ``h``: ``f(h^-1 g, M_h^-1 x)``."""
            return grid.transform_feature_map(fx, original.element(grid, h), group_dim=2)

        @staticmethod
        def absdet(h: Tensor) -> float:
            return 1.0

        class grid_global:  # noqa: N801  (the original's name)
            """The ``N`` elements of the group in the layout of the feature maps' group axis."""

            def __init__(self, N: int):  # noqa: N803
                self.args = {"N": N}
                self.N = N
                rotations = N // 2 if mirrors else N
                angles = np.linspace(0, 2 * math.pi - 2 * math.pi / rotations, rotations, dtype=np.float32)
                self.scale = [2 * math.pi / rotations]
                if mirrors:
                    signs = np.concatenate([np.ones(rotations, np.float32), -np.ones(rotations, np.float32)])
                    self.grid = torch.from_numpy(np.stack([np.concatenate([angles, angles]), signs], axis=1))
                else:
                    self.grid = torch.from_numpy(angles[:, None])
                H.haar_meas = (2 if mirrors else 1) * 2 * math.pi / rotations

    class G:
        name = group_name
        n = Rn.n + H.n
        e = torch.cat([Rn.e, H.e])

        @staticmethod
        def Rn_H() -> Tuple[type, type]:  # noqa: N802
            return Rn, H

    return Rn, H, G
