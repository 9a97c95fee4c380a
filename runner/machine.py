"""A short description of the machine a process runs on, for reports that compare timings.

Seconds per epoch are only comparable between runs of one machine; a run records
:func:`describe` in its training state (``TrainState.machines``) so that tables can group
timings by machine, and the benchmarks print it above their numbers.
"""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Optional

import torch

CPUINFO = pathlib.Path("/proc/cpuinfo")
# The widest vector extension named, widest first: (flag in /proc/cpuinfo, name printed).
VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sve", "SVE"), ("asimd", "NEON"))


def _cpuinfo_field(names: tuple) -> Optional[str]:
    """The value of the first line of ``/proc/cpuinfo`` whose field is one of ``names``."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field.strip() in names:
            return value.strip()
    return None


def cpu() -> str:
    """The CPU: model name, widest vector extension and logical CPUs, e.g. ``Intel(R) Xeon(R)
    Processor (AVX-512), 2 logical CPUs``."""
    model = _cpuinfo_field(("model name", "Model", "Processor")) or platform.processor() or platform.machine()
    flags = (_cpuinfo_field(("flags", "Features")) or "").split()
    vector = next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), None)
    return f"{model}{f' ({vector})' if vector else ''}, {os.cpu_count()} logical CPUs"


def describe(device: torch.device) -> str:
    """The machine that computes on ``device``: the CPU, and the GPU's name for a CUDA device."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {cpu()}"
    return cpu()
