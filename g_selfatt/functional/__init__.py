"""Functional helpers: patch extraction and pooling."""

from g_selfatt.functional.encoding import extract_patches
from g_selfatt.functional.pooling import (
    average_pooling_rd,
    average_pooling_rd_on_G,
    max_pooling_group,
    max_pooling_rd,
    max_pooling_rd_on_G,
)

__all__ = [
    "average_pooling_rd",
    "average_pooling_rd_on_G",
    "extract_patches",
    "max_pooling_group",
    "max_pooling_rd",
    "max_pooling_rd_on_G",
]
