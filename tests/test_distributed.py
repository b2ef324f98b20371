"""Data parallel training over MPI (issue 24): 2 and 3 ranks under ``mpiexec`` against one
process on the same global batches, evaluation on every rank, per-rank dropout streams, one
rank's error stopping every rank, a loader that is not sharded refused, and the sharding and
resume of the loader itself (in this process, rank by rank)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import distributed
from anyarray_nn.data.pipeline import DataLoader

WORKER = Path(__file__).with_name("mpi_worker.py")
sys.path.insert(0, str(WORKER.parent))
import mpi_worker  # noqa: E402  (the single-process reference runs the same code)


def mpiexec() -> str:
    """The launcher; the test skips where the ``mpi`` extra is not installed."""
    pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py, mpich) is not installed")
    launcher = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(
        sys.executable))
    if launcher is None:
        pytest.skip("no mpiexec on PATH (pip install 'anyarray_nn[mpi]' brings MPICH's)")
    return launcher


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def run_ranks(ranks: int, scenario: str, out: Path, timeout: float = 120,
              threads: str | None = "1") -> subprocess.CompletedProcess:
    """``scenario`` on ``ranks`` ranks; ``threads``: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS
    for them (None: unset, the library decides)."""
    env = {k: v for k, v in os.environ.items()
           if k not in distributed.LAUNCHER_VARIABLES + THREAD_VARIABLES}
    if threads is not None:
        env.update(dict.fromkeys(THREAD_VARIABLES, threads))
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, str(WORKER), scenario,
                           str(out)], capture_output=True, text=True, timeout=timeout, env=env)


def results(out: Path, scenario: str, ranks: int) -> list[dict]:
    return [dict(np.load(out / f"{scenario}-rank{r}.npz")) for r in range(ranks)]


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("scenario, dtype, rtol", [("train64", "float64", 1e-12),
                                                   ("train32", "float32", 1e-5),
                                                   ("syncbn", "float64", 1e-12)])
def test_training_on_ranks_equals_one_process_on_the_same_global_batches(tmp_path, ranks,
                                                                         scenario, dtype,
                                                                         rtol):
    """Two epochs, 26 examples in global batches of 8 (3 ranks: parts of 2 and 3; the last
    batch of 2 joins the one before on 3 ranks, so the one-process reference is run with
    the same batches): every rank ends with the one process's weights, reports its losses,
    and evaluates the whole set as it does, predictions in the same order. "syncbn": with a
    synchronized batch norm against the plain one on the whole batch, running statistics
    included (on 2 ranks the last batch gives each rank one example)."""
    batchnorm = scenario == "syncbn"
    done = run_ranks(ranks, scenario, tmp_path)
    assert done.returncode == 0, done.stderr
    per_rank = results(tmp_path, scenario, ranks)
    if ranks == 3:  # the merge policy: 26 = 8 + 8 + 10, the last 2 joining the third batch
        reference_loader = _MergedLast(DataLoader(
            *mpi_worker.problem(), mpi_worker.BATCH, seed=3, backend="numpy", dtype=dtype))
        model = mpi_worker.network(dtype, batchnorm)
        optimizer = ann.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
        history = ann.fit(model, ann.losses.SoftmaxCrossEntropy(), optimizer,
                          reference_loader, epochs=2, progress=False)
    else:
        model, history = mpi_worker.train(dtype, None, batchnorm)
    for key, value in model.buffers().items():
        for r, got in enumerate(per_rank):
            np.testing.assert_allclose(got[f"buffer:{key}"], value, rtol=rtol,
                                       err_msg=f"rank {r} {key}")
    losses = np.array([it["loss"] for it in history.iterations])
    x, y = mpi_worker.problem()
    expected = ann.evaluate(model, ann.losses.SoftmaxCrossEntropy(),
                            DataLoader(x, y, 5, shuffle=False, backend="numpy",
                                                dtype=dtype))
    for r, got in enumerate(per_rank):
        assert int(got["world_size"]) == ranks
        for key, value in model.params().items():
            np.testing.assert_allclose(got[f"param:{key}"], value, rtol=rtol, atol=rtol * 1e-3,
                                       err_msg=f"rank {r} {key}")
        np.testing.assert_allclose(got["losses"], losses, rtol=rtol * 10, err_msg=f"rank {r}")
        assert abs(float(got["val_loss"]) - expected.loss) <= rtol * 10 * expected.loss
        assert float(got["val_accuracy"]) == expected.accuracy
        np.testing.assert_array_equal(got["predictions"], expected.predictions)
        np.testing.assert_array_equal(got["labels"], expected.labels)
    for got in per_rank[1:]:  # the same arrays on every rank, bit for bit
        for key in model.params():
            np.testing.assert_array_equal(got[f"param:{key}"], per_rank[0][f"param:{key}"])


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_training_on_two_ranks_of_another_backend_equals_one_process(tmp_path, backend):
    """Gradients that are not NumPy arrays are packed by their own backend's functions and
    cross through host memory: 2 ranks of PyTorch CPU tensors or array-api-strict arrays end
    with the weights of one NumPy process on the same global batches."""
    pytest.importorskip(backend)
    done = run_ranks(2, f"train64-{backend}", tmp_path)
    assert done.returncode == 0, done.stderr
    model, _ = mpi_worker.train("float64", None)
    for r, got in enumerate(results(tmp_path, f"train64-{backend}", 2)):
        for key, value in model.params().items():
            np.testing.assert_allclose(got[f"param:{key}"], value, rtol=1e-12, atol=1e-15,
                                       err_msg=f"rank {r} {key}")


def test_gpu_arrays_travel_through_nccl_in_place(tmp_path):
    """Without a GPU here, a stand-in for ``cupy.cuda.nccl`` carries out each NCCL call with
    MPI on the memory it points to (tests/mpi_worker.py): the arrays that say they are in GPU
    memory are summed and broadcast in place through one NCCL communicator per job, made
    from rank 0's id, on the stream their producer names (0 where it names none); arrays
    NCCL cannot carry are refused on every rank before any call."""
    done = run_ranks(2, "nccl", tmp_path)
    assert done.returncode == 0, done.stderr
    for r, got in enumerate(results(tmp_path, "nccl", 2)):
        assert str(got["transport"]) == "nccl"
        np.testing.assert_array_equal(got["summed"], np.arange(5, dtype=np.float32) * 3)
        np.testing.assert_array_equal(got["sent"], np.ones(3))
        assert list(got["calls"]) == [
            f"init 2 id-of-rank-0 {r}",
            "allReduce float32 in place True op 99 stream 0",
            "bcast float64 root 1 stream 7"]
        assert "must be C-contiguous" in str(got["strided"])
        assert "NCCL does not carry complex64" in str(got["complex"])


def test_gpu_transport_falls_back_to_cuda_aware_mpi_and_to_host_memory(monkeypatch):
    """Without CuPy's NCCL: straight through MPI where the user says MPI is CUDA-aware, else
    through host memory."""
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv(distributed.CUDA_AWARE_VARIABLE, raising=False)
    assert distributed.gpu_transport() == "host"
    monkeypatch.setenv(distributed.CUDA_AWARE_VARIABLE, "1")
    assert distributed.gpu_transport() == "cuda-aware mpi"


class _MergedLast:
    """One process's loader with the batches of a 3-rank run of 26 examples: the last two
    examples in the third batch."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return 3

    def __iter__(self):
        n = self.loader.num_examples
        order = self.loader.rng.permutation(n)
        for start, stop in ((0, 8), (8, 16), (16, 26)):
            yield self.loader.batch(np.sort(order[start:stop]))


@pytest.mark.parametrize("threads", [None, "2"])
def test_ranks_sharing_a_machine_share_its_cores(tmp_path, threads):
    """Two ranks on this machine: each computes on its share of the cores, its BLAS pool
    limited to it, unless OMP_NUM_THREADS / OPENBLAS_NUM_THREADS say otherwise."""
    done = run_ranks(2, "threads", tmp_path, threads=threads)
    assert done.returncode == 0, done.stderr
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for r, got in enumerate(results(tmp_path, "threads", 2)):
        assert int(got["local_rank"]) == r  # both ranks on this machine; asked alone
        assert int(got["cores"]) == max(1, cores // 2)
        expected = max(1, cores // 2) if threads is None else min(2, cores)
        assert int(got["blas_threads"]) == expected


def test_each_rank_drops_other_units(tmp_path):
    done = run_ranks(2, "dropout", tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = (r["mask"] for r in results(tmp_path, "dropout", 2))
    assert set(np.unique(first)) <= {0.0, 2.0} and set(np.unique(second)) <= {0.0, 2.0}
    assert not np.array_equal(first, second)


def test_a_rank_that_raises_stops_every_rank_naming_itself(tmp_path):
    """Rank 1 raises at its second step while rank 0 waits in the next all-reduce: the job
    ends, well within the time limit, with the rank and the cause on stderr."""
    began = time.monotonic()
    done = run_ranks(2, "raise", tmp_path, timeout=90)
    assert done.returncode != 0
    assert time.monotonic() - began < 60
    assert "rank 1 of 2 failed; stopping every rank" in done.stderr
    assert "rank one's deliberate failure" in done.stderr


def test_a_rank_that_dies_stops_every_rank(tmp_path):
    """Rank 1 is killed (SIGKILL) at its second step, while rank 0 waits in the next
    all-reduce: mpiexec ends the whole job, naming the process and the signal (the log of
    distributed.init names each rank's process)."""
    began = time.monotonic()
    done = run_ranks(2, "die", tmp_path, timeout=90)
    assert done.returncode != 0
    assert time.monotonic() - began < 60
    printed = done.stdout + done.stderr
    assert "BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES" in printed
    assert "Killed (signal 9)" in printed


def test_training_on_two_ranks_resumes_exactly_from_rank_0s_checkpoint(tmp_path):
    """Each rank's dropout and augmentation streams and loader position are in the one file
    rank 0 wrote (rank 1 writes nothing); resumed, each rank trains on bit for bit as if never stopped. The file
    loads in one process too, and refuses a loader that shards over another number."""
    done = run_ranks(2, "resume", tmp_path)
    assert done.returncode == 0, done.stderr
    per_rank = results(tmp_path, "resume", 2)
    assert [int(got["writes"]) for got in per_rank] == [1, 0]  # rank 0 alone writes the file
    for got in per_rank:
        for key in [k for k in got if k.startswith("straight:")]:
            np.testing.assert_array_equal(got[key], got["resumed:" + key.split(":", 1)[1]])
    assert str(per_rank[0]["drop_state"]) != str(per_rank[1]["drop_state"])
    model = ann.load_model(tmp_path / "resume.h5")
    assert set(model.params()) == {"fc1.W", "fc1.b", "fc2.W", "fc2.b"}
    x, y = mpi_worker.problem()
    with pytest.raises(ann.checkpoint.CheckpointError,
                       match="sharded over 2 ranks and this one shards over 1"):
        ann.load_checkpoint(tmp_path / "resume.h5", model,
                            loader=DataLoader(x, y, 8, backend="numpy", dtype="float64"))


def test_rank_0_reads_the_checkpoint_and_every_rank_raises_its_error(tmp_path):
    """Loading into a model on several ranks reads the file once, on rank 0 (the resume test
    above loads that way); a missing or damaged file is the same error on every rank, and
    so is a save rank 0 cannot write (no rank trains on believing it saved)."""
    done = run_ranks(2, "missing", tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = results(tmp_path, "missing", 2)
    for got in (first, second):
        assert str(got["missing"]).startswith("FileNotFoundError: ")
        assert "nowhere.h5" in str(got["missing"])
        assert str(got["damaged"]).startswith("CheckpointError: ")
        assert "bad.h5" in str(got["damaged"])
    assert str(first["unwritable"]).startswith("FileExistsError: ")  # rank 0's own error
    assert "afile/m.h5: cannot create its folder" in str(first["unwritable"])
    assert str(second["unwritable"]).startswith("OSError: ")
    assert "rank 0 could not write the checkpoint: FileExistsError" in str(
        second["unwritable"])
    assert not (tmp_path / "afile").is_dir()


def test_a_loader_that_is_not_sharded_is_refused_on_every_rank(tmp_path):
    done = run_ranks(2, "unsharded", tmp_path)
    assert done.returncode == 0, done.stderr
    for got in results(tmp_path, "unsharded", 2):
        assert "not sharded over them" in str(got["error"])
        assert "shard=anyarray_nn.distributed.shard()" in str(got["error"])


def test_the_same_script_without_mpiexec_is_one_rank(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    done = subprocess.run([sys.executable, str(WORKER), "train64", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    (got,) = results(tmp_path, "train64", 1)
    model, _ = mpi_worker.train("float64", None)
    assert int(got["world_size"]) == 1
    for key, value in model.params().items():
        np.testing.assert_array_equal(got[f"param:{key}"], value)


def test_the_docs_example_runs_unchanged_on_two_ranks(tmp_path):
    """docs/distributed.md's script, under mpiexec -n 2: rank 0 alone prints and saves."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "distributed.md").read_text()
    script = tmp_path / "train.py"
    script.write_text(text.split("```python\n")[1].split("```")[0])
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    done = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("rank(s), last loss") == 1 and "2 rank(s)" in done.stdout
    assert ann.load_model(tmp_path / "distributed-example.h5").params().keys() == {
        "dense1.W", "dense1.b", "dense2.W", "dense2.b"}


def test_a_synchronized_batch_norm_on_one_rank_is_the_batch_norm_and_saves_as_it(tmp_path, rng):
    """On one process the synchronized layer computes what BatchNorm does (the statistics
    combined from one rank), in float64 to rounding, forward, backward and running
    statistics; its checkpoint holds the plain type, and a ReLU after it is no longer fused
    (its backward would need the ReLU's mask)."""
    from anyarray_nn.layers import BatchNorm2D, ReLU
    plain = ann.Sequential([BatchNorm2D(3, name="bn", dtype="float64"), ReLU(name="relu")])
    synced = distributed.synchronize_batchnorm(
        ann.Sequential([BatchNorm2D(3, name="bn", dtype="float64"), ReLU(name="relu")]))
    assert type(synced["bn"]).__name__ == "SyncBatchNorm2D"
    assert [s.relu for s in synced._steps] == [None, None]
    assert [s.relu for s in plain._steps] == ["relu"]
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    dy = rng.standard_normal((4, 3, 5, 5))
    for model in (plain, synced):
        model.forward(x, train=True)
    np.testing.assert_allclose(synced.forward(x, train=True), plain.forward(x, train=True),
                               rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(synced.backward(dy, input_grad=True),
                               plain.backward(dy, input_grad=True), rtol=1e-11, atol=1e-12)
    for key, value in plain.grads().items():
        np.testing.assert_allclose(synced.grads()[key], value, rtol=1e-11, err_msg=key)
    for key, value in plain.buffers().items():
        np.testing.assert_allclose(synced.buffers()[key], value, rtol=1e-12, err_msg=key)
    loaded = ann.load_model(ann.save_checkpoint(tmp_path / "s.h5", synced))
    assert type(loaded["bn"]).__name__ == "BatchNorm2D"
    np.testing.assert_allclose(loaded.forward(x), plain.forward(x), rtol=1e-12)


@pytest.mark.parametrize("layer, shape", [("BatchNorm1D", (6, 3)), ("BatchNorm2D", (4, 3, 3, 3))])
def test_a_synchronized_batch_norm_passes_the_gradient_check_on_every_backend(xp, rng, layer,
                                                                              shape):
    """float64 central differences through the synchronized layer (one rank), with the
    ReLU after it, on every backend: array_api_strict proves it uses the standard only."""
    norm = getattr(ann.layers, layer)(3, name="bn", dtype="float64")
    model = distributed.synchronize_batchnorm(ann.Sequential([norm, ann.layers.ReLU()]))
    norm.params["gamma"] = ann.asarray(rng.standard_normal(3) + 1.5, dtype="float64")
    norm.params["beta"] = ann.asarray(rng.standard_normal(3), dtype="float64")
    report = ann.check_gradients(model, ann.asarray(rng.standard_normal(shape) * 2 + 1,
                                                    dtype="float64"), eps=1e-5)
    assert report.passed, str(report)
    assert type(model["bn"]).__name__ == "Sync" + layer


# --- the sharded loader, rank by rank in this process ----------------------------------------

def shard_indices(n: int, batch: int, ranks: int, epochs: int = 2, drop_last: bool = False):
    """Per rank, per epoch: the examples (their x values) of each batch."""
    x, y = np.arange(n, dtype=np.float64)[:, None], np.zeros(n, dtype=np.int64)
    seen = []
    for r in range(ranks):
        loader = DataLoader(x, y, batch, seed=5, backend="numpy", dtype="float64",
                                     shard=(r, ranks), drop_last=drop_last)
        seen.append([[np.asarray(xb)[:, 0].astype(int).tolist() for xb, _ in loader]
                     for _ in range(epochs)])
        assert all(len(epoch) == len(loader) for epoch in seen[-1])
    return seen


@pytest.mark.parametrize("n, batch, ranks", [(26, 8, 2), (26, 8, 3), (25, 9, 4), (10, 3, 3),
                                             (17, 5, 2)])
def test_shards_cover_every_example_once_per_epoch_in_disjoint_parts(n, batch, ranks):
    seen = shard_indices(n, batch, ranks)
    for epoch in range(2):
        everything = [i for r in range(ranks) for b in seen[r][epoch] for i in b]
        assert sorted(everything) == list(range(n))  # each once, none left out
        for step in range(len(seen[0][epoch])):
            parts = [seen[r][epoch][step] for r in range(ranks)]
            assert all(parts) and max(map(len, parts)) - min(map(len, parts)) <= 1
            assert sum(parts, []) == sorted(sum(parts, []))  # contiguous parts, rank order
    assert seen[0][0] != seen[0][1]  # a new order each epoch


def test_a_last_batch_smaller_than_the_ranks_joins_the_one_before():
    seen = shard_indices(10, 4, 3, epochs=1)  # 4 + 4 + 2: the 2 join the second batch
    assert [len(b) for b in seen[0][0]] == [1, 2] and [len(b) for b in seen[2][0]] == [2, 2]
    dropped = shard_indices(10, 4, 3, epochs=1, drop_last=True)
    assert sum(len(b) for r in range(3) for b in dropped[r][0]) == 8


def test_one_rank_of_one_is_the_unsharded_loader():
    x, y = np.arange(20.0)[:, None], np.zeros(20, dtype=np.int64)
    plain = DataLoader(x, y, 6, seed=2, backend="numpy")
    sharded = DataLoader(x, y, 6, seed=2, backend="numpy", shard=(0, 1))
    for (a, _), (b, _) in zip(plain, sharded):
        np.testing.assert_array_equal(a, b)
    assert plain.state_dict().keys() == sharded.state_dict().keys() == {"epoch", "rng"}


def test_the_ranks_draw_one_order_and_their_own_augmentations():
    x, y = np.zeros((12, 1, 4, 4)), np.zeros(12, dtype=np.int64)
    noise = lambda xb, rng: xb + ann.asarray(rng.standard_normal(xb.shape))  # noqa: E731
    loaders = [DataLoader(x, y, 4, seed=1, backend="numpy", dtype="float64",
                                   augment=[noise], shard=(r, 2)) for r in range(2)]
    first, second = ([np.asarray(xb) for xb, _ in loader] for loader in loaders)
    assert not np.array_equal(first[0], second[0])  # each rank's own draws
    assert (loaders[0].rng.bit_generator.state == loaders[1].rng.bit_generator.state)


def test_a_sharded_loader_resumes_exactly_on_the_same_number_of_ranks_only():
    x, y = np.arange(30.0)[:, None], np.zeros(30, dtype=np.int64)
    noise = lambda xb, rng: xb + ann.asarray(rng.standard_normal(xb.shape))  # noqa: E731

    def make(shard):
        return DataLoader(x, y, 6, seed=9, backend="numpy", dtype="float64",
                                   augment=[noise], shard=shard)
    loader = make((1, 3))
    list(loader)
    state = loader.state_dict()
    assert state["world_size"] == 3 and "augment_rng" in state
    expected = [np.asarray(xb) for xb, _ in loader]
    resumed = make((1, 3))
    resumed.load_state_dict(state)
    for a, (b, _) in zip(expected, resumed):
        np.testing.assert_array_equal(a, b)
    for other in ((0, 2), None):
        with pytest.raises(ValueError, match=r"sharded over 3 ranks and this one shards over "
                                             r"(2|1); resume on the same number of ranks"):
            make(other).load_state_dict(state)


@pytest.mark.parametrize("shard, message", [
    ((2, 2), r"0 <= rank < world_size"), ((0,), r"shard=\(rank, world_size\)"),
    (("0", 2), r"got \('0', 2\)"), ((0, 5), r"at least one example per rank; got "
                                            r"batch_size=4 and 30 examples")])
def test_bad_shards_are_refused(shard, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(np.zeros((30, 2)), np.zeros(30, dtype=np.int64), 4, shard=shard)


def test_without_mpi_the_process_is_rank_0_of_1_and_loads_no_mpi():
    code = ("import sys, anyarray_nn as ann; d = ann.distributed; "
            "print(d.rank(), d.world_size(), d.is_main(), d.shard(), 'mpi4py' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.stdout.split() == ["0", "1", "True", "(0,", "1)", "False"], out.stderr


def test_wrapping_on_one_rank_trains_as_the_model_itself():
    plain, _ = mpi_worker.train("float64", None)
    model = distributed.DistributedDataParallel(mpi_worker.network("float64"))
    x, y = mpi_worker.problem()
    loader = DataLoader(x, y, mpi_worker.BATCH, seed=3, backend="numpy",
                                 dtype="float64")
    ann.fit(model, ann.losses.SoftmaxCrossEntropy(),
            ann.optim.SGD(model, lr=0.1, momentum=0.9, weight_decay=1e-3), loader, epochs=2,
            progress=False)
    for key, value in plain.params().items():
        np.testing.assert_array_equal(model.params()[key], value)
    with pytest.raises(TypeError, match="expected an anyarray_nn Model or Sequential, got dict"):
        distributed.DistributedDataParallel({})
