"""runner/threads.py and runner/allocator.py: how idle OpenMP threads wait, and freed memory staying with a
training process; each unless the user chose otherwise, and only in processes of the runner."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from runner import allocator, threads

REPO_ROOT = Path(__file__).resolve().parents[1]
ON_LINUX_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process that allocates and writes BLOCKS tensors of MIB MiB each, then frees them (a 28x28
# feature map of rotMNIST5k's p4sa at batch 32 is 9.2 MiB), after the project's settings ("configure"),
# after importing the libraries ("libraries") or as it starts ("defaults"); it reports how much its
# resident memory grew with the tensors, and how much of that it still holds once they are freed.
CHILD = """
import json, os, sys
import torch
if sys.argv[1] == "configure":
    from runner import allocator
    configured = allocator.configure()
else:
    if sys.argv[1] == "libraries":
        import attgconv, g_selfatt, g_selfatt_models
    configured = sys.argv[1]
BLOCKS, MIB = 8, 9
def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
blocks = [torch.empty(MIB * 2 ** 18).fill_(1.0) for _ in range(BLOCKS)]
grown = resident() - before
del blocks
print(json.dumps({"configured": configured, "grown": grown, "held": resident() - before}))
"""


def _clean_env(**extra: str) -> Dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in allocator.USER_SETTINGS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _child(mode: str) -> Dict[str, object]:
    result = subprocess.run([sys.executable, "-c", CHILD, mode], env=_clean_env(), capture_output=True,
                            text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not ON_LINUX_GLIBC, reason="mallopt's thresholds are glibc's; /proc is Linux's")
def test_freed_tensors_stay_with_the_process_once_configured():
    """The next step reuses them instead of faulting fresh pages in (the module's measurement)."""
    configured = _child("configure")
    assert configured["configured"] == "kept"
    assert configured["grown"] >= 8 * 9 * 2 ** 20 * 0.9, configured
    assert configured["held"] >= configured["grown"] * 0.9, configured


@pytest.mark.skipif(not ON_LINUX_GLIBC, reason="mallopt's thresholds are glibc's; /proc is Linux's")
@pytest.mark.parametrize("mode", ["defaults", "libraries"])
def test_without_the_runner_glibc_returns_freed_tensors(mode):
    """glibc's own behaviour (this makes the test above able to fail), unchanged by importing the libraries:
    only the runner (main.py, the benchmarks) changes the allocator, never a user's script by an import."""
    child = _child(mode)
    assert child["grown"] >= 8 * 9 * 2 ** 20 * 0.9, child
    assert child["held"] <= child["grown"] * 0.1, child


@pytest.mark.parametrize("name, value, expected", [
    ("MALLOC_TRIM_THRESHOLD_", "131072", "set by $MALLOC_TRIM_THRESHOLD_"),
    ("MALLOC_MMAP_THRESHOLD_", "131072", "set by $MALLOC_MMAP_THRESHOLD_"),
    ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072", "set by $GLIBC_TUNABLES"),
    ("GLIBC_TUNABLES", "glibc.pthread.rseq=0", "kept"),  # tunables of something else than malloc
])
def test_an_allocator_setting_in_the_environment_is_left_alone(name, value, expected):
    if expected == "kept" and not ON_LINUX_GLIBC:
        pytest.skip("mallopt's thresholds are glibc's")
    code = "from runner import allocator; print(allocator.configure())"
    result = subprocess.run([sys.executable, "-c", code], env=_clean_env(**{name: value}), capture_output=True,
                            text=True, check=True, cwd=REPO_ROOT)
    assert result.stdout.strip() == expected



# A child process that imports runner.threads (after torch where asked) and reports what it set.
THREADS_CHILD = """
import json, os, sys
if sys.argv[1] == "torch first":
    import torch
import runner.threads
print(json.dumps({"applied": runner.threads.APPLIED,
                  "settings": {name: os.environ.get(name) for name in runner.threads.USER_SETTINGS}}))
"""


def _threads_child(order: str, **env: str) -> Dict[str, object]:
    clean = {name: value for name, value in _clean_env().items() if name not in threads.USER_SETTINGS}
    result = subprocess.run([sys.executable, "-c", THREADS_CHILD, order], env=dict(clean, **env),
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_idle_openmp_threads_spin_briefly_then_sleep_when_imported_before_torch():
    child = _threads_child("runner first")
    assert child["applied"] is True
    assert child["settings"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": threads.SPIN_COUNT, "KMP_BLOCKTIME": "0"}


def test_the_wait_settings_are_not_made_after_torch_has_loaded_openmp():
    child = _threads_child("torch first")
    assert child["applied"] is False
    assert child["settings"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, "KMP_BLOCKTIME": None}


@pytest.mark.parametrize("name, value", [("OMP_WAIT_POLICY", "PASSIVE"), ("GOMP_SPINCOUNT", "1000"),
                                         ("KMP_BLOCKTIME", "5")])
def test_a_wait_setting_of_the_user_wins(name, value):
    child = _threads_child("runner first", **{name: value})
    assert child["applied"] is False
    assert child["settings"] == {other: (value if other == name else None) for other in threads.USER_SETTINGS}
