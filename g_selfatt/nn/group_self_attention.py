"""The original module path of :class:`~g_selfatt.nn.attention.GroupSelfAttention` (one implementation, in attention.py)."""

from g_selfatt.nn.attention import GroupSelfAttention

__all__ = ["GroupSelfAttention"]
