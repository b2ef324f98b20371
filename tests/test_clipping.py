"""Gradient clipping (anyarray_nn.optim.clip_grad_norm, clip_grad_value) against
torch.nn.utils on every backend, its refusals, and fit's hook between backward and the step
(train.GradientClipping)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import optim, train
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import Conv2D, Dense, Flatten, ReLU
from helpers import host


def network(seed=0):
    return ann.Sequential([Conv2D(2, 3, 3, padding=1, rng=seed, dtype="float64"), ReLU(),
                           Flatten(), Dense(3 * 4 * 4, 5, rng=seed + 1, dtype="float64")])


def with_gradients(rng, scale):
    """A network on the active backend, its gradients set to random values times ``scale``."""
    model = network()
    model.to(ann.current_backend().name)
    for layer in model.layers:
        layer.grads = {k: ann.asarray(scale * rng.standard_normal(tuple(v.shape)))
                       for k, v in layer.params.items()}
    return model


def torch_copies(torch, model):
    """Tensors holding the model's gradients, as parameters' .grad for torch.nn.utils."""
    params = []
    for key, g in model.grads().items():
        p = torch.zeros(tuple(g.shape), dtype=torch.float64, requires_grad=True)
        p.grad = torch.tensor(host(g))
        params.append(p)
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm, scale", [(1.0, 1.0), (100.0, 1.0), (0.5, 1e-3),
                                             (0.0, 1.0)])
def test_clip_grad_norm_equals_torch(xp, torch, rng, norm_type, max_norm, scale):
    model = with_gradients(rng, scale)
    params = torch_copies(torch, model)
    expected = float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))
    total = optim.clip_grad_norm(model, max_norm, norm_type=norm_type)
    assert total == pytest.approx(expected, rel=1e-12)
    for (key, g), p in zip(model.grads().items(), params):
        np.testing.assert_allclose(host(g), p.grad.numpy(), rtol=1e-12, atol=1e-300,
                                   err_msg=key)


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 10.0])
def test_clip_grad_value_equals_torch(xp, torch, rng, clip_value):
    model = with_gradients(rng, 1.0)
    params = torch_copies(torch, model)
    torch.nn.utils.clip_grad_value_(params, clip_value)
    optim.clip_grad_value(model, clip_value)
    for (key, g), p in zip(model.grads().items(), params):
        np.testing.assert_array_equal(host(g), p.grad.numpy(), err_msg=key)


def test_a_nan_or_infinite_norm_is_torch_s_result_or_an_error(rng):
    model = with_gradients(rng, 1.0)
    model.layers[0].grads["W"][0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"clip_grad_norm: the total 2.0-norm of the "
                                         r"gradients is inf, not finite"):
        optim.clip_grad_norm(model, 1.0, error_if_nonfinite=True)
    assert np.isinf(model.layers[0].grads["W"][0, 0, 0, 0])  # refused: nothing changed
    with np.errstate(invalid="ignore"):  # inf * 0, as in torch
        assert math.isinf(optim.clip_grad_norm(model, 1.0))  # as torch: max_norm / inf = 0
        assert not np.any(model.layers[3].grads["W"])
        model.layers[3].grads["b"][0] = np.nan
        assert math.isnan(optim.clip_grad_norm(model, 1.0))
    assert np.isnan(model.layers[3].grads["W"]).all()


@pytest.mark.parametrize("call, message", [
    (lambda m: optim.clip_grad_norm(m, -1.0), r"max_norm to be a finite number >= 0.0, got -1.0"),
    (lambda m: optim.clip_grad_norm(m, math.nan), r"max_norm to be a finite number >= 0.0"),
    (lambda m: optim.clip_grad_norm(m, "1"), r"max_norm to be a number, got '1'"),
    (lambda m: optim.clip_grad_norm(m, 1.0, norm_type=0), r"norm_type to be a finite number "
                                                           r"> 0.0 or inf, got 0.0"),
    (lambda m: optim.clip_grad_norm(m, 1.0, error_if_nonfinite=1), r"True or False, got 1"),
    (lambda m: optim.clip_grad_value(m, -0.5), r"clip_value to be a finite number >= 0.0"),
    (lambda m: optim.clip_grad_value(m, math.inf), r"clip_value to be a finite number"),
])
def test_bad_clipping_arguments_are_refused_and_nothing_changes(rng, call, message):
    model = with_gradients(rng, 1.0)
    before = {k: np.array(v) for k, v in model.grads().items()}
    with pytest.raises(ValueError, match=message):
        call(model)
    for key, value in model.grads().items():
        np.testing.assert_array_equal(value, before[key])


def test_clipping_needs_a_model():
    with pytest.raises(TypeError, match=r"clip_grad_norm: expected a model .* got dict"):
        optim.clip_grad_norm({"w": np.ones(2)}, 1.0)


def test_fit_clips_between_backward_and_the_step_as_a_hand_written_loop(rng):
    """GradientClipping in fit gives the weights of a loop that clips by hand between
    backward and the SGD step, and records each step's norm before clipping."""
    x, y = rng.standard_normal((24, 2, 4, 4)), rng.integers(0, 5, 24)
    loss = ann.losses.SoftmaxCrossEntropy()
    model = network(3)
    opt = optim.SGD(model, lr=0.5, momentum=0.9)
    loader = DataLoader(x, y, 8, shuffle=False, backend="numpy",
                                          dtype="float64")
    history = train.fit(model, loss, opt, loader, epochs=2, progress=False,
                        callbacks=[train.GradientClipping(max_norm=0.05, clip_value=0.02)])
    by_hand = network(3)
    opt2 = optim.SGD(by_hand, lr=0.5, momentum=0.9)
    norms = []
    for _ in range(2):
        for xb, yb in loader:
            loss.forward(by_hand.forward(xb, train=True), yb)
            by_hand.backward(loss.backward())
            optim.clip_grad_value(by_hand, 0.02)
            norms.append(optim.clip_grad_norm(by_hand, 0.05))
            opt2.step()
    for key, value in by_hand.params().items():
        np.testing.assert_allclose(model.params()[key], value, rtol=1e-12, err_msg=key)
    assert [it["grad_norm"] for it in history.iterations] == pytest.approx(norms, rel=1e-12)
    assert max(norms) > 0.05  # the clipping did something


class Recorder(train.Callback):
    def __init__(self):
        self.events = []

    def on_after_backward(self, state):
        self.events.append(("after_backward", state.step))

    def on_iteration_end(self, state):
        self.events.append(("iteration_end", state.step))


def test_on_after_backward_runs_once_per_step_before_the_step(rng):
    x, y = rng.standard_normal((16, 2, 4, 4)), rng.integers(0, 5, 16)
    model = network()
    recorder = Recorder()
    train.fit(model, ann.losses.SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1),
              DataLoader(x, y, 8, backend="numpy", dtype="float64"),
              epochs=1, progress=False, callbacks=[recorder])
    # the step count is still the last finished step's when the hook runs
    assert recorder.events == [("after_backward", 0), ("iteration_end", 1),
                               ("after_backward", 1), ("iteration_end", 2)]


def test_gradient_clipping_refuses_nothing_to_do_and_bad_numbers():
    with pytest.raises(ValueError, match="expected max_norm or clip_value"):
        train.GradientClipping()
    with pytest.raises(ValueError, match=r"GradientClipping: expected max_norm to be a finite"):
        train.GradientClipping(max_norm=-1)
