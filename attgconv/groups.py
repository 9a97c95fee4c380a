"""The groups p4 and p4m as they index the group axis of attentive G-CNN feature maps.

The group structure (element matrices, Cayley table, action on images) comes
from :mod:`g_selfatt.groups`; this module only fixes the *order* in which the
elements are laid out along the group axis of a feature map ``(B, C, G, H, W)``:

* ``p4`` (``SE2(4)``): the rotations by 0, 90, 180 and 270 degrees.
* ``p4m`` (``E2(8)``): the four rotations ``R^k``, then the four mirrored elements
  ``F R^k`` (rotate by ``k`` quarter turns, then flip the rows), ``k = 0..3``.

This is the order of the original attentive G-CNN code, so its weights (whose
input-group axis uses it) and its feature maps carry over unchanged.

Feature maps of all attgconv layers transform under the left-regular action

    [u . f](g, x) = f(u^-1 g, M_u^-1 x),

which :meth:`PlanarGrid.transform_feature_map` implements; images transform by
``x -> x(M_u^-1 .)`` (:meth:`g_selfatt.groups.Group.transform_image`).
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
    """A finite planar group with the element order of a feature map's group axis.

    Args:
        name: ``"p4"`` or ``"p4m"``.

    Attributes:
        name: the group's CLI name.
        group: the :class:`g_selfatt.groups.Group` (``SE2(4)`` or ``E2(8)``).
        elements: for each position on the group axis, the index of its element in ``group``.
    """

    NAMES = ("p4", "p4m")

    def __init__(self, name: str):
        if name not in self.NAMES:
            raise ValueError(f"Unknown group {name!r} for attentive G-CNNs; expected one of {self.NAMES}.")
        self.name = name
        self.group: Group = get_group(name)
        self.elements: List[int] = self._axis_elements()
        position = {element: axis for axis, element in enumerate(self.elements)}
        table = self.group.cayley_table()
        # product[a, b] = axis position of (element a)(element b).
        self.product = torch.tensor(
            [[position[int(table[ea, eb])] for eb in self.elements] for ea in self.elements]
        )
        self.inverse = torch.tensor(
            [int((self.product[a] == 0).nonzero()) for a in range(len(self.elements))]
        )
        # (quarter turns, mirrored) of each position, as Group.transform_image derives them.
        self._image_actions = [(self.group.rotation_steps(e), self.group.is_mirror(e)) for e in self.elements]

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
        """``perm[h, g] = `` axis position of ``h^-1 g``, ``(G, G)`` long.

        A kernel on the group transformed by ``h`` reads its input-group axis at
        ``perm[h]``: ``[h . w](g) = w(h^-1 g)``.
        """
        return self.product[self.inverse]

    def cyclic_permutations(self) -> Tensor:
        """``perm[h, g] = (g - h) mod G``: a cyclic shift by the axis position of ``h``.

        Equal to :meth:`left_permutations` for p4; for p4m it is not a group action.
        """
        positions = torch.arange(len(self))
        return (positions.view(1, -1) - positions.view(-1, 1)) % len(self)

    def transform_image(self, x: Tensor, position: int) -> Tensor:
        """``x(M_h^-1 .)`` for the element at axis ``position``; ``x`` is ``(..., H, W)``.

        The same action as :meth:`g_selfatt.groups.Group.transform_image` (a mirror flips the
        columns, then the rotation turns), with the element's parameters looked up once.
        """
        steps, mirrored = self._image_actions[position]
        if mirrored:
            x = torch.flip(x, dims=[-1])
        return torch.rot90(x, steps, dims=(-2, -1))

    def transform_feature_map(self, x: Tensor, element: int, group_dim: int = -3) -> Tensor:
        """``[u . f](g, x) = f(u^-1 g, M_u^-1 x)`` for ``f`` of shape ``(..., G, H, W)``.

        Args:
            x: the feature map.
            element: index of ``u`` in :attr:`group` (as :func:`g_selfatt.testing.assert_equivariant`
                passes it).
            group_dim: the group axis of ``x``.
        """
        u = self.elements.index(element)
        permutation = self.product[self.inverse[u]]  # g -> u^-1 g
        x = torch.index_select(x, group_dim, permutation.to(x.device))
        return self.group.transform_image(x, element)


_GRIDS: Dict[str, PlanarGrid] = {}


def get_grid(name: str) -> PlanarGrid:
    """The (shared, immutable) grid of ``"p4"`` or ``"p4m"``."""
    if name not in _GRIDS:
        _GRIDS[name] = PlanarGrid(name)
    return _GRIDS[name]
