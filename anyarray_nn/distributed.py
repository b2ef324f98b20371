"""Data parallel training over MPI: one process per rank, each on its own shard of every batch.

Started with ``mpiexec -n 4 python train.py``, each process trains the same model on its part
of each global batch; after every backward pass the gradients are all-reduced, so every rank
applies the same update and the weights stay identical everywhere (the shape of PyTorch's
DistributedDataParallel and ChainerMN). The library starts no process and speaks no protocol of
its own: mpi4py carries the messages (``pip install "anyarray_nn[mpi]"`` installs it and MPICH,
whose ``mpiexec`` runs on one machine or, with a host file, on several).

* :func:`init` joins MPI. Nothing here imports mpi4py until a function is called: a process
  started by ``mpiexec`` (it sets ``PMI_RANK``, ``OMPI_COMM_WORLD_RANK`` or ``PMIX_RANK``)
  joins at the first call, and a process started without it is rank 0 of 1 without ever
  loading MPI, so the same script runs unchanged either way.
* :class:`DistributedDataParallel` wraps a model: the parameters and buffers start as rank
  0's, and its backward pass averages the gradients over the ranks, each weighted by its
  share of the global batch (exact for losses averaged over the batch, the default of every
  loss here, also when the shards differ in size).
* ``DataLoader(..., shard=ann.distributed.shard())`` gives each rank its part of every global
  batch (see :class:`~anyarray_nn.data.DataLoader`).
* :func:`~anyarray_nn.fit` and :func:`~anyarray_nn.evaluate` notice the wrapper: only rank 0
  shows progress, every rank records the losses and accuracies of the whole global batch,
  and an error on one rank stops every rank (:func:`abort_on_error`).

Layers that see the batch: batch normalization computes its statistics on each rank's own
shard (PyTorch's default too), and before each forward pass every rank takes rank 0's
buffers (its running statistics), as PyTorch's ``broadcast_buffers``; each rank's Dropout
layers draw from their own streams, derived from the layer's seed and the rank when the
model is wrapped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import shutil
import sys
import traceback
from typing import Any, Iterator

import numpy as np

from . import _threads
from . import backend as _backend
from . import functional as F
from .errors import InputError
from .layers.norm import BatchNorm1D, BatchNorm2D, Dropout, _BatchNorm
from .model import Model, ModelWrapper

logger = logging.getLogger("anyarray_nn")

#: The environment variables by which MPI launchers (MPICH's Hydra, Open MPI, PMIx) tell a
#: process its rank.
LAUNCHER_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")

_comm: Any = None  # the communicator once joined; None: not joined (one rank, or not yet)


def mpiexec() -> str | None:
    """The ``mpiexec`` to start ranks with (the one beside this Python first), or None where
    MPI (the ``mpi`` extra: mpi4py and MPICH) is not installed. The library itself starts
    no process: the benchmark and the examples' ``--workers`` use it."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    here = shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    return here or shutil.which("mpiexec")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (``mpiexec``) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def init(comm: Any = None) -> None:
    """Join MPI (``MPI.COMM_WORLD``, or the mpi4py communicator ``comm``): called for the user
    at the first use of any function here when ``mpiexec`` started the process. The ranks
    that share a machine share its cores: each one's BLAS and OpenMP thread pools are
    limited to its share (logged; left alone where ``OMP_NUM_THREADS`` or
    ``OPENBLAS_NUM_THREADS`` is set). Raises ImportError with the install command when
    mpi4py is missing."""
    global _comm
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError('anyarray_nn.distributed: mpi4py is not installed; install it '
                          'and MPICH with: pip install "anyarray_nn[mpi]"') from exc
    comm = MPI.COMM_WORLD if comm is None else comm
    _comm = comm
    # The process id: mpiexec names a rank that dies by its process alone.
    logger.info("distributed: rank %d of %d (MPI) is process %d", comm.Get_rank(),
                comm.Get_size(), os.getpid())
    # The ranks on this machine share its cores: each computes on its share (see
    # _threads.share_cores, which logs what it decides).
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    if local.Get_size() > 1:
        _threads.share_cores(local.Get_size())
    local.Free()


def _communicator() -> Any:
    """The communicator, joining MPI first if ``mpiexec`` started this process; None for a
    process that runs alone."""
    if _comm is None and launched_by_mpi():
        init()
    return _comm


def rank() -> int:
    """This process's rank, 0 to ``world_size() - 1`` (0 without MPI)."""
    comm = _communicator()
    return 0 if comm is None else comm.Get_rank()


def world_size() -> int:
    """The number of ranks (1 without MPI)."""
    comm = _communicator()
    return 1 if comm is None else comm.Get_size()


def is_main() -> bool:
    """Whether this is rank 0, the one that prints and writes files."""
    return rank() == 0


def shard() -> tuple[int, int]:
    """``(rank(), world_size())``: what ``DataLoader(..., shard=...)`` takes."""
    return rank(), world_size()


def allreduce_sum(values: np.ndarray) -> np.ndarray:
    """``values`` (a contiguous host array) summed over the ranks, in place; returned."""
    comm = _communicator()
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI
        comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
    return values


def broadcast(values: np.ndarray, root: int = 0) -> np.ndarray:
    """``values`` (a contiguous host array) replaced by rank ``root``'s, in place; returned."""
    comm = _communicator()
    if comm is not None and comm.Get_size() > 1:
        comm.Bcast(values, root=root)
    return values


def allgather(values: np.ndarray) -> list[np.ndarray]:
    """Every rank's 1-D host array ``values`` (of one dtype, any lengths), in rank order."""
    comm = _communicator()
    if comm is None or comm.Get_size() == 1:
        return [values]
    lengths = np.zeros(comm.Get_size(), dtype=np.int64)
    lengths[comm.Get_rank()] = values.size
    allreduce_sum(lengths)
    everything = np.empty(int(lengths.sum()), dtype=values.dtype)
    comm.Allgatherv(np.ascontiguousarray(values), [everything, lengths])
    return np.split(everything, np.cumsum(lengths)[:-1])


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every rank's ``data``, in rank order (what the ranks tell each other: their states as
    JSON, an error message)."""
    return [part.tobytes() for part in allgather(np.frombuffer(data, dtype=np.uint8))]


@contextlib.contextmanager
def abort_on_error() -> Iterator[None]:
    """Inside this block an exception on one rank stops every rank: the error and the rank
    are printed, then ``MPI_Abort`` ends the whole job (the others would wait forever in
    their next collective call). Without MPI, or on one rank, the exception propagates."""
    try:
        yield
    except BaseException as exc:
        comm = _communicator()
        if comm is None or comm.Get_size() == 1:
            raise
        message = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"anyarray_nn.distributed: rank {comm.Get_rank()} of "
                         f"{comm.Get_size()} failed; stopping every rank:\n{message}")
        sys.stderr.flush()
        comm.Abort(1)
        raise  # not reached: Abort ends the process


class DistributedDataParallel(ModelWrapper):
    """Wraps a model for data parallel training over MPI (see the module's docstring).

    Made on every rank with the same architecture: the parameters and buffers become rank
    0's, and each Dropout layer's generator is reseeded from its own draw and the rank (so
    ranks drop different units; the generators are saved in checkpoints as before).
    ``backward`` returns after the gradients hold the average over the ranks, weighted by
    each rank's number of examples in the last forward pass. Everything else (``layers``,
    ``params()``, ``to()``, ``summary()``, ...) is the wrapped model's.
    """

    def __init__(self, model: Model) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"DistributedDataParallel: expected an anyarray_nn Model or "
                            f"Sequential, got {type(model).__name__}")
        self.model = model
        self._examples = 0
        self._from_rank_0(self._entries("params") + self._entries("buffers"))
        if world_size() > 1:
            for layer in model.layers:
                if isinstance(layer, Dropout):
                    layer.rng = np.random.default_rng([int(layer.rng.integers(2**63)), rank()])

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """The wrapped model's forward pass on this rank's examples, with rank 0's buffers
        (batch norm's running statistics: every rank evaluates the same model, the one rank
        0 saves)."""
        first = x[0] if isinstance(x, (tuple, list)) else x
        self._examples = int(first.shape[0])
        self._from_rank_0(self._entries("buffers"))
        return self.model.forward(x, train=train)

    def backward(self, dy: Any, *, input_grad: bool = False) -> Any:
        """The wrapped model's backward pass, then the gradients averaged over the ranks:
        every gradient replaced by sum_r n_r g_r / sum_r n_r, one all-reduce of one flat
        buffer with the ranks' example counts n_r in its last element."""
        dx = self.model.backward(dy, input_grad=input_grad)
        entries = self._entries("grads")
        if world_size() == 1 or not entries:
            return dx
        hosts = [_backend.to_host(store[key]) for store, key in entries]
        flat = _packed(hosts, np.result_type(*hosts), self._examples, trailing=1)
        flat[-1] = self._examples
        total = float(allreduce_sum(flat)[-1])
        if total == 0:
            raise ValueError("DistributedDataParallel: no rank had examples in its last "
                             "forward pass")
        _unpack(flat / total, entries)
        return dx

    def _entries(self, kind: str) -> list[tuple[dict[str, Any], str]]:
        """``(store, key)`` of every array of ``kind`` ("params", "buffers", "grads")."""
        return [(getattr(layer, kind), key) for layer in self.model.layers
                for key in getattr(layer, kind)]

    @staticmethod
    def _from_rank_0(entries: list[tuple[dict[str, Any], str]]) -> None:
        """The arrays of ``entries`` replaced by rank 0's: one broadcast of one flat buffer."""
        if world_size() == 1 or not entries:
            return
        hosts = [_backend.to_host(store[key]) for store, key in entries]
        _unpack(broadcast(_packed(hosts, np.float64)), entries)

    def __repr__(self) -> str:
        return f"DistributedDataParallel({self.model!r}, rank {rank()} of {world_size()})"


def _packed(hosts: list[np.ndarray], dtype: Any, scale: float = 1.0,
            trailing: int = 0) -> np.ndarray:
    """The host arrays ``hosts``, times ``scale``, in one flat buffer of ``dtype`` (what one
    collective call sends), with ``trailing`` more values at its end for the caller."""
    flat = np.empty(sum(h.size for h in hosts) + trailing, dtype=dtype)
    at = 0
    for h in hosts:
        np.multiply(np.ravel(h), scale, out=flat[at:at + h.size])
        at += h.size
    return flat


def _unpack(flat: np.ndarray, entries: list[tuple[dict[str, Any], str]]) -> None:
    """Each ``store[key]`` of ``entries`` replaced by its run of ``flat`` (in :func:`_packed`
    order), with the shape, dtype and backend of the array it replaces."""
    at = 0
    for store, key in entries:
        old = store[key]
        size = math.prod(old.shape)
        store[key] = _backend.asarray_like(np.reshape(flat[at:at + size], tuple(old.shape)), old)
        at += size


class _Synchronized(_BatchNorm):
    """Batch norm whose training statistics come from every rank's examples (see
    :func:`synchronize_batchnorm`). Saved as the plain batch norm it replaces."""

    fuses_relu = False  # its own passes: the ReLU runs as a layer
    plain: type  # the layer it synchronizes, by whose name it is saved (it loads anywhere)

    @property
    def type_name(self) -> str:
        return self.plain.__name__

    def _normalize_batch(self, x: Any, gamma: Any, beta: Any,
                         relu: bool) -> tuple[Any, Any, Any, int]:
        # Each rank's count, mean and sum of squared deviations per feature, gathered and
        # combined exactly (Chan et al.'s pairwise update): no sum of squares cancels.
        xp = _backend.namespace(x)
        axes = (0,) + tuple(range(2, x.ndim))
        count = math.prod(x.shape) // x.shape[1]  # _forward checked x's rank; channels >= 1
        channels = int(gamma.shape[0])
        mine = np.zeros(1 + 2 * channels)
        mine[0] = count
        if count:
            mean = xp.mean(x, axis=axes)
            centered = x - xp.reshape(mean, (1, channels) + (1,) * (x.ndim - 2))
            mine[1:1 + channels] = _backend.to_host(mean)
            mine[1 + channels:] = _backend.to_host(xp.sum(centered * centered, axis=axes))
        ranks = np.stack(allgather(mine))
        counts, means, squares = ranks[:, :1], ranks[:, 1:1 + channels], ranks[:, 1 + channels:]
        total = int(counts.sum())
        if total < 2:
            raise InputError(f"x: synchronized batch normalization needs at least 2 values "
                             f"per feature over all ranks, got {total}")
        mean = (counts * means).sum(axis=0) / total
        var = (squares + counts * (means - mean) ** 2).sum(axis=0) / total
        mean, var = _backend.asarray_like(mean, x), _backend.asarray_like(var, x)
        return F.batchnorm_inference(x, gamma, beta, mean, var, self.eps), mean, var, total

    def _batch_gradients(self, x: Any, gamma: Any, beta: Any, dy: Any, mean: Any, var: Any,
                         relu: bool) -> tuple[Any, Any, Any]:
        # With a_r = m_r / M (this rank's share of the M values per feature) the gradient of
        # the global loss is a_r dy here; its sums over every rank give
        # dx = gamma inv_std (dy - (G1 + xhat G2) / m_r) in this rank's units (DistributedDataParallel
        # weighs them back), G1 = sum_r a_r sum(dy_r), G2 = sum_r a_r sum(dy_r xhat_r).
        # The parameters' gradients are this rank's own sums: the wrapper averages them.
        xp = _backend.namespace(x)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, int(gamma.shape[0])) + (1,) * (x.ndim - 2)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        xhat = (x - xp.reshape(mean, shape)) * xp.reshape(inv_std, shape)
        dbeta, dgamma = xp.sum(dy, axis=axes), xp.sum(dy * xhat, axis=axes)
        count = math.prod(x.shape) // x.shape[1]
        sums = np.concatenate([[count], count * _backend.to_host(dbeta),
                               count * _backend.to_host(dgamma)]).astype(np.float64)
        allreduce_sum(sums)
        channels = int(gamma.shape[0])
        g1, g2 = sums[1:1 + channels] / sums[0], sums[1 + channels:] / sums[0]
        if count == 0:
            return xp.zeros_like(x), dgamma, dbeta
        g1, g2 = _backend.asarray_like(g1 / count, x), _backend.asarray_like(g2 / count, x)
        dx = xp.reshape(gamma * inv_std, shape) * (
            dy - xp.reshape(g1, shape) - xhat * xp.reshape(g2, shape))
        return dx, dgamma, dbeta


class SyncBatchNorm1D(_Synchronized, BatchNorm1D):
    """:class:`~anyarray_nn.layers.BatchNorm1D` with statistics over every rank's examples."""

    plain = BatchNorm1D


class SyncBatchNorm2D(_Synchronized, BatchNorm2D):
    """:class:`~anyarray_nn.layers.BatchNorm2D` with statistics over every rank's examples."""

    plain = BatchNorm2D


def synchronize_batchnorm(model: Model) -> Model:
    """``model`` with every BatchNorm1D and BatchNorm2D made synchronized, in place (the same
    parameters, buffers and names): in training, each one normalizes with the mean and
    variance of the whole global batch, all ranks' parts together, as PyTorch's
    ``SyncBatchNorm``; its backward pass sums over every rank too. Then training on N ranks
    equals one process on the same global batches, batch norm included. A checkpoint saves
    them as the plain layers, which load anywhere. Returns the model."""
    for layer in model.layers:
        for synchronized in (SyncBatchNorm1D, SyncBatchNorm2D):
            if type(layer) is synchronized.plain:
                layer.__class__ = synchronized
    model._plan()  # no batch norm with a fused ReLU any more
    return model


def is_distributed(model: Any) -> bool:
    """Whether ``model`` is a :class:`DistributedDataParallel` on more than one rank, or
    wraps one (its ``model`` attribute, as a test-time augmentation wrapper has)."""
    seen = 0
    while model is not None and seen < 8:  # a chain of wrappers, not a cycle
        if isinstance(model, DistributedDataParallel):
            return world_size() > 1
        model, seen = getattr(model, "model", None), seen + 1
    return False
