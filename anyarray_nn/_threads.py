"""How many threads the library computes on, decided in one place.

* :func:`cpu_count`: the cores this process may run on.
* :func:`one_core`: whether the process counts as computing on one thread, which decides
  between a GEMM and a one-threaded numba kernel (``functional._fast``).
* :data:`one_blas_thread`: one BLAS thread for the whole process while work is split over
  threads (DataParallel's slices, :func:`map_on_cores`' pieces), so that the threads do not
  each start a BLAS team on the same cores.
* :func:`map_on_cores`: independent pieces of one operation (the groups of a grouped
  convolution) computed at the same time, one per core.

It imports nothing of the package: the kernels below and DataParallel above both use it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import os
import threading
from typing import Any, Callable, Iterable, Iterator

logger = logging.getLogger("anyarray_nn")


def cpu_count() -> int:
    """Cores this process may run on: its share (:func:`share_cores`) where several
    processes of one job (MPI ranks) share the machine."""
    return _share[0] if _share else _machine_cores()


@functools.cache
def _machine_cores() -> int:
    """The cores this process may use: its CPU affinity, and in a container its cgroup CPU
    quota (a quota of 1.5 CPUs counts as 2), as joblib's ``cpu_count`` reads them (loky's
    parser of cgroup v1 and v2, kept by the joblib project). Logged once."""
    import joblib
    cores = max(1, int(joblib.cpu_count()))
    logger.info("this process computes on %d core(s) (its CPU affinity and cgroup quota, "
                "as joblib counts them)", cores)
    return cores


_share: list[int] = []  # this process's cores, once it shares the machine with others
_share_limits: list[Any] = []  # the thread pools' limit, kept for the process's life


def share_cores(processes: int) -> int:
    """Make this process one of ``processes`` computing on this machine (MPI ranks): its
    share of the cores, at least one, becomes :func:`cpu_count`, and the BLAS and OpenMP
    thread pools are limited to it for the rest of the process, unless the user set
    ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` (then they are left alone). Otherwise
    each rank's BLAS would start a thread per core, and two ranks' threads spinning on the
    same cores made a 2-rank training step 25x slower. Logged; returns the share."""
    machine = _machine_cores()
    share = max(1, machine // max(1, processes))
    _share[:] = [share]
    _single_threaded_process.cache_clear()
    chosen = [name for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if name in os.environ]
    if not chosen:
        from threadpoolctl import threadpool_limits
        _share_limits[:] = [threadpool_limits(limits=share)]
    logger.info("%d processes of this job on this machine's %d cores: this one computes on "
                "%d%s", processes, machine, share,
                f" (thread pools as {', '.join(chosen)} set them)" if chosen
                else f", its BLAS and OpenMP pools limited to {share} thread(s)")
    return share


_one_thread_blocks: list[bool] = []


def one_core() -> bool:
    """Whether this process computes on one thread: inside :func:`one_thread_each` (while
    work is split over threads), with ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` 1, or
    on one core."""
    return bool(_one_thread_blocks) or _single_threaded_process()


@functools.cache
def _single_threaded_process() -> bool:
    settings = (os.environ.get(name, "") for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"))
    return cpu_count() == 1 or "1" in (setting.strip() for setting in settings)


@contextlib.contextmanager
def one_thread_each() -> Iterator[None]:
    """In the block, the whole process counts as computing on one thread per piece of work
    (:func:`one_core`). :data:`one_blas_thread` enters it, as it limits BLAS."""
    _one_thread_blocks.append(True)
    try:
        yield
    finally:
        _one_thread_blocks.pop()


class _OneBlasThread:
    """One BLAS thread while any split of work runs in this process, and ``one_core()`` for
    the choice of kernels. The limit is process-wide: the first to enter sets it, the last to
    leave restores it (two splits each restoring what it saw on entry could leave it at one
    for good)."""

    def __init__(self) -> None:
        self.lock, self.depth = threading.Lock(), 0
        self.limiter: Any = None  # threadpoolctl's limit while a split runs
        self.kernels = contextlib.ExitStack()
        self.controller: Any = None  # made at first use: importing inspects nothing

    def __enter__(self) -> None:
        with self.lock:
            if self.depth == 0:
                if self.controller is None:
                    from threadpoolctl import ThreadpoolController
                    self.controller = ThreadpoolController()
                self.limiter = self.controller.limit(limits=1, user_api="blas")
                self.kernels.enter_context(one_thread_each())
            self.depth += 1

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                self.limiter.restore_original_limits()
                self.kernels.close()


one_blas_thread = _OneBlasThread()

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _shared_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's pool of one thread per core, started at first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=cpu_count(), thread_name_prefix="anyarray_nn")
            logger.info("independent pieces of an operation (the groups of a grouped "
                        "convolution) run on %d threads, one BLAS thread each", cpu_count())
        return _pool


def map_on_cores(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[function(item) for item in items]``, computed at the same time on the process's
    cores, one BLAS thread each, where that can pay: two or more items and cores, and not
    already inside a split (:func:`one_core`), else in order on this thread. Each call runs in
    a copy of the caller's context, so ``portable_kernels()`` blocks apply. Waits for every
    item before raising the first error."""
    items = list(items)
    if len(items) < 2 or one_core():
        return [function(item) for item in items]
    pool = _shared_pool()
    with one_blas_thread:
        futures = [pool.submit(contextvars.copy_context().run, function, item)
                   for item in items]
        concurrent.futures.wait(futures)
    return [future.result() for future in futures]
