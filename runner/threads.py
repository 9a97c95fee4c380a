"""The project's choice of CPU threads and OpenMP wait policy.

Import this module before torch (``main.py`` and the benchmarks do): it makes idle OpenMP
threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the environment
already sets a policy. OpenMP reads the policy once, when torch loads it, so importing
this module after torch changes nothing (:data:`APPLIED` says whether it took effect).

Why: every parallel torch operation ends in a barrier of its threads. On cores shared
with other processes, threads that spin at a barrier take CPU time from the thread that
the barrier waits for; measured on 2 cores kept busy by two other processes
(``python benchmarks/attention.py --load``), one rotMNIST p4sa training step with the fused
attention took 2.85x its idle time with spinning threads and 1.92x with sleeping ones,
while idle the two policies differ by less than the run-to-run noise.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

WAIT_POLICY = "PASSIVE"
APPLIED = "torch" not in sys.modules and os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY) == WAIT_POLICY


def configure(threads: Optional[int] = None) -> int:
    """Sets torch's intra-op threads (``threads``, else torch's default: one per core); returns the number."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
