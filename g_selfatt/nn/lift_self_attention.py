"""The original module path of :class:`~g_selfatt.nn.attention.LiftSelfAttention` (one implementation, in attention.py)."""

from g_selfatt.nn.attention import LiftSelfAttention

__all__ = ["LiftSelfAttention"]
