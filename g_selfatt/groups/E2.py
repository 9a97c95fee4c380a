"""The original module path of :class:`~g_selfatt.groups.planar.E2` (defined in planar.py)."""

from g_selfatt.groups.group import Group
from g_selfatt.groups.planar import E2

__all__ = ["E2", "Group"]
