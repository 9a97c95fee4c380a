"""The project's choice of C allocator settings: freed memory stays with the process.

glibc's ``malloc`` takes large blocks (above its mmap threshold, which it raises as such
blocks are freed, up to 32 MiB) straight from the operating system and hands them back when
they are freed, and it returns the free memory at the top of its heap once more than its trim
threshold (twice the mmap threshold) is free. A training step allocates and frees the same
large tensors in every step (at batch 32, one 28x28 feature map of rotMNIST5k's p4sa, 24
channels by 4 rotations, is 9.6 MB), so every step gets fresh pages from the operating
system, which zeroes each of them in a page fault when it is first written. Measured on that
p4sa's training step (batch 32, 2 threads, ``OMP_WAIT_POLICY=PASSIVE``, three processes each):
8,000-20,000 page faults and 30-51 ms of system time per step, steps of 205-209 ms; with the
settings below, 47-236 page faults, 7-14 ms, steps of 160-165 ms (one of 210 ms).

:func:`configure` serves blocks of up to 32 MiB from the heap and returns free heap memory to
the operating system only beyond 1 GiB, so a process keeps what its largest step needed (as
torch's CUDA allocator does on a GPU). It changes nothing where the process does not run on
glibc, or where its environment already chooses these settings (``GLIBC_TUNABLES``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``). Scripts of a user are not affected
by importing the libraries; they can set the same two thresholds in their environment, e.g.
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 python train.py``.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Optional

# mallopt's parameters (glibc's malloc.h) and the project's values for them.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest mmap threshold on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def user_setting() -> Optional[str]:
    """The environment variable by which the user chose the allocator's settings, if any."""
    for name in USER_SETTINGS:
        value = os.environ.get(name)
        if value and (name != "GLIBC_TUNABLES" or "glibc.malloc." in value):
            return name
    return None


def configure() -> str:
    """Keeps freed memory in the process (see the module); returns what the allocator runs with.

    Returns:
        ``"kept"`` where the settings were applied, ``"set by $NAME"`` where the environment
        chose them, ``"unchanged (...)"`` where the C library has no ``mallopt`` (not Linux) or
        refuses these settings (a C library other than glibc).
    """
    chosen = user_setting()
    if chosen:
        return f"set by ${chosen}"
    if platform.system() != "Linux":
        return "unchanged (not Linux)"
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return "unchanged (no mallopt)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "unchanged (mallopt refused)"
    return "kept"
