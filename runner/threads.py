"""The project's choice of CPU threads and of how idle OpenMP threads wait.

Import this module before torch (``main.py`` and the benchmarks do): it makes torch's idle
OpenMP threads spin briefly and then sleep, unless the environment already says how they wait
(any of :data:`USER_SETTINGS`). For GNU OpenMP (libgomp, torch's runtime on Linux) it sets
``GOMP_SPINCOUNT`` to :data:`SPIN_COUNT` (about 0.1 ms by libgomp's own estimate of 100,000
spins per ms; unset, libgomp spins for about 3 ms); for Intel's and LLVM's runtimes
``KMP_BLOCKTIME=0`` (sleep at once). OpenMP reads these once, when torch loads it, so importing
this module after torch changes nothing (:data:`APPLIED` says whether it took effect).

Why: every parallel torch operation ends in a barrier of its threads, and the next operation
wakes them again. Measured with rotMNIST5k's p4sa (2 threads, median steps, settings
alternating):

* Threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``) pay a wake-up for every operation,
  and a step at the protocol's batch of 8 is many short operations: 69-83 ms per step, idle,
  against 46-48 ms with a spin count of 10,000 (45-47 ms with 30,000, 46-56 ms with 3,000).
* Threads that spin long take CPU time from the thread that a barrier waits for when other
  processes share the cores. Beside two spinning processes on the 2 cores, the same step took
  204-224 ms with libgomp's own 3 ms of spinning, 178-184 ms sleeping at once and 132-144 ms
  with 10,000 spins; case (a) of ``benchmarks/attention.py`` (patch 9, batch 8: fewer, longer
  operations) 2.38-2.46 s sleeping at once, 2.24-2.68 s with 10,000 spins and 3.00-3.47 s with
  30,000 (``benchmarks/library_under_load.py --wait-policy PASSIVE | --spin-count N``).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

SPIN_COUNT = "10000"
# The settings the project makes, and the variables by which a user says how idle threads wait.
SETTINGS = {"GOMP_SPINCOUNT": SPIN_COUNT, "KMP_BLOCKTIME": "0"}
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def _apply() -> bool:
    """Sets :data:`SETTINGS` where torch is not loaded yet and the user set none of :data:`USER_SETTINGS`."""
    if "torch" in sys.modules or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    os.environ.update(SETTINGS)
    return True


APPLIED = _apply()


def configure(threads: Optional[int] = None) -> int:
    """Sets torch's intra-op threads (``threads``, else torch's default: one per core); returns the number."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
