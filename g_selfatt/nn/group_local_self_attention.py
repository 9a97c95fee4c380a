"""The original module path of :class:`~g_selfatt.nn.attention.GroupLocalSelfAttention` (one implementation, in attention.py)."""

from g_selfatt.nn.attention import GroupLocalSelfAttention

__all__ = ["GroupLocalSelfAttention"]
