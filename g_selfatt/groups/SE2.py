"""The original module path of :class:`~g_selfatt.groups.planar.SE2` (defined in planar.py)."""

from g_selfatt.groups.group import Group
from g_selfatt.groups.planar import SE2

__all__ = ["SE2", "Group"]
