#!/usr/bin/env python
"""Where the fused kernel's lanes layout spends its time, phase by phase, in each attention layer.

Usage::

    python benchmarks/kernel_phases.py [--models p4sa p8sa p12sa] [--repeats 5] [--threads 1]

Compiles ``g_selfatt/nn/fused_attention.cpp`` once more with ``-DFUSED_PHASES`` (into a temporary
folder; the kernel is otherwise the same, and the cached one is left alone), which times each phase
of every tile (see ``PHASE`` in the source), and runs it instead of the cached kernel. Each
model is built as ``--config.dataset=rotMNIST5k`` builds it and takes one training step on a random
batch of the protocol's size to capture the input of each attention layer; then each layer runs
forward and backward alone (``layer_step`` of ``benchmarks/attention.py``) ``--repeats`` times after
one warm-up call. One JSON line per layer: ``step_ms``, its time per call; ``kernel_ms``, the time
inside the timed phases (summed over threads: on one thread, part of ``step_ms``); and per phase
its milliseconds and its share of ``kernel_ms``. Layers that do not run in the lanes layout show no
phases.

The phases: ``forward_content`` (the content logits of a tile and their exponentials),
``forward_rows`` (each row's factors, normaliser and the probabilities summed over ``g``),
``forward_out`` (the value contraction); ``backward_content`` (the content terms again),
``backward_dp`` (the gradient of the probabilities before dropout), ``backward_factors`` (each
row's scaled factors), ``backward_rows`` (each row's probabilities summed over ``g`` and the score
gradient ``dS``), ``backward_tables`` (the positional and group tables' gradients and their share
of the query gradient), ``backward_grad_v``, ``backward_grad_q_content`` and ``backward_grad_k``
(the contractions of ``dS`` and the probabilities with the queries, keys and values).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
for _folder in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import runner.threads  # noqa: E402  (before torch: the project's OpenMP wait policy)
import runner.allocator  # noqa: E402
import torch  # noqa: E402
from ml_collections import config_dict  # noqa: E402

import g_selfatt_models as models  # noqa: E402
from attention import attention_inputs, layer_step, training_step  # noqa: E402  (benchmarks/attention.py)
from g_selfatt.nn import fused_attention  # noqa: E402
from g_selfatt_models.protocols import ROTMNIST5K  # noqa: E402


@contextlib.contextmanager
def timed_kernel() -> Iterator[ctypes.CDLL]:
    """The kernel compiled with ``-DFUSED_PHASES``, run by every fused layer inside the block."""
    cxx = fused_attention.compiler()
    if cxx is None:
        raise SystemExit("No C++ compiler found (set $CXX or install g++): the kernel cannot be compiled.")
    cached = fused_attention.library()  # loads the OpenMP runtime's entry the way a run does
    with tempfile.TemporaryDirectory() as folder:
        report = fused_attention._compile(cxx, Path(folder) / "fused_attention_phases.so", ("-DFUSED_PHASES",))
        if report.path is None:
            raise SystemExit(f"Compiling the timed kernel failed: {report.error}")
        timed = fused_attention._load(report.path)
        timed.fused_phases.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
        timed.fused_phases.restype = None
        fused_attention._attach_openmp(timed, fused_attention.openmp_runtime())
        fused_attention._library = timed
        try:
            yield timed
        finally:
            fused_attention._library = cached


def phase_names(lib: ctypes.CDLL) -> List[str]:
    """The phases in the order ``fused_phases`` of ``lib`` reports them."""
    lib.fused_phase_names.restype = ctypes.c_char_p
    return lib.fused_phase_names().decode().split()


def read_phases(lib: ctypes.CDLL, names: Sequence[str]) -> Dict[str, float]:
    """Nanoseconds per phase since the last read."""
    buffer = (ctypes.c_uint64 * len(names))()
    lib.fused_phases(buffer)
    return dict(zip(names, map(float, buffer)))


def measure(name: str, repeats: int, lib: ctypes.CDLL) -> List[dict]:
    torch.manual_seed(0)
    model = models.create_model(name, dataset="rotMNIST5k").train()
    protocol = config_dict.ConfigDict(dict(ROTMNIST5K))
    step = training_step(model, protocol, ROTMNIST5K["batch_size"], 1, 10, 28, torch.device("cpu"))
    names, lines = phase_names(lib), []
    for layer_name, (layer, x) in attention_inputs(step).items():
        call = layer_step(layer, x)
        call()
        read_phases(lib, names)  # from zero
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        seconds = (time.perf_counter() - start) / repeats
        phases = {phase: ns / repeats / 1e6 for phase, ns in read_phases(lib, names).items()}
        kernel_ms = sum(phases.values())
        lines.append({"model": name, "layer": layer_name, "input": list(x.shape), "threads": torch.get_num_threads(),
                      "step_ms": round(seconds * 1e3, 2), "kernel_ms": round(kernel_ms, 2),
                      "phases_ms": {phase: round(ms, 2) for phase, ms in phases.items()},
                      "shares": {phase: round(ms / kernel_ms, 3) for phase, ms in phases.items() if kernel_ms}})
    return lines


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["p4sa", "p8sa", "p12sa"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = one per core)")
    args = parser.parse_args(argv)
    runner.threads.configure(args.threads or None)
    runner.allocator.configure()
    with timed_kernel() as lib:
        for name in args.models:
            for line in measure(name, args.repeats, lib):
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
