"""Activation kernels: finite differences on every backend, PyTorch agreement, bad input."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, away_from_zero, host

# name -> (forward, backward, torch reference as a function of the torch module and a tensor)
KERNELS = {
    "relu": (F.relu_forward, F.relu_backward, lambda t, x: t.relu(x)),
    "leaky_relu": (lambda x: F.leaky_relu_forward(x, 0.1),
                   lambda x, dy: F.leaky_relu_backward(x, dy, 0.1),
                   lambda t, x: t.nn.functional.leaky_relu(x, 0.1)),
    "tanh": (F.tanh_forward, F.tanh_backward, lambda t, x: t.tanh(x)),
    "sigmoid": (F.sigmoid_forward, F.sigmoid_backward, lambda t, x: t.sigmoid(x)),
}


@pytest.mark.parametrize("name", KERNELS)
def test_activation_gradients_float64(xp, rng, name):
    forward, backward, _ = KERNELS[name]
    x = ann.asarray(away_from_zero(rng, (3, 4, 5)))
    report = check_function(forward, lambda dy, x: {"x": backward(x, dy)}, {"x": x})
    assert report.passed, str(report)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_activation_matches_torch_autograd(torch, rng, name, dtype, tol):
    forward, backward, reference = KERNELS[name]
    x, dy = rng.standard_normal((6, 7)) * 4, rng.standard_normal((6, 7))
    tx = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    ty = reference(torch, tx)
    ty.backward(torch.tensor(dy, dtype=getattr(torch, dtype)))
    xc, dyc = x.astype(dtype), dy.astype(dtype)
    assert_close(forward(xc), ty, rtol=tol, atol=tol)
    assert_close(backward(xc, dyc), tx.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_backward_with_cached_output_equals_recomputed(xp, rng, name):
    forward, backward, _ = KERNELS[name]
    x, dy = ann.asarray(rng.standard_normal(10)), ann.asarray(rng.standard_normal(10))
    assert_close(backward(x, dy, y=forward(x)), backward(x, dy))


def test_relu_gradient_at_zero_is_zero_like_torch(xp):
    x = ann.asarray(np.array([-1.0, 0.0, 2.0]))
    assert host(F.relu_backward(x, ann.asarray(np.ones(3)))).tolist() == [0.0, 0.0, 1.0]


def test_sigmoid_is_finite_for_huge_inputs(xp):
    y = host(F.sigmoid_forward(ann.asarray(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]))))
    assert np.all(np.isfinite(y))
    assert y[0] == 0.0 and y[2] == 0.5 and y[-1] == 1.0


@pytest.mark.parametrize("name", KERNELS)
def test_activation_errors(xp, name):
    forward, backward, _ = KERNELS[name]
    with pytest.raises(ann.InputError, match="x: expected a floating dtype.*got int64"):
        forward(ann.asarray(np.arange(3, dtype=np.int64)))
    with pytest.raises(ann.InputError, match=r"x: expected a floating dtype \(float32 or float64\), got float16"):
        forward(np.zeros(3, dtype=np.float16))
    x = ann.asarray(np.zeros((2, 3)))
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(2, 3\).*got \(3, 2\)"):
        backward(x, ann.asarray(np.zeros((3, 2))))


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_backward_checks_the_forward_output_y(xp, torch, name):
    backward = KERNELS[name][1]
    x, dy = ann.asarray(np.zeros((2, 3))), ann.asarray(np.ones((2, 3)))
    with pytest.raises(ann.InputError, match=r"y: expected shape \(2, 3\).*got \(3,\)"):
        backward(x, dy, y=ann.asarray(np.zeros(3)))  # would broadcast
    with pytest.raises(ann.InputError, match=r"y: expected shape \(2, 3\).*got \(2, 3, 1\)"):
        backward(x, dy, y=ann.asarray(np.zeros((2, 3, 1))))
    with pytest.raises(ann.InputError, match="y: expected dtype float64.*got float32"):
        backward(x, dy, y=ann.asarray(np.zeros((2, 3)), dtype="float32"))
    other = "numpy" if ann.current_backend().name != "numpy" else "torch"
    with pytest.raises(ann.BackendMismatchError, match=f"y is {other}"):
        backward(x, dy, y=ann.asarray(np.zeros((2, 3)), backend=other))
