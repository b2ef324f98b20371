"""Timing, the machine's GEMM peak, the environment record, and a whole benchmark run.

Timing rules (docs/benchmarks.md explains why):

* every target of one case is timed in the same run, in alternating blocks with warm-up
  calls at each switch, so all sides see the same machine load; single-call alternation is
  avoided because PyTorch's OpenMP threads keep spinning after each call;
* a GPU is synchronised before every clock read;
* a row reports the median and the interquartile range over ``repeats`` timed runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, cast

import numpy as np

from .. import __version__, _allocator
from .. import backend as _backend
from ..functional import _fast
from .cases import Case

SCHEMA = "anyarray-bench/1"
REFERENCE_CPU, REFERENCE_CUDA = "pytorch", "pytorch:cuda"
PORTABLE = " (portable)"  # "cupy (portable)": cupy with its fast paths off (--portable)


@dataclasses.dataclass
class Settings:
    """What one run measures."""

    backends: list[str]            # ours: backend names
    references: list[str]          # "pytorch", "pytorch:cuda"
    batches: list[int]
    dtype: str = "float32"
    repeats: int = 10
    blocks: int = 2
    threads: int | None = None
    portable: bool = False         # also time backends with fast paths without them


def split_target(target: str) -> tuple[str, bool]:
    """``"cupy (portable)"`` -> ``("cupy", True)``; any other target -> ``(target, False)``."""
    if target.endswith(PORTABLE):
        return target[:-len(PORTABLE)], True
    return target, False


def portable_twins(backends: list[str], dtype: str) -> list[str]:
    """The backends among ``backends`` that have fast paths, named for a portable-only run."""
    twins = []
    for name in backends:
        xp = _backend.get_backend(name).xp
        if _fast.has_fast_paths(xp, _backend.resolve_dtype(xp, dtype)):
            twins.append(name + PORTABLE)
    return twins


def all_targets(settings: Settings) -> list[str]:
    """What ``run`` times: our backends, their portable twins (--portable), the references."""
    twins = portable_twins(settings.backends, settings.dtype) if settings.portable else []
    return settings.backends + twins + settings.references


def device_of(target: str) -> str:
    """"cuda" for targets that run on a GPU, "cpu" otherwise."""
    return "cuda" if _backend.on_gpu(split_target(target)[0]) else "cpu"


def synchronizer(target: str) -> Callable[[], None]:
    """Waits for the target's device; a no-op on the CPU."""
    if target == REFERENCE_CUDA:
        import torch
        return torch.cuda.synchronize
    if device_of(target) == "cuda":
        return lambda: _backend.synchronize(split_target(target)[0])
    return lambda: None


def block_sizes(repeats: int, blocks: int) -> list[int]:
    """How :func:`time_targets` spreads ``repeats`` timed runs over its blocks."""
    blocks = max(1, min(blocks, repeats))
    return [repeats // blocks + (block < repeats % blocks) for block in range(blocks)]


def time_targets(calls: dict[str, Callable[[], Any]], repeats: int, blocks: int,
                 warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per run of each callable: ``repeats`` timed runs each, spread over up to
    ``blocks`` alternating blocks (never an empty block)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    syncs = {name: synchronizer(name) for name in calls}
    for runs in block_sizes(repeats, blocks):
        for name, call in calls.items():
            sync = syncs[name]
            for _ in range(warmup):
                call()
            sync()
            for _ in range(runs):
                start = time.perf_counter()
                call()
                sync()
                times[name].append(time.perf_counter() - start)
    return times


# When a row's times cannot be trusted (docs/benchmarks.md, "Reading a run"): a spread
# (interquartile range) above this fraction of the median; blocks whose medians differ by more
# than this factor; times at whole multiples of the shortest (within this fraction), as a
# busy machine's scheduler makes them (PyTorch's medians at 8, 16 and 24 ms).
WIDE_SPREAD = 0.25
BLOCK_JUMP = 1.3
QUANTUM_TOLERANCE = 0.04


def doubts(times: list[float], blocks: int) -> list[str]:
    """Why the times of one row (in the order :func:`time_targets` took them, over
    ``blocks`` blocks) cannot be trusted; empty when nothing is wrong with them."""
    found = []
    if len(times) >= 4:
        median, q1, q3 = summarize(times)
        if median > 0 and (q3 - q1) / median > WIDE_SPREAD:
            found.append("wide spread")
        shortest = min(times)
        steps = [t / shortest for t in times] if shortest > 0 else []
        if steps and max(steps) >= 1.9 and all(
                abs(s - round(s)) <= QUANTUM_TOLERANCE * round(s) for s in steps):
            found.append("quantized times")
    sizes = block_sizes(len(times), blocks)
    if len(sizes) > 1 and min(sizes) >= 2:
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        medians = [statistics.median(times[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        if min(medians) > 0 and max(medians) / min(medians) > BLOCK_JUMP:
            found.append("blocks disagree")
    return found


def busy_cores(load: float, cores: int) -> bool:
    """Whether other work was running when the run began: a one-minute load average above a
    quarter of the cores (an idle machine shows 0.0-0.3 here)."""
    return load > max(0.5, cores / 4)


def summarize(times: list[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) in seconds."""
    if len(times) == 1:
        return times[0], times[0], times[0]
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q1, q3


def gemm_peak(targets: list[str], dtype: str, size: int = 2048) -> dict[str, float]:
    """The best GEMM rate (FLOP/s) per device among the targets' libraries, measured now."""
    peaks: dict[str, float] = {}
    for target in targets:
        device = device_of(target)
        multiply = _gemm_callable(target, dtype, size)
        if multiply is None:
            continue
        seconds = summarize(time_targets({target: multiply}, repeats=5, blocks=1)[target])[0]
        peaks[device] = max(peaks.get(device, 0.0), 2 * size ** 3 / seconds)
    return peaks


def _gemm_callable(target: str, dtype: str, size: int) -> Callable[[], Any] | None:
    host = np.random.default_rng(0).standard_normal((size, size))
    if target.startswith("pytorch"):
        import torch
        a = torch.tensor(host, dtype=getattr(torch, dtype), device=device_of(target))
        return lambda: a @ a
    if target == "array_api_strict":
        return None  # a reference implementation: its speed says nothing about the machine
    a = _backend.asarray(host, backend=target, dtype=dtype)
    return lambda: a @ a


def environment(settings: Settings) -> dict[str, Any]:
    """CPU, threads, library versions, GPU and driver, date: recorded with every run."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "anyarray_nn": __version__, "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "numpy": np.__version__, "dtype": settings.dtype,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                           "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "ANYARRAY_NN_TUNE_MALLOC", "MALLOC_MMAP_THRESHOLD_",
                                           "MALLOC_TRIM_THRESHOLD_")
                if k in os.environ},
        "malloc_tuned": _allocator.tune(),  # the benchmark opts in: anyarray_nn/_allocator.py
    }
    try:
        import array_api_compat
        env["array_api_compat"] = array_api_compat.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import threadpoolctl
        env["thread_pools"] = [
            {k: pool.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                      "architecture")}
            for pool in threadpoolctl.threadpool_info()]
    except ImportError:
        env["thread_pools"] = None
    env["openblas_alternative"] = openblas_alternative(settings.threads)
    if "torch" in sys.modules or any(t.startswith(("torch", "pytorch"))
                                     for t in settings.backends + settings.references):
        import torch
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["torch_cuda_runtime"] = torch.version.cuda
    if any(t.startswith("cupy") for t in settings.backends):
        import cupy
        env["cupy"] = cupy.__version__
        props = cupy.cuda.runtime.getDeviceProperties(0)
        env["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return env


_SGEMM_SNIPPET = (
    "import time, numpy as np\n"
    "a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)\n"
    "a @ a\n"
    "ts = []\n"
    "for _ in range(5):\n"
    "    t = time.perf_counter(); a @ a; ts.append(time.perf_counter() - t)\n"
    "print(2 * 2048 ** 3 / sorted(ts)[2] / 1e9)\n")


def openblas_alternative(threads: int | None = None) -> dict[str, Any] | None:
    """NumPy's sgemm rate with OpenBLAS's other kernel choice, measured in a fresh process.

    With ``OPENBLAS_CORETYPE`` pinned (e.g. to Haswell's AVX2 kernels) this shows the
    autodetected figure beside it; without it, the Haswell figure. ``threads`` limits that
    process's BLAS as ``--threads`` limits this one. None if NumPy does not use OpenBLAS.
    """
    import subprocess
    try:
        import threadpoolctl
        if not any(p.get("internal_api") == "openblas" for p in threadpoolctl.threadpool_info()):
            return None
    except ImportError:
        return None
    env = dict(os.environ)
    pinned = env.pop("OPENBLAS_CORETYPE", None)
    label = "autodetected" if pinned else "Haswell"
    if not pinned:
        env["OPENBLAS_CORETYPE"] = "Haswell"
    if threads is not None:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", _SGEMM_SNIPPET], env=env, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        return None
    return {"OPENBLAS_CORETYPE": label, "numpy_sgemm_gflops": float(done.stdout.strip())}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def empty_result(settings: Settings) -> dict[str, Any]:
    """A result with no rows (nothing could run), in the same schema."""
    return {"schema": SCHEMA, "environment": environment(settings),
            "settings": dataclasses.asdict(settings), "gemm_peak_gflops": {}, "rows": []}


def run(cases: list[Case], settings: Settings,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every case at every batch size on every target; return the JSON-ready result."""
    before = load_before()  # first: nothing of ours runs yet
    targets = all_targets(settings)
    peaks = gemm_peak(settings.backends + settings.references, settings.dtype)
    rows = []
    for case in cases:
        for batch in settings.batches:
            if progress:
                progress(f"{case.name} batch {batch}")
            built = {t: build(case, t, batch, settings.dtype) for t in targets}
            calls = {t: call for t, call in built.items() if call is not None}
            del built
            times = time_targets(calls, settings.repeats, settings.blocks)
            medians = {t: summarize(times[t])[0] for t in calls}
            doubted = {t: doubts(times[t], settings.blocks) for t in calls}
            for target in calls:
                row = _row(case, batch, target, times[target], medians, peaks, settings)
                reference = row["reference"]
                row["doubts"] = doubted[target] + [
                    f"reference: {d}" for d in doubted.get(reference, [])
                    if reference is not None and reference != target]
                if case.suite == "train":
                    row["peak_memory_mb"] = peak_memory_mb(calls[target], target)
                rows.append(row)
            del calls  # this case's arrays go before the next case's are built (memory.py)
    result = empty_result(settings)
    result.update(gemm_peak_gflops={d: p / 1e9 for d, p in peaks.items()}, rows=rows)
    result["environment"]["load_before"] = before
    return result


def load_before() -> float | None:
    """The one-minute load average as a run begins (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def build(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any] | None:
    """``case.build`` for one target; a portable twin builds and runs with fast paths off."""
    backend, portable = split_target(target)
    if not portable:
        return case.build(target, batch, dtype)
    with _fast.portable_kernels():
        call = case.build(backend, batch, dtype)
    if call is None:
        return None

    def run_portable() -> Any:
        with _fast.portable_kernels():
            return call()
    return run_portable


def peak_memory_mb(call: Callable[[], Any], target: str) -> float | None:
    """Peak memory allocated while ``call`` runs once, where the library lets us see it:
    NumPy arrays (tracemalloc), CuPy arrays (a hook on CuPy's memory pool) and PyTorch CUDA
    tensors; None elsewhere. A step computed in other processes (MPI ranks) reports the sum
    of their peaks."""
    if getattr(call, "runs_in_other_processes", False):
        return cast(Any, call).peak_memory_mb()  # ranks.MpiSteps
    if target == "numpy":
        import tracemalloc
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
    if _backend.base_name(split_target(target)[0]) == "cupy":
        return _cupy_peak_memory_mb(call, target)
    if target == REFERENCE_CUDA:
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def _row(case: Case, batch: int, target: str, times: list[float], medians: dict[str, float],
         peaks: dict[str, float], settings: Settings) -> dict[str, Any]:
    median, q1, q3 = summarize(times)
    flops = case.flops(batch)
    device = device_of(target)
    reference = REFERENCE_CUDA if device == "cuda" else REFERENCE_CPU
    rate = flops / median if flops else None
    return {
        "case": case.name, "suite": case.suite, "layer": case.layer, "piece": case.piece,
        "batch": batch, "dtype": settings.dtype, "backend": target, "device": device,
        "shape": case.shape(batch), "flops": flops, "repeats": len(times),
        "median_s": median, "q1_s": q1, "q3_s": q3,
        "gflops": rate / 1e9 if rate else None,
        "images_per_s": batch / median if case.suite == "train" else None,
        "reference": reference if reference in medians else None,
        "ratio_to_reference": medians[reference] / median if reference in medians else None,
        "peak_fraction": rate / peaks[device] if rate and device in peaks else None,
    }


def _cupy_peak_memory_mb(call: Callable[[], Any], target: str) -> float:
    """Like PyTorch's max_memory_allocated: the most bytes that CuPy's pool handed out at
    once while ``call`` ran, counting those already in use when it started."""
    import cupy
    from cupy.cuda import memory_hook

    class PeakHook(memory_hook.MemoryHook):
        name = "anyarray_nn_peak_memory"

        def __init__(self, in_use: int) -> None:
            self.in_use = self.peak = in_use

        def malloc_postprocess(self, **kwargs: Any) -> None:
            self.in_use += kwargs["mem_size"]
            self.peak = max(self.peak, self.in_use)

        def free_postprocess(self, **kwargs: Any) -> None:
            self.in_use -= kwargs["mem_size"]

    sync = synchronizer(target)
    sync()
    with PeakHook(cupy.get_default_memory_pool().used_bytes()) as hook:
        call()
        sync()
    return hook.peak / 2**20
