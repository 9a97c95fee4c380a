"""Group equivariant stand-alone self-attention for vision (GSA-Nets)."""

from g_selfatt import functional, groups, nn

__version__ = "0.1.0"

__all__ = ["functional", "groups", "nn"]
