#!/usr/bin/env python
"""Measures the equivariance error of every self-attention layer kind on every group.

Usage::

    python tools/equivariance_report.py [--output report.md]

For each group, layer kind (lifting/group x global/local) and group-axis index
(``relative``, the default, and ``original``) a layer with random weights is
applied to a generic random input and to its transforms by every element that
maps the pixel grid onto itself; the table lists the largest relative error
``max |f(T_u x) - T'_u f(x)| / max |f(x)|`` in float32 and float64, and the
invariance error of a small GroupTransformer's logits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List

import torch

from g_selfatt.groups import GROUPS, get_group
from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention, LiftLocalSelfAttention, LiftSelfAttention
from g_selfatt.testing import equivariance_errors, transforms_for
from models import GroupTransformer

IMAGE_SIZE = 7
LAYERS = {
    "lift global": lambda group, index: LiftSelfAttention(group, 3, 6, 4, 2, IMAGE_SIZE, 0.0),
    "lift local": lambda group, index: LiftLocalSelfAttention(group, 3, 6, 4, 2, 5, 0.0),
    "group global": lambda group, index: GroupSelfAttention(group, 3, 6, 4, 2, IMAGE_SIZE, 0.0,
                                                            group_axis_index=index),
    "group local": lambda group, index: GroupLocalSelfAttention(group, 3, 6, 4, 2, 5, 0.0,
                                                                group_axis_index=index),
    "model (local)": lambda group, index: GroupTransformer(
        group=group, in_channels=3, num_channels=8, num_heads=2, block_sizes=[1, 1],
        expansion_per_block=1, crop_per_layer=0, normalize_between_layers=True,
        maxpool_after_last_block=False, image_size=8, patch_size=3, activation_function="Swish",
        attention_dropout_rate=0.0, value_dropout_rate=0.0, group_axis_index=index),
}
KINDS = {"lift global": ("image", "group"), "lift local": ("image", "group"),
         "group global": ("group", "group"), "group local": ("group", "group"),
         "model (local)": ("image", "invariant")}


def measure(layer_name: str, group_name: str, index: str, dtype: torch.dtype, seed: int = 0) -> float:
    """Largest relative error over the grid-exact elements of the group."""
    torch.manual_seed(seed)
    group = get_group(group_name)
    module = LAYERS[layer_name](group, index).to(dtype).eval()
    input_kind, output_kind = KINDS[layer_name]
    size = 8 if layer_name.startswith("model") else IMAGE_SIZE
    shape = (1, 3) + (() if input_kind == "image" else (group.num_elements,)) + (size, size)
    x = torch.randn(shape, dtype=dtype)
    errors = equivariance_errors(module, x, transforms_for(group, input_kind), transforms_for(group, output_kind),
                                 group.grid_exact())
    return max(errors.values())


def report_rows() -> List[Dict[str, str]]:
    rows = []
    for group_name in GROUPS:
        for layer_name in LAYERS:
            indices = ["relative"] if layer_name.startswith("lift") else ["relative", "original"]
            for index in indices:
                rows.append({
                    "group": group_name, "layer": layer_name, "group_axis_index": index,
                    "float32": f"{measure(layer_name, group_name, index, torch.float32):.1e}",
                    "float64": f"{measure(layer_name, group_name, index, torch.float64):.1e}",
                })
    return rows


def markdown(rows: List[Dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key] for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = markdown(report_rows())
    print(table, end="")
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
