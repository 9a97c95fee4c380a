#!/usr/bin/env python
"""Time, peak memory and cost-model floor of the attention implementations.

Usage::

    python benchmarks/attention.py [--device cpu|cuda] [--repeats N] [--cases a,b,c,d,e,f]
                                   [--impls reference,efficient,fused,flex,triton] [--threads T] [--load]
                                   [--max-batch]

First prints one JSON line describing the machine: its float32 matmul throughput
(``sgemm_gflops``, a 2048x2048 matmul) and exponential throughput (``exp_per_s``, ``torch.exp``
on in-cache buffers), measured at start-up on the benchmark's threads. Then one line
per (case, implementation), each run in a fresh subprocess: after building the model,
input and optimizer, one warm-up step and ``N`` timed steps (forward + backward, plus
the optimizer step for whole models); ``time_s`` is the median. Peak memory is, on CPU,
the peak resident set of that process minus the peak of a fresh process that only builds
the same model, input and optimizer; on CUDA ``torch.cuda.max_memory_allocated`` minus the
memory allocated after building.

The cost model counts, from the shapes every attention layer sees in the step:

* ``score_entries``: attention logits ``B N V G (query, key) M`` over valid (query, key)
  pixel pairs, summed over layers;
* ``exps``: one exponential per score entry in the forward pass and one when the backward
  pass recomputes it (a memory-efficient softmax keeps no probabilities);
* ``matmul_gflop``: the contractions of the attention (content, positional and group
  logits, the value sum) and of their gradients, at their smallest sizes
  (``attention_gflop``), plus those of every convolution and linear layer of the step, its
  1x1 projections included (``layers_gflop``: forward, input and weight gradients).

``floor_s = matmul_gflop / sgemm_gflops + exps / exp_per_s`` is what the machine needs
for that work at its best rates; ``time_over_floor`` = ``time_s / floor_s``. The fused
kernel factors the exponentials (it takes fewer than ``exps``) but also does about ten
other elementwise operations per score entry, which the floor does not count.

Each case line also carries ``<impl>_over_<impl>`` time and memory ratios of this run.
The default implementations are reference, efficient and fused on the CPU and reference,
efficient, flex and triton on CUDA; FlexAttention has no attention dropout, so its model cases run
with attention dropout 0. ``--max-batch`` then finds, per implementation, the largest batch
of case (e) (the global rotMNIST p4sa) whose training step fits in the device's memory.
``--load`` then re-runs case (a) for the fast implementations while two processes of
this script keep both cores busy, and prints ``loaded_over_idle`` per implementation.
No environment variable needs setting: the workers run with the thread and allocator settings
that ``main.py`` chooses (:func:`runner.threads.configure`, :func:`runner.allocator.configure`).

Cases:
    a: one training step of the paper's rotMNIST p4sa (local, patch 9), batch 8.
    b: p4 global GroupSelfAttention, 28x28, rotMNIST widths (20 -> 20, mid 10, 9 heads), batch 1.
    c: one training step of the paper's CIFAR10 mz2sa (local, patch 5), batch 24, 32x32.
    d: one training step of the paper's PCam p4sa (local, patch 5), batch 16, 96x96.
    e: one training step of the rotMNIST p4sa with global attention, batch 1.
    f: p4 local (patch 9) GroupLocalSelfAttention, 28x28, rotMNIST widths, batch 8.
    g: one training step of the rotMNIST5k p4sa (its default layout: 24 channels, 3 heads), batch 32.
    h: one training step of the rotMNIST5k z2sa, batch 32.
    i: one training step of the paper's rotMNIST p4sa layout at patch 5, batch 32, no dropout.
    j: the PCam p4 lifting layer alone (local, patch 5), 96x96, batch 16.
    k: one training step of the rotMNIST5k p4cnn, batch 32 (no attention: the G-CNN to compare with).
Layers run in train mode with attention dropout 0; the models of cases a-e use the paper's settings
(attention dropout 0.1), those of g-k their defaults for rotMNIST5k or as stated. Model cases also
print ``layers``: each attention layer's forward and backward alone, on the input it sees in the
step, its median time and its share of the step. Case ``k`` runs once (it has no attention), and
the lines of ``g`` and ``h`` then carry ``over_p4cnn``, their time over that of ``k``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import runner.threads  # noqa: E402  (before torch: the project's OpenMP wait policy)
import runner.allocator  # noqa: E402
import runner.machine  # noqa: E402

IMPLS = ("reference", "efficient", "fused", "flex", "triton")
DEFAULT_IMPLS = {"cpu": ("reference", "efficient", "fused"), "cuda": ("reference", "efficient", "flex", "triton")}
CASES: Dict[str, str] = {
    "a": "rotMNIST p4sa training step (local, patch 9), batch 8",
    "b": "p4 global group layer 28x28, 20ch, mid 10, 9 heads, batch 1",
    "c": "CIFAR10 mz2sa training step (local, patch 5), batch 24, 32x32",
    "d": "PCam p4sa training step (local, patch 5), batch 16, 96x96",
    "e": "rotMNIST p4sa training step (global), batch 1",
    "f": "p4 local patch-9 group layer 28x28, 20ch, mid 10, 9 heads, batch 8",
    "g": "rotMNIST5k p4sa training step (local, patch 5, 24 channels, 3 heads), batch 32",
    "h": "rotMNIST5k z2sa training step (local, patch 5, 24 channels, 3 heads), batch 32",
    "i": "rotMNIST p4sa training step (paper's layout, patch 5, no dropout), batch 32",
    "j": "PCam p4 lifting layer 96x96 (local, patch 5), 3 -> 12 ch, mid 6, 9 heads, batch 16",
    "k": "rotMNIST5k p4cnn training step, batch 32 (no attention)",
}
# (dataset, group, attention type, batch, in_channels, classes, image side) of the model cases.
MODEL_CASES = {
    "a": ("rotMNIST", "p4", "Local", 8, 1, 10, 28),
    "c": ("CIFAR10", "mz2", "Local", 24, 3, 10, 32),
    "d": ("PCam", "p4", "Local", 16, 3, 2, 96),
    "e": ("rotMNIST", "p4", "Global", 1, 1, 10, 28),
    "i": ("rotMNIST", "p4", "Local", 32, 1, 10, 28),
}
# Settings of the model cases that differ from the dataset's defaults.
MODEL_OVERRIDES = {"i": dict(patch_size=5, dropout_att=0.0, dropout_values=0.0)}
# (model, dataset, batch) of the cases built as ``create_model(model, dataset=...)`` builds them.
ZOO_CASES = {"g": ("p4sa", "rotMNIST5k", 32), "h": ("z2sa", "rotMNIST5k", 32), "k": ("p4cnn", "rotMNIST5k", 32)}
NO_ATTENTION_CASES = ("k",)  # run once, whatever the implementations
COMPARED_TO = {"g": "k", "h": "k"}  # cases whose lines carry over_p4cnn, their time over case k's
# Bytes the reference keeps per score entry of a training step (logits, probabilities, dropout
# and their gradients for every layer; measured: 9.1 GB for the 494 M entries of case a), and
# the share of the machine's memory it may take: used to skip runs that cannot fit.
REFERENCE_BYTES_PER_ENTRY = 20
REFERENCE_MEMORY_SHARE = 0.6
MEMORY_RESOLUTION_MB = 1.0


def _layer_case(kind: str, group_name: str, channels: int, mid: int, extent: int, side: int, batch: int,
                impl: str, device) -> Callable[[], None]:
    import torch

    from g_selfatt.groups import get_group
    from g_selfatt.nn import GroupLocalSelfAttention, GroupSelfAttention

    cls = GroupSelfAttention if kind == "global" else GroupLocalSelfAttention
    group = get_group(group_name)
    layer = cls(group, channels, mid, channels, 9, extent, 0.0, attention_impl=impl).to(device).train()
    return layer_step(layer, torch.randn(batch, channels, group.num_elements, side, side, device=device))


def _lift_case(group_name: str, in_channels: int, mid: int, out: int, heads: int, patch: int, side: int,
               batch: int, impl: str, device) -> Callable[[], None]:
    import torch

    from g_selfatt.groups import get_group
    from g_selfatt.nn import LiftLocalSelfAttention

    layer = LiftLocalSelfAttention(get_group(group_name), in_channels, mid, out, heads, patch, 0.0,
                                   attention_impl=impl).to(device).train()
    return layer_step(layer, torch.randn(batch, in_channels, side, side, device=device))


def layer_step(layer, x) -> Callable[[], None]:
    """Forward and backward of ``layer`` on a copy of ``x`` (the gradients of the layer and the input)."""
    x = x.clone().requires_grad_(True)

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).square().mean().backward()

    return step


def median_seconds(step: Callable[[], None], repeats: int, cuda: bool = False) -> float:
    """Median wall-clock seconds of ``step`` over ``repeats`` calls (at least one) after one warm-up call."""
    import torch

    step()
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model_case(case: str, impl: str, device, batch: Optional[int] = None) -> Callable[[], None]:
    from g_selfatt_models import DataSpec, create_model
    from g_selfatt_models.gsa_zoo import GSA_DEFAULTS

    dataset, group, attention_type, case_batch, channels, classes, side = MODEL_CASES[case]
    batch = batch or case_batch
    settings = dict(GSA_DEFAULTS[dataset], attention_type=attention_type, attention_impl=impl,
                    **MODEL_OVERRIDES.get(case, {}))
    if impl == "flex":
        settings["dropout_att"] = 0.0  # FlexAttention has no attention dropout
    config = types.SimpleNamespace(**settings)
    model = create_model(f"{group}sa", config, DataSpec(dataset, channels, classes, side, dataset))
    return training_step(model.to(device).train(), config, batch, channels, classes, side, device)


def _zoo_case(case: str, impl: str, device) -> Callable[[], None]:
    from g_selfatt_models import create_model
    from g_selfatt_models.registry import get_data_spec, model_settings

    name, dataset, batch = ZOO_CASES[case]
    overrides = {} if case in NO_ATTENTION_CASES else {"attention_impl": impl}
    model = create_model(name, dataset=dataset, **overrides).to(device).train()
    data = get_data_spec(dataset)
    config = model_settings(name, data, {})
    return training_step(model, config, batch, data.in_channels, data.num_classes, data.image_size, device)


def training_step(model, config, batch: int, channels: int, classes: int, side: int, device) -> Callable[[], None]:
    """One optimizer step of ``model`` on a random batch (the optimizer ``main.py`` builds for ``config``)."""
    import torch

    from trainer import build_optimizer

    optimizer = build_optimizer(model, config)
    x = torch.randn(batch, channels, side, side, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def build(case: str, impl: str, device) -> Callable[[], None]:
    """The step function of a case (model, input and optimizer already built)."""
    if case in MODEL_CASES:
        return _model_case(case, impl, device)
    if case in ZOO_CASES:
        return _zoo_case(case, impl, device)
    if case == "j":
        return _lift_case("p4", 3, 6, 12, 9, 5, 96, 16, impl, device)
    if case == "b":
        return _layer_case("global", "p4", 20, 10, 28, 28, 1, impl, device)
    if case == "f":
        return _layer_case("local", "p4", 20, 10, 9, 28, 8, impl, device)
    raise ValueError(f"Unknown case {case!r}; expected one of {sorted(CASES)}.")


# ---------------------------------------------------------------- cost model
def _valid_pairs(side: int, patch: Optional[int]) -> int:
    """(query, key) pixel pairs along one axis of a ``side``-pixel image: all, or within the patch."""
    if patch is None:
        return side * side
    radius = patch // 2
    return sum(min(side, i + radius + 1) - max(0, i - radius) for i in range(side))


def layer_counts(layer, x_shape) -> Dict[str, float]:
    """Score entries, exps and matmul FLOPs of one training step (forward + backward) of ``layer``."""
    batch, height, width = x_shape[0], x_shape[-2], x_shape[-1]
    order = layer.group.num_elements
    g = m = 1 if layer.lifting else order
    v, c = order, layer.mid_channels
    d2, dg = 2 * layer.dim_pos_encoding, layer.dim_group_encoding
    heads_batch = batch * layer.num_heads
    patch = layer.patch_size if layer.local else None
    pairs = heads_batch * _valid_pairs(height, patch) * _valid_pairs(width, patch)
    queries = heads_batch * height * width
    entries = pairs * v * g * m
    # forward, then backward: content and positional/group terms recomputed and their two
    # gradients (x4 in all); value sum: forward, dP and the value gradient (x3).
    macs = pairs * (4 * g * m * c + 4 * v * g * d2 + 3 * v * m * c) + 4 * queries * v * g * m * dg
    return {"score_entries": entries, "exps": 2 * entries, "matmul_gflop": 2 * macs / 1e9}


def dense_gflop(module, output) -> float:
    """FLOPs of a convolution or linear layer's forward pass, its input and its weight gradient."""
    from torch import nn

    if isinstance(module, nn.Linear):
        fan_in = module.in_features
    else:
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
    return 3 * 2 * output.numel() * fan_in / 1e9


def count_step(step: Callable[[], None], modules) -> Dict[str, float]:
    """Runs ``step`` once and sums :func:`layer_counts` and :func:`dense_gflop` over the layers it calls."""
    from torch import nn

    from g_selfatt.nn.attention import SelfAttentionCore

    totals = {"score_entries": 0, "exps": 0, "attention_gflop": 0.0, "layers_gflop": 0.0, "largest_layer_entries": 0}

    def attention_hook(layer, inputs):
        counts = layer_counts(layer, inputs[0].shape)
        for key in ("score_entries", "exps"):
            totals[key] += counts[key]
        totals["attention_gflop"] += counts["matmul_gflop"]
        totals["largest_layer_entries"] = max(totals["largest_layer_entries"], counts["score_entries"])

    def dense_hook(layer, inputs, output):
        totals["layers_gflop"] += dense_gflop(layer, output)

    dense = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [mod.register_forward_pre_hook(attention_hook) for mod in modules if isinstance(mod, SelfAttentionCore)]
    handles += [mod.register_forward_hook(dense_hook) for mod in modules if isinstance(mod, dense)]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    totals["matmul_gflop"] = round(totals["attention_gflop"] + totals["layers_gflop"], 3)
    totals["attention_gflop"] = round(totals["attention_gflop"], 3)
    totals["layers_gflop"] = round(totals["layers_gflop"], 3)
    return totals


def machine_rates(threads: Optional[int] = None) -> Dict[str, float]:
    """Float32 matmul (2048x2048, best of 5) and exp (in-cache buffers, best of 10) throughput."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    sgemm = 2 * 2048 ** 3 / best / 1e9
    exp_rate = 0.0
    for size in (2 ** 16, 2 ** 18, 2 ** 20):  # the best of in-cache sizes (small ones pay thread wake-ups)
        x, out = torch.randn(size).clamp_(-5, 5), torch.empty(size)
        calls = 2 ** 22 // size
        for _ in range(10):
            start = time.perf_counter()
            for _ in range(calls):
                torch.exp(x, out=out)
            exp_rate = max(exp_rate, calls * size / (time.perf_counter() - start))
    return {"sgemm_gflops": round(sgemm, 1), "exp_per_s": round(exp_rate, -6), "threads": torch.get_num_threads()}


def floor_seconds(counts: Dict[str, float], rates: Dict[str, float]) -> float:
    """The cost model's floor: matmul work at the sgemm rate plus exps at the exp rate."""
    return counts["matmul_gflop"] / rates["sgemm_gflops"] + counts["exps"] / rates["exp_per_s"]


# ---------------------------------------------------------------- measurement
def measure(case: str, impl: str, device_name: str, repeats: int, threads=None,
            build_only: bool = False) -> Dict[str, object]:
    """Runs one (case, impl) in this process and returns its JSON record (only ``max_rss_mb`` if ``build_only``)."""
    import resource

    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    step = build(case, impl, device)
    if build_only:
        return {"case": case, "impl": impl, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    modules = _closure_modules(step)
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    load = os.getloadavg()[0]
    counts = count_step(step, modules)  # the warm-up step
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    else:
        peak_mb = None  # the parent subtracts the peak of a build-only process from max_rss_mb
    if times and (case in MODEL_CASES or case in ZOO_CASES) and case not in NO_ATTENTION_CASES:
        counts["layers"] = layer_split(step, statistics.median(times), repeats, cuda)
    return dict({
        "case": case, "description": CASES[case], "impl": impl, "device": device_name,
        "time_s": round(statistics.median(times), 4) if times else None, "times_s": [round(t, 4) for t in times],
        "peak_memory_mb": None if peak_mb is None else round(peak_mb, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "repeats": repeats, "threads": torch.get_num_threads(),
        "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }, **counts)


def layer_split(step: Callable[[], None], step_s: float, repeats: int, cuda: bool = False) -> List[Dict[str, object]]:
    """Forward and backward of each attention layer of ``step`` alone, on the input it sees in the step.

    Returns one record per layer: its name, input shape, median ``time_s`` over ``repeats``
    calls after one warm-up call, and ``share_of_step``, that time over ``step_s``.
    """
    split = []
    for name, (module, x) in attention_inputs(step).items():
        seconds = median_seconds(layer_step(module, x), repeats, cuda)
        split.append({"layer": name, "input": list(x.shape), "time_s": round(seconds, 4),
                      "share_of_step": round(seconds / step_s, 3)})
    return split


def attention_inputs(step: Callable[[], None]) -> Dict[str, Tuple[object, object]]:
    """Each attention layer of ``step`` by name, with the input it sees in one call of the step."""
    from g_selfatt.nn.attention import SelfAttentionCore

    layers = {name: module for root in _closure_roots(step) for name, module in root.named_modules()
              if isinstance(module, SelfAttentionCore)}
    inputs: Dict[str, object] = {}
    hooks = [module.register_forward_pre_hook(lambda _, args, name=name: inputs.setdefault(name, args[0].detach()))
             for name, module in layers.items()]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return {name: (module, inputs[name]) for name, module in layers.items()}


def _closure_roots(step: Callable[[], None]) -> List[object]:
    """The modules a step function's closure holds (its model or layer)."""
    from torch import nn

    return [cell.cell_contents for cell in step.__closure__ or () if isinstance(cell.cell_contents, nn.Module)]


def _closure_modules(step: Callable[[], None]) -> List[object]:
    """The modules reachable from a step function's closure (its model or layer)."""
    return [module for root in _closure_roots(step) for module in root.modules()]


def _worker_command(case: str, impl: str, device: str, repeats: int, threads=None, build_only=False) -> List[str]:
    return ([sys.executable, __file__, "--worker", "--cases", case, "--impls", impl, "--device", device,
             "--repeats", str(repeats)] + (["--threads", str(threads)] if threads else [])
            + (["--build-only"] if build_only else []))


def _run_worker(command: List[str], what: str) -> Dict[str, object]:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_subprocess(case: str, impl: str, device: str, repeats: int, threads=None) -> Dict[str, object]:
    """One (case, impl) in a fresh process; on CPU its peak memory above a build-only process."""
    record = _run_worker(_worker_command(case, impl, device, repeats, threads), f"case {case} ({impl})")
    if record["peak_memory_mb"] is None:
        built = _run_worker(_worker_command(case, impl, device, 0, threads, build_only=True),
                            f"building case {case} ({impl})")
        record["peak_memory_mb"] = round(max(record["max_rss_mb"] - built["max_rss_mb"], 0.0), 1)
    return record


def _reference_fits(record: Dict[str, object], device: str) -> Optional[str]:
    """``None`` when the reference fits in memory, else why it is skipped.

    Args:
        record: a measured record of the same case (its counts do not depend on the implementation).
    """
    import torch

    needed = REFERENCE_BYTES_PER_ENTRY * record["score_entries"]
    if device == "cuda":
        available = torch.cuda.get_device_properties(0).total_memory
    else:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed < REFERENCE_MEMORY_SHARE * available:
        return None
    return (f"the reference would need about {needed / 2 ** 30:.0f} GiB ({record['score_entries']:.3g} score "
            f"entries), the machine has {available / 2 ** 30:.0f} GiB")


def ratios(records: Dict[str, Dict[str, object]]) -> Dict[str, float]:
    """Time and peak-memory ratios between every pair of measured implementations of one case.

    Peak memory below :data:`MEMORY_RESOLUTION_MB` (a step that needs less than building the
    model did) counts as that much, so such a ratio is a lower bound.
    """
    measured = [impl for impl in IMPLS if impl in records and "time_s" in records[impl]]
    out = {}
    for slow_index, slow in enumerate(measured):
        for fast in measured[slow_index + 1:]:
            out[f"time_{slow}_over_{fast}"] = round(records[slow]["time_s"] / records[fast]["time_s"], 2)
            out[f"memory_{slow}_over_{fast}"] = round(
                max(records[slow]["peak_memory_mb"], MEMORY_RESOLUTION_MB)
                / max(records[fast]["peak_memory_mb"], MEMORY_RESOLUTION_MB), 2)
    return out


def largest_batch(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """The largest batch ``b <= limit`` with ``fits(b)``, assuming ``fits`` is monotone (0 if none fits)."""
    low, high = 0, 1
    while high <= limit and fits(high):
        low, high = high, 2 * high
    high = min(high, limit + 1)
    while high - low > 1:  # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def max_batch(impl: str, device_name: str) -> Dict[str, object]:
    """The largest batch of case (e) whose training step fits in the device's memory."""
    import torch

    def fits(batch: int) -> bool:
        try:
            _model_case("e", impl, torch.device(device_name), batch)()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    return {"case": "e", "impl": impl, "device": device_name, "max_batch": largest_batch(fits)}


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def run_loaded(case: str, impls, device: str, repeats: int, threads, idle: Dict[str, Dict[str, object]]):
    """Case ``case`` again while two busy processes keep two cores spinning."""
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(2)]
    for process in spinners:
        process.start()
    try:
        for impl in impls:
            record = _run_subprocess(case, impl, device, repeats, threads)
            record["load"] = "two busy processes"
            if impl in idle and "time_s" in idle[impl]:
                record["loaded_over_idle"] = round(record["time_s"] / idle[impl]["time_s"], 2)
            print(json.dumps(record), flush=True)
    finally:
        stop.set()
        for process in spinners:
            process.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--cases", default="a,b,c,d", help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--impls", help="comma-separated implementations (default: per device, see above)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the project's choice)")
    parser.add_argument("--load", action="store_true", help="also measure case a under a load of two busy processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", action="store_true",
                        help="also find the largest batch of case e that trains, per implementation (CUDA)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    impls = [i for i in args.impls.split(",") if i] if args.impls else list(DEFAULT_IMPLS[args.device])
    for name in cases:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {','.join(CASES)}")
    for name in impls:
        if name not in IMPLS:
            parser.error(f"unknown implementation {name!r}; choose from {','.join(IMPLS)}")
    runner.threads.configure(args.threads)
    freed_memory = runner.allocator.configure()
    if args.worker and args.max_batch:
        print(json.dumps(max_batch(impls[0], args.device)), flush=True)
        return
    if args.worker:
        print(json.dumps(measure(cases[0], impls[0], args.device, args.repeats, args.threads, args.build_only)),
              flush=True)
        return
    rates = machine_rates(args.threads)
    print(json.dumps(dict(rates, machine=runner.machine.cpu(), freed_memory=freed_memory)), flush=True)
    idle_a = {}
    compared: Dict[str, Dict[str, object]] = {}
    comparisons = sorted({COMPARED_TO[case] for case in cases if case in COMPARED_TO})
    cases = comparisons + [case for case in cases if case not in comparisons]  # first, so that lines can carry them
    for case in cases:
        records = {}
        if case in NO_ATTENTION_CASES:
            # (no floor: the cost model does not count the G-CNN's functional group convolutions)
            record = dict(_run_subprocess(case, impls[0], args.device, args.repeats, args.threads), impl="none")
            compared[case] = record
            print(json.dumps(record), flush=True)
            continue
        for impl in sorted(impls, key=lambda name: name == "reference"):  # the reference last
            measured = [r for r in records.values() if "largest_layer_entries" in r]
            skip = _reference_fits(measured[0], args.device) if impl == "reference" and measured else None
            if skip:
                records[impl] = {"case": case, "description": CASES[case], "impl": impl, "skipped": skip}
                continue
            records[impl] = _run_subprocess(case, impl, args.device, args.repeats, args.threads)
            records[impl]["floor_s"] = round(floor_seconds(records[impl], rates), 4)
            records[impl]["time_over_floor"] = round(records[impl]["time_s"] / records[impl]["floor_s"], 2)
            if COMPARED_TO.get(case) in compared:
                other = compared[COMPARED_TO[case]]
                records[impl][f"over_{ZOO_CASES[other['case']][0]}"] = round(records[impl]["time_s"] / other["time_s"], 2)
        case_ratios = ratios(records)
        for impl in impls:
            print(json.dumps(dict(records[impl], **case_ratios)), flush=True)
        if case == "a":
            idle_a = records
    if args.max_batch:
        for impl in impls:
            command = [sys.executable, __file__, "--worker", "--max-batch", "--cases", "e", "--impls", impl,
                       "--device", args.device]
            print(json.dumps(_run_worker(command, f"largest batch ({impl})")), flush=True)
    if args.load:
        if not idle_a:
            idle_a = {impl: _run_subprocess("a", impl, args.device, args.repeats, args.threads)
                      for impl in impls if impl != "reference"}
        run_loaded("a", [impl for impl in impls if impl != "reference"], args.device, args.repeats, args.threads,
                   idle_a)


if __name__ == "__main__":
    main()
