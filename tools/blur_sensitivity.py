#!/usr/bin/env python
"""How trained rotMNIST5k models react to blur, and which of their layers amplify it.

Usage::

    python tools/blur_sensitivity.py CHECKPOINT [CHECKPOINT ...] [--output runs/rotMNIST5k/blur.md]
                                     [--threads 2] [--data-root ./data]

The test digits of rotMNIST5k are each interpolated once (rotated from their upright source).
Rotating one of them again by ``t`` and back by ``-t`` interpolates it twice more without turning
it: a pure blur whose amount grows with ``t`` (none at multiples of 90 degrees). For every
checkpoint the script measures:

* **accuracy against the amount of blur**: re-interpolated by ``t`` = 0, 5, 15, 30, 45 degrees,
  and a Gaussian blur of standard deviation 0.5 and 1 pixel;
* **where the blur grows**: the relative change ``|f(x') - f(x)| / |f(x)|`` of the output of each
  stage (the model's children, and the children of its ``Sequential`` parts) between the test
  digits ``x`` and the same digits re-interpolated by 45 degrees ``x'``, next to that of the
  input itself;
* **normalisation statistics**: for models with BatchNorm, the accuracy on the blurred digits
  after re-estimating the BatchNorm statistics on blurred training digits. If that recovers the
  accuracy, the running statistics (fitted to once-interpolated digits) cause the drop.

Writes one Markdown report (``--output``) and prints it.
"""

from __future__ import annotations

import argparse
import copy
import math
import pathlib
import sys
from typing import Callable, Dict, List, Sequence, Tuple

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REINTERPOLATION_ANGLES = (0.0, 5.0, 15.0, 30.0, 45.0)
GAUSSIAN_SIGMAS = (0.5, 1.0)
DRIFT_ANGLE = 45.0
BATCH = 100


def reinterpolated(images, angle_deg: float):
    """``images`` (B, 1, H, W) in [0, 1] rotated by ``angle_deg`` and back: interpolated twice."""
    from datasets.transforms import rotate_images

    if angle_deg % 90 == 0:
        return images
    return rotate_images(rotate_images(images, angle_deg), -angle_deg).clamp(0.0, 1.0)


def gaussian_blurred(images, sigma: float):
    """``images`` (B, 1, H, W) convolved with a normalised Gaussian of ``sigma`` pixels (zero padding)."""
    import torch
    import torch.nn.functional as F

    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    rows = F.conv2d(images, kernel.view(1, 1, -1, 1), padding=(radius, 0))  # (B, 1, H, W)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1), padding=(0, radius))


def batches(images, size: int = BATCH):
    return [images[start:start + size] for start in range(0, len(images), size)]


def accuracy(model, normalise: Callable, images, labels) -> float:
    import torch

    with torch.no_grad():
        predicted = torch.cat([model(normalise(part)).argmax(dim=1) for part in batches(images)])
    return float((predicted == labels).float().mean())


def stages(model) -> List[Tuple[str, object]]:
    """(name, module) of the model's children and of the children of its Sequential parts."""
    from torch import nn

    found = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            found += [(f"{name}.{inner}", module) for inner, module in child.named_children()]
        elif any(True for _ in child.parameters()) or isinstance(child, (nn.MaxPool3d, nn.MaxPool2d)):
            found.append((name, child))
    return found


def stage_drift(model, normalise: Callable, clean, blurred) -> List[Tuple[str, float]]:
    """Relative change of each stage's output between ``clean`` and ``blurred`` inputs."""
    import torch

    outputs: Dict[str, List] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out))
             for name, module in stages(model)]
    try:
        with torch.no_grad():
            model(normalise(clean))
            model(normalise(blurred))
    finally:
        for hook in hooks:
            hook.remove()
    drift = [("input", float((blurred - clean).norm() / clean.norm()))]
    for name, (before, after) in outputs.items():
        drift.append((name, float((after - before).norm() / before.norm())))
    return drift


def recalibrated(model, normalise: Callable, images):
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``images``."""
    import torch
    from torch import nn

    copied = copy.deepcopy(model)
    norms = [m for m in copied.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch
    copied.train()
    with torch.no_grad():
        for part in batches(images):
            copied(normalise(part))
    return copied.eval()


def report(path: pathlib.Path, data_root: pathlib.Path) -> str:
    """The Markdown section of one checkpoint."""
    import torch
    from torch import nn

    import datasets
    import main

    model = main.load_model(path).eval()
    splits = datasets.load_splits("rotMNIST5k", data_root)
    test_images, test_labels = splits.test.images, splits.test.labels
    train_images = splits.train.images
    name = type(model).__name__
    lines = [f"### {path}", "", f"{name}, {sum(p.numel() for p in model.parameters()):,} parameters.", ""]
    header = ["re-interpolated by " + ", ".join(f"{a:g}" for a in REINTERPOLATION_ANGLES) + " degrees",
              *[f"Gaussian blur σ = {s:g} px" for s in GAUSSIAN_SIGMAS]]
    cells = [" / ".join(f"{100 * accuracy(model, splits.batch_transform, reinterpolated(test_images, a), test_labels):.1f}"
                        for a in REINTERPOLATION_ANGLES),
             *[f"{100 * accuracy(model, splits.batch_transform, gaussian_blurred(test_images, s), test_labels):.1f}"
               for s in GAUSSIAN_SIGMAS]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |", ""]
    blurred = reinterpolated(test_images, DRIFT_ANGLE)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        adapted = recalibrated(model, splits.batch_transform, reinterpolated(train_images, DRIFT_ANGLE))
        lines += [f"BatchNorm statistics re-estimated on training digits re-interpolated by {DRIFT_ANGLE:g} degrees: "
                  f"{100 * accuracy(adapted, splits.batch_transform, blurred, test_labels):.1f}% on the test digits "
                  f"re-interpolated by {DRIFT_ANGLE:g} degrees, "
                  f"{100 * accuracy(adapted, splits.batch_transform, test_images, test_labels):.1f}% on the test digits.",
                  ""]
    drift = stage_drift(model, splits.batch_transform, test_images[:200], blurred[:200])
    lines += [f"Relative change of each stage's output, test digits re-interpolated by {DRIFT_ANGLE:g} degrees:", "",
              "| stage | change |", "|---|---|"]
    lines += [f"| {stage} | {change:.3f} |" for stage, change in drift]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The checkpoints and options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=pathlib.Path)
    parser.add_argument("--output", type=pathlib.Path, default=REPO_ROOT / "runs" / "rotMNIST5k" / "blur.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=pathlib.Path, default=REPO_ROOT / "data")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> str:
    import torch

    from runner import files

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    text = "# Blur sensitivity on rotMNIST5k\n\n" + (
        f"`python tools/blur_sensitivity.py {' '.join(str(p) for p in args.checkpoints)}`; accuracies in % on the "
        "1,000 test digits.\n\n") + "\n".join(report(path, args.data_root) for path in args.checkpoints)
    files.atomic_write(args.output, lambda handle: handle.write(text), text=True)
    print(text)
    return text


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    main(sys.argv[1:])
