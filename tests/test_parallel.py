"""DataParallel: slices of the batch on threads or in helper processes give the full batch's
outputs and gradients."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.errors import InputError
from anyarray_nn.losses import SoftmaxCrossEntropy
from anyarray_nn.networks import cifar10_bn_net, mnist_net
from anyarray_nn.optim import SGD

from helpers import (FailsOnNegativeFirstValue, FailsWithAnOddError, ScaledByBuffer,
                     assert_close, host)


def _step(model, loss_fn, x, labels, input_grad=False):
    loss = loss_fn.forward(model.forward(x, train=True), labels)
    dx = model.backward(loss_fn.backward(), input_grad=input_grad)
    return loss, dx


@pytest.mark.parametrize("workers, batch", [(2, 8), (3, 7)])
def test_gradients_and_input_gradient_equal_one_thread(xp, rng, workers, batch):
    serial = mnist_net(rng=0, dtype="float64")
    parallel = ann.DataParallel(mnist_net(rng=0, dtype="float64"), workers, min_batch=1)
    x = ann.asarray(rng.standard_normal((batch, 1, 28, 28)), dtype="float64")
    labels = ann.asarray(np.arange(batch) % 10)
    loss_a, dx_a = _step(serial, SoftmaxCrossEntropy(), x, labels, input_grad=True)
    loss_b, dx_b = _step(parallel, SoftmaxCrossEntropy(), x, labels, input_grad=True)
    if ann.backend.on_gpu(ann.current_backend().name):  # a GPU runs the batch whole
        assert parallel._bounds is None
        assert_close(loss_b, loss_a)
        assert_close(dx_b, dx_a)
        return
    assert parallel._bounds is not None and len(parallel._bounds) == workers  # really split
    # Helper processes for NumPy (the default there), threads for every other backend.
    expected = "_Processes" if isinstance(x, np.ndarray) else "_Threads"
    assert type(parallel._helpers).__name__ == expected
    assert_close(loss_b, loss_a)
    assert_close(dx_b, dx_a)
    grads_a, grads_b = serial.grads(), parallel.grads()
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert_close(grads_b[key], grads_a[key])


@pytest.mark.parametrize("processes", [False, True])
def test_training_with_an_optimizer_follows_one_thread(rng, processes):
    serial = mnist_net(rng=0, dtype="float64")
    parallel = ann.DataParallel(mnist_net(rng=0, dtype="float64"), 2, processes=processes,
                                min_batch=1)
    opt_a = SGD(serial, lr=0.1, momentum=0.9)
    opt_b = SGD(parallel, lr=0.1, momentum=0.9)
    x = rng.standard_normal((12, 1, 28, 28))
    labels = np.arange(12) % 10
    for _ in range(3):
        _step(serial, SoftmaxCrossEntropy(), x, labels)
        opt_a.step()
        _step(parallel, SoftmaxCrossEntropy(), x, labels)
        opt_b.step()
    for key, value in serial.params().items():
        assert_close(parallel.params()[key], value, rtol=1e-9, atol=1e-12)
    # Every step used the updated weights on every slice: the gradients still agree.
    for key, value in serial.grads().items():
        assert_close(parallel.grads()[key], value, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("processes, default_min_batch", [(True, 16), (False, 32)])
def test_small_batches_run_on_the_calling_thread(rng, processes, default_min_batch):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, processes=processes)
    x = rng.standard_normal((default_min_batch - 1, 1, 28, 28)).astype(np.float32)
    out = parallel.forward(x, train=True)
    assert parallel._bounds is None and parallel._helpers is None
    np.testing.assert_array_equal(out, parallel.model.forward(x))
    batch = np.concatenate([x, x[:1]])
    parallel.forward(batch, train=True)
    half = default_min_batch // 2
    assert parallel._bounds == [(0, half), (half, default_min_batch)]
    np.testing.assert_array_equal(parallel.predict(batch), parallel.model.predict(batch))
    # Rounding differs between one GEMM over 16 rows and two over 8 (OpenBLAS blocks them
    # differently); a wrong slice would differ by whole units.
    np.testing.assert_allclose(parallel(batch), parallel.model(batch), rtol=1e-5, atol=1e-5)
    one = ann.DataParallel(mnist_net(rng=0), 1, min_batch=1)
    one.forward(batch, train=True)
    assert one._bounds is None and one._helpers is None


def test_models_whose_samples_interact_are_refused():
    with pytest.raises(ValueError, match=r"BatchNorm2D 'bn1'.*without DataParallel"):
        ann.DataParallel(cifar10_bn_net(rng=0))
    with pytest.raises(ValueError, match="workers >= 1, got 0"):
        ann.DataParallel(mnist_net(rng=0), 0)
    with pytest.raises(TypeError, match="Sequential"):
        ann.DataParallel([ann.layers.ReLU()])


@pytest.mark.parametrize("processes", [False, True])
def test_an_error_on_any_slice_reaches_the_caller(rng, processes, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # helpers import tests/helpers.py
    model = ann.Sequential([FailsOnNegativeFirstValue(), *mnist_net(rng=0).layers])
    parallel = ann.DataParallel(model, 2, processes=processes, min_batch=1)
    x = np.abs(rng.standard_normal((4, 1, 28, 28))).astype(np.float32)
    x[2, 0, 0, 0] = -1.0  # the first value of the second slice
    with pytest.raises(ValueError, match="first value is negative"):
        parallel.forward(x, train=True)
    x[2, 0, 0, 0] = 1.0
    x[0, 0, 0, 0] = -1.0  # now the calling thread's own slice
    with pytest.raises(ValueError, match="first value is negative"):
        parallel.forward(x, train=True)
    x[0, 0, 0, 0] = 1.0
    assert parallel.forward(x).shape == (4, 10)  # every helper still in step
    x3 = rng.standard_normal((4, 3, 28, 28)).astype(np.float32)  # conv1 wants 1 channel
    with pytest.raises(InputError, match=r"Conv2D 'conv1'.*channels"):
        parallel.forward(np.abs(x3), train=True)


def test_a_helper_process_that_dies_gives_a_clear_error_then_restarts(rng):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, processes=True, min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    expected = parallel.forward(x)
    helper = parallel._helpers.procs[0]
    helper.kill()
    helper.wait()
    with pytest.raises(RuntimeError, match=r"DataParallel: helper process 1 .* stopped"):
        parallel.forward(x)
    np.testing.assert_array_equal(parallel.forward(x), expected)  # started again
    parallel.forward(x, train=True)
    procs = parallel._helpers.procs
    parallel.close()
    assert parallel._helpers is None and all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match=r"were stopped; run forward\(x, train=True\) again"):
        parallel.backward(np.ones((4, 10), dtype=np.float32))


def test_processes_need_numpy_arrays():
    model = mnist_net(rng=0, backend="array_api_strict")
    parallel = ann.DataParallel(model, 2, processes=True, min_batch=1)
    x = ann.asarray(np.zeros((4, 1, 28, 28)), backend="array_api_strict", dtype="float32")
    with pytest.raises(ValueError, match="processes=True needs a NumPy model, got array_api_strict"):
        parallel.forward(x)
    threads = ann.DataParallel(model, 2, min_batch=1)  # the default picks threads there
    assert threads.forward(x).shape == (4, 10)
    assert type(threads._helpers).__name__ == "_Threads"


def test_fit_evaluate_and_checkpoints_take_the_wrapper(tmp_path, rng):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, min_batch=1)
    x = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    y = (np.arange(64) % 10).astype(np.int64)
    loader = DataLoader(x, y, batch_size=32, shuffle=False)
    opt = SGD(parallel, lr=0.01)
    history = ann.fit(parallel, SoftmaxCrossEntropy(), opt, loader, epochs=1, progress=False)
    assert len(history.iterations) == 2
    before = ann.evaluate(parallel, SoftmaxCrossEntropy(), loader)
    ann.save_checkpoint(tmp_path / "dp.h5", parallel, opt)
    fresh = mnist_net(rng=1)
    ann.load_checkpoint(tmp_path / "dp.h5", fresh)
    for key, value in parallel.params().items():
        np.testing.assert_array_equal(host(fresh.params()[key]), host(value))
    after = ann.evaluate(ann.DataParallel(fresh, 2, min_batch=1), SoftmaxCrossEntropy(), loader)
    assert after.loss == pytest.approx(before.loss, rel=1e-6)
    assert after.accuracy == before.accuracy
    # Loading into a wrapper reaches its helpers: they compute with the loaded weights.
    wrapped = ann.DataParallel(mnist_net(rng=2), 2, min_batch=1)
    ann.load_checkpoint(tmp_path / "dp.h5", wrapped)
    np.testing.assert_allclose(wrapped.forward(x[:8]), parallel.forward(x[:8]), rtol=1e-6)


@pytest.mark.parametrize("processes", [False, True])
def test_moving_the_wrapped_model_moves_every_helper(rng, processes):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, processes=processes, min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28))
    assert parallel.forward(x.astype(np.float32)).dtype == np.float32
    assert parallel.to(dtype="float64") is parallel  # the wrapper, not the model inside it
    assert parallel.dtype == "float64"
    out = parallel.forward(x)
    assert out.dtype == np.float64 and out.shape == (4, 10)
    np.testing.assert_allclose(out, parallel.model.forward(x), rtol=1e-12)


@pytest.mark.parametrize("processes", [False, True])
def test_a_gradient_for_another_batch_size_is_refused(rng, processes):
    serial = mnist_net(rng=0, dtype="float64")
    parallel = ann.DataParallel(mnist_net(rng=0, dtype="float64"), 2, processes=processes,
                                min_batch=1)
    x = rng.standard_normal((20, 1, 28, 28))
    y = parallel.forward(x, train=True)
    with pytest.raises(InputError, match=r"DataParallel: dy: expected a batch of 20 \(the "
                                         r"forward input's\), got shape \(19, 10\)"):
        parallel.backward(np.ones((19, 10)))
    parallel.backward(np.ones_like(y))  # the forward pass is still there to go back through
    serial.forward(x, train=True)
    serial.backward(np.ones_like(y))
    for key, value in serial.grads().items():
        assert_close(parallel.grads()[key], value)
    parallel.close()


def _with_mnist_net(layer):
    return ann.Sequential([layer, *mnist_net(rng=0, dtype="float64").layers])


def test_helper_processes_import_layer_classes_from_this_process_import_path(rng, monkeypatch):
    # tests/helpers.py is importable here because tests/ is on sys.path (not on PYTHONPATH):
    # the helpers search the same path.
    monkeypatch.delenv("PYTHONPATH", raising=False)
    serial = _with_mnist_net(FailsOnNegativeFirstValue())
    parallel = ann.DataParallel(_with_mnist_net(FailsOnNegativeFirstValue()), 2,
                                processes=True, min_batch=1)
    x = np.abs(rng.standard_normal((4, 1, 28, 28)))
    labels = np.arange(4)
    _step(serial, SoftmaxCrossEntropy(), x, labels)
    _step(parallel, SoftmaxCrossEntropy(), x, labels)
    assert type(parallel._helpers).__name__ == "_Processes"
    for key, value in serial.grads().items():
        assert_close(parallel.grads()[key], value)
    parallel.close()


class MainScriptLayer(FailsOnNegativeFirstValue):
    """Stands for a layer class written in the user's script: a helper process is a fresh
    interpreter, which cannot import the classes of another one's ``__main__``."""

    __module__ = "__main__"


def test_a_layer_class_of_the_main_script_runs_on_threads(rng):
    serial = _with_mnist_net(MainScriptLayer(name="mine"))
    parallel = ann.DataParallel(_with_mnist_net(MainScriptLayer(name="mine")), 2, min_batch=1)
    x = np.abs(rng.standard_normal((4, 1, 28, 28)))
    labels = np.arange(4)
    _step(serial, SoftmaxCrossEntropy(), x, labels)
    _step(parallel, SoftmaxCrossEntropy(), x, labels)
    assert type(parallel._helpers).__name__ == "_Threads"  # the default falls back to threads
    for key, value in serial.grads().items():
        assert_close(parallel.grads()[key], value)
    parallel.close()
    insisting = ann.DataParallel(_with_mnist_net(MainScriptLayer(name="mine")), 2,
                                 processes=True, min_batch=1)
    with pytest.raises(ValueError, match=r"DataParallel: MainScriptLayer 'mine' is of class "
                                         r"MainScriptLayer, defined in the main script "
                                         r"\(__main__\).*processes=False.*module"):
        insisting.forward(x)
    assert insisting._helpers is None


def test_helpers_import_a_layer_module_from_where_it_was_loaded(rng, tmp_path, monkeypatch):
    # A module loaded from a file outside the import path (or before a chdir): the helpers
    # look in the folder it came from.
    path = tmp_path / "layers_only_here.py"
    path.write_text("from anyarray_nn.layers import ReLU\n\n\nclass ReLUOnlyHere(ReLU):\n"
                    "    pass\n")
    spec = importlib.util.spec_from_file_location("layers_only_here", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "layers_only_here", module)  # removed after the test
    spec.loader.exec_module(module)
    parallel = ann.DataParallel(_with_mnist_net(module.ReLUOnlyHere()), 2, processes=True,
                                min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28))
    try:
        np.testing.assert_allclose(parallel.forward(x), parallel.model.forward(x), rtol=1e-6)
        assert isinstance(parallel._helpers, ann.parallel._Processes)
    finally:
        parallel.close()


def _module_without_a_file(monkeypatch):
    module = types.ModuleType("layers_nowhere")  # made in memory: no file to import it from
    exec("from anyarray_nn.layers import ReLU\n\nclass ReLUNowhere(ReLU):\n    pass\n",
         module.__dict__)
    module.ReLUNowhere.__module__ = "layers_nowhere"
    monkeypatch.setitem(sys.modules, "layers_nowhere", module)
    return module


def test_a_helper_process_that_cannot_load_the_model_says_why(rng, monkeypatch):
    module = _module_without_a_file(monkeypatch)
    parallel = ann.DataParallel(_with_mnist_net(module.ReLUNowhere()), 2, processes=True,
                                min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28))
    for _ in range(2):  # every call starts the helpers afresh, and they fail the same way
        with pytest.raises(RuntimeError, match=r"DataParallel: helper process 1 \(pid \d+\) "
                                               r"could not load the model: ModuleNotFoundError: "
                                               r"No module named 'layers_nowhere'; use "
                                               r"processes=False"):
            parallel.forward(x)
        assert parallel._helpers is None


def test_the_default_trains_on_threads_when_helper_processes_cannot_load_the_model(
        rng, monkeypatch):
    module = _module_without_a_file(monkeypatch)
    parallel = ann.DataParallel(_with_mnist_net(module.ReLUNowhere()), 2, min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28))
    with pytest.warns(RuntimeWarning, match="could not load the model.*on threads instead"):
        out = parallel.forward(x, train=True)
    np.testing.assert_allclose(out, parallel.model.forward(x), rtol=1e-6)
    assert isinstance(parallel._helpers, ann.parallel._Threads)
    parallel.forward(x, train=True)  # no second warning, no second attempt
    assert isinstance(parallel._helpers, ann.parallel._Threads)
    parallel.close()


@pytest.mark.parametrize("workers,processes,min_batch,expected", [
    (1, None, None, None), (2, True, None, 16), (2, False, None, 32), (2, True, 8, 8),
    (3, False, 2, 3)])  # never fewer images than workers
def test_smallest_split_batch_says_what_forward_splits(rng, workers, processes, min_batch,
                                                       expected):
    dp = ann.DataParallel(mnist_net(rng=0, dtype="float64"), workers, processes=processes,
                          min_batch=min_batch)
    assert dp.smallest_split_batch() == expected
    try:
        for n in {2, (expected or 2) - 1, expected or 2}:
            dp.forward(ann.asarray(rng.standard_normal((n, 1, 28, 28))), train=True)
            split = dp._bounds is not None
            assert split == (expected is not None and n >= expected), n
    finally:
        dp.close()


def _dense_net(*middle):
    return ann.Sequential([ann.layers.Dense(4, 4, name="d1", rng=0, dtype="float64"), *middle,
                           ann.layers.Dense(4, 3, name="d2", rng=1, dtype="float64")])


@pytest.mark.parametrize("processes", [True, False])
def test_buffers_reach_the_helpers(rng, processes):
    model = _dense_net(ScaledByBuffer(4, name="scale"))
    parallel = ann.DataParallel(model, 2, processes=processes, min_batch=2)
    x = rng.standard_normal((8, 4))
    try:
        parallel.forward(x, train=True)  # helpers start with s = 1
        model["scale"].buffers["s"] = np.full(4, 3.0)  # as a checkpoint load would
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
        model["scale"].buffers["s"][...] = 0.5  # in place
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
    finally:
        parallel.close()


@pytest.mark.parametrize("processes", [True, False])
def test_a_layer_replaced_after_the_helpers_started_reaches_them(rng, processes):
    model = _dense_net(ann.layers.ReLU(name="act"))
    parallel = ann.DataParallel(model, 2, processes=processes, min_batch=2)
    x = rng.standard_normal((8, 4))
    try:
        parallel.forward(x, train=True)
        model.layers[1] = ann.layers.Tanh(name="act")
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
    finally:
        parallel.close()


@pytest.mark.parametrize("processes", [True, False])
def test_two_threads_may_predict_through_one_wrapper(rng, processes):
    import threading
    parallel = ann.DataParallel(_dense_net(), 2, processes=processes, min_batch=2)
    batches = [rng.standard_normal((n, 4)) for n in (32, 20)]
    wrong = []

    def predict(x):
        for _ in range(20):
            out = parallel.forward(x)
            if out.shape != (len(x), 3) or not np.allclose(out, parallel.model.forward(x)):
                wrong.append(out.shape)

    threads = [threading.Thread(target=predict, args=(x,)) for x in batches]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race shows at once
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
        parallel.close()
    assert wrong == []


def test_two_wrappers_at_once_leave_the_blas_threads_as_they_were():
    # Wrapper A enters, B enters, A leaves, B leaves (two training threads): each restoring
    # what it saw on entry would leave BLAS at one thread for the rest of the process.
    # The BLAS libraries loaded when the limit was first used (NumPy's); numba may load
    # SciPy's later, which the wrappers have no reason to touch.
    limit = ann._threads.one_blas_thread  # the one DataParallel enters
    with limit:
        pass

    def blas_threads():
        return [p["num_threads"] for p in limit.controller.info() if p["user_api"] == "blas"]

    before = blas_threads()
    limit.__enter__()                      # A
    limit.__enter__()                      # B
    assert set(blas_threads()) == {1}
    limit.__exit__(None, None, None)       # A leaves: B still runs on one thread
    assert set(blas_threads()) == {1}
    limit.__exit__(None, None, None)       # B leaves
    assert blas_threads() == before


def test_an_error_pickle_cannot_rebuild_arrives_with_its_text(rng):
    parallel = ann.DataParallel(_dense_net(FailsWithAnOddError()), 2, processes=True, min_batch=2)
    x = rng.standard_normal((8, 4))
    x[4:] = -abs(x[4:])  # the helper's slice fails
    x[0, 0] = 1.0
    try:
        with pytest.raises(RuntimeError, match="_TwoArgumentError: two arguments 1 2"):
            parallel.forward(x)
        x[4:] = abs(x[4:])
        parallel.forward(x)  # the helpers still serve
    finally:
        parallel.close()


def test_non_array_input_gets_the_library_errors():
    parallel = ann.DataParallel(_dense_net(), 2, processes=False, min_batch=2)
    with pytest.raises(ann.BackendMismatchError):
        parallel.forward([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(InputError, match=r"DataParallel: x: expected a batch \(N, ...\), got "
                                         r"shape \(\)"):
        parallel.forward(np.float64(1.0) * np.ones(()))


def test_a_wrapper_that_has_split_a_batch_can_be_copied(rng):
    import copy
    for processes in (True, False):
        parallel = ann.DataParallel(_dense_net(), 2, processes=processes, min_batch=2)
        x = rng.standard_normal((8, 4))
        parallel.forward(x)
        twin = copy.deepcopy(parallel)
        try:
            assert twin.model is not parallel.model and twin.workers == 2
            np.testing.assert_allclose(twin.forward(x), parallel.forward(x), rtol=1e-12)
        finally:
            parallel.close()
            twin.close()


@pytest.mark.parametrize("processes", [False, True])
def test_fit_stops_a_data_parallel_step_with_an_infinite_input_before_the_update(rng,
                                                                                 processes):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, processes=processes, min_batch=1)
    x = rng.standard_normal((48, 1, 28, 28)).astype(np.float32)
    x[16 + 12, 0, 3, 3] = -np.inf  # in the second batch, in the helper's slice
    y = (np.arange(48) % 10).astype(np.int64)
    opt = SGD(parallel, lr=0.01, momentum=0.9)
    kept = []

    class Keep(ann.train.Callback):
        def on_iteration_end(self, state):
            kept[:] = [{k: host(v).copy() for k, v in state.model.params().items()},
                       {k: host(s["momentum"]).copy() for k, s in state.optimizer.state.items()}]

    with np.errstate(all="ignore"), pytest.raises(ann.errors.NonFiniteError,
                                                  match=r"fit: epoch 1, step 2: .*the input "
                                                        r"batch \(shape \(16, 1, 28, 28\)\) has "
                                                        r"0 NaN and 1 infinite values"):
        ann.fit(parallel, SoftmaxCrossEntropy(), opt, DataLoader(x, y, 16, shuffle=False),
                epochs=1, progress=False, callbacks=[Keep()])
    assert parallel._bounds is not None  # the batch was split
    assert opt.step_count == 1
    for key, value in parallel.params().items():
        np.testing.assert_array_equal(host(value), kept[0][key])
        np.testing.assert_array_equal(host(opt.state[key]["momentum"]), kept[1][key])
    parallel.close()
