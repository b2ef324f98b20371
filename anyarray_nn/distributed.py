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
_local_rank: list[int] = []  # this rank among those on its machine, found when joining


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
    _local_rank[:] = [local.Get_rank()]  # kept: asking again would be a collective call
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


def allreduce_sum(values: Any) -> Any:
    """``values`` (a C-contiguous array of any backend) summed over the ranks; returned. NumPy
    arrays and arrays in GPU memory are summed in place; the others (CPU tensors,
    array-api-strict arrays) travel as a host copy, and the sum is a new array. GPU arrays
    travel as :func:`gpu_transport` says."""
    return _collective(values, "sum", 0)


def broadcast(values: Any, root: int = 0) -> Any:
    """``values`` (a C-contiguous array of any backend) replaced by rank ``root``'s;
    returned (in place as :func:`allreduce_sum`)."""
    return _collective(values, "broadcast", root)


# --- how arrays travel ------------------------------------------------------------------------
# Host memory (NumPy) goes through MPI. GPU memory (CuPy arrays, CUDA tensors: anything with
# __cuda_array_interface__) goes through NCCL where CuPy has it, the library GPU clusters run
# for this (one communicator for the job, its id sent from rank 0 over MPI); else straight
# through MPI where the user says MPI is CUDA-aware (no portable way to ask MPI itself); else
# through host memory, a copy each way.

#: Set to 1 when MPI is CUDA-aware (Open MPI or MPICH built with CUDA) and NCCL is missing:
#: GPU arrays then go to MPI directly instead of through host memory.
CUDA_AWARE_VARIABLE = "ANYARRAY_NN_CUDA_AWARE_MPI"

_NCCL_TYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8"}
_nccl: list[Any] = []  # the job's NCCL communicator, made at the first GPU collective
_gpu: list[int] = []  # the GPU this rank computes on, once use_gpu chose it


def _collective(values: Any, kind: str, root: int) -> Any:
    comm = _communicator()
    if comm is None or comm.Get_size() == 1:
        return values
    if isinstance(values, np.ndarray):
        _mpi(comm, values, kind, root)
        return values
    face = _cuda_interface(values)
    if face is not None:
        transport = gpu_transport()
        if transport == "nccl":
            _nccl_collective(face, kind, root)
            return values
        if transport == "cuda-aware mpi":
            _backend.synchronize(_backend.backend_name_of(values))  # MPI reads it now
            _mpi(comm, values, kind, root)
            return values
    host = np.array(_backend.to_host(values), order="C")  # a copy MPI may write
    _mpi(comm, host, kind, root)
    return _backend.asarray_like(host, values)


def _mpi(comm: Any, values: Any, kind: str, root: int) -> None:
    from mpi4py import MPI
    if kind == "sum":
        comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
    else:
        comm.Bcast(values, root=root)


def _cuda_interface(values: Any) -> dict[str, Any] | None:
    """``values.__cuda_array_interface__``, or None for an array in host memory (a CPU
    tensor raises rather than lacking the attribute)."""
    try:
        return values.__cuda_array_interface__
    except (AttributeError, ValueError, TypeError, RuntimeError):
        return None


def gpu_transport() -> str:
    """How arrays in GPU memory travel between ranks: ``"nccl"`` where CuPy has NCCL
    (``cupy.cuda.nccl``), else ``"cuda-aware mpi"`` where the environment variable
    ``ANYARRAY_NN_CUDA_AWARE_MPI`` is 1, else ``"host"`` (a copy to host memory and back)."""
    if importlib.util.find_spec("cupy") is not None:
        try:
            from cupy.cuda import nccl
            if getattr(nccl, "available", True):
                return "nccl"
        except ImportError:
            pass
    return "cuda-aware mpi" if os.environ.get(CUDA_AWARE_VARIABLE) == "1" else "host"


def _nccl_communicator() -> Any:
    if not _nccl:
        from cupy.cuda import nccl
        comm = _communicator()
        unique_id = nccl.get_unique_id() if comm.Get_rank() == 0 else None
        unique_id = comm.bcast(unique_id, root=0)
        _nccl.append(nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank()))
        logger.info("distributed: rank %d joined NCCL for its GPU arrays", comm.Get_rank())
    return _nccl[0]


def _nccl_collective(face: dict[str, Any], kind: str, root: int) -> None:
    """The collective on the GPU buffer that ``face`` (a CUDA array interface) describes, on
    the stream its producer named (0, the legacy default stream, where it names none), so
    that it runs after the work that wrote the buffer and before the work that reads it."""
    from cupy.cuda import nccl
    dtype = np.dtype(face["typestr"])
    shape = tuple(face["shape"])
    strides = face.get("strides")
    if strides is not None and tuple(strides) != tuple(
            int(np.prod(shape[i + 1:], dtype=np.int64)) * dtype.itemsize
            for i in range(len(shape))):
        raise ValueError("anyarray_nn.distributed: a GPU array must be C-contiguous to be "
                         "sent through NCCL")
    if dtype.name not in _NCCL_TYPES:
        raise TypeError(f"anyarray_nn.distributed: NCCL does not carry {dtype.name}; "
                        f"expected one of {', '.join(_NCCL_TYPES)}")
    pointer, count = face["data"][0], math.prod(shape)
    kind_code = getattr(nccl, _NCCL_TYPES[dtype.name])
    stream = face.get("stream") or 0
    communicator = _nccl_communicator()
    if kind == "sum":
        communicator.allReduce(pointer, pointer, count, kind_code, nccl.NCCL_SUM, stream)
    else:
        communicator.bcast(pointer, count, kind_code, root, stream)


def use_gpu() -> int:
    """Make this rank's GPU the current one, for CuPy and (where it is loaded) PyTorch: one
    GPU per rank, the ranks of each machine taking its GPUs in turn (local rank modulo the
    GPU count). Call it before building the model. Logged; returns the GPU's number."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 1:
        raise RuntimeError("anyarray_nn.distributed.use_gpu: no GPU is visible to rank "
                           f"{rank()}")
    local = local_rank()
    device = local % count
    cupy.cuda.Device(device).use()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.set_device(device)
    _gpu[:] = [device]
    logger.info("distributed: rank %d (local rank %d) computes on GPU %d of %d", rank(),
                local, device, count)
    return device


def local_rank() -> int:
    """This process's rank among the ranks on its machine (0 without MPI), found when the
    process joined MPI: any rank may ask alone."""
    comm = _communicator()
    return _local_rank[0] if comm is not None and _local_rank else 0


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
        params = self._entries("params")
        if (world_size() > 1 and params and not _gpu
                and _cuda_interface(params[0][0][params[0][1]]) is not None):
            logger.warning("DistributedDataParallel: rank %d's model is on a GPU but "
                           "anyarray_nn.distributed.use_gpu() was not called: the ranks of a "
                           "machine may all compute on one GPU", rank())
        self._from_rank_0(params + self._entries("buffers"))
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
        flat = allreduce_sum(_packed([store[key] for store, key in entries], None,
                                     self._examples, last=self._examples))
        total = float(flat[-1])
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
        _unpack(broadcast(_packed([store[key] for store, key in entries], "float64")), entries)

    def __repr__(self) -> str:
        return f"DistributedDataParallel({self.model!r}, rank {rank()} of {world_size()})"


def _packed(arrays: list[Any], dtype: str | None, scale: float = 1.0,
            last: float | None = None) -> Any:
    """The ``arrays`` (of one backend and device), times ``scale``, in one flat array there
    (what one collective call sends), of ``dtype`` (None: their common one), followed by
    ``last`` if given. On NumPy one buffer filled in place; elsewhere (a GPU) one
    concatenation, so that nothing leaves the device."""
    if all(isinstance(a, np.ndarray) for a in arrays):
        flat = np.empty(sum(a.size for a in arrays) + (last is not None),
                        dtype=dtype or np.result_type(*arrays))
        at = 0
        for a in arrays:
            np.multiply(np.ravel(a), scale, out=flat[at:at + a.size])
            at += a.size
        if last is not None:
            flat[-1] = last
        return flat
    xp = _backend.namespace(*arrays)
    kind = xp.result_type(*arrays) if dtype is None else _backend.resolve_dtype(xp, dtype)
    parts = [xp.reshape(xp.astype(a, kind), (-1,)) * scale for a in arrays]
    if last is not None:
        parts.append(xp.full((1,), last, dtype=kind, device=arrays[0].device))
    return xp.concat(parts)


def _unpack(flat: Any, entries: list[tuple[dict[str, Any], str]]) -> None:
    """Each ``store[key]`` of ``entries`` replaced by its run of ``flat`` (in :func:`_packed`
    order), with the shape, dtype and backend of the array it replaces."""
    at = 0
    for store, key in entries:
        old = store[key]
        size = math.prod(old.shape)
        run = flat[at:at + size]
        run = np.reshape(run, tuple(old.shape)) if isinstance(run, np.ndarray) else \
            _backend.namespace(run).reshape(run, tuple(old.shape))
        store[key] = _backend.asarray_like(run, old)
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
