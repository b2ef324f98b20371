"""Dense kernel: finite differences on every backend, PyTorch agreement, bad input."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, host


def dense_backward_dict(dy, x, w, b):
    dx, dw, db = F.dense_backward(x, w, dy)
    return {"x": dx, "w": dw, "b": db}


@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 3, 5), (7, 10, 2)])
def test_dense_gradients_float64(xp, rng, shape):
    n, fin, fout = shape
    inputs = {"x": ann.asarray(rng.standard_normal((n, fin))),
              "w": ann.asarray(rng.standard_normal((fout, fin))),
              "b": ann.asarray(rng.standard_normal(fout))}
    report = check_function(F.dense_forward, dense_backward_dict, inputs)
    assert report.passed, str(report)


def test_dense_forward_is_the_course_formula(xp, rng):
    # Z = W X + b with examples as columns is y = x W^T + b with examples as rows.
    x, w, b = rng.standard_normal((6, 4)), rng.standard_normal((3, 4)), rng.standard_normal(3)
    y = F.dense_forward(ann.asarray(x), ann.asarray(w), ann.asarray(b))
    assert_close(y, (w @ x.T + b[:, None]).T)


def test_dense_without_bias(xp, rng):
    x, w = rng.standard_normal((2, 3)), rng.standard_normal((4, 3))
    assert_close(F.dense_forward(ann.asarray(x), ann.asarray(w)), x @ w.T)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_dense_matches_torch_autograd(torch, rng, dtype, tol):
    x, w, b, dy = (rng.standard_normal(s) for s in [(8, 5), (3, 5), (3,), (8, 3)])
    tx, tw, tb = (torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True)
                  for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy, dtype=getattr(torch, dtype)))
    cast = [a.astype(dtype) for a in (x, w, b, dy)]
    y = F.dense_forward(cast[0], cast[1], cast[2])
    dx, dw, db = F.dense_backward(cast[0], cast[1], cast[3])
    for ours, ref in [(y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert host(ours).dtype == np.dtype(dtype)
        assert_close(ours, ref, rtol=tol, atol=tol)


def test_dense_kernel_errors_name_expected_and_actual(xp):
    x = ann.asarray(np.zeros((2, 3)), dtype="float32")
    w = ann.asarray(np.zeros((4, 5)), dtype="float32")
    with pytest.raises(ann.InputError, match=r"expected 5 input features.*\(4, 5\).*\(2, 3\)"):
        F.dense_forward(x, w)
    with pytest.raises(ann.InputError, match=r"x: expected 5 input features in the last axis.*got shape \(3,\)"):
        F.dense_forward(ann.asarray(np.zeros(3), dtype="float32"), w)
    w3 = ann.asarray(np.zeros((4, 3)), dtype="float64")
    with pytest.raises(ann.InputError, match="x: expected dtype float64.*got float32"):
        F.dense_forward(x, w3)
    with pytest.raises(ann.InputError, match=r"b: expected shape \(4,\), got \(5,\)"):
        F.dense_forward(x, ann.asarray(np.zeros((4, 3)), dtype="float32"),
                        ann.asarray(np.zeros(5), dtype="float32"))
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(2, 4\).*got \(2, 5\)"):
        F.dense_backward(x, ann.asarray(np.zeros((4, 3)), dtype="float32"),
                         ann.asarray(np.zeros((2, 5)), dtype="float32"))


def test_dense_kernel_does_not_modify_inputs(xp, rng):
    arrays = [rng.standard_normal(s) for s in [(3, 2), (4, 2), (3, 4)]]
    x, w, dy = (ann.asarray(a) for a in arrays)
    F.dense_forward(x, w)
    F.dense_backward(x, w, dy)
    for ours, original in zip((x, w, dy), arrays):
        np.testing.assert_array_equal(host(ours), original)
