"""Functional helpers: patch extraction, pooling and interpolated rotation."""

from g_selfatt.functional.encoding import extract_patches
from g_selfatt.functional.pooling import (
    average_pooling_rd,
    average_pooling_rd_on_G,
    max_pooling_group,
    max_pooling_rd,
    max_pooling_rd_on_G,
)
from g_selfatt.functional.rotation import disc_mask, quarter_turns, rotate_images, smooth_disc_images

__all__ = [
    "average_pooling_rd",
    "average_pooling_rd_on_G",
    "disc_mask",
    "extract_patches",
    "max_pooling_group",
    "max_pooling_rd",
    "max_pooling_rd_on_G",
    "quarter_turns",
    "rotate_images",
    "smooth_disc_images",
]
