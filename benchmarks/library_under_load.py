#!/usr/bin/env python
"""A training step of the library used from a user's own script, idle and on busy cores.

Usage::

    python benchmarks/library_under_load.py [--repeats 5] [--busy 2] [--batch 8]
                                            [--wait-policy POLICY] [--spin-count N]

Each measurement runs in a fresh Python process that imports only torch and the library
(``g_selfatt_models.create_model``: not ``main.py``, not ``runner``), with the environment of
this process minus the variables that say how idle OpenMP threads wait (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``), as a user who sets nothing would run it;
``--wait-policy`` and ``--spin-count`` set ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` there, for
comparison (``--spin-count 10000``: what ``main.py`` sets, see ``runner/threads.py``). The
process trains case (a) of ``benchmarks/attention.py``: the
paper's rotMNIST p4sa (local attention in 9x9 patches, attention dropout 0.1), Adam, batch 8 of
random 28x28 images; after one warm-up step, ``step_s`` is the median of ``--repeats`` timed
steps. It runs once on idle cores and once while ``--busy`` other processes spin (one per core
on the 2-core machine of the README), and prints one JSON line per run, the second with
``loaded_over_idle``. A fair share of 2 cores among the training and 2 spinning processes is
half of them: 2x.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # runner/threads.py's USER_SETTINGS


def worker(repeats: int, batch: int) -> Dict[str, object]:
    """Times case (a) in this process, importing only torch and the library."""
    import statistics

    import torch
    from torch import nn

    import g_selfatt_models

    torch.manual_seed(0)
    model = g_selfatt_models.create_model("p4sa", dataset="rotMNIST").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"step_s": round(statistics.median(times), 4), "batch": batch, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "unset"),
            "runner_imported": any(name == "runner" or name.startswith("runner.") for name in sys.modules)}


def measure(repeats: int, batch: int, wait_policy: Optional[str],
            spin_count: Optional[int] = None) -> Dict[str, object]:
    """:func:`worker` in a fresh process whose environment says nothing of how idle OpenMP threads wait
    (or sets ``OMP_WAIT_POLICY=wait_policy``, ``GOMP_SPINCOUNT=spin_count``)."""
    env = {name: value for name, value in os.environ.items() if name not in WAIT_SETTINGS}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    if spin_count is not None:
        env["GOMP_SPINCOUNT"] = str(spin_count)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, __file__, "--worker", "--repeats", str(repeats), "--batch", str(batch)], env=env,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _spin() -> None:
    """Keeps one core busy until terminated, sharing nothing with the other spinners (a stop event
    looked at on every iteration is a lock that they would block and wake each other on)."""
    while True:
        pass


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes of the loaded run")
    parser.add_argument("--batch", type=int, default=8, help="images per step (case (a): 8)")
    parser.add_argument("--wait-policy", choices=("ACTIVE", "PASSIVE"),
                        help="set OMP_WAIT_POLICY in the measured process (default: unset, as a user would run it)")
    parser.add_argument("--spin-count", type=int,
                        help="set GOMP_SPINCOUNT in the measured process (default: unset, as a user would run it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.repeats, args.batch)))
        return
    idle = measure(args.repeats, args.batch, args.wait_policy, args.spin_count)
    print(json.dumps({"load": "idle", **idle}), flush=True)
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for process in spinners:
        process.start()
    try:
        loaded = measure(args.repeats, args.batch, args.wait_policy, args.spin_count)
    finally:
        for process in spinners:
            process.terminate()
            process.join()
    ratio = round(loaded["step_s"] / idle["step_s"], 2)
    print(json.dumps({"load": "busy", "busy_processes": args.busy, **loaded, "loaded_over_idle": ratio}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
