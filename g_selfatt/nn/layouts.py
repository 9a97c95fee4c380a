"""Memory layouts of the attention projections, shared by the attention implementations.

The projections come as ``(B, C, N, G, H, W)`` (channels, heads, group elements, pixels).
"""

from __future__ import annotations

from torch import Tensor


def pixel_major(t: Tensor) -> Tensor:
    """``(B, C, N, G, H, W)`` -> ``(B N, H W, G, C)``: the channels of one pixel and element together."""
    batch, channels, heads, elements, height, width = t.shape
    t = t.permute(0, 2, 4, 5, 3, 1)  # (B, N, H, W, G, C)
    return t.reshape(batch * heads, height * width, elements, channels).contiguous()


def channel_major(t: Tensor) -> Tensor:
    """``(B, C, N, G, H, W)`` -> ``(B N, C, H W, G)``: the pixels of one channel together."""
    batch, channels, heads, elements, height, width = t.shape
    t = t.permute(0, 2, 1, 4, 5, 3)  # (B, N, C, H, W, G)
    return t.reshape(batch * heads, channels, height * width, elements).contiguous()


def from_pixel_major(out: Tensor, batch: int, heads: int, height: int, width: int) -> Tensor:
    """An attention output ``(B N, H W, V, C)`` -> ``(B, C, N, V, H, W)`` (a view)."""
    out = out.view(batch, heads, height, width, out.shape[2], out.shape[3])  # (B, N, H, W, V, C)
    return out.permute(0, 5, 1, 4, 2, 3)
