"""Whether a benchmark run fits in memory, decided before anything runs.

Without this check a batch size of a billion ends in a MemoryError (or the kernel's OOM
killer) partway through a run. :func:`refusal` adds up what every target builds and runs
for each case (``Case.memory``: upper estimates from the case's array shapes) on the memory
that target uses, and compares the sum with what the machine has available now.

``harness.run`` builds all targets of one case before timing them in turn, and lets go of
them before the next case, so one case at one batch size needs, on each memory, every
target's kept arrays at once plus the largest working set of one run (or the float64 draws
of one build, on the host).
"""

from __future__ import annotations

import fractions
import os
from typing import Callable

from .cases import Case
from .harness import REFERENCE_CUDA, Settings, all_targets, device_of, split_target

# Margin on the estimate for what it leaves out: the allocators' rounding and fragmentation
# (CuPy's and PyTorch's pools keep freed blocks), small temporaries (bias broadcasts, masks),
# and the GEMM libraries' workspaces. Measured with tracemalloc on NumPy at batch 32, the
# estimates are 1.0-2x the peak of the portable kernels, up to 5x that of numba's direct
# convolutions, which make no im2col matrix (tests/test_bench_inputs.py checks both).
SAFETY_FACTOR = fractions.Fraction(3, 2)  # exact: batch sizes may be any integer
UNITS = ("bytes", "kB", "MB", "GB", "TB", "PB", "EB")
MEMINFO, CGROUP = "/proc/meminfo", "/sys/fs/cgroup"  # where Linux tells the memory left


def human_bytes(count: int) -> str:
    """``count`` bytes in decimal units with one decimal, e.g. "1.2 TB" (exact for any size)."""
    power = 0
    while power < len(UNITS) - 1 and count >= 1000 ** (power + 1):
        power += 1
    if power == 0:
        return f"{count} bytes"
    unit = 1000 ** power
    tenths = (count * 10 + unit // 2) // unit  # rounded, in integers: no float overflow
    return f"{tenths // 10}.{tenths % 10} {UNITS[power]}"


def needed(case: Case, batch: int, targets: list[str], dtype: str) -> dict[str, int]:
    """Estimated peak bytes, safety factor included, of timing ``case`` at ``batch`` on
    ``targets``, per memory: "host" and, when a target runs on one, "gpu"."""
    kept = {"host": 0}
    working = {"host": 0}
    for target in targets:
        backend = split_target(target)[0]
        if not case.runs_on(backend):
            continue
        where = "gpu" if device_of(target) == "cuda" else "host"
        estimate = case.memory(batch, dtype, backend)
        kept[where] = kept.get(where, 0) + estimate.kept
        # The float64 draws are made on the host, and CuPy casts them on the GPU.
        working[where] = max(working.get(where, 0), estimate.working, estimate.staging)
        working["host"] = max(working["host"], estimate.staging)
    return {where: int((kept[where] + working[where]) * SAFETY_FACTOR) for where in kept}


def refusal(cases: list[Case], settings: Settings) -> str | None:
    """Why timing ``cases`` with ``settings`` would not fit in memory, or None.

    The message names the largest batch size, the case that needs the most memory, the
    estimate and the memory available, and the largest batch size that fits every case.
    """
    targets = all_targets(settings)
    room = memory_available(targets)

    def over(case: Case, batch: int) -> list[tuple[int, str]]:
        """(bytes needed, memory) for each memory that ``case`` at ``batch`` would overfill."""
        needs = needed(case, batch, targets, settings.dtype)
        return [(need, where) for where, need in needs.items()
                if where in room and need > room[where][0]]

    batch = max(settings.batches)  # the estimates grow with the batch size
    refused = {case.name: excess for case in cases if (excess := over(case, batch))}
    if not refused:
        return None
    (need, where), name = max((max(excess), name) for name, excess in refused.items())
    largest = min(_largest_fitting(lambda b: not over(case, b), batch)
                  for case in cases if case.name in refused)
    advice = (f"batch sizes up to {largest} fit every chosen case" if largest else
              "not even batch size 1 fits")
    memory = {"host": "host memory", "gpu": "GPU memory"}[where]
    return (f"batch size {batch} needs about {human_bytes(need)} of {memory} for case {name} "
            f"(estimated from its arrays on {_and(targets)}, times a safety factor of "
            f"{float(SAFETY_FACTOR)}), but about {human_bytes(room[where][0])} is available "
            f"({room[where][1]}); {advice}")


def memory_available(targets: list[str]) -> dict[str, tuple[int, str]]:
    """The bytes available now (and where the figure comes from) per "host" and "gpu"; the
    GPU's figure is the host's where no GPU library can tell it cheaply. A memory the
    system cannot measure is left out (and not checked)."""
    room = {}
    host = host_available()
    if host is not None:
        room["host"] = host
    gpu = gpu_available(targets) if any(device_of(t) == "cuda" for t in targets) else None
    if gpu is None and host is not None:
        gpu = (host[0], f"GPU memory unknown: {host[1]} stands in")
    if gpu is not None:
        room["gpu"] = gpu
    return room


def host_available() -> tuple[int, str] | None:
    """Bytes of host memory available now, and where that figure comes from: MemAvailable
    in /proc/meminfo (Linux), else the physical memory; less where this process's control
    group (a container) has less room left. None where the system cannot say."""
    try:
        with open(MEMINFO) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024  # in kB
        source = f"MemAvailable in {MEMINFO}"
    except (OSError, KeyError, ValueError, IndexError):
        try:
            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):  # no sysconf (Windows): not checked
            return None
        source = "the physical memory"
    room = _cgroup_room()
    if room is not None and room < available:
        return room, "the memory limit of this container (control group) less its usage"
    return available, source


def _cgroup_room() -> int | None:
    """Bytes left under this process's control-group memory limit (v2, then v1), or None."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        try:
            with open(os.path.join(CGROUP, limit_file)) as f:
                limit = f.read().strip()
            with open(os.path.join(CGROUP, usage_file)) as f:
                usage = int(f.read())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge number: no limit
            return max(int(limit) - usage, 0)
    return None


def gpu_available(targets: list[str]) -> tuple[int, str] | None:
    """Free bytes on the GPU of the GPU targets (the least, if they report several), as
    their libraries report it; None when none can say."""
    free = [(count, name) for name in targets if device_of(name) == "cuda"
            if (count := _gpu_free(split_target(name)[0])) is not None]
    if not free:
        return None
    count, name = min(free)
    return count, f"free GPU memory reported for {name}"


def _gpu_free(backend: str) -> int | None:
    try:
        if backend.startswith("cupy"):
            import cupy
            return int(cupy.cuda.Device(int(backend.partition(":")[2] or 0)).mem_info[0])
        import torch
        device = "cuda" if backend == REFERENCE_CUDA else backend.partition(":")[2]
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    except Exception:  # a library or driver that cannot say: host memory stands in
        return None


def _largest_fitting(fits: Callable[[int], bool], above: int) -> int:
    """The largest batch size below ``above`` that fits (0 if none), by bisection: the
    estimates grow with the batch size."""
    low, high = 0, above  # fits(low) (or low == 0), not fits(high)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _and(names: list[str]) -> str:
    return " and ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " and " + names[-1]
