"""The discrete rotation groups ``SE2(n)`` (C_n) and roto-reflection groups ``E2(2n)`` (D_n)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from g_selfatt.groups.group import Group, fractional_rotation_matrix, rotation_matrix


def _check_num_elements(num_elements: int, multiple: int, name: str) -> None:
    if not isinstance(num_elements, int) or num_elements < multiple or num_elements % multiple:
        raise ValueError(
            f"{name} needs a positive number of elements that is a multiple of {multiple}, "
            f"got {num_elements!r}."
        )


def _rotation_angles(num_rotations: int) -> np.ndarray:
    """The angles ``2 pi k / n``, k = 0..n-1, in float64."""
    return np.linspace(0, 2 * math.pi * (num_rotations - 1) / num_rotations, num_rotations)


def _steps(angle: float, num_rotations: int) -> int:
    """The number of ``2 pi / n`` steps in ``angle``, rounded."""
    return int(round(angle / (2 * math.pi / num_rotations)))


class SE2(Group):
    """The cyclic group C_n of rotations by ``2 pi k / n`` (``z2`` = C_1, ``p4`` = C_4, ...).

    Element ``k`` is stored as its angle; its matrix is the rotation ``R_angle``
    acting on ``(row, col)`` offsets.

    Args:
        num_elements: the order ``n`` of the group.
    """

    def __init__(self, num_elements: int):
        super().__init__()
        _check_num_elements(num_elements, 1, "SE2")
        self.register_buffer("_identity", torch.zeros(1, dtype=torch.float32))
        self.register_buffer("_elements", self.discretize_group(num_elements))
        self.register_buffer("_relative_positions", self.construct_relative_positions())

    def discretize_group(self, num_elements: int) -> Tensor:
        """The angles of the ``num_elements`` rotations, ``(G, 1)`` float64."""
        return torch.from_numpy(_rotation_angles(num_elements)).view(-1, 1)

    def matrix_form(self, h: Tensor) -> Tensor:
        """The rotation matrix of element ``h`` (an angle)."""
        return rotation_matrix(float(h.reshape(-1)[0])).to(torch.float32)

    def element_matrix(self, h: Tensor) -> Tensor:
        return rotation_matrix(float(h.reshape(-1)[0]))

    def exact_element_matrix(self, index: int) -> Tensor:
        return fractional_rotation_matrix(index, self.num_elements)

    def left_action_on_H(self, h: Tensor, pp_h: Tensor) -> Tensor:
        """The original's action on group indices: a cyclic shift of the last axis by ``-h``."""
        if self.is_identity(h):
            return pp_h
        return torch.roll(pp_h, shifts=-_steps(float(h.reshape(-1)[0]), self.num_elements), dims=-1)

    def construct_relative_positions(self) -> Tensor:
        """``table[g, m] = (m - g) mod n``, built as the original does."""
        indices = torch.arange(self.num_elements)
        return torch.stack([self.left_action_on_H(-h, indices) for h in self._elements])

    def extra_repr(self) -> str:
        return f"num_elements={self.num_elements}"


class E2(Group):
    """The dihedral group D_n of ``n`` rotations and ``n`` mirrors, ``num_elements = 2 n``.

    Element parameters are ``[angle, mirror]`` with ``mirror`` = +1 or -1: the first
    ``n`` elements are the rotations, the next ``n`` the same rotations preceded by
    a mirror of the column axis, ``M = R_angle F`` with ``F = diag(1, -1)``.
    ``mz2`` = E2(2), ``p4m`` = E2(8), ``p8m`` = E2(16).

    Args:
        num_elements: the order ``2 n`` of the group.
    """

    def __init__(self, num_elements: int):
        super().__init__()
        _check_num_elements(num_elements, 2, "E2")
        self.register_buffer("_identity", torch.tensor([0.0, 1.0], dtype=torch.float32))
        self.register_buffer("_elements", self.discretize_group(num_elements))
        self.register_buffer("_relative_positions", self.construct_relative_positions())

    @property
    def num_rotations(self) -> int:
        return self.num_elements // 2

    def discretize_group(self, num_elements: int) -> Tensor:
        """``[angle, mirror]`` of the ``num_elements`` elements, ``(G, 2)`` float64."""
        angles = _rotation_angles(num_elements // 2)
        mirrors = np.repeat([1.0, -1.0], num_elements // 2)
        return torch.from_numpy(np.stack([np.concatenate([angles, angles]), mirrors], axis=1))

    def matrix_form(self, h: Tensor) -> Tensor:
        """The rotation matrix of an angle ``h`` (the rotation part of an element)."""
        return rotation_matrix(float(h.reshape(-1)[0])).to(torch.float32)

    def element_matrix(self, h: Tensor) -> Tensor:
        mirror = torch.diag(torch.tensor([1.0, float(h[1])], dtype=torch.float64))
        return rotation_matrix(float(h[0])) @ mirror

    def exact_element_matrix(self, index: int) -> Tensor:
        rotation, mirrored = index % self.num_rotations, index >= self.num_rotations
        mirror = torch.diag(torch.tensor([1.0, -1.0 if mirrored else 1.0], dtype=torch.float64))
        return fractional_rotation_matrix(rotation, self.num_rotations) @ mirror

    def left_action_on_Rd(self, h: Tensor, pp: Tensor) -> Tensor:
        """Rotates the coordinate values, then (for a mirror) flips the last axis of ``pp``.

        On the symmetric grids of relative offsets this equals ``M_h pp``.
        """
        if self.is_identity(h):
            return pp
        acted = torch.einsum("oi,i...->o...", rotation_matrix(float(h[0])), pp.to(torch.float64))
        if float(h[1]) == -1:
            acted = torch.flip(acted, dims=[-1])
        return acted.to(torch.float32)

    def left_action_on_H(self, h: Tensor, pp_h: Tensor) -> Tensor:
        """The original's action on group indices.

        The first axis of ``pp_h`` is split into the rotation half and the mirror half;
        the halves are cyclically shifted in opposite directions by the rotation of
        ``h`` and swapped if ``h`` is a mirror.
        """
        if self.is_identity(h):
            return pp_h
        halves = pp_h.clone().view(2, self.num_rotations, -1)  # (2, n, ...)
        shift = -_steps(float(h[0]), self.num_rotations)
        if shift:
            halves = torch.stack(
                [torch.roll(halves[0], shift, dims=0), torch.roll(halves[1], -shift, dims=0)]
            )
        if float(h[1]) == -1:
            halves = torch.roll(halves, shifts=1, dims=0)
        return halves.reshape(pp_h.shape)

    def construct_relative_positions(self) -> Tensor:
        """The original's relative-position table, ``(G, G)`` long."""
        indices = torch.arange(self.num_elements)
        return torch.stack(
            [self.left_action_on_H(torch.stack([-h[0], h[1]]), indices) for h in self._elements]
        )

    def extra_repr(self) -> str:
        return f"num_elements={self.num_elements}"
