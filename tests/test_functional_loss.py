"""Loss kernels: finite differences on every backend, PyTorch agreement, stability, bad input."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, host


def labels_for(rng, n, c):
    return ann.asarray(rng.integers(0, c, n))


def test_softmax_cross_entropy_gradient_float64(xp, rng):
    labels = labels_for(rng, 6, 4)
    report = check_function(
        lambda z: F.softmax_cross_entropy_forward(z, labels),
        lambda dy, z: {"z": F.softmax_cross_entropy_backward(z, labels, dy)},
        {"z": ann.asarray(rng.standard_normal((6, 4)) * 3)})
    assert report.passed, str(report)


def test_mse_gradient_float64(xp, rng):
    target = ann.asarray(rng.standard_normal((5, 3)))
    report = check_function(lambda p: F.mse_forward(p, target),
                            lambda dy, p: {"p": F.mse_backward(p, target, dy)},
                            {"p": ann.asarray(rng.standard_normal((5, 3)))})
    assert report.passed, str(report)


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e6])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 1e-5)])
def test_softmax_cross_entropy_matches_torch(torch, rng, scale, dtype, tol):
    z = (rng.standard_normal((16, 10)) * scale).astype(dtype)
    t = rng.integers(0, 10, 16)
    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(t))
    tloss.backward()
    loss = F.softmax_cross_entropy_forward(z, t)
    assert np.isfinite(float(loss))
    assert_close(loss, tloss, rtol=tol, atol=tol * scale)
    assert_close(F.softmax_cross_entropy_backward(z, t), tz.grad, rtol=tol, atol=tol)


def test_mse_matches_torch(torch, rng):
    p, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    tp = torch.tensor(p, requires_grad=True)
    tloss = torch.nn.functional.mse_loss(tp, torch.tensor(t))
    tloss.backward()
    assert_close(F.mse_forward(p, t), tloss)
    assert_close(F.mse_backward(p, t), tp.grad)


def test_cross_entropy_of_uniform_logits_is_log_classes(xp):
    z = ann.asarray(np.zeros((3, 7)))
    loss = F.softmax_cross_entropy_forward(z, ann.asarray(np.array([0, 3, 6])))
    assert float(loss) == pytest.approx(np.log(7))


def test_softmax_rows_sum_to_one(xp, rng):
    p = host(F.softmax_forward(ann.asarray(rng.standard_normal((4, 5)) * 100)))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_cross_entropy_errors(xp):
    z = ann.asarray(np.zeros((3, 4)))
    with pytest.raises(ann.InputError, match="labels: expected an integer dtype.*float64"):
        F.softmax_cross_entropy_forward(z, ann.asarray(np.zeros(3)))
    with pytest.raises(ann.InputError, match="labels: expected 3 labels.*got 2"):
        F.softmax_cross_entropy_forward(z, ann.asarray(np.array([0, 1])))
    with pytest.raises(ann.InputError, match=r"labels: expected class indices in \[0, 4\).*0 to 4"):
        F.softmax_cross_entropy_forward(z, ann.asarray(np.array([0, 1, 4])))
    with pytest.raises(ann.InputError, match=r"logits: expected a 2-D array.*\(3,\)"):
        F.softmax_cross_entropy_forward(ann.asarray(np.zeros(3)), ann.asarray(np.array([0, 1, 2])))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ann.InputError, match="logits: expected finite values, got 1 NaN"):
        F.softmax_cross_entropy_forward(ann.asarray(bad), ann.asarray(np.array([0, 1, 2])))


def test_mse_refuses_to_broadcast(xp):
    with pytest.raises(ann.InputError, match=r"target: expected shape \(4, 1\).*got \(4,\)"):
        F.mse_forward(ann.asarray(np.zeros((4, 1))), ann.asarray(np.zeros(4)))


@pytest.mark.parametrize("make, good, bad", [
    (ann.losses.SoftmaxCrossEntropy, (np.array([[1.0, 2.0], [0.5, 0.1]]), np.array([0, 1])),
     (np.array([[np.nan, 0.0], [1.0, 1.0], [3.0, 1.0]]), np.array([0, 1, 0]))),
    (ann.losses.MSE, (np.zeros((2, 2)), np.ones((2, 2))), (np.zeros((3, 2)), np.ones(3))),
], ids=["SoftmaxCrossEntropy", "MSE"])
def test_backward_after_a_failed_forward_is_an_error(make, good, bad):
    loss_fn, name = make(), make.__name__
    loss_fn.forward(*good)
    assert loss_fn.backward().shape == good[0].shape
    with pytest.raises(ann.InputError, match=f"{name}: "):
        loss_fn.forward(*bad)
    # Not the gradient of the previous batch: the failed forward left nothing to go back to.
    with pytest.raises(RuntimeError, match=rf"{name}: backward\(\) needs a preceding forward"):
        loss_fn.backward()


def test_cross_entropy_with_uint8_labels_and_many_classes_matches_torch(xp, torch, rng):
    # uint8 labels (as datasets store them) with more classes than uint8 holds: the class
    # range 0..299 must not wrap, and 255 < 300 is no range error.
    z = rng.standard_normal((3, 300))
    t = np.array([3, 40, 255], dtype=np.uint8)
    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(t.astype(np.int64)))
    tloss.backward()
    logits, labels = ann.asarray(z), ann.asarray(t)
    assert ann.backend.dtype_name(labels.dtype) == "uint8"
    assert_close(F.softmax_cross_entropy_forward(logits, labels), tloss)
    assert_close(F.softmax_cross_entropy_backward(logits, labels), tz.grad)
    np.testing.assert_array_equal(host(F.one_hot(labels, 300, logits.dtype)).sum(axis=1), 1.0)


@pytest.mark.parametrize("bad", [[0, 5], [0, -1]])
def test_cross_entropy_backward_checks_the_label_range(xp, bad):
    z = ann.asarray(np.zeros((2, 3)))
    with pytest.raises(ann.InputError, match=r"labels: expected class indices in \[0, 3\)"):
        F.softmax_cross_entropy_backward(z, ann.asarray(np.array(bad)))


def test_cross_entropy_loss_checks_the_label_range_once_per_step(monkeypatch):
    # The check reads a value back from the device: the loss object's backward relies on
    # the check its forward made on the same labels.
    from anyarray_nn.functional import loss as loss_module
    calls = []
    check = loss_module._check_values
    monkeypatch.setattr(loss_module, "_check_values", lambda *a: calls.append(1) or check(*a))
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    z, t = np.array([[1.0, 2.0, 0.5], [0.1, 0.2, 0.3]]), np.array([0, 2])
    loss_fn.forward(z, t)
    assert_close(loss_fn.backward(), F.softmax_cross_entropy_backward(z, t))
    assert len(calls) == 2  # the loss object's forward, then the functional backward above


@pytest.mark.parametrize("dtype,big", [("float64", 1e308), ("float32", 3e38)])
@pytest.mark.parametrize("label", [0, 2])
def test_cross_entropy_of_extreme_finite_logits_matches_torch(xp, torch, dtype, big, label):
    # max - min overflows to inf; the target's logit is still finite (as are loss and gradient).
    z = np.array([[big, -big, 0.0], [1.0, 2.0, 3.0]], dtype=dtype)
    t = np.array([label, 1])
    tz = torch.tensor(z, requires_grad=True)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(t))
    tloss.backward()
    logits, labels = ann.asarray(z, dtype=dtype), ann.asarray(t)
    with np.errstate(over="ignore"):
        loss = ann.losses.SoftmaxCrossEntropy()
        assert_close(loss.forward(logits, labels), tloss, rtol=1e-6)
        assert_close(loss.backward(), tz.grad, rtol=1e-6, atol=1e-7)
        # The target -big: the loss itself overflows; say so rather than "0 NaN entries".
        with pytest.raises(ann.InputError, match=f"logits: expected a finite loss, got inf "
                                                 f"from finite logits.*overflow {dtype}"):
            F.softmax_cross_entropy_forward(logits, ann.asarray(np.array([1, 1])))


@pytest.mark.parametrize("kernel", ["cross_entropy", "mse"])
@pytest.mark.parametrize("ours, other", [("numpy", "torch"), ("torch", "numpy"),
                                         ("array_api_strict", "numpy"),
                                         ("numpy", "array_api_strict")])
def test_loss_backward_refuses_dloss_from_another_backend(torch, kernel, ours, other):
    z = ann.asarray(np.zeros((2, 3)), backend=ours)
    target = ann.asarray(np.array([0, 1]), backend=ours) if kernel == "cross_entropy" else z
    backward = {"cross_entropy": F.softmax_cross_entropy_backward, "mse": F.mse_backward}[kernel]
    make = {"cross_entropy": ann.losses.SoftmaxCrossEntropy, "mse": ann.losses.MSE}[kernel]
    dloss = ann.asarray(np.array(2.0), backend=other)
    first = "logits" if kernel == "cross_entropy" else "prediction"
    with pytest.raises(ann.BackendMismatchError, match=f"{first} is {ours}.*dloss is {other}"):
        backward(z, target, dloss)
    loss_fn = make()
    loss_fn.forward(z, target)
    with pytest.raises(ann.BackendMismatchError, match=f"{make.__name__}: .*dloss is {other}"):
        loss_fn.backward(dloss)
    # A Python number or a 0-d array of the same backend is what dloss may be.
    same = ann.asarray(np.array(2.0), backend=ours)
    assert_close(loss_fn.backward(same), loss_fn.backward(2.0))
    assert_close(loss_fn.backward(2.0), host(loss_fn.backward()) * 2)


@pytest.mark.parametrize("kernel", ["cross_entropy", "mse"])
def test_loss_backward_refuses_a_dloss_of_another_dtype_or_shape(xp, kernel):
    z = ann.asarray(np.zeros((2, 3)), dtype="float32")
    target = ann.asarray(np.array([0, 1])) if kernel == "cross_entropy" else z
    backward = {"cross_entropy": F.softmax_cross_entropy_backward, "mse": F.mse_backward}[kernel]
    what = "the logits" if kernel == "cross_entropy" else "the prediction"
    with pytest.raises(ann.InputError, match=f"dloss: expected dtype float32 \\(the dtype of {what}\\), "
                                             f"got float64"):
        backward(z, target, ann.asarray(np.array(2.0)))
    with pytest.raises(ann.InputError, match=r"dloss: expected a 0-d array .*got shape \(2,\)"):
        backward(z, target, ann.asarray(np.array([1.0, 1.0]), dtype="float32"))
    grad = backward(z, target, ann.asarray(np.array(2.0), dtype="float32"))
    assert host(grad).dtype == np.float32
    assert_close(grad, host(backward(z, target, 2)))
