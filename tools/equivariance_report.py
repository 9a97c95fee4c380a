#!/usr/bin/env python
"""Measures the equivariance error of every self-attention layer kind on every group.

Usage::

    python tools/equivariance_report.py [--groups p4 p8 ...] [--angle-step 15] [--output-dir DIR]

Two measurements, each for every layer kind (lifting and group layers, global and
local, and a small GroupTransformer), every group and both group-axis indices
(``relative``, the default, and ``original``; lifting layers have no group axis):

* **Exact transforms.** A layer with random weights (the GSA-Net initialisation) is
  applied to a generic random input and to its transforms by every element that maps
  the pixel grid onto itself; the table lists the largest relative error
  ``max |f(T_u x) - T'_u f(x)| / max |f(x)|`` in float32 and float64
  (:func:`g_selfatt.testing.equivariance_errors`).
* **Rotations by any angle.** A smooth random image inside the inscribed disc is rotated
  with bilinear interpolation by every multiple of ``--angle-step`` degrees, and
  ``f(R x)`` is compared with ``R f(x)`` after averaging over the group axis (float64;
  :func:`g_selfatt.testing.rotation_errors`). Group layers get the output of a lifting
  layer of the same group as input, so the curves are those of lifting + group layer.
  Off multiples of 90 degrees no layer is exact: the input is interpolated and the
  rotated image is sampled on a grid that is not the rotated grid.

Writes (with ``--output-dir``) ``equivariance_report.md`` (both tables),
``equivariance_angles.csv`` (every curve) and ``equivariance_angles.png`` (the curves,
one panel per layer kind); prints the Markdown.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from g_selfatt import visualize
from g_selfatt.functional import smooth_disc_images
from g_selfatt.groups import GROUPS, Group, get_group
from g_selfatt.nn import (GroupLocalSelfAttention, GroupSelfAttention, LiftLocalSelfAttention, LiftSelfAttention,
                          whitening_init_)
from g_selfatt.testing import equivariance_errors, rotation_errors, transforms_for
from g_selfatt_models import GroupTransformer

EXACT_SIZE = 7  # side of the random inputs of the exact check
MODEL_SIZE = 8  # the model pools once, which commutes with rotations only on even sides
ANGLE_SIZE = 12  # side of the smooth images of the angle sweep
INDICES = ("relative", "original")

Builder = Callable[[Group, str, int], nn.Module]


def _lifting(local: bool) -> Builder:
    def build(group: Group, index: str, size: int) -> nn.Module:
        if local:
            return LiftLocalSelfAttention(group, 1, 6, 6, 2, 5, 0.0)
        return LiftSelfAttention(group, 1, 6, 6, 2, size, 0.0)
    return build


def _group_layer(local: bool) -> Builder:
    def build(group: Group, index: str, size: int) -> nn.Module:
        if local:
            return GroupLocalSelfAttention(group, 6, 6, 6, 2, 5, 0.0, group_axis_index=index)
        return GroupSelfAttention(group, 6, 6, 6, 2, size, 0.0, group_axis_index=index)
    return build


def _model(group: Group, index: str, size: int) -> nn.Module:
    return GroupTransformer(
        group=group, in_channels=1, num_channels=8, num_heads=2, block_sizes=[1, 1], expansion_per_block=1,
        crop_per_layer=0, normalize_between_layers=True, maxpool_after_last_block=False, image_size=size,
        patch_size=3, activation_function="Swish", attention_dropout_rate=0.0, value_dropout_rate=0.0,
        group_axis_index=index)


# Layer kind -> (builder, input kind, output kind, has a group axis index).
KINDS: Dict[str, Tuple[Builder, str, str, bool]] = {
    "lift global": (_lifting(local=False), "image", "group", False),
    "lift local": (_lifting(local=True), "image", "group", False),
    "group global": (_group_layer(local=False), "group", "group", True),
    "group local": (_group_layer(local=True), "group", "group", True),
    "model (local)": (_model, "image", "invariant", True),
}


def build(kind: str, group: Group, index: str, size: int, seed: int = 0) -> nn.Module:
    """A module of ``kind`` with the GSA-Net initialisation, in eval mode."""
    torch.manual_seed(seed)
    return whitening_init_(KINDS[kind][0](group, index, size)).eval()


def indices_of(kind: str, group_name: str) -> Sequence[str]:
    """The group-axis indices that apply to ``kind`` (on z2, with one element, both are the same)."""
    return INDICES if KINDS[kind][3] and group_name != "z2" else INDICES[:1]


def exact_error(kind: str, group_name: str, index: str, dtype: torch.dtype, seed: int = 0) -> float:
    """Largest relative error over the grid-exact elements, on a generic random input."""
    group = get_group(group_name)
    _, input_kind, output_kind, _ = KINDS[kind]
    size = MODEL_SIZE if kind.startswith("model") else EXACT_SIZE
    module = build(kind, group, index, size, seed).to(dtype)
    channels = 1 if input_kind == "image" else 6
    shape = (1, channels) + (() if input_kind == "image" else (group.num_elements,)) + (size, size)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    errors = equivariance_errors(module, x, transforms_for(group, input_kind), transforms_for(group, output_kind),
                                 group.grid_exact())
    return max(errors.values())


def angle_curve(kind: str, group_name: str, index: str, angles: Sequence[float], seed: int = 0) -> Dict[float, float]:
    """Relative error against the rotation angle (float64), for images rotated with interpolation."""
    group = get_group(group_name)
    _, input_kind, output_kind, _ = KINDS[kind]
    module = build(kind, group, index, ANGLE_SIZE, seed).double()
    if input_kind == "group":
        module = nn.Sequential(build("lift local" if "local" in kind else "lift global", group, index, ANGLE_SIZE,
                                     seed + 1).double(), nn.ReLU(), module)
    x = smooth_disc_images((1, 1, ANGLE_SIZE, ANGLE_SIZE), sigma=1.5,
                           generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return rotation_errors(module, x, angles, output_kind=output_kind, margin=2)


def exact_rows(groups: Sequence[str]) -> List[Dict[str, str]]:
    rows = []
    for group_name in groups:
        for kind in KINDS:
            for index in indices_of(kind, group_name):
                rows.append({
                    "group": group_name, "layer": kind, "group_axis_index": index,
                    "float32": f"{exact_error(kind, group_name, index, torch.float32):.1e}",
                    "float64": f"{exact_error(kind, group_name, index, torch.float64):.1e}",
                })
    return rows


def angle_curves(groups: Sequence[str], angles: Sequence[float]) -> Dict[Tuple[str, str, str], Dict[float, float]]:
    """``{(layer kind, group, index): {angle: error}}``."""
    return {(kind, group_name, index): angle_curve(kind, group_name, index, angles)
            for kind in KINDS for group_name in groups for index in indices_of(kind, group_name)}


def _summary(curve: Dict[float, float]) -> Dict[str, str]:
    """The error at 45 degrees and the largest error on and off the multiples of 90 degrees."""
    on_grid = [error for angle, error in curve.items() if angle % 90 == 0]
    off_grid = [error for angle, error in curve.items() if angle % 90 != 0]
    return {"90-degree multiples": f"{max(on_grid):.1e}",
            "45 degrees": f"{curve[45.0]:.1e}" if 45.0 in curve else "-",
            "largest off the 90-degree grid": f"{max(off_grid):.1e}" if off_grid else "-"}


def markdown(rows: List[Dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[key] for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(curves: Dict[Tuple[str, str, str], Dict[float, float]], path: pathlib.Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "group", "group_axis_index", "angle_deg", "relative_error"])
        for (kind, group_name, index), curve in curves.items():
            writer.writerows([kind, group_name, index, angle, f"{error:.3e}"] for angle, error in curve.items())


def plot(curves: Dict[Tuple[str, str, str], Dict[float, float]], path: pathlib.Path) -> None:
    """One panel per layer kind: a line per group, dashed for the original group-axis index."""
    from matplotlib import pyplot as plt

    colors = {group_name: f"C{number}" for number, group_name in enumerate(GROUPS)}
    figure, axes = plt.subplots(2, 3, figsize=(17, 8.5))
    for ax, kind in zip(axes.ravel(), KINDS):
        panel, styles = {}, {}
        for (k, group_name, index), curve in curves.items():
            if k != kind:
                continue
            label = group_name if index == "relative" else f"{group_name} (original)"
            panel[label] = curve
            styles[label] = {"color": colors[group_name], "linestyle": "-" if index == "relative" else "--"}
        title = f"lift + {kind}" if KINDS[kind][1] == "group" else kind
        visualize.plot_error_vs_angle(panel, title=title, styles=styles, ax=ax, legend=False)
    key = axes.ravel()[-1]
    key.axis("off")
    handles = {line.get_label(): line for ax in axes.ravel()[:len(KINDS)] for line in ax.get_lines()}
    key.legend(handles.values(), handles.keys(), loc="center", ncol=2, fontsize=9,
               title="group (dashed: original group-axis index)")
    figure.suptitle("Equivariance error against the rotation of the input (float64; interpolated off 90 degrees)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def report(groups: Sequence[str], angle_step: float, output_dir: Optional[pathlib.Path] = None) -> str:
    """Runs both measurements; writes the files when ``output_dir`` is given; returns the Markdown."""
    angles = [float(angle_step * k) for k in range(int(360 // angle_step) + 1)]
    curves = angle_curves(groups, angles)
    summary = [{"group": g, "layer": k, "group_axis_index": i, **_summary(c)} for (k, g, i), c in curves.items()]
    text = ("## Exact transforms (largest relative error over the grid-exact elements)\n\n" + markdown(exact_rows(groups))
            + f"\n## Rotations by any angle (float64, every {angle_step:g} degrees; interpolated inputs)\n\n"
            + markdown(summary))
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "equivariance_report.md").write_text(text)
        write_csv(curves, output_dir / "equivariance_angles.csv")
        plot(curves, output_dir / "equivariance_angles.png")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS),
                        help="groups to measure (default: all)")
    parser.add_argument("--angle-step", type=float, default=15.0, help="degrees between the angles of the sweep")
    parser.add_argument("--output-dir", type=pathlib.Path, help="write the report, CSV and PNG here")
    args = parser.parse_args(argv)
    if args.angle_step <= 0 or 360 % args.angle_step:
        parser.error(f"--angle-step must divide 360, got {args.angle_step:g}.")
    torch.set_num_threads(1)
    print(report(args.groups, args.angle_step, args.output_dir), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
