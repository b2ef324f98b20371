"""Pooling kernels: finite differences, PyTorch agreement (ties included), strict, bad input."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, host

# (N, C, H, W), kernel, stride, padding
CONFIGS = {
    "2x2": ((2, 3, 6, 8), 2, None, 0),
    "3x3-stride2-pad1": ((2, 2, 7, 7), 3, 2, 1),
    "overlapping": ((1, 2, 6, 5), 3, 1, 1),
    "non-square": ((2, 1, 7, 9), (2, 3), (1, 2), (1, 1)),
    "odd-input": ((1, 1, 5, 7), 2, 2, 0),
}


def distinct(rng, shape):
    """Values with no ties, so the max-pool gradient is differentiable everywhere."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("name", CONFIGS)
def test_pool_gradients_float64(xp, rng, kind, name):
    shape, k, s, p = CONFIGS[name]
    fwd = getattr(F, f"{kind}pool2d_forward")
    bwd = getattr(F, f"{kind}pool2d_backward")
    report = check_function(lambda x: fwd(x, k, s, p), lambda dy, x: {"x": bwd(x, dy, k, s, p)},
                            {"x": ann.asarray(distinct(rng, shape))})
    assert report.passed, str(report)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("ties", [False, True])
def test_pool_matches_torch(torch, rng, name, ties):
    shape, k, s, p = CONFIGS[name]
    x = np.round(rng.standard_normal(shape)) if ties else rng.standard_normal(shape)
    if ties:  # ReLU outputs: whole windows of zeros
        x = np.maximum(x, 0.0)
    for ours_f, ours_b, ref in [(F.maxpool2d_forward, F.maxpool2d_backward, torch.nn.functional.max_pool2d),
                                (F.avgpool2d_forward, F.avgpool2d_backward, torch.nn.functional.avg_pool2d)]:
        tx = torch.tensor(x, requires_grad=True)
        ty = ref(tx, k, s if s is not None else k, p)
        dy = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(dy))
        assert_close(ours_f(x, k, s, p), ty)
        assert_close(ours_b(x, dy, k, s, p), tx.grad)


def test_maxpool_ties_go_to_the_first_maximum_in_row_major_order(xp):
    x = ann.asarray(np.array([[[[1.0, 3.0], [3.0, 3.0]]]]))
    dx = host(F.maxpool2d_backward(x, ann.asarray(np.array([[[[5.0]]]])), 2))
    np.testing.assert_array_equal(dx, [[[[0.0, 5.0], [0.0, 0.0]]]])


def test_maxpool_padding_never_wins(xp):
    x = ann.asarray(-np.ones((1, 1, 2, 2)) * 10)
    y = host(F.maxpool2d_forward(x, 2, 1, 1))
    assert np.all(y == -10.0)


def test_global_avgpool(xp, rng):
    x = ann.asarray(rng.standard_normal((2, 3, 4, 5)))
    assert_close(F.global_avgpool2d_forward(x), host(x).mean(axis=(2, 3)))
    report = check_function(F.global_avgpool2d_forward,
                            lambda dy, x: {"x": F.global_avgpool2d_backward(x, dy)}, {"x": x})
    assert report.passed


def test_pool_errors(xp):
    x = ann.asarray(np.zeros((1, 2, 3, 3)))
    with pytest.raises(ann.InputError, match=r"pooling window \(4, 4\) is larger than the padded input \(3, 3\); x has shape \(1, 2, 3, 3\)"):
        F.maxpool2d_forward(x, 4)
    with pytest.raises(ann.InputError, match=r"x: expected a 4-D array.*or a 3-D array \(C, H, W\), got shape \(3, 3\)"):
        F.avgpool2d_forward(ann.asarray(np.zeros((3, 3))), 2)
    with pytest.raises(ann.InputError, match=r"padding: expected at most half the kernel \(2, 2\), got \(2, 2\)"):
        F.maxpool2d_forward(x, 2, 1, 2)
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(1, 2, 1, 1\)"):
        F.maxpool2d_backward(x, ann.asarray(np.zeros((1, 2, 2, 2))), 2)


def test_maxpool_backward_checks_the_forward_output_y(xp, torch):
    x = ann.asarray(np.arange(16.0).reshape(1, 1, 4, 4))
    dy = ann.asarray(np.ones((1, 1, 2, 2)))
    for shape in [(1, 1, 1, 1), (1, 1, 4, 4)]:  # the first would broadcast silently
        with pytest.raises(ann.InputError, match=rf"y: expected shape \(1, 1, 2, 2\) \(the "
                                                 rf"forward output\), got {re.escape(str(shape))}"):
            F.maxpool2d_backward(x, dy, 2, y=ann.asarray(np.full(shape, 15.0)))
    with pytest.raises(ann.InputError, match="y: expected dtype float64.*got float32"):
        F.maxpool2d_backward(x, dy, 2, y=ann.asarray(np.ones((1, 1, 2, 2)), dtype="float32"))
    other = "numpy" if ann.current_backend().name != "numpy" else "torch"
    with pytest.raises(ann.BackendMismatchError, match=f"y is {other}"):
        F.maxpool2d_backward(x, dy, 2, y=ann.asarray(np.ones((1, 1, 2, 2)), backend=other))
    assert_close(F.maxpool2d_backward(x, dy, 2, y=F.maxpool2d_forward(x, 2)),
                 F.maxpool2d_backward(x, dy, 2))
