"""Peak memory of one training step of the full attentive p4 All-CNN-C, per formulation.

Each formulation runs in a fresh Python process (so that one run's allocations
cannot hide the other's) and measures, with ``resource.getrusage``, the growth of
the peak resident set size during one SGD step (forward, backward, update) on
random CIFAR-10-sized data, relative to the process just before the step (model,
optimiser and batch already built). One JSON line is printed per formulation and
allocator setting::

    python benchmarks/attgconv_memory.py                    # batch 8, 3x32x32
    python benchmarks/attgconv_memory.py --batch-size 2 --image-size 16

The resident set depends on the C allocator as well as on the tensors alive at once.
glibc's ``malloc`` raises its mmap threshold (up to 32 MiB) each time it frees a
large block, so later blocks of that size come from the heap and stay resident
after they are freed; the chunked formulation, which allocates and frees the same
blocks over and over, can look larger than it is (three times as large at batch 2
on 16x16 inputs, a tenth larger at batch 8 on 32x32). Each formulation is therefore run
twice: with the ``default`` allocator (what ``top`` shows for a plain run) and with
the allocator ``returning`` every block of 1 MiB or more to the system when it is
freed (``MALLOC_MMAP_THRESHOLD_``), whose peak is that of the tensors alive at once.

Each run's address space is capped at a fraction of the memory available on the
machine (``--memory-fraction``); a formulation that needs more is reported as
skipped instead of exhausting the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Dict, List

FORMULATIONS = ("chunked", "full")
BYTES_PER_MIB = 2 ** 20
# Environment of the child process per allocator setting (glibc reads it at start-up).
ALLOCATORS = {"default": {}, "returning": {"MALLOC_MMAP_THRESHOLD_": str(BYTES_PER_MIB)}}


def _peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _available_mib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def measure(formulation: str, batch_size: int, image_size: int, chunk_size: int, threads: int,
            limit_mib: float) -> Dict:
    """One SGD step in this process (address space capped at ``limit_mib``); returns the measurement."""
    limit = int(limit_mib * BYTES_PER_MIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    import g_selfatt_models.attgconv_zoo  # noqa: F401  (registers the models)
    from g_selfatt_models.registry import DataSpec, create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = argparse.Namespace(attention_formulation=formulation)
    model = create_model("att_p4_allcnnc", config, DataSpec("CIFAR10", 3, 10, image_size, "CIFAR10"))
    for module in model.modules():
        if hasattr(module, "chunk_size"):
            module.chunk_size = chunk_size
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    images = torch.randn(batch_size, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch_size,))
    result = dict(model="att_p4_allcnnc", formulation=formulation, batch_size=batch_size, image_size=image_size,
                  chunk_size=chunk_size if formulation == "chunked" else None)
    baseline = _peak_rss_mib()
    start = time.perf_counter()
    try:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    except (MemoryError, RuntimeError) as error:
        if "memory" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        return dict(result, skipped=f"out of memory under the {limit_mib / 1024:.1f} GiB limit")
    return dict(result, peak_step_mib=round(_peak_rss_mib() - baseline, 1), baseline_mib=round(baseline, 1),
                step_seconds=round(time.perf_counter() - start, 2), loss=round(float(loss), 4))


def _run_in_subprocess(formulation: str, allocator: str, args: argparse.Namespace) -> Dict:
    limit_mib = args.memory_fraction * _available_mib()
    command = [sys.executable, __file__, "--child", formulation, "--batch-size", str(args.batch_size),
               "--image-size", str(args.image_size), "--chunk-size", str(args.chunk_size),
               "--threads", str(args.threads), "--limit-mib", str(limit_mib)]
    environment = dict(os.environ, **ALLOCATORS[allocator])
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=environment)
    if result.returncode != 0:
        return dict(formulation=formulation, allocator=allocator, error=result.stderr.strip().splitlines()[-1:])
    return dict(json.loads(result.stdout.strip().splitlines()[-1]), allocator=allocator)


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=16, help="output channels per block (chunked)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formulations", nargs="+", default=list(FORMULATIONS), choices=FORMULATIONS)
    parser.add_argument("--allocators", nargs="+", default=list(ALLOCATORS), choices=list(ALLOCATORS),
                        help="C allocator settings to measure under (see the module docstring)")
    parser.add_argument("--memory-fraction", type=float, default=0.7,
                        help="cap each run's address space at this fraction of the available memory")
    parser.add_argument("--child", choices=FORMULATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--limit-mib", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.image_size, args.chunk_size, args.threads,
                                 args.limit_mib)))
        return
    for allocator in args.allocators:
        for formulation in args.formulations:
            print(json.dumps(_run_in_subprocess(formulation, allocator, args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
