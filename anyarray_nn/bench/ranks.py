"""The data parallel training step over MPI ranks, timed step by step from the benchmark.

:class:`MpiSteps` starts ``mpiexec -n <ranks>`` on this module once per case: each rank
builds the network wrapped in :class:`~anyarray_nn.distributed.DistributedDataParallel`, its
part of the global batch and the optimizer, then waits. Every call of the object runs one
step on all ranks (forward, backward with the gradients' all-reduce, SGD update) and returns
when every rank is done, so the harness times it like any other callable, alternating with
PyTorch. The ranks wait on a blocking socket read between steps: a rank waiting inside MPI
would spin on its core and slow whatever the harness times meanwhile. Each rank computes on
one core (one BLAS thread).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tracemalloc
import weakref

import numpy as np

from .. import distributed

STEP, MEASURE, QUIT, DONE = b"s", b"m", b"q", b"d"
START_SECONDS = 120  # starting the ranks and building the network
STEP_SECONDS = 600


class MpiSteps:
    """One training step of ``network`` at global ``batch`` over ``ranks`` MPI ranks per
    call (see the module's docstring). :meth:`close` (or garbage collection) ends the job."""

    runs_in_other_processes = True  # the harness asks peak_memory_mb() for its memory

    def __init__(self, network: str, batch: int, dtype: str, ranks: int = 2) -> None:
        launcher = distributed.mpiexec()
        if launcher is None:
            raise RuntimeError('MpiSteps: MPI is not installed (pip install "anyarray_nn[mpi]")')
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(START_SECONDS)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [launcher, "-n", str(ranks), sys.executable, "-m", "anyarray_nn.bench.ranks",
             network, str(batch), dtype, str(server.getsockname()[1])],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.links: list[socket.socket] = []
        self._finalizer = weakref.finalize(self, _stop, self.process, self.links)
        try:
            for _ in range(ranks):
                link, _ = server.accept()
                link.settimeout(STEP_SECONDS)
                self.links.append(link)
            self._wait()  # every rank has built its network
        except (OSError, RuntimeError) as exc:
            self.close()
            raise RuntimeError(f"MpiSteps: the {ranks} ranks did not start: "
                               f"{self._stderr() or exc}") from None
        finally:
            server.close()

    def __call__(self) -> None:
        for link in self.links:
            link.sendall(STEP)
        self._wait()

    def peak_memory_mb(self) -> float:
        """One step with every rank tracing its NumPy arrays (tracemalloc): the sum of the
        ranks' peaks, in MiB."""
        for link in self.links:
            link.sendall(MEASURE)
        total = 0.0
        for link in self.links:
            reply = b""
            while len(reply) < 8:
                part = link.recv(8 - len(reply))
                if not part:
                    raise RuntimeError(f"MpiSteps: a rank stopped: {self._stderr()}")
                reply += part
            total += float(np.frombuffer(reply, dtype="<f8")[0])
        return total / 2**20

    def _wait(self) -> None:
        for link in self.links:
            if link.recv(1) != DONE:
                raise RuntimeError(f"MpiSteps: a rank stopped: {self._stderr()}")

    def _stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        stream = self.process.stderr
        return ((stream.read() if stream else b"") or b"").decode(errors="replace")[-2000:]

    def close(self) -> None:
        """Stop the ranks and wait for the job to end."""
        self._finalizer()


def _stop(process: subprocess.Popen, links: list[socket.socket]) -> None:
    for link in links:
        try:
            link.sendall(QUIT)
        except OSError:
            pass
        link.close()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _rank_main(network: str, batch: int, dtype: str, port: int) -> None:
    """One rank: build, report ready, then one step per STEP received."""
    from .. import _allocator
    from .cases import training_step

    _allocator.tune()  # as the harness: the benchmark opts in
    rank, size = distributed.shard()
    step = training_step(network, "numpy", batch, dtype, distributed.DistributedDataParallel,
                         slice(batch * rank // size, batch * (rank + 1) // size))
    link = socket.create_connection(("127.0.0.1", port))
    with distributed.abort_on_error():
        link.sendall(DONE)
        while (order := link.recv(1)) in (STEP, MEASURE):
            if order == STEP:
                step()
                link.sendall(DONE)
                continue
            tracemalloc.start()
            try:
                step()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            link.sendall(np.array([peak], dtype="<f8").tobytes())
    link.close()


if __name__ == "__main__":
    _rank_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
