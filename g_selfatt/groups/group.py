"""Finite groups acting on the plane, as used by group self-attention.

A group ``G`` here is a finite subgroup of O(2): every element ``h`` acts on a
planar offset ``d = (row, col)`` by an orthogonal 2x2 matrix ``M_h``. Feature
maps on the group are tensors of shape ``(B, C, G, H, W)``. Group self-attention
evaluates its positional encoding at ``M_g (j - i)`` for the output element ``g``
(as the original implementation does), so its feature maps transform under the
right-regular representation; the group convolutions of :mod:`attgconv` transform
their kernels by ``h^-1 g``, so theirs transform under the left-regular one. Both are
actions of one group, named by :data:`ACTIONS` and passed to
:meth:`Group.transform_feature_map`:

    "right":  [u . f](g, x) = f(g u, M_u^-1 x)        (GSA-Nets)
    "left":   [u . f](g, x) = f(u^-1 g, M_u^-1 x)     (attentive G-CNNs)

where ``x`` is the pixel position relative to the image centre. Each is a
representation: ``u1 . (u2 . f) = (u1 u2) . f``. Images transform by
``x -> x(M_u^-1 .)`` (:meth:`Group.transform_image`) under both. A feature map may lay
its elements out along the group axis in another order than the group's own
(``axis_order``, as :class:`attgconv.grids.PlanarGrid` does for p4m). Only elements
whose matrix maps the pixel grid onto itself (rotations by multiples of 90
degrees and mirrors) act exactly on sampled images; :meth:`Group.grid_exact`
says which.

The public attributes and methods (``elements``, ``identity``, ``num_elements``,
``relative_positions``, ``left_action_on_Rd``, ``left_action_on_H``,
``left_action_on_G``, ``matrix_form``, ``absolute_determinant``) and the
buffers (``_identity``, ``_elements``, ``_relative_positions``) follow the
original implementation, so its checkpoints load unchanged.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

# The two actions of a group on feature maps (module docstring).
ACTIONS = ("right", "left")
_TOLERANCE = 1e-9


def rotation_matrix(angle: float) -> Tensor:
    """Returns the float64 matrix of a rotation by ``angle`` radians.

    Entries within 1e-12 of 0 or +-1 are snapped to those values, so that the
    rotations by multiples of 90 degrees are exact.
    """
    matrix = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )
    snapped = matrix.round()
    return torch.where((matrix - snapped).abs() < 1e-12, snapped, matrix)


def fractional_rotation_matrix(steps: int, num_rotations: int) -> Tensor:
    """Returns the float64 matrix of a rotation by ``2 pi steps / num_rotations``.

    The angle is split into whole quarter turns and a rest ``phi`` in [0, 90) degrees;
    only ``cos(phi)`` and ``sin(phi)`` are rounded, and the quarter turns permute and
    negate them exactly. So the matrices of two angles that differ by a multiple of
    90 degrees have the same entries up to order and sign, ``R(a + 90k) = R(90k) R(a)``
    holds bitwise, and the grid-exact rotations act identically on every coset of
    the group. At ``phi = 45`` degrees ``cos`` and ``sin`` are the same number, so
    offsets on the diagonals map to exact zeros.

    Args:
        steps: the number ``k`` of ``2 pi / n`` steps (any integer).
        num_rotations: ``n``.
    """
    quarters, rest = divmod((4 * steps) % (4 * num_rotations), num_rotations)  # angle = (quarters + rest/n) 90deg
    if 2 * rest == num_rotations:
        cos = sin = math.sqrt(0.5)
    else:
        phi = 0.5 * math.pi * rest / num_rotations
        cos, sin = math.cos(phi), math.sin(phi)
    # Rows of R(90 quarters) R(phi), written out so that no rounding happens.
    rows = {
        0: [[cos, -sin], [sin, cos]],
        1: [[-sin, -cos], [cos, -sin]],
        2: [[-cos, sin], [-sin, -cos]],
        3: [[sin, cos], [-cos, sin]],
    }[quarters]
    return torch.tensor(rows, dtype=torch.float64)


class Group(nn.Module):
    """Base class of the finite planar groups.

    Subclasses fill the buffers ``_identity``, ``_elements`` and
    ``_relative_positions`` and implement :meth:`element_matrix`,
    :meth:`left_action_on_H` and :meth:`discretize_group`. Everything else
    (Cayley table, inverses, the action on feature maps) is derived here from
    the element matrices.
    """

    def __init__(self):
        super().__init__()
        # Matrices and Cayley table, derived once from the integer structure.
        self._structure_cache: dict = {}

    # ----------------------------------------------------------------- basics
    @property
    def elements(self) -> Tensor:
        """The element parameters, one row per element (float64)."""
        return self._elements

    @property
    def num_elements(self) -> int:
        return len(self._elements)

    @property
    def relative_positions(self) -> Tensor:
        """The original's table of relative group indices, ``(G, G)``."""
        return self._relative_positions

    @property
    def identity(self) -> Tensor:
        return self._identity

    def check_element(self, element: Tensor) -> None:
        """Raises ``ValueError`` unless ``element`` is one of :attr:`elements`."""
        if not any(torch.equal(element.to(stored.dtype).reshape(stored.shape), stored)
                   for stored in self._elements if element.numel() == stored.numel()):
            raise ValueError(f"Unknown group element '{element}'.")

    def absolute_determinant(self, h: Tensor) -> float:
        """|det| of the Jacobian of ``h``'s action: 1 for rotations and mirrors."""
        return 1.0

    def discretize_group(self, num_elements: int) -> Tensor:
        raise NotImplementedError

    def construct_relative_positions(self) -> Tensor:
        """The original's table of relative group indices (defined by each group)."""
        raise NotImplementedError

    def element_matrix(self, h: Tensor) -> Tensor:
        """Returns the float64 orthogonal matrix ``M_h`` acting on ``(row, col)``."""
        raise NotImplementedError

    def left_action_on_H(self, h: Tensor, pp_h: Tensor) -> Tensor:
        raise NotImplementedError

    def is_identity(self, h: Tensor) -> bool:
        return bool(torch.all(h.to(self._identity.dtype) == self._identity))

    def left_action_on_Rd(self, h: Tensor, pp: Tensor) -> Tensor:
        """Acts with ``h`` on a tensor of planar coordinates.

        Args:
            h: a group element (a row of :attr:`elements`).
            pp: coordinates of shape ``(2, ...)``; ``pp[0]`` are rows, ``pp[1]`` columns.

        Returns:
            float32 tensor ``M_h pp`` of the same shape.
        """
        if self.is_identity(h):
            return pp
        matrix = self.element_matrix(h)
        return torch.einsum("oi,i...->o...", matrix, pp.to(torch.float64)).to(torch.float32)

    def left_action_on_G(self, h: Tensor, pp: Tensor, pp_h: Tensor) -> Tuple[Tensor, Tensor]:
        """Acts with ``h`` on planar coordinates and on group indices at once."""
        return self.left_action_on_Rd(h, pp), self.left_action_on_H(h, pp_h)

    # ------------------------------------------------------- derived structure
    def exact_element_matrix(self, index: int) -> Tensor:
        """The float64 matrix of element ``index``, computed from integers.

        Unlike :meth:`element_matrix`, it does not read the ``_elements`` buffer, which
        ``module.to(dtype)`` may have cast to a lower precision.
        """
        raise NotImplementedError

    def matrices(self) -> Tensor:
        """The matrices of all elements, ``(G, 2, 2)`` float64, in element order."""
        if "matrices" not in self._structure_cache:
            self._structure_cache["matrices"] = torch.stack(
                [self.exact_element_matrix(index) for index in range(self.num_elements)]
            )
        return self._structure_cache["matrices"]

    def index_of_matrix(self, matrix: Tensor) -> int:
        """Returns the index of the element whose matrix is ``matrix``."""
        distances = (self.matrices() - matrix.to(torch.float64)).abs().flatten(1).amax(1)
        index = int(distances.argmin())
        if distances[index] > 1e-6:
            raise ValueError("The matrix is not an element of this group.")
        return index

    def cayley_table(self) -> Tensor:
        """``table[a, b]`` is the index of the product ``a b``, ``(G, G)`` long."""
        if "cayley" not in self._structure_cache:
            mats = self.matrices()
            products = torch.einsum("aij,bjk->abik", mats, mats)
            # (A, B, G): distance of every product to every element.
            distances = (products.unsqueeze(2) - mats.view(1, 1, -1, 2, 2)).abs().flatten(3).amax(3)
            self._structure_cache["cayley"] = distances.argmin(dim=2)
        return self._structure_cache["cayley"]

    def inverse_indices(self) -> Tensor:
        """``inv[a]`` is the index of ``a^-1``, ``(G,)`` long."""
        identity = self.index_of_matrix(torch.eye(2, dtype=torch.float64))
        return (self.cayley_table() == identity).to(torch.int64).argmax(dim=1)

    def relative_index_table(self) -> Tensor:
        """``table[g, m]`` is the index of ``m g^-1``, ``(G, G)`` long.

        It is invariant under joint right multiplication, ``(m u) (g u)^-1 = m g^-1``,
        which is what makes group self-attention equivariant under the right-regular action
        (:meth:`transform_feature_map` with ``action="right"``). For rotations it is ``(m - g) mod n``.
        """
        return self.cayley_table()[:, self.inverse_indices()].t()

    def rotation_steps(self, index: int) -> int:
        """Number of 90-degree steps of element ``index``; raises if not a multiple."""
        matrix = self.matrices()[index]
        rotation = matrix @ torch.diag(torch.tensor([1.0, float(torch.det(matrix).sign())], dtype=torch.float64))
        angle = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
        steps = angle / (math.pi / 2)
        if abs(steps - round(steps)) > _TOLERANCE:
            raise ValueError(
                f"Element {index} rotates by {math.degrees(angle):.1f} degrees, which does not map "
                "the pixel grid onto itself; only multiples of 90 degrees act exactly."
            )
        return round(steps) % 4

    def is_mirror(self, index: int) -> bool:
        return bool(torch.det(self.matrices()[index]) < 0)

    def grid_exact(self) -> list:
        """Indices of the elements that act exactly on the pixel grid."""
        exact = []
        for index in range(self.num_elements):
            try:
                self.rotation_steps(index)
            except ValueError:
                continue
            exact.append(index)
        return exact

    # ------------------------------------------------------ action on signals
    def transform_image(self, x: Tensor, index: int) -> Tensor:
        """Returns ``x(M_u^-1 .)`` for an image ``(..., H, W)`` and a grid-exact element ``u``.

        A mirrored element ``M_u = R F`` first flips the columns (``F``), then rotates.
        """
        steps, mirrored = self._image_action(index)
        if mirrored:
            x = torch.flip(x, dims=[-1])
        return torch.rot90(x, steps, dims=(-2, -1))

    def _image_action(self, index: int) -> Tuple[int, bool]:
        """``(quarter turns, mirrored)`` of a grid-exact element, computed once."""
        actions = self._structure_cache.setdefault("image_actions", {})
        if index not in actions:
            actions[index] = (self.rotation_steps(index), self.is_mirror(index))
        return actions[index]

    def axis_permutation(self, index: int, action: str,
                         axis_order: Optional[Sequence[int]] = None) -> Tensor:
        """Where the action of element ``u`` reads the group axis: ``(G,)`` long.

        ``perm[p]`` is the axis position of ``g u`` (``action="right"``) or ``u^-1 g``
        (``"left"``), ``g`` being the element at position ``p``; ``axis_order[p]`` is the
        element at position ``p`` (default: the group's own order).
        """
        if action not in ACTIONS:
            raise ValueError(f"Unknown action {action!r}; expected one of {ACTIONS}.")
        order = torch.arange(self.num_elements) if axis_order is None else torch.as_tensor(list(axis_order))
        position = torch.empty_like(order)
        position[order] = torch.arange(self.num_elements)
        table = self.cayley_table()
        source = table[order, index] if action == "right" else table[self.inverse_indices()[index], order]
        return position[source]

    def transform_feature_map(self, x: Tensor, index: int, group_dim: int = -3, *, action: str,
                              axis_order: Optional[Sequence[int]] = None) -> Tensor:
        """Acts with a grid-exact element ``u`` on a group feature map ``(..., G, H, W)``.

        ``[u . f](g, x) = f(g u, M_u^-1 x)`` (``action="right"``) or ``f(u^-1 g, M_u^-1 x)``
        (``"left"``): the group axis is permuted (:meth:`axis_permutation`), the image part
        transformed as in :meth:`transform_image`.
        """
        permutation = self.axis_permutation(index, action, axis_order)
        x = torch.index_select(x, group_dim, permutation.to(x.device))
        return self.transform_image(x, index)
