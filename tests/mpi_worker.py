"""What tests/test_distributed.py runs on each rank: ``python mpi_worker.py SCENARIO OUT_DIR``
under ``mpiexec -n K`` (or alone, as one rank). Each scenario writes its results to
``OUT_DIR/<scenario>-rank<r>.npz``."""

import os
import signal
import sys

import numpy as np

import anyarray_nn as ann
from anyarray_nn import distributed
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import BatchNorm1D, Dense, Dropout, ReLU

EXAMPLES, FEATURES, CLASSES, BATCH = 26, 5, 3, 8


def problem():
    """A small classification set (26 examples: 3 global batches of 8 and one of 2)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((EXAMPLES, FEATURES)), rng.integers(0, CLASSES, EXAMPLES)


def network(dtype, batchnorm=False, backend="numpy"):
    """Dense, ReLU, Dense; with ``batchnorm`` a BatchNorm1D after the first Dense."""
    kw = dict(dtype=dtype, backend=backend)
    norm = [BatchNorm1D(7, name="bn", **kw)] if batchnorm else []
    return ann.Sequential([Dense(FEATURES, 7, name="fc1", rng=1, **kw), *norm, ReLU(),
                           Dense(7, CLASSES, name="fc2", rng=2, **kw)])


def train(dtype, shard, batchnorm=False, backend="numpy"):
    """Two epochs of SGD with momentum; returns the model (wrapped, its batch norm
    synchronized, when sharded)."""
    x, y = problem()
    model = network(dtype, batchnorm, backend)
    if shard is not None:
        model = distributed.DistributedDataParallel(distributed.synchronize_batchnorm(model))
    loader = DataLoader(x, y, BATCH, seed=3, backend=backend, dtype=dtype, shard=shard)
    optimizer = ann.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    history = ann.fit(model, ann.losses.SoftmaxCrossEntropy(), optimizer, loader, epochs=2,
                      progress=False)
    return model, history


class FakeGpuArray:
    """Host memory that says it is GPU memory (the CUDA array interface of its NumPy array)."""

    def __init__(self, values, stream=None):
        self.values, self.stream = values, stream

    @property
    def __cuda_array_interface__(self):
        v = self.values
        face = {"data": (v.ctypes.data, False), "shape": v.shape, "typestr": v.dtype.str,
                "strides": None if v.flags.c_contiguous else v.strides, "version": 3}
        if self.stream is not None:
            face["stream"] = self.stream
        return face


NCCL_CODES = {"NCCL_FLOAT16": np.float16, "NCCL_FLOAT32": np.float32,
              "NCCL_FLOAT64": np.float64, "NCCL_INT32": np.int32, "NCCL_INT64": np.int64,
              "NCCL_UINT8": np.uint8}


def nccl_through_a_stand_in():
    """The NCCL path of anyarray_nn.distributed without a GPU: a stand-in for
    ``cupy.cuda.nccl`` whose communicator carries out each call with MPI on the memory the
    call points to. What comes back: the sums and broadcasts, the calls each rank made, and
    the errors for arrays NCCL cannot send."""
    import ctypes
    import importlib.machinery
    import types
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    calls = []
    codes = {name: i for i, name in enumerate(NCCL_CODES)}
    dtypes = {i: np.dtype(NCCL_CODES[name]) for name, i in codes.items()}

    def at(pointer, count, code):
        size = count * dtypes[code].itemsize
        return np.frombuffer((ctypes.c_char * size).from_address(pointer), dtype=dtypes[code])

    class Communicator:
        def __init__(self, size, unique_id, rank):
            calls.append(f"init {size} {unique_id} {rank}")

        def allReduce(self, send, receive, count, code, op, stream):  # noqa: N802 (NCCL's)
            calls.append(f"allReduce {dtypes[code]} in place {send == receive} op {op} "
                         f"stream {stream}")
            comm.Allreduce(MPI.IN_PLACE, at(send, count, code), op=MPI.SUM)

        def bcast(self, pointer, count, code, root, stream):
            calls.append(f"bcast {dtypes[code]} root {root} stream {stream}")
            comm.Bcast(at(pointer, count, code), root=root)

    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.__dict__.update(codes, NCCL_SUM=99, NcclCommunicator=Communicator,
                         get_unique_id=lambda: f"id-of-rank-{comm.Get_rank()}")
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cupy = types.ModuleType("cupy")
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cupy.cuda, cupy.ndarray = cuda, type("ndarray", (), {})
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl})
    rank = comm.Get_rank()
    try:
        out = {"transport": distributed.gpu_transport()}
        summed = FakeGpuArray(np.arange(5, dtype=np.float32) * (rank + 1))
        assert distributed.allreduce_sum(summed) is summed  # in place
        sent = FakeGpuArray(np.full(3, float(rank)), stream=7)
        distributed.broadcast(sent, root=1)
        out.update(summed=summed.values, sent=sent.values)
        for name, bad in (("strided", FakeGpuArray(np.zeros(6, np.float32)[::2])),
                          ("complex", FakeGpuArray(np.zeros(2, np.complex64)))):
            try:
                distributed.allreduce_sum(bad)
            except (ValueError, TypeError) as exc:
                out[name] = f"{type(exc).__name__}: {exc}"
        out["calls"] = np.array(calls)
        return out
    finally:
        for name in ("cupy", "cupy.cuda", "cupy.cuda.nccl"):
            sys.modules.pop(name)


def main(scenario, out):
    rank = distributed.rank()
    results = {"world_size": distributed.world_size()}
    if scenario in ("train64", "train32", "syncbn") or scenario.startswith("train64-"):
        # "train64-torch": the same on another backend (its gradients packed and sent by
        # that backend's own array functions, through host memory)
        dtype = "float32" if scenario == "train32" else "float64"
        backend = scenario.split("-", 1)[1] if "-" in scenario else "numpy"
        model, history = train(dtype, distributed.shard(), batchnorm=scenario == "syncbn",
                               backend=backend)
        results.update({f"param:{k}": ann.to_host(v) for k, v in model.params().items()})
        results.update({f"buffer:{k}": ann.to_host(v) for k, v in model.buffers().items()})
        results["losses"] = np.array([it["loss"] for it in history.iterations])
        x, y = problem()
        val = DataLoader(x, y, 5, shuffle=False, backend=backend, dtype=dtype,
                         shard=distributed.shard())
        result = ann.evaluate(model, ann.losses.SoftmaxCrossEntropy(), val)
        results.update(val_loss=result.loss, val_accuracy=result.accuracy,
                       predictions=result.predictions, labels=result.labels)
    elif scenario == "dropout":
        model = distributed.DistributedDataParallel(
            ann.Sequential([Dropout(0.5, rng=4)]))
        results["mask"] = np.asarray(model.forward(np.ones((4, 6)), train=True))
    elif scenario in ("raise", "die"):
        def fail():  # rank one's deliberate failure: an exception, or a kill
            if scenario == "raise":
                raise RuntimeError("rank one's deliberate failure")
            os.kill(os.getpid(), signal.SIGKILL)

        class Fail(ann.train.Callback):
            def on_iteration_end(self, state):
                if rank == 1 and state.step == 2:
                    fail()
        x, y = problem()
        model = distributed.DistributedDataParallel(network("float64"))
        loader = DataLoader(x, y, BATCH, backend="numpy", dtype="float64",
                            shard=distributed.shard())
        ann.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1), loader,
                epochs=50, progress=False, callbacks=[Fail()])
    elif scenario == "resume":
        # One epoch, a checkpoint (rank 0 writes), one more epoch; then a fresh model,
        # optimizer and loader resumed from the file, one epoch: the same weights, on a
        # network whose dropout and augmentation draw from each rank's own generators.
        def parts():
            x, y = problem()
            net = ann.Sequential([Dense(FEATURES, 7, name="fc1", rng=1, dtype="float64"),
                                  ReLU(), Dropout(0.3, name="drop", rng=5),
                                  Dense(7, CLASSES, name="fc2", rng=2, dtype="float64")])
            model = distributed.DistributedDataParallel(net)
            noise = lambda xb, g: xb + ann.asarray(0.1 * g.standard_normal(xb.shape))  # noqa
            loader = DataLoader(x, y, BATCH, seed=3, backend="numpy", dtype="float64",
                                augment=[noise], shard=distributed.shard())
            return model, ann.optim.SGD(model, lr=0.1, momentum=0.9), loader
        loss = ann.losses.SoftmaxCrossEntropy()
        model, optimizer, loader = parts()
        ann.fit(model, loss, optimizer, loader, epochs=1, progress=False)
        writes = []  # the files this rank writes while saving
        real_write = ann.checkpoint.write_atomically
        ann.checkpoint.write_atomically = lambda path, *a, **k: (writes.append(str(path)),
                                                                 real_write(path, *a, **k))
        ann.save_checkpoint(f"{out}/resume.h5", model, optimizer, loader=loader)
        ann.checkpoint.write_atomically = real_write
        results["writes"] = len(writes)
        ann.fit(model, loss, optimizer, loader, epochs=1, progress=False)
        again, optimizer, loader = parts()
        ann.load_checkpoint(f"{out}/resume.h5", again, optimizer, loader=loader)
        ann.fit(again, loss, optimizer, loader, epochs=1, progress=False)
        results.update({f"straight:{k}": np.asarray(v) for k, v in model.params().items()})
        results.update({f"resumed:{k}": np.asarray(v) for k, v in again.params().items()})
        results["drop_state"] = np.array(str(again["drop"].rng.bit_generator.state))
    elif scenario == "nccl":
        results.update(nccl_through_a_stand_in())
    elif scenario == "threads":
        from threadpoolctl import threadpool_info
        from anyarray_nn import _threads
        # rank 1 asks twice, rank 0 once: a collective call would leave rank 1 waiting
        results["local_rank"] = [distributed.local_rank() for _ in range(1 + rank)][-1]
        results["cores"] = _threads.cpu_count()
        results["blas_threads"] = max(p["num_threads"] for p in threadpool_info()
                                      if p["user_api"] == "blas")
    elif scenario == "missing":  # every rank hears of rank 0's failure to read
        model = distributed.DistributedDataParallel(network("float64"))
        for name, path in (("missing", f"{out}/nowhere.h5"), ("damaged", f"{out}/bad.h5")):
            if rank == 0 and name == "damaged":
                with open(path, "wb") as f:
                    f.write(b"not a checkpoint" * 10)
            try:
                ann.load_checkpoint(path, model)
            except Exception as exc:  # noqa: BLE001  (what each rank raised is the result)
                results[name] = f"{type(exc).__name__}: {exc}"
        if rank == 0:  # a file where the checkpoint's folder should be: rank 0 cannot write
            with open(f"{out}/afile", "w") as f:
                f.write("in the way")
        distributed.allreduce_sum(np.zeros(1))  # the file is there before anyone saves
        try:
            ann.save_checkpoint(f"{out}/afile/m.h5", model)
        except Exception as exc:  # noqa: BLE001
            results["unwritable"] = f"{type(exc).__name__}: {exc}"
    elif scenario == "unsharded":
        x, y = problem()
        model = distributed.DistributedDataParallel(network("float64"))
        loader = DataLoader(x, y, BATCH, backend="numpy", dtype="float64")
        try:
            ann.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                    loader, epochs=1, progress=False)
        except ValueError as exc:
            results["error"] = str(exc)
    np.savez(f"{out}/{scenario}-rank{rank}.npz", **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
