"""Conv2D kernels: float64 finite differences, PyTorch agreement, array_api_strict, bad input."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, host

# (N, C, H, W), (O, kh, kw), stride, padding, dilation: one per class of configuration.
CONFIGS = {
    "stride1-pad0": ((2, 3, 6, 5), (4, 3, 3), 1, 0, 1),
    "stride1-same": ((2, 2, 5, 5), (3, 3, 3), 1, "same", 1),
    "same-even-kernel": ((1, 2, 5, 6), (2, 2, 4), 1, "same", 1),
    "stride2-pad1": ((2, 2, 7, 8), (3, 3, 3), 2, 1, 1),
    "stride-pair": ((1, 2, 9, 7), (2, 3, 2), (2, 3), (1, 0), 1),
    "dilation2": ((1, 2, 9, 8), (2, 3, 3), 1, 2, 2),
    "dilation-pair-stride": ((2, 1, 10, 9), (2, 2, 3), 2, 1, (2, 1)),
    "non-square": ((2, 3, 5, 9), (2, 2, 4), 1, (1, 2), 1),
    "odd-sizes": ((3, 1, 7, 11), (5, 5, 3), 1, (2, 1), 1),
    "batch1-one-channel": ((1, 1, 4, 4), (1, 3, 3), 1, 1, 1),
    "kernel-equals-input": ((2, 2, 4, 4), (3, 4, 4), 1, 0, 1),
    "pad-beyond-reach": ((1, 2, 4, 4), (2, 1, 1), 1, 2, 1),
    "4-tuple-padding": ((1, 2, 5, 5), (2, 3, 3), 1, (0, 2, 1, 0), 1),
    # 3x3, stride 1, 8 or more input channels: Winograd on NumPy with numba (_numba_kernels)
    "3x3-eight-channels": ((2, 8, 7, 6), (9, 3, 3), 1, 1, 1),
    "3x3-valid-odd": ((1, 9, 7, 5), (3, 3, 3), 1, 0, 1),
}


def make(rng, config, dtype="float64"):
    xs, (o, kh, kw), stride, padding, dilation = config
    x = ann.asarray(rng.standard_normal(xs), dtype=dtype)
    w = ann.asarray(rng.standard_normal((o, xs[1], kh, kw)), dtype=dtype)
    b = ann.asarray(rng.standard_normal(o), dtype=dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation)


def assert_conv_gradients(x, w, b, kw, max_checks):
    """Float64 central differences against conv2d_backward for x, W and b."""
    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, **kw)
        return {"x": dx, "w": dw, "b": db}

    report = check_function(lambda x, w, b: F.conv2d_forward(x, w, b, **kw), backward,
                            {"x": x, "w": w, "b": b}, max_checks=max_checks)
    assert report.passed, str(report)


@pytest.mark.parametrize("name", CONFIGS)
def test_conv2d_gradients_float64(xp, rng, name):
    x, w, b, kw = make(rng, CONFIGS[name])
    assert_conv_gradients(x, w, b, kw, max_checks=60)


def _torch_padding(padding):
    if isinstance(padding, tuple) and len(padding) == 4:
        return None
    return padding


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-4)])
def test_conv2d_matches_torch(torch, rng, name, dtype, tol):
    x, w, b, kw = make(rng, CONFIGS[name], dtype)
    tpad = _torch_padding(kw["padding"])
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    if tpad is None:  # torch's conv2d takes no 4-sided padding: pad the input explicitly
        top, bottom, left, right = kw["padding"]
        tin, tpad = torch.nn.functional.pad(tx, (left, right, top, bottom)), 0
    else:
        tin = tx
    ty = torch.nn.functional.conv2d(tin, tw, tb, stride=kw["stride"], padding=tpad,
                                    dilation=kw["dilation"])
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(dy))
    y = F.conv2d_forward(x, w, b, **kw)
    dx, dw, db = F.conv2d_backward(x, w, dy, **kw)
    for ours, ref in [(y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert host(ours).dtype == np.dtype(dtype)
        assert_close(ours, ref, rtol=tol, atol=tol)


def test_conv2d_with_cached_patches_and_without_bias(xp, rng):
    x, w, _, kw = make(rng, CONFIGS["stride1-same"])
    y, patches = F.conv._conv2d_forward_with_patches(x, w, None, 1, "same", 1)
    assert_close(y, F.conv2d_forward(x, w, **kw))
    dy = ann.asarray(rng.standard_normal(tuple(y.shape)))
    for a, b in zip(F.conv2d_backward(x, w, dy, **kw, patches=patches), F.conv2d_backward(x, w, dy, **kw)):
        assert_close(a, b)
    assert F.conv2d_backward(x, w, dy, **kw, input_grad=False)[0] is None


def test_conv2d_is_a_cross_correlation_by_hand(xp):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    y = host(F.conv2d_forward(ann.asarray(x), ann.asarray(w)))
    np.testing.assert_array_equal(y, x[:, :, :3, :3] - x[:, :, 1:, 1:])


def test_conv2d_does_not_modify_inputs(xp, rng):
    x, w, b, kw = make(rng, CONFIGS["stride2-pad1"])
    copies = [host(a).copy() for a in (x, w, b)]
    y = F.conv2d_forward(x, w, b, **kw)
    F.conv2d_backward(x, w, ann.asarray(np.ones(tuple(y.shape))), **kw)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(host(a), c)


def test_conv2d_errors(xp):
    x = ann.asarray(np.zeros((2, 3, 5, 5)))
    with pytest.raises(ann.InputError, match=r"expected 4 input channels \(W has shape \(2, 4, 3, 3\)\), got shape \(2, 3, 5, 5\)"):
        F.conv2d_forward(x, ann.asarray(np.zeros((2, 4, 3, 3))))
    with pytest.raises(ann.InputError, match=r"kernel \(7, 7\).*larger than the padded input \(6, 6\).*\(2, 3, 5, 5\).*\(2, 3, 7, 7\)"):
        F.conv2d_forward(x, ann.asarray(np.zeros((2, 3, 7, 7))), padding=(0, 1, 0, 1))
    with pytest.raises(ann.InputError, match=r"x: expected a 4-D array \(N, C, H, W\) or an unbatched 3-D array \(C, H, W\), got shape \(5, 5\)"):
        F.conv2d_forward(ann.asarray(np.zeros((5, 5))), ann.asarray(np.zeros((2, 3, 3, 3))))
    with pytest.raises(ann.InputError, match="padding='same' needs stride 1"):
        F.conv2d_forward(x, ann.asarray(np.zeros((2, 3, 3, 3))), stride=2, padding="same")
    with pytest.raises(ann.InputError, match="padding: expected non-negative ints"):
        F.conv2d_forward(x, ann.asarray(np.zeros((2, 3, 3, 3))), padding=-1)
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(2, 2, 3, 3\)"):
        F.conv2d_backward(x, ann.asarray(np.zeros((2, 3, 3, 3))), ann.asarray(np.zeros((2, 2, 5, 5))))


@pytest.mark.parametrize("name", ["stride1-pad0", "same-even-kernel", "dilation2", "non-square",
                                  "odd-sizes", "pad-beyond-reach", "4-tuple-padding"])
@pytest.mark.parametrize("kind", ["rows", "full"])
def test_both_lowerings_agree_and_pass_gradient_checks(xp, rng, monkeypatch, name, kind):
    """Stride-1 convolutions pick a lowering by size; force each one and compare."""
    x, w, b, kw = make(rng, CONFIGS[name])
    expected = [host(a) for a in (F.conv2d_forward(x, w, b, **kw),
                                  *F.conv2d_backward(x, w, _dy(rng, x, w, b, kw), **kw))]
    monkeypatch.setattr(F.conv, "_lowering", lambda c, kh, stride: kind if stride == (1, 1) else "full")
    got = [F.conv2d_forward(x, w, b, **kw), *F.conv2d_backward(x, w, _dy(rng, x, w, b, kw), **kw)]
    for a, e in zip(got, expected):
        assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert_conv_gradients(x, w, b, kw, max_checks=40)


def _dy(rng, x, w, b, kw):
    """The same upstream gradient for every call of one test (seeded by the output shape)."""
    shape = tuple(F.conv2d_forward(x, w, b, **kw).shape)
    return ann.asarray(np.random.default_rng(sum(shape)).standard_normal(shape))


def test_sizes_may_be_numpy_integers(xp, rng):
    x, w, b, kw = make(rng, CONFIGS["stride-pair"])
    as_numpy = {"stride": (np.int64(2), np.int32(3)), "padding": (np.int64(1), 0),
                "dilation": np.int64(1)}
    assert_close(F.conv2d_forward(x, w, b, **as_numpy), F.conv2d_forward(x, w, b, **kw))
    assert_close(F.conv2d_forward(x, w, b, padding=np.int64(1)),
                 F.conv2d_forward(x, w, b, padding=1))
    assert_close(F.conv2d_forward(x, w, b, padding=(np.int64(1), 0, 2, np.int16(1))),
                 F.conv2d_forward(x, w, b, padding=(1, 0, 2, 1)))
    assert_close(F.maxpool2d_forward(x, np.int64(2)), F.maxpool2d_forward(x, 2))
    layer = ann.layers.Conv2D(2, 3, np.int64(3), stride=np.int64(2), padding=np.int64(1))
    assert layer.get_config()["kernel_size"] == [3, 3]
    assert all(type(v) is int for v in layer.kernel_size + layer.stride + layer.padding)


@pytest.mark.parametrize("bad", [2.0, None, True, "2", (1, 2.0), (1, None), (1, 2, 3)])
def test_sizes_that_are_not_ints_are_refused(bad):
    x, w = np.zeros((1, 1, 6, 6)), np.zeros((1, 1, 2, 2))
    message = f"expected an int or a pair of ints, got {re.escape(repr(bad))}"
    with pytest.raises(ann.InputError, match=f"stride: {message}"):
        F.conv2d_forward(x, w, stride=bad)
    with pytest.raises(ann.InputError, match=f"dilation: {message}"):
        F.conv2d_backward(x, w, np.zeros((1, 1, 5, 5)), dilation=bad)
    with pytest.raises(ann.InputError, match=f"kernel_size: {message}"):
        F.maxpool2d_forward(x, bad)
    with pytest.raises(ann.InputError, match=f"padding: {message}"):
        F.avgpool2d_forward(x, 2, padding=bad)
