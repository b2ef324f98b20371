"""DataParallel: slices of the batch on threads give the full batch's outputs and gradients;
the helper processes of earlier versions are refused with the way to MPI."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.errors import InputError
from anyarray_nn.losses import SoftmaxCrossEntropy
from anyarray_nn.networks import cifar10_bn_net, mnist_net
from anyarray_nn.optim import SGD

from helpers import FailsOnNegativeFirstValue, ScaledByBuffer, assert_close, host


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
    assert type(parallel._helpers).__name__ == "_Threads"
    assert_close(loss_b, loss_a)
    assert_close(dx_b, dx_a)
    grads_a, grads_b = serial.grads(), parallel.grads()
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        assert_close(grads_b[key], grads_a[key])


def test_training_with_an_optimizer_follows_one_thread(rng):
    serial = mnist_net(rng=0, dtype="float64")
    parallel = ann.DataParallel(mnist_net(rng=0, dtype="float64"), 2,
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


def test_small_batches_run_on_the_calling_thread(rng):
    default_min_batch = 32
    parallel = ann.DataParallel(mnist_net(rng=0), 2)
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


def test_an_error_on_any_slice_reaches_the_caller(rng):
    model = ann.Sequential([FailsOnNegativeFirstValue(), *mnist_net(rng=0).layers])
    parallel = ann.DataParallel(model, 2, min_batch=1)
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


def test_moving_the_wrapped_model_moves_every_helper(rng):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, min_batch=1)
    x = rng.standard_normal((4, 1, 28, 28))
    assert parallel.forward(x.astype(np.float32)).dtype == np.float32
    assert parallel.to(dtype="float64") is parallel  # the wrapper, not the model inside it
    assert parallel.dtype == "float64"
    out = parallel.forward(x)
    assert out.dtype == np.float64 and out.shape == (4, 10)
    np.testing.assert_allclose(out, parallel.model.forward(x), rtol=1e-12)


def test_a_gradient_for_another_batch_size_is_refused(rng):
    serial = mnist_net(rng=0, dtype="float64")
    parallel = ann.DataParallel(mnist_net(rng=0, dtype="float64"), 2,
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


@pytest.mark.parametrize("workers,min_batch,expected", [
    (1, None, None), (2, None, 32), (2, 8, 8), (3, 2, 3)])  # never fewer images than workers
def test_smallest_split_batch_says_what_forward_splits(rng, workers, min_batch, expected):
    dp = ann.DataParallel(mnist_net(rng=0, dtype="float64"), workers, min_batch=min_batch)
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


def test_buffers_reach_the_helpers(rng):
    model = _dense_net(ScaledByBuffer(4, name="scale"))
    parallel = ann.DataParallel(model, 2, min_batch=2)
    x = rng.standard_normal((8, 4))
    try:
        parallel.forward(x, train=True)  # helpers start with s = 1
        model["scale"].buffers["s"] = np.full(4, 3.0)  # as a checkpoint load would
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
        model["scale"].buffers["s"][...] = 0.5  # in place
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
    finally:
        parallel.close()


def test_a_layer_replaced_after_the_helpers_started_reaches_them(rng):
    model = _dense_net(ann.layers.ReLU(name="act"))
    parallel = ann.DataParallel(model, 2, min_batch=2)
    x = rng.standard_normal((8, 4))
    try:
        parallel.forward(x, train=True)
        model.layers[1] = ann.layers.Tanh(name="act")
        np.testing.assert_allclose(parallel.forward(x, train=True), model.forward(x), rtol=1e-12)
    finally:
        parallel.close()


def test_two_threads_may_predict_through_one_wrapper(rng):
    import threading
    parallel = ann.DataParallel(_dense_net(), 2, min_batch=2)
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


def test_non_array_input_gets_the_library_errors():
    parallel = ann.DataParallel(_dense_net(), 2, min_batch=2)
    with pytest.raises(ann.BackendMismatchError):
        parallel.forward([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(InputError, match=r"DataParallel: x: expected a batch \(N, ...\), got "
                                         r"shape \(\)"):
        parallel.forward(np.float64(1.0) * np.ones(()))


def test_a_wrapper_that_has_split_a_batch_can_be_copied(rng):
    import copy
    parallel = ann.DataParallel(_dense_net(), 2, min_batch=2)
    x = rng.standard_normal((8, 4))
    parallel.forward(x)
    twin = copy.deepcopy(parallel)
    try:
        assert twin.model is not parallel.model and twin.workers == 2
        np.testing.assert_allclose(twin.forward(x), parallel.forward(x), rtol=1e-12)
    finally:
        parallel.close()
        twin.close()


def test_fit_stops_a_data_parallel_step_with_an_infinite_input_before_the_update(rng):
    parallel = ann.DataParallel(mnist_net(rng=0), 2, min_batch=1)
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


def test_helper_processes_are_refused_with_the_way_to_mpi_ranks():
    with pytest.raises(ValueError, match=r"helper processes \(processes=True\) were removed; "
                                         r"train over MPI ranks instead"):
        ann.DataParallel(mnist_net(rng=0), 2, processes=True)
    assert ann.DataParallel(mnist_net(rng=0), 2, processes=False).workers == 2


def test_starting_the_helper_threads_is_logged(caplog, rng):
    """What the library decides for the user is on the "anyarray_nn" logger: the helpers
    it starts, once (not at every split batch)."""
    model = ann.DataParallel(ann.Sequential([ann.layers.Dense(3, 2, rng=0, dtype="float64")]),
                             workers=2, min_batch=1)
    try:
        with caplog.at_level("INFO", logger="anyarray_nn"):
            for _ in range(3):
                model.forward(rng.standard_normal((4, 3)), train=True)
    finally:
        model.close()
    started = [r.message for r in caplog.records if "helper thread(s) started" in r.message]
    assert started == ["DataParallel: 1 helper thread(s) started, each with a copy of the "
                       "model's layers sharing its parameters"]
