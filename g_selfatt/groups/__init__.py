"""Finite planar groups and the table of their command-line names.

=========  ===========  ==========================================
CLI name   group        construction
=========  ===========  ==========================================
``z2``     C_1          ``SE2(1)``: translations only
``p4``     C_4          ``SE2(4)``: rotations by 90 degrees
``p8``     C_8          ``SE2(8)``
``p12``    C_12         ``SE2(12)``
``p16``    C_16         ``SE2(16)``
``mz2``    D_1          ``E2(2)``: one mirror
``p4m``    D_4          ``E2(8)``: rotations by 90 degrees and mirrors
``p8m``    D_8          ``E2(16)``
=========  ===========  ==========================================
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

from g_selfatt.groups.group import ACTIONS, Group, fractional_rotation_matrix, rotation_matrix
# Through the original module paths g_selfatt.groups.E2 / .SE2, which bind the names to the classes.
from g_selfatt.groups.E2 import E2
from g_selfatt.groups.SE2 import SE2

GROUPS: Dict[str, Tuple[Callable[[int], Group], int]] = {
    "z2": (SE2, 1),
    "p4": (SE2, 4),
    "p8": (SE2, 8),
    "p12": (SE2, 12),
    "p16": (SE2, 16),
    "mz2": (E2, 2),
    "p4m": (E2, 8),
    "p8m": (E2, 16),
}


def cyclic_group(n: int) -> SE2:
    """The group C_n of ``n`` rotations."""
    return SE2(num_elements=n)


def dihedral_group(n: int) -> E2:
    """The group D_n of ``n`` rotations and ``n`` mirrors (order ``2 n``)."""
    return E2(num_elements=2 * n)


def get_group(name: str) -> Group:
    """Builds the group of a command-line name such as ``"p4"`` or ``"p4m"``.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in GROUPS:
        raise ValueError(f"Unknown group {name!r}; expected one of {sorted(GROUPS)}.")
    constructor, num_elements = GROUPS[name]
    return constructor(num_elements=num_elements)


__all__ = [
    "ACTIONS",
    "E2",
    "GROUPS",
    "Group",
    "SE2",
    "cyclic_group",
    "dihedral_group",
    "fractional_rotation_matrix",
    "get_group",
    "rotation_matrix",
]
