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


def network(dtype, batchnorm=False):
    """Dense, ReLU, Dense; with ``batchnorm`` a BatchNorm1D after the first Dense."""
    norm = [BatchNorm1D(7, name="bn", dtype=dtype)] if batchnorm else []
    return ann.Sequential([Dense(FEATURES, 7, name="fc1", dtype=dtype, rng=1), *norm, ReLU(),
                           Dense(7, CLASSES, name="fc2", dtype=dtype, rng=2)])


def train(dtype, shard, batchnorm=False):
    """Two epochs of SGD with momentum; returns the model (wrapped, its batch norm
    synchronized, when sharded)."""
    x, y = problem()
    model = network(dtype, batchnorm)
    if shard is not None:
        model = distributed.DistributedDataParallel(distributed.synchronize_batchnorm(model))
    loader = DataLoader(x, y, BATCH, seed=3, backend="numpy", dtype=dtype,
                                 shard=shard)
    optimizer = ann.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    history = ann.fit(model, ann.losses.SoftmaxCrossEntropy(), optimizer, loader, epochs=2,
                      progress=False)
    return model, history


def main(scenario, out):
    rank = distributed.rank()
    results = {"world_size": distributed.world_size()}
    if scenario in ("train64", "train32", "syncbn"):
        dtype = "float32" if scenario == "train32" else "float64"
        model, history = train(dtype, distributed.shard(), batchnorm=scenario == "syncbn")
        results.update({f"param:{k}": np.asarray(v) for k, v in model.params().items()})
        results.update({f"buffer:{k}": np.asarray(v) for k, v in model.buffers().items()})
        results["losses"] = np.array([it["loss"] for it in history.iterations])
        x, y = problem()
        val = DataLoader(x, y, 5, shuffle=False, backend="numpy", dtype=dtype,
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
    elif scenario == "threads":
        from threadpoolctl import threadpool_info
        from anyarray_nn import _threads
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
