"""The layout of p4 and p4m along the group axis of attentive G-CNN feature maps.

The group itself, its structure and its actions are :class:`g_selfatt.groups.Group`'s (one
group abstraction for both families); a :class:`PlanarGrid` only fixes the *order* in which
the elements lie along the group axis of a feature map ``(B, C, G, H, W)``:

* ``p4`` (``SE2(4)``): the rotations by 0, 90, 180 and 270 degrees.
* ``p4m`` (``E2(8)``): the four rotations ``R^k``, then the four mirrored elements
  ``F R^k`` (rotate by ``k`` quarter turns, then flip the rows), ``k = 0..3``.

This is the order of the original attentive G-CNN code, so its weights (whose
input-group axis uses it) and its feature maps carry over unchanged.

Feature maps of all attgconv layers transform under the group's left-regular action
(``action="left"`` of :meth:`g_selfatt.groups.Group.transform_feature_map`),

    [u . f](g, x) = f(u^-1 g, M_u^-1 x),

and images by ``x -> x(M_u^-1 .)`` (:meth:`g_selfatt.groups.Group.transform_image`).
Elements are named by their index in the group everywhere; positions on the axis appear
only inside the permutation tables.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import Tensor

from g_selfatt.groups import Group, get_group

# Matrix (acting on (row, col) offsets) of the flip of the row axis.
_ROW_FLIP = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)


class PlanarGrid:
    """The element order of a feature map's group axis for p4 or p4m.

    Args:
        name: ``"p4"`` or ``"p4m"``.

    Attributes:
        name: the group's CLI name.
        group: the :class:`g_selfatt.groups.Group` (``SE2(4)`` or ``E2(8)``).
        elements: for each position on the group axis, the index of its element in ``group``.
    """

    NAMES = ("p4", "p4m")
    ACTION = "left"

    def __init__(self, name: str):
        if name not in self.NAMES:
            raise ValueError(f"Unknown group {name!r} for attentive G-CNNs; expected one of {self.NAMES}.")
        self.name = name
        self.group: Group = get_group(name)
        self.elements: List[int] = self._axis_elements()

    def _axis_elements(self) -> List[int]:
        rotations = [index for index in range(self.group.num_elements) if not self.group.is_mirror(index)]
        rotations.sort(key=self.group.rotation_steps)
        if len(rotations) == self.group.num_elements:
            return rotations
        row_flip = self.group.index_of_matrix(_ROW_FLIP)
        table = self.group.cayley_table()
        return rotations + [int(table[row_flip, rotation]) for rotation in rotations]

    def __len__(self) -> int:
        return len(self.elements)

    def __repr__(self) -> str:
        return f"PlanarGrid({self.name!r})"

    @property
    def num_rotations(self) -> int:
        return sum(not self.group.is_mirror(element) for element in self.elements)

    @property
    def haar_measure(self) -> float:
        """The integration weight of the original group convolutions: ``2 pi / 4`` per
        rotation, doubled for p4m (``pi / 2`` for p4, ``pi`` for p4m)."""
        mirror_states = len(self) // self.num_rotations
        return mirror_states * 2 * math.pi / self.num_rotations

    def left_permutations(self) -> Tensor:
        """``perm[p, q] = `` axis position of ``h^-1 g``, ``h`` and ``g`` at positions ``p`` and ``q``.

        ``(G, G)`` long. A kernel on the group transformed by ``h`` reads its input-group axis
        at ``perm[p]``: ``[h . w](g) = w(h^-1 g)``.
        """
        return torch.stack([self.group.axis_permutation(h, self.ACTION, self.elements) for h in self.elements])

    def cyclic_permutations(self) -> Tensor:
        """``perm[h, g] = (g - h) mod G``: a cyclic shift by the axis position of ``h``.

        Equal to :meth:`left_permutations` for p4; for p4m it is not a group action.
        """
        positions = torch.arange(len(self))
        return (positions.view(1, -1) - positions.view(-1, 1)) % len(self)

    def transform_feature_map(self, x: Tensor, element: int, group_dim: int = -3) -> Tensor:
        """``[u . f](g, x) = f(u^-1 g, M_u^-1 x)`` for ``f`` of shape ``(..., G, H, W)`` in this layout.

        Args:
            x: the feature map.
            element: index of ``u`` in :attr:`group` (as :func:`g_selfatt.testing.assert_equivariant`
                passes it).
            group_dim: the group axis of ``x``.
        """
        return self.group.transform_feature_map(x, element, group_dim, action=self.ACTION, axis_order=self.elements)


_GRIDS: Dict[str, PlanarGrid] = {}


def get_grid(name: str) -> PlanarGrid:
    """The (shared, immutable) grid of ``"p4"`` or ``"p4m"``."""
    if name not in _GRIDS:
        _GRIDS[name] = PlanarGrid(name)
    return _GRIDS[name]
