"""Keep freed host memory in the process, so that the next training step reuses it.

A training step on NumPy allocates and frees the same few-megabyte arrays again and again.
glibc's malloc hands large freed blocks back to the operating system (unmapped, or trimmed
from the top of the heap), and the next step pays a page fault for every 4 KiB it touches
again: on the project's machine that was 18% of an MNIST training step at batch 64 (21.2 ms
-> 17.3 ms) and 6% for the larger CIFAR-10 network (docs/benchmarks.md). PyTorch's CPU
allocator and jemalloc keep such memory for the same reason.

:func:`keep_freed_memory` raises glibc's thresholds so that blocks up to 64 MiB come from the
heap and up to 256 MiB of free heap stay mapped. ``import anyarray_nn`` calls it on Linux with
glibc; set ``ANYARRAY_NN_KEEP_MEMORY=0`` to leave malloc as it is. The cost: after a peak,
the process keeps up to 256 MiB more than it needs until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV_VAR = "ANYARRAY_NN_KEEP_MEMORY"
# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 64 << 20   # allocations below this come from the heap, which is reused
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept before returning it
TOP_PAD = 16 << 20          # extra heap grown at a time, so growth is rare


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (see the module docstring). Returns whether they were
    set: False off glibc, or when ``ANYARRAY_NN_KEEP_MEMORY=0``."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD)))
