"""Keep freed memory in the process for the next training step (glibc on Linux).

Every training step allocates the same temporaries of a few megabytes (im2col matrices, GEMM
outputs, padded copies) and frees them again. glibc's malloc serves a request above its mmap
threshold (128 KB at first, raised as large blocks are freed, to 32 MB at most) with fresh
pages from the kernel, and gives memory above its trim threshold at the top of the heap back to
the kernel. Blocks of equal size at that threshold, which a 16 -> 16 5x5 convolution makes
(its patches, GEMM output and shifted dY are all 80 x N*L), come back as new pages every step,
and each new 4 KB page costs a page fault when first written: 1,100-1,500 faults in a step of
the MNIST network's 32-image slice, a quarter to a third of its time on the project's VM
(docs/benchmarks.md, "Page faults").

Three ``mallopt`` settings keep every block in the heap and up to 2 GB of freed memory at its
top, so the next step reuses the same pages: blocks below 32 MB (the mmap threshold's
ceiling) by the threshold itself, larger ones by turning mmap off (``M_MMAP_MAX`` 0). The
large ones matter at large batches: at batch 512 the fast CIFAR-10 network's step allocates
gigabytes of temporaries, each block above 32 MB a fresh mapping whose pages the kernel
faults in and zeroes again every step (6.4 s of system time in three steps, about 15% of
the CPU time; 0.0 s with these settings, the peak memory unchanged). The cost: memory freed
by training stays with the process (up to its peak use) instead of going back to the
system. They are an opt-in, applied once per process, never at import: by
:func:`anyarray_nn.tune_malloc` (which ``anyarray-bench`` and the examples call, where it
pays), or at the first training forward pass of a model when ``ANYARRAY_NN_TUNE_MALLOC=1``;
only on Linux with glibc, and not when ``ANYARRAY_NN_TUNE_MALLOC=0`` or glibc's own
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_MAX_`` is set (the
user's settings win). The decision is logged on the "anyarray_nn" logger.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold on 64-bit systems
TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt takes (an int): about 2 GB
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")


def tune_malloc() -> bool:
    """Apply the two settings above where they apply; returns whether they were applied."""
    if os.environ.get("ANYARRAY_NN_TUNE_MALLOC", "1") == "0":
        return False
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False
    if platform.system() != "Linux" or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # The mmap threshold first: setting either one turns off glibc's dynamic adjustment.
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                and mallopt(_M_MMAP_MAX, 0))


def _glibc() -> bool:
    # Asks the C library itself; platform.libc_ver() would scan the Python executable, which
    # takes a while for a statically linked one, at every import and in every helper process.
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr, or no such name here
        return False


logger = logging.getLogger("anyarray_nn")
_decided: list[bool] = []  # the one decision of this process, once made


def tune() -> bool:
    """Apply the settings above, once per process (later calls only answer); returns
    whether the process runs with them, logging the decision once. Public as
    :func:`anyarray_nn.tune_malloc`; ``ANYARRAY_NN_TUNE_MALLOC=0`` and glibc's own variables
    still win."""
    if not _decided:
        _decided.append(tune_malloc())
        if _decided[0]:
            logger.info("malloc tuned for training: every block from the heap (mmap off), up "
                        "to %d MB of freed memory kept for the next step", TRIM_THRESHOLD >> 20)
        else:
            logger.info("malloc left as it is (not glibc, ANYARRAY_NN_TUNE_MALLOC=0, or "
                        "glibc's variables set by the user)")
    return _decided[0]


def tune_if_asked() -> None:
    """:func:`tune` where ``ANYARRAY_NN_TUNE_MALLOC=1`` asks for it (a model's first training
    forward pass calls this; without the variable nothing happens)."""
    if not _decided and os.environ.get("ANYARRAY_NN_TUNE_MALLOC") == "1":
        tune()
