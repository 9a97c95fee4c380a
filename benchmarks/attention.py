#!/usr/bin/env python
"""Time and peak memory of ``attention_impl="reference"`` versus ``"efficient"``.

Usage::

    python benchmarks/attention.py [--device cpu|cuda] [--repeats N] [--cases a,b,c,d,e] [--threads T]

Prints one JSON line per (case, implementation), each with the case's
reference/efficient ratios of this run (``memory_ratio_ref_over_eff``,
``time_ratio_ref_over_eff``). Each (case, implementation) runs in a fresh
subprocess: after building the model, the input and the optimizer, one
warm-up step is run and then ``N`` timed steps (forward + backward, plus an Adam
step for the training cases); ``time_s`` is the median. Peak memory is, on CPU,
``ru_maxrss`` after the steps minus ``ru_maxrss`` after building (the growth of
the process's resident set), and on CUDA ``torch.cuda.max_memory_allocated``
minus the memory allocated after building.

Cases:
    a: p4 global GroupSelfAttention, 28x28, rotMNIST widths (20 -> 20, mid 10, 9 heads), batch 1.
    b: p4 local (patch 9) GroupLocalSelfAttention, 28x28, rotMNIST widths, batch 8.
    c: p4m local (patch 5) GroupLocalSelfAttention, 32x32, CIFAR10 widths (96 -> 96, mid 48, 9 heads), batch 2.
    d: one training step (forward, backward, Adam) of the rotMNIST p4sa model (local, patch 9), batch 8.
    e: one training step of the rotMNIST p4sa model with global attention, batch 1.
Layers run in train mode with attention dropout 0; the models use the paper's
rotMNIST settings (attention dropout 0.1, value dropout 0.1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IMPLS = ("reference", "efficient")
CASES: Dict[str, str] = {
    "a": "p4 global group layer 28x28, 20ch, mid 10, 9 heads, batch 1",
    "b": "p4 local patch-9 group layer 28x28, 20ch, mid 10, 9 heads, batch 8",
    "c": "p4m local patch-5 group layer 32x32, 96ch, mid 48, 9 heads, batch 2",
    "d": "rotMNIST p4sa (local patch 9) training step, batch 8",
    "e": "rotMNIST p4sa (global) training step, batch 1",
}


def _layer_case(kind: str, group_name: str, channels: int, mid: int, extent: int, side: int, batch: int,
                impl: str, device) -> Callable[[], None]:
    import torch

    from g_selfatt.groups import get_group
    from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention

    cls = GroupSelfAttention if kind == "global" else GroupLocalSelfAttention
    group = get_group(group_name)
    layer = cls(group, channels, mid, channels, 9, extent, 0.0, attention_impl=impl).to(device).train()
    x = torch.randn(batch, channels, group.num_elements, side, side, device=device, requires_grad=True)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).square().mean().backward()

    return step


def _model_case(attention_type: str, batch: int, impl: str, device) -> Callable[[], None]:
    import torch

    from models import DataSpec, create_model
    from models.gsa_zoo import GSA_DEFAULTS

    config = types.SimpleNamespace(**dict(GSA_DEFAULTS["rotMNIST"], attention_type=attention_type,
                                          attention_impl=impl))
    model = create_model("p4sa", config, DataSpec("rotMNIST", 1, 10, 28, "rotMNIST")).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def build(case: str, impl: str, device) -> Callable[[], None]:
    """The step function of a case (model, input and optimizer already built)."""
    if case == "a":
        return _layer_case("global", "p4", 20, 10, 28, 28, 1, impl, device)
    if case == "b":
        return _layer_case("local", "p4", 20, 10, 9, 28, 8, impl, device)
    if case == "c":
        return _layer_case("local", "p4m", 96, 48, 5, 32, 2, impl, device)
    if case == "d":
        return _model_case("Local", 8, impl, device)
    if case == "e":
        return _model_case("Global", 1, impl, device)
    raise ValueError(f"Unknown case {case!r}; expected one of {sorted(CASES)}.")


def measure(case: str, impl: str, device_name: str, repeats: int, threads=None) -> Dict[str, object]:
    """Runs one (case, impl) in this process and returns its JSON record."""
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    step = build(case, impl, device)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    load = os.getloadavg()[0]
    times = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if index:  # the first step is a warm-up
            times.append(time.perf_counter() - start)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    return {
        "case": case, "description": CASES[case], "impl": impl, "device": device_name,
        "time_s": round(statistics.median(times), 4), "times_s": [round(t, 4) for t in times],
        "peak_memory_mb": round(peak_mb, 1), "repeats": repeats, "threads": torch.get_num_threads(),
        "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


def _run_subprocess(case: str, impl: str, device: str, repeats: int, threads=None) -> Dict[str, object]:
    command = [sys.executable, __file__, "--worker", "--cases", case, "--impl", impl, "--device", device,
               "--repeats", str(repeats)] + (["--threads", str(threads)] if threads else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"case {case} ({impl}) failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def ratios(reference: Dict[str, object], efficient: Dict[str, object]) -> Dict[str, float]:
    """Reference/efficient ratios of peak memory and median time of one case."""
    return {
        "memory_ratio_ref_over_eff": round(reference["peak_memory_mb"] / max(efficient["peak_memory_mb"], 1e-9), 2),
        "time_ratio_ref_over_eff": round(reference["time_s"] / efficient["time_s"], 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of a,b,c,d,e")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    if args.worker:
        print(json.dumps(measure(cases[0], args.impl, args.device, args.repeats, args.threads)), flush=True)
        return
    for case in cases:
        records = {impl: _run_subprocess(case, impl, args.device, args.repeats, args.threads) for impl in IMPLS}
        case_ratios = ratios(records["reference"], records["efficient"])
        for impl in IMPLS:
            print(json.dumps(dict(records[impl], **case_ratios)), flush=True)


if __name__ == "__main__":
    main()
