"""The original module path of :class:`~g_selfatt.nn.attention.LiftLocalSelfAttention` (one implementation, in attention.py)."""

from g_selfatt.nn.attention import LiftLocalSelfAttention

__all__ = ["LiftLocalSelfAttention"]
