"""The gradient checker itself: it must catch wrong gradients, not only pass right ones."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.layers import Dense, Layer


class WrongDense(Dense):
    """A Dense layer whose weight gradient forgets the transpose's partner: a typical bug."""

    def _backward(self, dy, x, input_grad):
        dx, grads = super()._backward(dy, x, input_grad)
        grads["W"] = grads["W"] * 1.01
        return dx, grads


class Square(Layer):
    """A user-written layer with a correct gradient, as in the docs."""

    def _forward(self, x, train):
        return x * x, x

    def _backward(self, dy, x, input_grad):
        return 2.0 * x * dy, {}


def test_wrong_weight_gradient_is_caught(xp, rng):
    layer = WrongDense(3, 2, dtype="float64", rng=0, name="bad")
    report = ann.check_gradients(layer, ann.asarray(rng.standard_normal((4, 3))))
    assert not report.passed
    assert report["W"].passed is False and report["x"].passed and report["b"].passed
    assert report["W"].max_rel_error == pytest.approx(0.01 / 1.01, rel=1e-3)
    with pytest.raises(AssertionError, match="gradient check failed"):
        report.raise_if_failed()


def test_user_layer_passes_and_report_prints(rng):
    report = ann.check_gradients(Square(), rng.standard_normal((2, 3)))
    assert report.passed
    text = str(report)
    assert "x" in text and "passed" in text


def test_float32_is_refused_with_the_fix():
    with pytest.raises(ann.InputError, match="W must be float64.*got float32.*to\\(dtype='float64'\\)"):
        ann.check_gradients(Dense(2, 2), np.zeros((1, 2)))


def test_large_tensors_are_sampled(rng):
    layer = Dense(50, 40, dtype="float64", rng=0)
    report = ann.check_gradients(layer, rng.standard_normal((3, 50)), max_checks=25)
    assert report["W"].checked == 25 and report["b"].checked == 25 and report.passed


def test_checker_restores_parameters_and_input(rng):
    layer = Dense(3, 2, dtype="float64", rng=0)
    w = layer.params["W"].copy()
    x = rng.standard_normal((2, 3))
    x_copy = x.copy()
    ann.check_gradients(layer, x)
    np.testing.assert_array_equal(layer.params["W"], w)
    np.testing.assert_array_equal(x, x_copy)


def test_check_function_catches_a_wrong_kernel(rng):
    report = ann.gradcheck.check_function(
        lambda x: ann.functional.tanh_forward(x),
        lambda dy, x: {"x": dy * (1.0 - ann.functional.tanh_forward(x))},  # forgot the square
        {"x": rng.standard_normal(10)})
    assert not report.passed
