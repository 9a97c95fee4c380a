"""A short description of the machine a process runs on, for reports that compare timings.

Seconds per epoch are only comparable between runs of one machine; a run records
:func:`describe` in its training state (``TrainState.machines``) so that tables can group
timings by machine, and the benchmarks print it above their numbers.
"""

from __future__ import annotations

import os
import pathlib
import platform
from typing import Any, Dict, Mapping

import torch

CPUINFO = pathlib.Path("/proc/cpuinfo")
# The widest vector extension named, widest first: (flag in /proc/cpuinfo, name printed).
VECTOR_EXTENSIONS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sve", "SVE"), ("asimd", "NEON"))


def _cpuinfo() -> Dict[str, str]:
    """The fields of ``/proc/cpuinfo``, each with the value of its first line (none without the file)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return {}
    fields: Dict[str, str] = {}
    for line in text.splitlines():
        field, _, value = line.partition(":")
        fields.setdefault(field.strip(), value.strip())
    return fields


def cpu() -> str:
    """The CPU: model name, widest vector extension and logical CPUs, e.g. ``Intel(R) Xeon(R)
    Processor (AVX-512), 2 logical CPUs``."""
    fields = _cpuinfo()
    model = (fields.get("model name") or fields.get("Model") or fields.get("Processor") or platform.processor()
             or platform.machine())
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    vector = next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), None)
    return f"{model}{f' ({vector})' if vector else ''}, {os.cpu_count()} logical CPUs"


def describe(device: torch.device) -> str:
    """The machine that computes on ``device``: the CPU, and the GPU's name for a CUDA device."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {cpu()}"
    return cpu()


def recorded(train_state: Mapping[str, Any]) -> str:
    """The machines a checkpoint's training state records, joined by ``; `` (empty for runs of
    versions that did not record them)."""
    return "; ".join(train_state.get("machines") or [])
