"""The original module path of :class:`~g_selfatt.compat.rd_self_attention.RdSelfAttention`."""

from g_selfatt.compat.rd_self_attention import RdSelfAttention  # noqa: F401
