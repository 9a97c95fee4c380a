#!/usr/bin/env python
"""Seconds per training epoch of the rotMNIST5k models, and where a GSA-Net spends them.

Usage::

    python benchmarks/rotmnist5k_epoch.py [--models p4sa z2sa p4cnn f_att_p4cnn z2cnn] [--repeats 3]
                                          [--threads T] [--set FIELD=VALUE ...]

Each model is built as ``--config.dataset=rotMNIST5k`` builds it (its defaults for that dataset)
and takes steps of the protocol's optimizer (as ``main.py`` builds it, with its thread and
allocator settings) on random 28x28 batches of the protocol's batch size; after one warm-up
step, ``step_s`` is the median of ``--repeats`` timed steps and ``epoch_s`` the time of the
3,500 training digits' steps at that rate (no validation). For the self-attention models,
one line per attention layer follows: forward + backward of that layer alone on the input it
sees in the model (captured by a hook), its median time per step and its share of the step
(``layer_split`` of ``benchmarks/attention.py``). ``--set`` overrides fields of every model's
defaults, as ``--config.<field>`` does (``--set num_channels=16 num_heads=2``: the layout of
``make run``).

Prints one JSON line per model and per attention layer.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
for _folder in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import runner.threads  # noqa: E402  (before torch: the project's OpenMP wait policy)
import runner.allocator  # noqa: E402
import torch  # noqa: E402
from ml_collections import config_dict  # noqa: E402

import g_selfatt_models as models  # noqa: E402
from attention import layer_split, median_seconds, training_step  # noqa: E402  (benchmarks/attention.py)
from g_selfatt_models.protocols import ROTMNIST5K  # noqa: E402

TRAIN_IMAGES = 3500


def measure(name: str, repeats: int, fields: Optional[Dict[str, Any]] = None) -> List[dict]:
    torch.manual_seed(0)
    model = models.create_model(name, dataset="rotMNIST5k", **(fields or {})).train()
    batch = ROTMNIST5K["batch_size"]
    protocol = config_dict.ConfigDict(dict(ROTMNIST5K))  # its optimizer, as main.py builds it
    step = training_step(model, protocol, batch, 1, 10, 28, torch.device("cpu"))
    step_s = median_seconds(step, repeats)
    lines = [{"model": name, **(fields or {}), "parameters": sum(p.numel() for p in model.parameters()), "batch": batch,
              "step_s": round(step_s, 4), "epoch_s": round(step_s * math.ceil(TRAIN_IMAGES / batch), 1),
              "threads": torch.get_num_threads()}]
    lines += [dict(layer, model=name) for layer in layer_split(step, step_s, repeats)]
    return lines


def _field(text: str) -> Tuple[str, Any]:
    """``"num_heads=2"`` -> ``("num_heads", 2)`` (a value that is not a Python literal stays a string)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--set expects FIELD=VALUE, got {text!r}.")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["p4sa", "z2sa", "p4cnn", "f_att_p4cnn", "z2cnn"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = one per core)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override a field of every model's defaults (values read as Python literals)")
    args = parser.parse_args(argv)
    runner.threads.configure(args.threads or None)
    runner.allocator.configure()
    fields = dict(_field(text) for text in args.set)
    for name in args.models:
        for line in measure(name, args.repeats, fields):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
