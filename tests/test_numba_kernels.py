"""The numba fast paths for NumPy (functional/_numba_kernels.py) compute what the portable
kernels do: the 2x2 max-pool exactly, the Winograd 3x3 convolution, the direct
convolution of first layers and the depthwise convolution up to rounding.

They need numba (the ``cpu`` extra) and skip without it; the dispatch tests run everywhere.
The rest of the suite runs them too: every NumPy max-pool with a 2x2 window, every 3x3
stride-1 convolution of 8 or more input channels and every stride-1 convolution of 1 to 3
input channels (gradient checks, PyTorch agreement, the course networks' training steps)
goes through them.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import sys

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import _threads
from anyarray_nn import functional as F
from anyarray_nn.functional import _fast
from anyarray_nn.functional import conv as conv_module
from helpers import fast_and_portable

WINDOW = ((2, 2), (2, 2), (0, 0))
WINOGRAD = ((3, 3), (1, 1), (1, 1))


@pytest.fixture
def numba_kernels():
    pytest.importorskip("numba")
    module = _fast.pool_kernels(np, np.dtype("float32"), WINDOW)
    assert module is not None, "numba imports, so the NumPy max-pool must take its kernels"
    return module



def layouts(values):
    """The same NCHW values in the memory layouts the kernels meet: contiguous NCHW, a view
    of a channels-first buffer (a convolution's output), a narrow view of a wider buffer,
    and negative strides."""
    n, c, h, w = values.shape
    cnhw = np.ascontiguousarray(np.permute_dims(values, (1, 0, 2, 3)))
    wide = np.zeros((c, n, h, w + 3), dtype=values.dtype)
    wide[..., :w] = cnhw
    flipped = np.ascontiguousarray(values[:, :, ::-1, ::-1])[:, :, ::-1, ::-1]
    return {"nchw": values, "cnhw": np.permute_dims(cnhw, (1, 0, 2, 3)),
            "wide": np.permute_dims(wide[..., :w], (1, 0, 2, 3)), "flipped": flipped}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (1, 1, 5, 7), (3, 16, 28, 28), (2, 2, 9, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_equals_the_portable_kernel(numba_kernels, rng, dtype, shape, ties):
    values = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    dy_values = rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2))
    for name, x in layouts(values).items():
        y, y_portable = fast_and_portable(lambda: F.maxpool2d_forward(x, 2))
        assert y.dtype == x.dtype and y.shape == y_portable.shape, name
        np.testing.assert_array_equal(y, y_portable, err_msg=name)
        for dy in layouts(dy_values.astype(dtype)).values():
            dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, 2, y=y))
            np.testing.assert_array_equal(dx, dx_portable, err_msg=name)  # nothing is summed
        dx_no_y, _ = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, 2))
        np.testing.assert_array_equal(dx_no_y, dx_portable, err_msg=name)


def test_maxpool_nan_and_minus_infinity_as_the_portable_kernel(numba_kernels, rng):
    """A NaN wins its window (as xp.maximum) and gets its gradient, the last NaN where there
    are several (PyTorch's rule); a window of -inf sends dy to its first element."""
    values = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    values[0, 0, 1, 1] = np.nan
    values[0, 1, 2:4, 0] = np.nan  # two NaNs in window (1, 0): the second gets dy
    values[0, 2, 0, 1] = values[0, 2, 1, 0] = np.nan
    values[1, 2, 2:4, 2:4] = -np.inf
    y, y_portable = fast_and_portable(lambda: F.maxpool2d_forward(values, 2))
    np.testing.assert_array_equal(y, y_portable)  # NaN equals NaN here
    assert np.isnan(y[0, 0, 0, 0]) and y[1, 2, 1, 1] == -np.inf
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for given in ({"y": y}, {}):
        dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(values, dy, 2, **given))
        np.testing.assert_array_equal(dx, dx_portable)
        assert dx[1, 2, 2, 2] == dy[1, 2, 1, 1]
        for c, window, last_nan in [(0, (0, 0), (1, 1)), (1, (1, 0), (3, 0)), (2, (0, 0), (1, 0))]:
            a, b = window
            expected = np.zeros((2, 2), dtype=np.float32)
            expected[last_nan[0] - 2 * a, last_nan[1] - 2 * b] = dy[0, c, a, b]
            np.testing.assert_array_equal(dx[0, c, 2 * a:2 * a + 2, 2 * b:2 * b + 2], expected)


def test_a_nan_gradient_stays_in_its_arg_max(numba_kernels):
    """The documented difference: the portable kernel's masked products spread a NaN dy over
    its window (NaN * 0); the compiled kernel writes dy to the arg-max only."""
    x = np.array([[[[1.0, 3.0], [2.0, 0.0]]]])
    dy = np.array([[[[np.nan]]]])
    dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, 2))
    np.testing.assert_array_equal(dx, [[[[0.0, np.nan], [0.0, 0.0]]]])
    assert np.isnan(dx_portable).all()


def test_the_fast_path_runs_for_numpy_2x2_pools_only(numba_kernels, monkeypatch, rng):
    calls = []
    for name in ("maxpool2d_forward", "maxpool2d_backward"):
        real = getattr(numba_kernels, name)
        monkeypatch.setattr(numba_kernels, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    x = rng.standard_normal((2, 3, 8, 8))
    F.maxpool2d_backward(x, np.ones((2, 3, 4, 4)), 2)
    assert calls == ["maxpool2d_forward", "maxpool2d_backward"]
    calls.clear()
    F.maxpool2d_backward(x, np.ones((2, 3, 4, 4)), 3, 2, 1)  # another window: portable
    F.maxpool2d_forward(x, (2, 2), (1, 1))  # overlapping windows: portable
    with F.portable_kernels():
        F.maxpool2d_forward(x, 2)
    assert calls == []


def test_dispatch_answers_only_for_numpy_floats_and_the_2x2_window():
    import array_api_strict
    strict = _fast.pool_kernels(array_api_strict, array_api_strict.float64, WINDOW)
    assert strict is None
    for window in [((3, 3), (2, 2), (1, 1)), ((2, 2), (1, 1), (0, 0)), ((2, 2), (2, 2), (1, 1))]:
        assert _fast.pool_kernels(np, np.dtype("float64"), window) is None
    assert _fast.pool_kernels(np, np.dtype("int64"), WINDOW) is None
    with F.portable_kernels():
        assert _fast.pool_kernels(np, np.dtype("float64"), WINDOW) is None
        assert not _fast.has_fast_paths(np, np.dtype("float64"))


def test_without_numba_numpy_takes_the_portable_kernels_quietly(monkeypatch, recwarn):
    # A fresh cache, so the import is tried again, now without numba.
    monkeypatch.setattr(_fast, "_load_numba_kernels",
                        functools.cache(_fast._load_numba_kernels.__wrapped__))
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ImportError
    monkeypatch.delitem(sys.modules, "anyarray_nn.functional._numba_kernels", raising=False)
    monkeypatch.delattr(F, "_numba_kernels", raising=False)  # what "from . import" finds first
    assert _fast.pool_kernels(np, np.dtype("float32"), WINDOW) is None
    assert _fast.winograd_kernels(np, np.dtype("float32"), WINOGRAD, 8) is None
    assert _fast.direct_kernels(np, np.dtype("float32"), (1, 1), 1) is None
    assert not _fast.has_fast_paths(np, np.dtype("float32"))
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(F.maxpool2d_forward(x, 2), [[[[5.0, 7.0], [13.0, 15.0]]]])
    assert not [w for w in recwarn if "numba" in str(w.message)]


def test_data_parallel_helpers_follow_portable_kernels(numba_kernels):
    """A portable_kernels() block reaches the slices that helper threads compute: the NaN dy
    below spreads over its window on the portable path only."""
    model = ann.DataParallel(ann.Sequential([ann.layers.MaxPool2D(2)]), workers=2,
                             min_batch=1)
    try:
        x = np.tile(np.array([[[[1.0, 3.0], [2.0, 0.0]]]]), (4, 1, 1, 1))
        dy = np.full((4, 1, 1, 1), np.nan)
        for portable in (False, True):
            with F.portable_kernels() if portable else contextlib.nullcontext():
                model.forward(x, train=True)
                dx = model.backward(dy, input_grad=True)
            spread = np.isnan(dx).all(axis=(1, 2, 3))
            assert spread.tolist() == [portable] * 4, portable
    finally:
        model.close()


# (N, C, H, W), out channels, padding: even and odd sizes, every padding a 3x3 kernel takes;
# with 8 or more output channels dX is Winograd too.
WINOGRAD_CASES = {
    "same-even": ((2, 8, 8, 6), 5, 1),
    "same-odd": ((3, 9, 7, 5), 10, "same"),
    "valid": ((2, 8, 6, 9), 3, 0),
    "pad2": ((1, 8, 5, 4), 2, 2),
    "asymmetric": ((2, 12, 5, 6), 9, (0, 2, 1, 0)),
    "batch1-one-output": ((1, 8, 4, 4), 1, 1),
    "course-sized": ((4, 32, 16, 16), 64, 1),
}


def conv_all(x, w, b, dy, **kwargs):
    """Forward and all three gradients."""
    return F.conv2d_forward(x, w, b, **kwargs), *F.conv2d_backward(x, w, dy, **kwargs)


def assert_fast_equals_portable(run, rtol, err_msg):
    """The fast paths' forward and gradients equal the portable kernels' up to rounding: the
    sums are reordered, so compare at the scale of the values."""
    fast, portable = fast_and_portable(run)
    for what, a, e in zip(("y", "dx", "dW", "db"), fast, portable):
        assert a.dtype == e.dtype and a.shape == e.shape, (err_msg, what)
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * float(np.abs(e).max()),
                                   err_msg=f"{err_msg} {what}")


# F(4x4, 3x3)'s larger coefficients round more than F(2x2, 3x3)'s (see _numba_kernels).
WINOGRAD_RTOL = {("F2", "float64"): 1e-12, ("F2", "float32"): 2e-6,
                 ("F4", "float64"): 1e-12, ("F4", "float32"): 1e-5}


@pytest.fixture(params=["F2", "F4"])
def winograd_scheme(request, numba_kernels, monkeypatch):
    """Every Winograd convolution of the test runs F(2x2, 3x3) or F(4x4, 3x3), whatever
    its output size."""
    monkeypatch.setattr(numba_kernels, "WINOGRAD_F4_MIN_SIZE",
                        1 if request.param == "F4" else 10**9)
    return request.param


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", WINOGRAD_CASES)
def test_winograd_convolution_equals_the_portable_kernel(numba_kernels, winograd_scheme, rng,
                                                         dtype, name):
    rtol = WINOGRAD_RTOL[winograd_scheme, dtype]
    shape, out_channels, padding = WINOGRAD_CASES[name]
    assert _fast.winograd_kernels(np, np.dtype(dtype), WINOGRAD, shape[1]) is numba_kernels
    w = rng.standard_normal((out_channels, shape[1], 3, 3)).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype)
    values = rng.standard_normal(shape).astype(dtype)
    y = F.conv2d_forward(values, w, b, padding=padding)
    dy_values = rng.standard_normal(y.shape).astype(dtype)
    for layout, x in layouts(values).items():
        for dy in layouts(dy_values).values():
            assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, padding=padding), rtol,
                                        layout)


def test_winograd_takes_4x4_blocks_from_4x4_outputs_and_2x2_blocks_below(numba_kernels):
    # (output size, planes of the (m+2)^2 tile, blocks of m x m covering one image)
    for size, planes, blocks in ((3, 16, 2 * 2), (4, 36, 1), (9, 36, 3 * 3)):
        x = np.zeros((1, 8, size, size), dtype=np.float32)
        v = numba_kernels.winograd_patches(x, (1, 1, 1, 1), (size, size))
        assert v.shape == (planes, 8, blocks)


def test_winograd_convolution_passes_float64_gradient_checks(numba_kernels, winograd_scheme,
                                                              rng):
    from anyarray_nn.gradcheck import check_function
    x = rng.standard_normal((2, 8, 5, 6))
    w, b = rng.standard_normal((8, 8, 3, 3)), rng.standard_normal(8)  # dX Winograd too

    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, padding=1)
        return {"x": dx, "w": dw, "b": db}

    report = check_function(lambda x, w, b: F.conv2d_forward(x, w, b, padding=1), backward,
                            {"x": x, "w": w, "b": b}, max_checks=80)
    assert report.passed, str(report)


def record_calls(module, names, monkeypatch):
    """The list to which calls of ``module``'s functions ``names`` append their names."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    return calls


@pytest.fixture
def winograd_calls(numba_kernels, monkeypatch):
    """The names of the Winograd functions called, in order."""
    return record_calls(numba_kernels, ["winograd_patches", "winograd_forward",
                                        "winograd_output_gradient", "winograd_weight_gradient",
                                        "winograd_input_gradient"], monkeypatch)


def test_the_winograd_path_runs_for_3x3_stride1_convolutions_of_8_channels_or_more(
        winograd_calls, rng):
    x, w = rng.standard_normal((2, 8, 6, 6)), rng.standard_normal((8, 8, 3, 3))
    F.conv2d_forward(x, w, padding=1)
    assert winograd_calls == ["winograd_patches", "winograd_forward"]
    winograd_calls.clear()
    F.conv2d_backward(x, w, np.ones((2, 8, 6, 6)), padding=1)  # patches made afresh
    assert winograd_calls == ["winograd_patches", "winograd_output_gradient",
                              "winograd_weight_gradient", "winograd_input_gradient"]
    winograd_calls.clear()
    w = w[:4]  # dX sums over 4 output channels: im2col's; the forward pass and dW stay Winograd
    F.conv2d_backward(x, w, np.ones((2, 4, 6, 6)), padding=1)
    assert winograd_calls == ["winograd_patches", "winograd_output_gradient",
                              "winograd_weight_gradient"]
    winograd_calls.clear()
    F.conv2d_forward(x, w, stride=2, padding=1)  # stride 2
    F.conv2d_forward(x, w, padding=2, dilation=2)  # dilated
    F.conv2d_forward(x[:, :7], w[:, :7], padding=1)  # 7 channels
    F.conv2d_forward(x, rng.standard_normal((4, 8, 3, 2)), padding=1)  # 3x2
    with F.portable_kernels():
        F.conv2d_backward(x, w, np.ones((2, 4, 6, 6)), padding=1)
    assert winograd_calls == []


def test_a_few_channel_first_layer_is_not_winograd(winograd_calls, rng):
    """3 -> 16 channels: neither the forward pass, dW nor dX is Winograd (dX's GEMMs would be
    3 x 16, and its transforms cost more than they save); they are direct convolutions."""
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
    F.conv2d_forward(x, w, padding=1)
    F.conv2d_backward(x, w, rng.standard_normal((2, 16, 7, 8)).astype(np.float32), padding=1)
    assert winograd_calls == []


@pytest.mark.parametrize("channels, kind", [(8, "winograd"), (3, "direct")])
def test_fast_patches_kept_by_the_layer_are_remade_in_a_portable_block(numba_kernels, rng,
                                                                        channels, kind):
    """A Conv2D layer keeps the forward's Winograd tiles or direct padded planes; a backward
    inside portable_kernels() may not use them and computes the portable gradients instead."""
    layer = ann.layers.Conv2D(channels, 4, 3, padding=1, dtype="float64", rng=0)
    x = rng.standard_normal((2, channels, 6, 6))
    dy = rng.standard_normal((2, 4, 6, 6))
    layer.forward(x, train=True)
    assert layer._cache[1].kind == kind  # (x, patches)
    with F.portable_kernels():
        dx = layer.backward(dy)
        expected = F.conv2d_backward(x, layer.params["W"], dy, padding=1)
    np.testing.assert_allclose(dx, expected[0], rtol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], expected[1], rtol=1e-12)


def test_winograd_dispatch_answers_only_for_numpy_floats_and_its_window(numba_kernels):
    import array_api_strict
    assert _fast.winograd_kernels(np, np.dtype("float32"), WINOGRAD, 8) is numba_kernels
    assert _fast.winograd_kernels(np, np.dtype("float32"), WINOGRAD, 7) is None
    assert _fast.winograd_kernels(array_api_strict, array_api_strict.float64, WINOGRAD, 8) is None
    assert _fast.winograd_kernels(np, np.dtype("int64"), WINOGRAD, 8) is None
    for window in [((3, 3), (2, 2), (1, 1)), ((3, 3), (1, 1), (2, 2)), ((5, 5), (1, 1), (1, 1))]:
        assert _fast.winograd_kernels(np, np.dtype("float64"), window, 8) is None
    with F.portable_kernels():
        assert _fast.winograd_kernels(np, np.dtype("float64"), WINOGRAD, 8) is None


# Convolutions with 1 to 3 input channels (first layers): the forward pass and dW are direct
# convolutions, and so is dX (a convolution down to those channels) whatever the stride.
DIRECT_CASES = {  # (N, C, H, W), (O, kh, kw), stride, padding, dilation
    "mnist-first-layer": ((3, 1, 12, 11), (16, 5, 5), 1, 2, 1),
    "cifar-first-layer": ((2, 3, 10, 10), (16, 5, 5), 1, 2, 1),
    "3x3-first-layer": ((2, 3, 8, 9), (32, 3, 3), 1, "same", 1),
    "3x3-valid": ((2, 2, 7, 9), (8, 3, 3), 1, 0, 1),
    "1x1": ((2, 3, 5, 4), (4, 1, 1), 1, 0, 1),
    "stride2": ((2, 3, 9, 8), (4, 3, 3), 2, 1, 1),
    "dilation-odd-outputs": ((1, 1, 10, 9), (5, 3, 2), 1, (2, 1), (2, 1)),
    "asymmetric-batch1-one-output": ((1, 3, 6, 7), (1, 3, 3), 1, (0, 2, 1, 0), 1),
}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
@pytest.mark.parametrize("name", DIRECT_CASES)
def test_direct_convolution_equals_the_portable_kernel(numba_kernels, rng, dtype, rtol, name):
    shape, (o, kh, kw), stride, padding, dilation = DIRECT_CASES[name]
    assert _fast.direct_kernels(np, np.dtype(dtype), (1, 1), shape[1]) is numba_kernels
    w = rng.standard_normal((o, shape[1], kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    values = rng.standard_normal(shape).astype(dtype)
    dy_values = rng.standard_normal(F.conv2d_forward(values, w, **kwargs).shape).astype(dtype)
    for layout, x in layouts(values).items():
        for dy in layouts(dy_values).values():
            assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, **kwargs), rtol, layout)


def test_direct_convolution_passes_float64_gradient_checks(numba_kernels, rng):
    from anyarray_nn.gradcheck import check_function
    x = rng.standard_normal((2, 3, 5, 6))
    w, b = rng.standard_normal((5, 3, 3, 2)), rng.standard_normal(5)  # odd O, 18 taps

    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, padding=(1, 2), dilation=(1, 2))
        return {"x": dx, "w": dw, "b": db}

    report = check_function(
        lambda x, w, b: F.conv2d_forward(x, w, b, padding=(1, 2), dilation=(1, 2)), backward,
        {"x": x, "w": w, "b": b}, max_checks=80)
    assert report.passed, str(report)


@pytest.fixture
def direct_calls(numba_kernels, monkeypatch):
    """For each call of a direct kernel: its name and the input channels of its weights. The
    process counts as having several cores, whatever the environment says."""
    monkeypatch.setattr(_threads, "_single_threaded_process", lambda: False)
    calls = []
    for name in ("direct_convolution", "direct_weight_gradient"):
        real = getattr(numba_kernels, name)
        monkeypatch.setattr(numba_kernels, name, lambda xpad, *a, _real=real, _name=name:
                            calls.append((_name, xpad.shape[0])) or _real(xpad, *a))
    return calls


def test_the_direct_path_runs_for_three_input_channels_or_fewer(direct_calls, rng):
    for c in (1, 3, 4):
        x, w = rng.standard_normal((2, c, 6, 6)), rng.standard_normal((8, c, 5, 5))
        F.conv2d_backward(x, w, np.ones((2, 8, 6, 6)), padding=2)  # patches made afresh
        F.conv2d_forward(x, w, padding=2, stride=2)  # stride 2: im2col
    # dX of a first layer (1 or 3 output channels) convolves dY, 8 channels, down to them
    assert direct_calls == [("direct_weight_gradient", 1), ("direct_convolution", 8),
                            ("direct_weight_gradient", 3), ("direct_convolution", 8)]
    direct_calls.clear()
    layer = ann.layers.Conv2D(3, 8, 5, padding=2, dtype="float64", rng=0)
    layer.forward(rng.standard_normal((2, 3, 6, 6)), train=True)
    layer.backward(np.ones((2, 8, 6, 6)), input_grad=False)  # a first layer: no dX
    assert direct_calls == [("direct_convolution", 3), ("direct_weight_gradient", 3)]
    direct_calls.clear()
    with F.portable_kernels():
        F.conv2d_backward(x[:, :1], w[:, :1], np.ones((2, 8, 6, 6)), padding=2)
    assert direct_calls == []


def test_on_one_core_the_direct_path_runs_for_16_channels_or_fewer(direct_calls, rng):
    """On one core for up to 16 input channels; on several only where the register tiles
    apply (8 or more output channels, 128 or more taps), which beat a GEMM on two cores."""
    x, w = rng.standard_normal((2, 16, 6, 6)), rng.standard_normal((4, 16, 5, 5))
    with _threads.one_thread_each():
        assert _threads.one_core()
        F.conv2d_backward(x, w, np.ones((2, 4, 6, 6)), padding=2)
        F.conv2d_backward(x[:, :8], w[:4, :8, :3, :3], np.ones((2, 4, 6, 6)), padding=1)  # Winograd
        F.conv2d_forward(np.ones((2, 17, 6, 6)), np.ones((16, 17, 5, 5)), padding=2)
    # dX of both convolves dY's 4 channels (Winograd's dX needs 8 on both sides)
    assert direct_calls == [("direct_weight_gradient", 16), ("direct_convolution", 4),
                            ("direct_convolution", 4)]
    direct_calls.clear()
    assert not _threads.one_core()
    F.conv2d_backward(x, w, np.ones((2, 4, 6, 6)), padding=2)  # 4 outputs: no tiles
    assert direct_calls == []
    wide = rng.standard_normal((8, 16, 5, 5))  # 8 outputs of 400 taps, dX 8 x 25 = 200
    F.conv2d_backward(x, wide, np.ones((2, 8, 6, 6)), padding=2)
    assert direct_calls == [("direct_weight_gradient", 16), ("direct_convolution", 8)]


def test_data_parallel_slices_count_as_one_core(direct_calls, rng):
    """DataParallel computes each slice with one BLAS thread: there the direct kernel wins for
    16 channels; its threads and the caller's slice take it."""
    model = ann.DataParallel(ann.Sequential([ann.layers.Conv2D(16, 4, 5, padding=2, rng=0)]),
                             workers=2, min_batch=1)
    try:
        model.forward(rng.standard_normal((4, 16, 6, 6)).astype(np.float32), train=True)
    finally:
        model.close()
    assert direct_calls == [("direct_convolution", 16)] * 2
    assert not _threads.one_core()


# Register tiles (functional/_numba_tiles.py): the direct convolutions with 8 or more output
# channels and 128 or more taps per output, on one core. The cases cover output channels
# that leave a tile's last lanes empty (20, 10), rows split into tiles that compute columns
# past the row (31 = 16 + 15), float64's smaller tiles, dilation, a 7x7 kernel whose dW
# tiles take one kernel row, and a stride-2 layer whose dX alone is direct.
TILE_CASES = {  # (N, C, H, W), (O, kh, kw), stride, padding, dilation
    "mnist-second-layer": ((3, 16, 14, 14), (16, 5, 5), 1, 2, 1),
    "20-channels-31-columns": ((2, 16, 5, 31), (20, 5, 5), 1, 2, 1),
    "dilated-7x7": ((2, 8, 11, 10), (10, 7, 7), 1, 6, 2),
    "stride-2-dx": ((2, 16, 9, 8), (16, 3, 3), 2, 1, 1),
}


@pytest.fixture
def tile_calls(numba_kernels, monkeypatch):
    """The tile kernels that computed something: ("conv" or "dW", input planes, output
    channels); a forward pass and a dX are both "conv" (dX's planes are dY's channels)."""
    from anyarray_nn.functional import _numba_tiles
    calls = []
    for name, what in (("convolution", "conv"), ("weight_gradient", "dW")):
        real = getattr(_numba_tiles, name)

        def spy(xpad, w, *args, _real=real, _what=what):
            result = _real(xpad, w, *args)
            if result is not None:
                calls.append((_what, xpad.shape[0], result.shape[0]))
            return result
        monkeypatch.setattr(_numba_tiles, name, spy)
    return calls


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
@pytest.mark.parametrize("name", TILE_CASES)
def test_tiled_convolutions_equal_the_portable_kernel(tile_calls, rng, dtype, rtol, name):
    shape, (o, kh, kw), stride, padding, dilation = TILE_CASES[name]
    w = rng.standard_normal((o, shape[1], kh, kw)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    values = rng.standard_normal(shape).astype(dtype)
    dy_values = rng.standard_normal(F.conv2d_forward(values, w, **kwargs).shape).astype(dtype)
    tile_calls.clear()
    with _threads.one_thread_each():
        for layout, x in layouts(values).items():
            for dy in layouts(dy_values).values():
                assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, **kwargs), rtol,
                                            layout)
    c = shape[1]
    dx = [("conv", o, c)]
    expected = dx if stride == 2 else [("conv", c, o), ("dW", c, o)] + dx
    runs = len(layouts(values)) ** 2  # every layout of x with every layout of dY
    assert collections.Counter(tile_calls) == collections.Counter(expected * runs)


@pytest.mark.parametrize("registers, sizes", [
    ((32, 64), {"float32": (28, 14, 5), "float64": (14, 14, 1)}),   # AVX-512
    ((16, 32), {"float32": (6, 5, 1), "float64": (3, 3, 1)}),       # AVX2: 16 registers
    ((16, 16), {"float32": (3, 3, 1), "float64": (1, 1, 1)})])      # SSE
def test_tiles_fit_the_host_registers_and_compute_the_same(numba_kernels, monkeypatch, rng,
                                                           registers, sizes):
    """A tile takes the host's vector registers less four: (vectors per tile, outputs per
    forward tile for rows of 14, kernel rows per dW tile of a 5x5 kernel); every size
    computes the portable kernel's result."""
    from anyarray_nn.functional import _numba_tiles
    monkeypatch.setattr(_numba_tiles, "_registers", lambda: registers)
    for dtype, (most, count, rows) in sizes.items():
        assert _numba_tiles._most(dtype) == most
        assert _numba_tiles.forward_tile(14, dtype) == count
        assert _numba_tiles.weight_rows(5, 5, dtype) == rows
    x, w = rng.standard_normal((2, 16, 5, 14)), rng.standard_normal((8, 16, 5, 5))
    dy = rng.standard_normal((2, 8, 5, 14))
    with _threads.one_thread_each():
        assert_fast_equals_portable(lambda: conv_all(x, w, None, dy, padding=2), 1e-12,
                                    str(registers))


def test_tiled_convolution_passes_float64_gradient_checks(numba_kernels, rng):
    from anyarray_nn.gradcheck import check_function
    x = rng.standard_normal((2, 8, 5, 6))
    w, b = rng.standard_normal((9, 8, 5, 3)), rng.standard_normal(9)  # 120 taps: dX's 135

    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, padding=(1, 2), dilation=(1, 2))
        return {"x": dx, "w": dw, "b": db}

    with _threads.one_thread_each():
        report = check_function(
            lambda x, w, b: F.conv2d_forward(x, w, b, padding=(1, 2), dilation=(1, 2)),
            backward, {"x": x, "w": w, "b": b}, max_checks=80)
    assert report.passed, str(report)


def _windows(a, pad, k):
    """(N, C, H, W, k, k) windows of ``a`` zero-padded by ``pad``."""
    padded = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))


def test_tiled_convolution_puts_nan_and_infinity_where_the_definition_does(tile_calls, rng):
    """A NaN or an infinity in x or dY reaches exactly the outputs and gradients whose sums
    hold it (the NaN and infinity pattern of a sum does not depend on its order): the
    columns a tile computes past a row and dY's padding lanes leak nowhere. (The portable
    dW, whose GEMM also multiplies dY's zeros on the wide grid by x, can turn an entry that
    never meets an infinity into NaN; the tiles do not.)"""
    x = rng.standard_normal((2, 16, 6, 7))
    x[0, 3, 2, 6], x[1, 0, 0, 0] = np.nan, np.inf
    w = rng.standard_normal((12, 16, 5, 5))
    dy = rng.standard_normal((2, 12, 6, 7))
    dy[1, 5, 5, 0] = -np.inf
    with _threads.one_thread_each():
        y = F.conv2d_forward(x, w, padding=2)
        dx, dw, _ = F.conv2d_backward(x, w, dy, padding=2)
    expected_y = np.einsum("nchwij,ocij->nohw", _windows(x, 2, 5), w)
    expected_dw = np.einsum("nchwij,nohw->ocij", _windows(x, 2, 5), dy)
    expected_dx = np.einsum("nohwij,ocij->nchw", _windows(dy, 2, 5), w[:, :, ::-1, ::-1])
    for got, expected in ((y, expected_y), (dx, expected_dx), (dw, expected_dw)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)
    assert collections.Counter(tile_calls) == collections.Counter(
        [("conv", 16, 12), ("dW", 16, 12), ("conv", 12, 16)])


def test_tiles_leave_few_channels_and_few_taps_to_the_paired_runs(tile_calls, rng):
    """A first layer (3 x 25 = 75 taps per output) and 4 output channels run the paired
    runs; a tile whose last columns would read past the buffer is refused."""
    from anyarray_nn.functional import _numba_tiles
    with _threads.one_thread_each():
        F.conv2d_forward(rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((16, 3, 5, 5)),
                         padding=2)
        F.conv2d_forward(rng.standard_normal((2, 16, 8, 8)), rng.standard_normal((4, 16, 5, 5)),
                         padding=2)
    assert tile_calls == []
    # rows of 17 take two tiles of 9: the last one reads a column past the last row, which a
    # buffer without conv's extra rows does not have
    x, w = rng.standard_normal((2, 16, 6, 17)), rng.standard_normal((16, 16, 5, 5))
    tight = conv_module._padded_cnhw(np, x, (2, 2, 2, 2))
    assert _numba_tiles.convolution(tight, w, None, (6, 17), (1, 1)) is None
    roomy = conv_module._padded_cnhw(np, x, (2, 2, 2, 2), extra_rows=conv_module._extra_rows(
        (5, 5), (1, 1), (1, 1), 21))
    with F.portable_kernels():
        expected = F.conv2d_forward(x, w, padding=2)
    got = _numba_tiles.convolution(roomy, w, None, (6, 17), (1, 1))
    np.testing.assert_allclose(np.permute_dims(got, (1, 0, 2, 3)), expected, rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("env, expected", [({}, False), ({"OMP_NUM_THREADS": "1"}, True),
                                           ({"OPENBLAS_NUM_THREADS": " 1"}, True),
                                           ({"OMP_NUM_THREADS": "2"}, False)])
def test_one_thread_in_the_environment_counts_as_one_core(monkeypatch, env, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(_threads, "cpu_count", lambda: 2)
    monkeypatch.setattr(_threads, "_single_threaded_process",
                        functools.cache(_threads._single_threaded_process.__wrapped__))
    assert _threads.one_core() is expected


def test_direct_dispatch_answers_only_for_numpy_floats_stride_1_and_few_channels(
        numba_kernels, monkeypatch):
    import array_api_strict
    monkeypatch.setattr(_threads, "_single_threaded_process", lambda: False)
    one = (1, 1)
    assert _fast.direct_kernels(np, np.dtype("float32"), one, 3) is numba_kernels
    assert _fast.direct_kernels(np, np.dtype("float32"), one, 4) is None
    with _threads.one_thread_each():
        assert _fast.direct_kernels(np, np.dtype("float32"), one, 16) is numba_kernels
        assert _fast.direct_kernels(np, np.dtype("float32"), one, 17) is None
    assert _fast.direct_kernels(np, np.dtype("float64"), (2, 1), 1) is None
    assert _fast.direct_kernels(array_api_strict, array_api_strict.float64, one, 1) is None
    assert _fast.direct_kernels(np, np.dtype("int64"), one, 1) is None
    with F.portable_kernels():
        assert _fast.direct_kernels(np, np.dtype("float64"), one, 1) is None


# conv2d's options: one group in any padding mode pads x in that mode, then takes the fast
# paths with padding 0 (unbatched inputs too); grouped convolutions take the portable kernels.
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("batched", [True, False])
def test_padding_modes_take_winograd_and_equal_the_portable_kernel(winograd_calls, rng, mode,
                                                                   batched):
    shape = (2, 8, 6, 7) if batched else (8, 6, 7)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    w, b = rng.standard_normal((8, 8, 3, 3)), rng.standard_normal(8)
    assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, padding=1, padding_mode=mode),
                                1e-12, mode)
    assert winograd_calls == ["winograd_patches", "winograd_forward", "winograd_patches",
                              "winograd_output_gradient", "winograd_weight_gradient",
                              "winograd_input_gradient"]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_take_the_direct_path_and_equal_the_portable_kernel(direct_calls, rng,
                                                                          mode):
    x, dy = rng.standard_normal((2, 2, 6, 5)), rng.standard_normal((2, 4, 6, 5))
    w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, padding=1, padding_mode=mode),
                                1e-12, mode)
    assert direct_calls == [("direct_convolution", 2), ("direct_weight_gradient", 2),
                            ("direct_convolution", 4)]


def test_grouped_convolutions_of_few_channels_per_group_take_the_portable_kernels(
        winograd_calls, direct_calls, rng):
    """4 channels per group would be direct with one group: grouped, neither runs (depthwise
    ones take depthwise_convolution, tested below; others the portable grouped kernels)."""
    for c, groups in ((8, 2), (4, 2)):
        x, dy = rng.standard_normal((2, c, 6, 5)), rng.standard_normal((2, c, 6, 5))
        w = rng.standard_normal((c, c // groups, 3, 3))
        conv_all(x, w, None, dy, padding=1, groups=groups, padding_mode="reflect")
    assert winograd_calls == [] and direct_calls == []


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_grouped_convolutions_of_8_channels_per_group_run_each_group_as_winograd(
        winograd_calls, rng, dtype, rtol, monkeypatch):
    """Each group through the ungrouped fast paths: the Winograd steps once per group, and
    the result equal to the portable kernels' (the blocked grouped kernel, as on other
    backends) up to rounding; the layer's kept patches serve dW."""
    x = rng.standard_normal((3, 16, 7, 6)).astype(dtype)
    dy = rng.standard_normal((3, 32, 7, 6)).astype(dtype)
    w = rng.standard_normal((32, 8, 3, 3)).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    fast = conv_all(x, w, b, dy, padding=1, groups=2)
    assert winograd_calls.count("winograd_forward") == 2
    assert winograd_calls.count("winograd_input_gradient") == 2
    with monkeypatch.context() as patch:
        patch.setattr(conv_module, "_PER_GROUP_CHANNELS", 10**9)  # the blocked grouped kernel
        blocked = conv_all(x, w, b, dy, padding=1, groups=2)
    for what, a, e in zip(("y", "dx", "dW", "db"), fast, blocked):
        assert a.dtype == e.dtype and a.shape == e.shape, what
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * float(np.abs(e).max()), err_msg=what)
    layer = ann.layers.Conv2D(16, 32, 3, padding=1, groups=2, rng=0, dtype=dtype)
    layer.forward(x, train=True)
    layer.backward(dy)
    _, dw, _ = F.conv2d_backward(x, layer.params["W"], dy, padding=1, groups=2)
    np.testing.assert_allclose(layer.grads["W"], dw, rtol=0, atol=rtol * float(np.abs(dw).max()))


def _counting_pool_calls(numba_kernels, monkeypatch):
    calls = []
    for name in ("maxpool2d_forward", "maxpool2d_backward"):
        real = getattr(numba_kernels, name)
        monkeypatch.setattr(numba_kernels, name,
                            lambda *a, _real=real, _name=name: calls.append(_name) or _real(*a))
    return calls


# (input shape, max_pool2d options, whether the 2x2 kernel applies)
POOL_OPTION_CASES = {
    "ceil-mode-adding-no-window": ((2, 3, 6, 8), dict(ceil_mode=True), True),
    "unbatched": ((3, 6, 8), dict(), True),
    "return-indices": ((2, 3, 6, 8), dict(return_indices=True), True),
    "ceil-mode-adding-a-window": ((2, 3, 7, 9), dict(ceil_mode=True), False),
    "dilation": ((2, 3, 7, 9), dict(dilation=2), False),
    "dilation-1-as-a-pair": ((2, 3, 6, 8), dict(dilation=(1, 1)), True),
}


@pytest.mark.parametrize("name", POOL_OPTION_CASES)
def test_the_2x2_kernel_applies_where_the_new_options_allow_and_equals_the_portable_one(
        numba_kernels, monkeypatch, rng, name):
    shape, options, applies = POOL_OPTION_CASES[name]
    calls = _counting_pool_calls(numba_kernels, monkeypatch)
    x = np.round(rng.standard_normal(shape)).astype(np.float32)  # ties in most windows
    out, out_portable = fast_and_portable(lambda: F.maxpool2d_forward(x, 2, **options))
    if "return_indices" in options:
        (y, indices), (y_portable, indices_portable) = out, out_portable
        np.testing.assert_array_equal(indices, indices_portable)
        options = {}
    else:
        y, y_portable = out, out_portable
    np.testing.assert_array_equal(y, y_portable)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx_portable = fast_and_portable(lambda: F.maxpool2d_backward(x, dy, 2, **options))
    np.testing.assert_array_equal(dx, dx_portable)
    expected = ["maxpool2d_forward", "maxpool2d_forward", "maxpool2d_backward"] if applies else []
    assert calls == expected


def test_adaptive_max_pooling_on_a_2x2_grid_takes_the_2x2_kernel(numba_kernels, monkeypatch, rng):
    calls = _counting_pool_calls(numba_kernels, monkeypatch)
    x = np.round(rng.standard_normal((2, 3, 8, 6))).astype(np.float32)
    y, y_portable = fast_and_portable(lambda: F.adaptive_maxpool2d_forward(x, (4, 3)))
    np.testing.assert_array_equal(y, y_portable)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx_portable = fast_and_portable(lambda: F.adaptive_maxpool2d_backward(x, dy, (4, 3)))
    np.testing.assert_array_equal(dx, dx_portable)
    assert calls == ["maxpool2d_forward", "maxpool2d_forward", "maxpool2d_backward"]
    calls.clear()
    F.adaptive_maxpool2d_forward(x, (3, 3))  # uneven windows: portable
    assert calls == []


def test_pool_dispatch_refuses_dilation_and_a_ceil_mode_window():
    pytest.importorskip("numba")
    assert _fast.pool_kernels(np, np.dtype("float32"), WINDOW, (1, 1), False) is not None
    assert _fast.pool_kernels(np, np.dtype("float32"), WINDOW, (2, 1), False) is None
    assert _fast.pool_kernels(np, np.dtype("float32"), WINDOW, (1, 1), True) is None


# Depthwise convolutions (groups == input channels): (N, C, H, W), channel multiplier,
# kernel, stride, padding, dilation.
DEPTHWISE_CASES = {
    "one-channel-batch1": ((1, 1, 5, 7), 1, (3, 3), 1, 1, 1),
    "4-channels-valid": ((3, 4, 7, 5), 1, (3, 3), 1, 0, 1),
    "5-channels-pad2-5x5": ((3, 5, 9, 7), 1, (5, 5), 1, 2, 1),
    "multiplier2": ((3, 4, 7, 9), 2, (3, 3), 1, 1, 1),
    "multiplier2-5x5-pad2": ((1, 5, 7, 5), 2, (5, 5), 1, 2, 1),
    "stride2-odd": ((3, 5, 9, 7), 1, (3, 3), 2, 1, 1),
    "stride2-multiplier2": ((1, 4, 8, 9), 2, (3, 3), 2, 2, 1),
    "dilation-asymmetric-kernel": ((3, 4, 9, 10), 1, (3, 2), 1, (2, 1), (2, 3)),
    "kernel-equal-to-padded-input": ((3, 5, 3, 3), 1, (5, 5), 1, 1, 1),
}


@pytest.fixture
def depthwise_calls(numba_kernels, monkeypatch):
    """The weights' shapes of the depthwise kernel's calls, in order."""
    calls = []
    real = numba_kernels.depthwise_convolution
    monkeypatch.setattr(numba_kernels, "depthwise_convolution",
                        lambda xpad, w, *a: calls.append(tuple(w.shape)) or real(xpad, w, *a))
    return calls


@pytest.fixture
def depthwise_dw_calls(numba_kernels, monkeypatch):
    """The weights' shapes of the depthwise dW kernel's calls, in order."""
    calls = []
    real = numba_kernels.depthwise_weight_gradient
    monkeypatch.setattr(numba_kernels, "depthwise_weight_gradient",
                        lambda xpad, dy, w_shape, *a: calls.append(w_shape)
                        or real(xpad, dy, w_shape, *a))
    return calls


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
@pytest.mark.parametrize("name", DEPTHWISE_CASES)
def test_depthwise_convolution_equals_the_portable_kernel(depthwise_calls, depthwise_dw_calls,
                                                          rng, dtype, rtol, name):
    shape, multiplier, (kh, kw), stride, padding, dilation = DEPTHWISE_CASES[name]
    c = shape[1]
    w = rng.standard_normal((c * multiplier, 1, kh, kw)).astype(dtype)
    b = rng.standard_normal(c * multiplier).astype(dtype)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    values = rng.standard_normal(shape).astype(dtype)
    dy_values = rng.standard_normal(F.conv2d_forward(values, w, **kwargs).shape).astype(dtype)
    for layout, x in layouts(values).items():
        for dy in layouts(dy_values).values():
            assert_fast_equals_portable(lambda: conv_all(x, w, b, dy, **kwargs), rtol, layout)
    # forward, then dX: W transposed within each group is (C, multiplier, kh, kw); one
    # channel is one group, the dense convolution
    expected = [] if c == 1 else [tuple(w.shape), (c, multiplier, kh, kw)]
    assert depthwise_calls[1:3] == expected  # after the forward pass that sized dy
    assert depthwise_dw_calls[:1] == ([] if c == 1 else [tuple(w.shape)])


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("batched", [True, False])
def test_padding_modes_take_the_depthwise_kernel_and_equal_the_portable_one(
        depthwise_calls, depthwise_dw_calls, rng, mode, batched):
    x, dy = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((2, 4, 6, 5))
    x, dy = (x, dy) if batched else (x[0], dy[0])
    w, b = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    assert_fast_equals_portable(
        lambda: conv_all(x, w, b, dy, padding=1, groups=4, padding_mode=mode), 1e-12, mode)
    assert depthwise_calls == [(4, 1, 3, 3)] * 2
    assert depthwise_dw_calls == [(4, 1, 3, 3)]


def test_depthwise_convolution_passes_float64_gradient_checks(depthwise_calls,
                                                              depthwise_dw_calls, rng):
    from anyarray_nn.gradcheck import check_function
    x = rng.standard_normal((2, 3, 5, 6))
    w, b = rng.standard_normal((6, 1, 3, 2)), rng.standard_normal(6)  # multiplier 2
    kwargs = dict(padding=(1, 2), dilation=(1, 2), groups=3)

    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, **kwargs)
        return {"x": dx, "w": dw, "b": db}

    report = check_function(lambda x, w, b: F.conv2d_forward(x, w, b, **kwargs), backward,
                            {"x": x, "w": w, "b": b}, max_checks=80)
    assert report.passed, str(report)
    assert depthwise_calls and set(depthwise_calls) <= {(6, 1, 3, 2), (3, 2, 3, 2)}
    assert depthwise_dw_calls and set(depthwise_dw_calls) == {(6, 1, 3, 2)}


def test_the_depthwise_kernel_runs_for_depthwise_numpy_convolutions_only(depthwise_calls, rng):
    # groups 2 of 4 channels: grouped, not depthwise; then float32 and float64 depthwise
    x, dy = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((2, 4, 6, 5))
    conv_all(x, rng.standard_normal((4, 2, 3, 3)), None, dy, padding=1, groups=2)
    assert depthwise_calls == []
    for dtype in ("float32", "float64"):
        w = rng.standard_normal((4, 1, 3, 3)).astype(dtype)
        conv_all(x.astype(dtype), w, None, dy.astype(dtype), padding=1, groups=4)
    assert depthwise_calls == [(4, 1, 3, 3)] * 4
    with F.portable_kernels():
        conv_all(x, rng.standard_normal((4, 1, 3, 3)), None, dy, padding=1, groups=4)
    assert len(depthwise_calls) == 4


def test_depthwise_dispatch_answers_only_for_numpy_floats_and_groups_equal_to_channels(
        numba_kernels):
    import array_api_strict
    assert _fast.depthwise_kernels(np, np.dtype("float32"), 4, 4) is numba_kernels
    assert _fast.depthwise_kernels(np, np.dtype("float64"), 1, 1) is numba_kernels
    assert _fast.depthwise_kernels(np, np.dtype("float64"), 2, 4) is None
    assert _fast.depthwise_kernels(np, np.dtype("int64"), 4, 4) is None
    assert _fast.depthwise_kernels(array_api_strict, array_api_strict.float64, 4, 4) is None
    with F.portable_kernels():
        assert _fast.depthwise_kernels(np, np.dtype("float64"), 4, 4) is None


def test_without_numba_depthwise_convolutions_take_the_portable_kernels(monkeypatch, rng):
    monkeypatch.setattr(_fast, "_load_numba_kernels",
                        functools.cache(_fast._load_numba_kernels.__wrapped__))
    monkeypatch.setitem(sys.modules, "numba", None)  # "import numba" raises ImportError
    monkeypatch.delitem(sys.modules, "anyarray_nn.functional._numba_kernels", raising=False)
    monkeypatch.delattr(F, "_numba_kernels", raising=False)
    assert _fast.depthwise_kernels(np, np.dtype("float32"), 4, 4) is None
    x, dy = rng.standard_normal((2, 4, 6, 5)), rng.standard_normal((2, 4, 6, 5))
    w, b = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4)
    fast = conv_all(x, w, b, dy, padding=1, groups=4)
    with F.portable_kernels():
        portable = conv_all(x, w, b, dy, padding=1, groups=4)
    for a, e in zip(fast, portable):
        np.testing.assert_array_equal(a, e)


@pytest.fixture
def split_parts(numba_kernels, monkeypatch):
    """Every split forced (several cores, no size floor): the channel bounds of each split."""
    monkeypatch.setattr(_threads, "_single_threaded_process", lambda: False)
    monkeypatch.setattr(numba_kernels, "_SPLIT_VALUES", 0)
    parts = []
    real = numba_kernels.map_on_cores
    monkeypatch.setattr(numba_kernels, "map_on_cores",
                        lambda f, bounds: parts.append(list(bounds)) or real(f, bounds))
    return parts


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_large_winograd_transforms_split_by_channels_equal_the_portable_kernel(
        split_parts, rng, dtype, rtol):
    """Above _SPLIT_VALUES the four transforms run in one part per core: the same results."""
    parts = split_parts
    x, w = rng.standard_normal((2, 9, 7, 6)).astype(dtype), rng.standard_normal((5, 9, 3, 3))
    dy = rng.standard_normal((2, 5, 7, 6)).astype(dtype)
    assert_fast_equals_portable(
        lambda: conv_all(x, w.astype(dtype), None, dy, padding=1), rtol, "split")
    cores = _threads.cpu_count()
    if cores > 1:  # forward: input and output transforms; backward: dY's, then dX's
        assert [len(p) for p in parts[:4]] == [min(cores, 9), min(cores, 5), min(cores, 5),
                                                min(cores, 9)]
        assert parts[0][0][0] == 0 and parts[0][-1][1] == 9  # every channel, once


# --- batch normalization ---------------------------------------------------------------------

def batchnorm_all(x, gamma, beta, dy, relu=False, stats=True):
    """Forward, then backward from the forward's statistics (``stats``) or from x alone."""
    y, mean, var = F.batchnorm_forward(x, gamma, beta, relu=relu)
    given = {"mean": mean, "var": var} if stats else {}
    return (y, mean, var, *F.batchnorm_backward(x, gamma, dy, beta=beta, relu=relu, **given))


@pytest.mark.parametrize("relu, stats", [(False, True), (False, False), (True, True)])
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 2e-6)])
@pytest.mark.parametrize("shape", [(2, 3, 6, 8), (5, 4), (3, 2, 7), (1, 3, 1, 2), (2, 1, 3, 3)])
def test_batchnorm_kernels_equal_the_portable_ones_in_every_layout(numba_kernels, rng, dtype,
                                                                   rtol, shape, relu, stats):
    values = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    dy_values = rng.standard_normal(shape).astype(dtype)
    gamma, beta = (rng.standard_normal(shape[1]).astype(dtype) for _ in range(2))
    both = layouts if len(shape) == 4 else (lambda v: {"contiguous": v, "reversed": v[::-1]})
    for layout, x in both(values).items():
        for dy in both(dy_values).values():
            if layout == "reversed":
                dy = dy[::-1]  # the same samples, in x's order
            fast, portable = fast_and_portable(
                lambda: batchnorm_all(x, gamma, beta, dy, relu, stats))
            for what, a, e in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), fast,
                                  portable):
                assert a.dtype == e.dtype and a.shape == e.shape, (layout, what)
                # at the inputs' scale (about 1): dx cancels to tiny values for 2 per channel
                scale = max(float(np.abs(e).max()), 1.0)
                np.testing.assert_allclose(a, e, rtol=0, atol=rtol * scale,
                                           err_msg=f"{layout} {what}")
            if relu:  # the ReLU really ran: zeros where y was negative, none below
                assert (fast[0] >= 0).all() and (fast[0] == 0).any()


def test_batchnorm_outputs_keep_the_memory_order_of_x(numba_kernels, rng):
    """A convolution's output (channels-first memory) gives channels-first y and dx, read
    as contiguous rows; NCHW stays NCHW; a strided view is read through an NCHW copy."""
    values, dy = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((3, 4, 5, 6))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    for layout, x in layouts(values).items():
        y, mean, var = numba_kernels.batchnorm_forward(x, gamma, beta, 1e-5)
        dx = numba_kernels.batchnorm_backward(x, gamma, beta, dy, 1e-5, mean, var)[0]
        channels_first = layout == "cnhw"
        for a in (y, dx):
            assert np.permute_dims(a, (1, 0, 2, 3)).flags.c_contiguous == channels_first
            assert a.flags.c_contiguous == (not channels_first)


def test_large_batchnorm_inputs_split_by_channels_over_the_cores(split_parts, rng):
    x, dy = rng.standard_normal((4, 5, 3, 3)), rng.standard_normal((4, 5, 3, 3))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    fast, portable = fast_and_portable(lambda: batchnorm_all(x, gamma, beta, dy))
    for a, e in zip(fast, portable):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)
    assert [len(bounds) for bounds in split_parts] == [min(_threads.cpu_count(), 5)] * 2


def test_batchnorm_dispatch_answers_only_for_numpy_floats(numba_kernels):
    import array_api_strict
    assert _fast.norm_kernels(np, np.dtype("float32")) is numba_kernels
    assert _fast.norm_kernels(array_api_strict, array_api_strict.float64) is None
    with F.portable_kernels():
        assert _fast.norm_kernels(np, np.dtype("float64")) is None


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-13), ("float32", 1e-6)])
def test_exact_gelu_kernels_equal_the_portable_ones(numba_kernels, rng, dtype, rtol):
    """Forward and backward, contiguous and strided, with the extremes and NaN. The kernel
    sums in float64 and rounds once, so float32 results are compared with the portable
    kernel's float64 ones."""
    approximate = "none"
    values = np.concatenate([rng.standard_normal(200) * 4, [0.0, -0.0, 1e-30, -40.0, 40.0,
                                                            np.inf, -np.inf, np.nan]])
    x = values.astype(dtype).reshape(2, 4, 26)
    dy = rng.standard_normal(x.shape).astype(dtype)
    for a, g in [(x, dy), (x[:, ::-2], dy[:, ::2])]:  # a strided view: copied, same values
        wide_a, wide_g = a.astype(np.float64), g.astype(np.float64)
        with np.errstate(invalid="ignore"):  # -inf * 0 in the portable kernel: NaN, as torch
            fast, _ = fast_and_portable(lambda: (F.gelu_forward(a, approximate),
                                                 F.gelu_backward(a, g, approximate)))
            _, portable = fast_and_portable(lambda: (F.gelu_forward(wide_a, approximate),
                                                     F.gelu_backward(wide_a, wide_g,
                                                                     approximate)))
        for what, got, expected in zip(("forward", "backward"), fast, portable):
            assert got.dtype == a.dtype and got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol, equal_nan=True,
                                       err_msg=what)


def test_exact_gelu_kernels_in_every_layout_keep_the_memory_order_of_x(numba_kernels, rng):
    """x and dy in every layout the kernels meet, the two layouts differing too: the
    portable results, and a channels-first x (a convolution's output) read in place and
    answered in its own order."""
    values, dy_values = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 4, 5))
    for name, x in layouts(values).items():
        for dy in layouts(dy_values).values():
            fast, portable = fast_and_portable(lambda: (F.gelu_forward(x),
                                                        F.gelu_backward(x, dy)))
            for got, expected in zip(fast, portable):
                np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15,
                                           err_msg=name)
                if name == "cnhw":
                    assert np.permute_dims(got, (1, 0, 2, 3)).flags.c_contiguous


def test_gelu_dispatch_takes_numba_for_the_exact_form_on_numpy_only(numba_kernels):
    import array_api_strict
    assert _fast.activation_kernels(np, np.dtype("float32"), "none") is numba_kernels
    assert _fast.activation_kernels(np, np.dtype("float32"), "tanh") is None
    assert _fast.activation_kernels(array_api_strict, array_api_strict.float64, "none") is None


def test_large_gelu_inputs_split_over_the_cores(split_parts, rng):
    x, dy = rng.standard_normal((3, 7)), rng.standard_normal((3, 7))
    fast, portable = fast_and_portable(lambda: (F.gelu_forward(x),
                                                F.gelu_backward(x, dy)))
    for got, expected in zip(fast, portable):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-15)
    assert [len(bounds) for bounds in split_parts] == [_threads.cpu_count()] * 2


def test_each_fast_path_taken_is_logged_once(numba_kernels, monkeypatch, caplog, rng):
    """What the library decides for the user is on the "anyarray_nn" logger: each fast path
    the first time this process takes it, not at every call."""
    monkeypatch.setattr(_fast, "_logged", set())
    model = ann.networks.mnist_net(rng=0)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    with caplog.at_level("INFO", logger="anyarray_nn"):
        for _ in range(3):
            model.forward(x, train=True)
        with F.portable_kernels():
            model.forward(x, train=True)
    chosen = [r.message for r in caplog.records if r.message.startswith("fast path:")]
    assert len(chosen) == len(set(chosen)) >= 2
    assert any("2x2 max-pooling" in m for m in chosen)
