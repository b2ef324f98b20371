"""The gradient checker itself: it must catch wrong gradients, not only pass right ones."""

import re

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


def test_checker_restores_batchnorm_running_statistics(xp, rng):
    model = ann.Sequential([Dense(3, 4, dtype="float64", rng=0),
                            ann.layers.BatchNorm1D(4, dtype="float64")])
    x = ann.asarray(rng.standard_normal((8, 3)))
    before = {k: np.array(ann.to_host(v)) for k, v in model.buffers().items()}
    eval_before = np.array(ann.to_host(model.forward(x, train=False)))
    assert ann.check_gradients(model, x).passed
    after = {k: ann.to_host(v) for k, v in model.buffers().items()}
    assert after.keys() == before.keys() == {"batchnorm1.running_mean", "batchnorm1.running_var"}
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_array_equal(ann.to_host(model.forward(x, train=False)), eval_before)


def test_checker_restores_the_buffers_of_a_single_layer_even_when_it_fails(rng):
    layer = ann.layers.BatchNorm1D(4, dtype="float64")
    mean = np.array(layer.buffers["running_mean"])

    class Boom(Exception):
        pass

    class FailingLoss(ann.losses.MSE):
        calls = 0

        def forward(self, y, target):
            FailingLoss.calls += 1
            if FailingLoss.calls > 3:
                raise Boom
            return super().forward(y, target)

    x = rng.standard_normal((8, 4))
    with pytest.raises(Boom):
        ann.check_gradients(layer, x, loss=FailingLoss(), target=np.zeros((8, 4)))
    np.testing.assert_array_equal(layer.buffers["running_mean"], mean)


@pytest.mark.parametrize("setting,value,expected", [
    ("max_checks", 0, "an int >= 1"), ("max_checks", -1, "an int >= 1"),
    ("max_checks", 2.5, "an int >= 1"), ("max_checks", True, "an int >= 1"),
    ("eps", 0.0, "a finite number > 0"), ("eps", -1e-6, "a finite number > 0"),
    ("eps", float("nan"), "a finite number > 0"), ("rtol", -1e-5, "a finite number >= 0"),
    ("atol", float("inf"), "a finite number >= 0"), ("atol", "1e-8", "a finite number >= 0"),
])
def test_bad_settings_are_refused_with_their_name(setting, value, expected, rng):
    message = f"expected {setting} to be {expected}, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(f"check_gradients: {message}")):
        ann.check_gradients(Square(), rng.standard_normal((2, 3)), **{setting: value})
    with pytest.raises(ValueError, match=re.escape(f"check_function: {message}")):
        ann.gradcheck.check_function(lambda x: 2.0 * x, lambda dy, x: {"x": 2.0 * dy},
                                     {"x": rng.standard_normal(5)}, **{setting: value})


def test_numerical_gradient_refuses_a_zero_step_and_restores_on_errors():
    x = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"numerical_gradient: expected eps to be a finite "
                                         r"number > 0, got 0"):
        ann.gradcheck.numerical_gradient(lambda: float(np.sum(x)), x, [(0,)], eps=0)

    def fails():
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError):
        ann.gradcheck.numerical_gradient(fails, x, [(1,)])
    np.testing.assert_array_equal(x, [1.0, 2.0])


def test_one_check_per_tensor_still_catches_a_wrong_gradient(rng):
    report = ann.check_gradients(WrongDense(3, 2, dtype="float64", rng=0),
                                 rng.standard_normal((4, 3)), max_checks=1)
    assert report["W"].checked == 1 and not report["W"].passed
    report = ann.gradcheck.check_function(lambda x: 2.0 * x, lambda dy, x: {"x": 3.0 * dy},
                                          {"x": rng.standard_normal(5)}, max_checks=1)
    assert report["x"].checked == 1 and not report.passed


def test_report_passed_is_documented():
    assert "every entry passed" in ann.GradCheckReport.passed.__doc__
