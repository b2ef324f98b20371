"""The CuPy fast paths (functional/_cupy_kernels.py) compute what the portable kernels do.

Every test that needs a GPU skips without one; the dispatch tests run everywhere. The rest of
the suite runs the fast paths too: its ``xp`` fixture's cupy runs (gradient checks, PyTorch
agreement) go through them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.functional import _fast
from helpers import assert_close, fast_and_portable, host
from test_functional_conv import CONFIGS as CONV_CONFIGS
from test_functional_conv import make
from test_functional_pool import CONFIGS as POOL_CONFIGS


@pytest.fixture
def cupy_backend():
    """CuPy made active, or a skip where it cannot run."""
    try:
        ann.get_backend("cupy")
    except ann.BackendError as exc:
        pytest.skip(str(exc).split(". ")[0])
    with ann.using("cupy") as backend:
        yield backend



def test_dispatch_is_off_for_other_backends_and_inside_portable_kernels():
    import array_api_compat.numpy as xp_numpy
    assert _fast.cuda_kernels(xp_numpy, np.float64) is None
    with F.portable_kernels():
        with F.portable_kernels():
            assert _fast.portable_only()
        assert _fast.portable_only()  # nested blocks restore the outer setting
    assert not _fast.portable_only()


def test_portable_kernels_apply_to_the_calling_thread_only():
    import threading
    seen = []
    with F.portable_kernels():
        other = threading.Thread(target=lambda: seen.append(_fast.portable_only()))
        other.start()
        other.join()
        seen.append(_fast.portable_only())
    assert seen == [False, True]


def test_dispatch_picks_the_kernels_on_cupy_for_float32_and_float64_only(cupy_backend):
    xp = cupy_backend.xp
    assert _fast.cuda_kernels(xp, xp.float32) is not None
    assert _fast.cuda_kernels(xp, xp.float64) is not None
    assert _fast.cuda_kernels(xp, xp.float16) is None
    with F.portable_kernels():
        assert _fast.cuda_kernels(xp, xp.float32) is None


def test_each_fast_path_runs_on_cupy(cupy_backend, rng, monkeypatch):
    from anyarray_nn.functional import _cupy_kernels
    names = ["conv2d_input_gradient", "im2col", "maxpool2d_backward", "maxpool2d_forward",
             "relu_backward", "relu_forward", "sgd_update", "softmax_cross_entropy_gradient",
             "softmax_rows"]
    calls = []
    for name in names:
        real = getattr(_cupy_kernels, name)
        monkeypatch.setattr(_cupy_kernels, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    model = ann.networks.mnist_net(rng=0)
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    x = ann.asarray(rng.standard_normal((2, 1, 28, 28)), dtype="float32")
    loss_fn.forward(model.forward(x, train=True), ann.asarray(np.array([3, 7])))
    model.backward(loss_fn.backward(), input_grad=True)
    opt.step()
    assert sorted(set(calls)) == names


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("name", CONV_CONFIGS)
def test_conv2d_equals_the_portable_kernel(cupy_backend, rng, name, dtype, rtol):
    x, w, b, kw = make(rng, CONV_CONFIGS[name], dtype)
    y, y_portable = fast_and_portable(lambda: F.conv2d_forward(x, w, b, **kw))
    dy = ann.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype)
    grads, grads_portable = fast_and_portable(lambda: F.conv2d_backward(x, w, dy, **kw))
    atol = rtol * float(np.abs(host(y_portable)).max())
    assert_close(y, y_portable, rtol=rtol, atol=atol)
    for fast, portable in zip(grads, grads_portable):
        assert_close(fast, portable, rtol=rtol, atol=rtol * float(np.abs(host(portable)).max()))


def test_conv2d_reads_any_memory_layout(cupy_backend, rng):
    """im2col reads x through its strides: a channels-first view, a flipped and a sliced one."""
    x, w, b, kw = make(rng, CONV_CONFIGS["stride2-pad1"])
    xp = cupy_backend.xp
    views = [xp.permute_dims(xp.asarray(xp.permute_dims(x, (1, 0, 2, 3)), copy=True),
                             (1, 0, 2, 3)),
             xp.flip(x, axis=3), ann.asarray(host(x)[:, :, ::-1, :]),
             ann.asarray(np.pad(host(x), ((0, 0), (0, 0), (1, 2), (3, 1))))[:, :, 1:-2, 3:-1]]
    for view in views:
        fast, portable = fast_and_portable(lambda: F.conv2d_forward(view, w, b, **kw))
        assert_close(fast, portable)
        dy = ann.asarray(rng.standard_normal(tuple(fast.shape)))
        dy_view = xp.flip(xp.flip(dy, axis=2), axis=2)  # equal values, negative strides
        fast, portable = fast_and_portable(lambda: F.conv2d_backward(view, w, dy_view, **kw))
        for f, p in zip(fast, portable):
            assert_close(f, p)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", POOL_CONFIGS)
def test_maxpool_equals_the_portable_kernel(cupy_backend, rng, name, ties):
    shape, k, s, p = POOL_CONFIGS[name]
    values = rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)
    x = ann.asarray(values, dtype="float64")
    y, y_portable = fast_and_portable(lambda: F.maxpool2d_forward(x, k, s, p))
    assert np.array_equal(host(y), host(y_portable))
    dy = ann.asarray(rng.standard_normal(tuple(y.shape)))
    dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, k, s, p, y=y))
    assert_close(dx, dx_portable, rtol=1e-14, atol=0)
    dx_no_y, _ = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, k, s, p))
    assert_close(dx_no_y, dx_portable, rtol=1e-14, atol=0)


def test_maxpool_nan_and_minus_infinity_as_the_portable_kernel(cupy_backend, rng):
    """A NaN wins its window (as xp.maximum), and a window of -inf sends dy to its first
    element, in both forward and backward."""
    values = rng.standard_normal((2, 3, 6, 6))
    values[0, 0, 1, 1] = np.nan
    values[1, 2, 2:4, 2:4] = -np.inf
    x = ann.asarray(values, dtype="float32")
    for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 1, 1)]:
        y, y_portable = fast_and_portable(lambda: F.maxpool2d_forward(x, k, s, p))
        np.testing.assert_array_equal(host(y), host(y_portable))  # NaN equals NaN here
        dy = ann.asarray(rng.standard_normal(tuple(y.shape)), dtype="float32")
        dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, k, s, p, y=y))
        np.testing.assert_allclose(host(dx), host(dx_portable), rtol=1e-5, atol=1e-6)  # float32 sums


def test_a_network_trains_the_same_with_and_without_fast_paths(cupy_backend, rng):
    x = rng.standard_normal((8, 3, 32, 32))
    labels = ann.asarray(np.arange(8) % 10)
    losses = []
    for portable in (False, True):
        model = ann.networks.cifar10_large_net(rng=0, dtype="float64")
        opt = ann.optim.SGD(model, lr=0.01, momentum=0.9)
        loss_fn = ann.losses.SoftmaxCrossEntropy()
        with F.portable_kernels() if portable else contextlib.nullcontext():
            for _ in range(3):
                loss = loss_fn.forward(model.forward(ann.asarray(x), train=True), labels)
                model.backward(loss_fn.backward())
                opt.step()
        losses.append((float(loss), host(model.params()["conv1.W"])))
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-10)
    assert_close(losses[0][1], losses[1][1], rtol=1e-9, atol=1e-12)


def test_relu_equals_the_portable_kernel(cupy_backend, rng):
    values = rng.standard_normal((3, 4, 5, 6))
    values[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    x = ann.asarray(values, dtype="float32")
    view = cupy_backend.xp.permute_dims(x, (1, 0, 3, 2))  # any memory order
    for a in (x, view):
        y, y_portable = fast_and_portable(lambda: F.relu_forward(a))
        np.testing.assert_array_equal(host(y), host(y_portable))
        dy = ann.asarray(rng.standard_normal(tuple(a.shape)), dtype="float32")
        dx, dx_portable = fast_and_portable(lambda: F.relu_backward(a, dy))
        np.testing.assert_array_equal(host(dx), host(dx_portable))  # the same product


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 1e-6)])
def test_softmax_cross_entropy_equals_the_portable_kernel(cupy_backend, rng, dtype, rtol):
    xp = cupy_backend.xp
    logits = ann.asarray(rng.standard_normal((7, 10)) * 30, dtype=dtype)  # wide range: stable
    for labels in (ann.asarray(rng.integers(0, 10, 7)),
                   ann.asarray(rng.integers(0, 10, 7).astype(np.uint8))):
        for z in (logits, xp.permute_dims(ann.asarray(host(logits).T.copy()), (1, 0))):
            loss, loss_portable = fast_and_portable(
                lambda: F.softmax_cross_entropy_forward(z, labels))
            assert_close(loss, loss_portable, rtol=rtol, atol=0)
            for dloss in (1.0, 0.5, ann.asarray(np.array(2.0), dtype=dtype)):
                dz, dz_portable = fast_and_portable(
                    lambda: F.softmax_cross_entropy_backward(z, labels, dloss))
                assert_close(dz, dz_portable, rtol=rtol, atol=rtol / 7)


def test_softmax_cross_entropy_errors_as_the_portable_kernel(cupy_backend, rng):
    logits = ann.asarray(rng.standard_normal((4, 3)))
    bad_logits = ann.asarray(np.array([[0.0, np.nan, 1.0]] * 4))
    cases = [(logits, ann.asarray(np.array([0, 1, 3, 2]))),
             (logits, ann.asarray(np.array([0, -1, 2, 2]))),
             (bad_logits, ann.asarray(np.array([0, 1, 2, 2])))]
    for z, labels in cases:
        messages = []
        for block in (contextlib.nullcontext, F.portable_kernels):
            with block(), pytest.raises(ann.InputError) as info:
                F.softmax_cross_entropy_forward(z, labels)
            messages.append(str(info.value))
        assert messages[0] == messages[1]


@pytest.mark.parametrize("form", ["ema", "classic", "nesterov"])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_sgd_step_equals_the_portable_update_bit_for_bit(cupy_backend, rng, form,
                                                         weight_decay):
    x = ann.asarray(rng.standard_normal((4, 1, 28, 28)), dtype="float32")
    labels = ann.asarray(np.arange(4))
    params = []
    for block in (contextlib.nullcontext, F.portable_kernels):
        model = ann.networks.mnist_net(rng=0)
        opt = ann.optim.SGD(model, lr=0.05, momentum=0.9, weight_decay=weight_decay,
                            form=form, no_decay=("b",))
        loss_fn = ann.losses.SoftmaxCrossEntropy()
        for _ in range(3):
            with F.portable_kernels():  # the same gradients for both: only the update differs
                loss_fn.forward(model.forward(x, train=True), labels)
                model.backward(loss_fn.backward())
            with block():
                opt.step()
        params.append({k: host(w) for k, w in model.params().items()})
    for key in params[0]:
        np.testing.assert_array_equal(params[0][key], params[1][key], err_msg=key)
