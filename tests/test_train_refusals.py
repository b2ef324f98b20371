"""What fit refuses: an optimizer of another model, and a step with NaN or infinite values
(in the input, the loss or the gradients), which it stops before the update, leaving the last
good parameters, optimizer state and BatchNorm statistics to save."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import train
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.errors import InputError, NonFiniteError
from anyarray_nn.layers import BatchNorm1D, Dense, ReLU, Tanh
from helpers import host

# The tests feed NaN and infinity on purpose; NumPy warns as it computes with them.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def circles(n=96, batch=16):
    x, y = ann.data.make_circles(n, noise=0.1, seed=0)
    return x.astype(np.float32), y, batch


def small_model(seed=0, batch_norm=False):
    middle = [BatchNorm1D(8, name="bn")] if batch_norm else []
    return ann.Sequential([Dense(2, 8, init="glorot", rng=seed, name="fc1"), *middle, Tanh(),
                           Dense(8, 2, init="glorot", rng=seed + 1, name="fc2")])


class Snapshots(train.Callback):
    """Host copies of the parameters, buffers and optimizer slots after every step."""

    def __init__(self):
        self.after = {}

    def on_iteration_end(self, state):
        self.after[state.step] = (
            {k: host(v).copy() for k, v in state.model.params().items()},
            {k: host(v).copy() for k, v in state.model.buffers().items()},
            {k: {s: host(a).copy() for s, a in slots.items()}
             for k, slots in state.optimizer.state.items()})


def assert_bitwise(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key], strict=True)


def assert_state_is_after_step(model, opt, snapshots, step):
    params, buffers, slots = snapshots.after[step]
    assert_bitwise({k: host(v) for k, v in model.params().items()}, params)
    assert_bitwise({k: host(v) for k, v in model.buffers().items()}, buffers)
    assert opt.step_count == step
    assert opt.state.keys() == slots.keys()
    for key in slots:
        assert_bitwise({s: host(a) for s, a in opt.state[key].items()}, slots[key])


# --- an optimizer of another model -------------------------------------------------------

def test_an_optimizer_of_another_model_is_refused_before_the_first_step():
    x, y, batch = circles()
    model, other = small_model(0), small_model(0)  # the same architecture and keys
    opt = ann.optim.SGD(other, lr=0.1, momentum=0.9)
    before = {k: host(v).copy() for k, v in model.params().items()}
    history = train.History()
    message = (rf"fit: the optimizer SGD was built for another model \(Sequential at "
               rf"{id(other):#x}\) than the one to train \(Sequential at {id(model):#x}\): its "
               rf"arrays for fc1.W, fc1.b, fc2.W, fc2.b are not the model's; .*SGD\(model, ...\)")
    with pytest.raises(ValueError, match=message):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, DataLoader(x, y, batch),
                  epochs=1, progress=False, history=history)
    assert history.iterations == [] and opt.step_count == 0
    assert_bitwise({k: host(v) for k, v in model.params().items()}, before)


def test_an_optimizer_of_part_of_the_model_is_refused():
    x, y, batch = circles()
    model = small_model()
    part = ann.Sequential(model.layers[:2])  # shares the first layer's arrays, not the last
    with pytest.raises(ValueError, match=r"its arrays for fc2.W, fc2.b are not the model's"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(part, lr=0.1),
                  DataLoader(x, y, batch), epochs=1, progress=False)
    bigger = ann.Sequential([*model.layers, Tanh(), Dense(2, 2, name="extra")])
    with pytest.raises(ValueError, match=r"it also updates extra.W, extra.b, which the model "
                                         r"lacks"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(bigger, lr=0.1),
                  DataLoader(x, y, batch), epochs=1, progress=False)


def test_a_model_and_its_data_parallel_wrapper_share_their_optimizer():
    x, y, batch = circles()
    model = small_model()
    wrapper = ann.DataParallel(model, 2, min_batch=1)
    for trained, built_for in ((wrapper, model), (model, wrapper)):
        opt = ann.optim.SGD(built_for, lr=0.1)
        history = train.fit(trained, ann.losses.SoftmaxCrossEntropy(), opt,
                            DataLoader(x, y, batch), iterations=2, progress=False)
        assert len(history.iterations) == 2 and opt.step_count == 2
    wrapper.close()
    stranger = ann.DataParallel(small_model(), 2)
    with pytest.raises(ValueError, match=r"built for another model \(DataParallel at .*\) than "
                                         r"the one to train \(Sequential at"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(stranger, lr=0.1),
                  DataLoader(x, y, batch), iterations=1, progress=False)


# --- a step with NaN or infinite values --------------------------------------------------

def test_an_infinite_input_that_reaches_only_the_gradients_stops_the_step(xp, tmp_path):
    """-inf times positive weights gives -inf, which ReLU turns into 0: the loss is finite,
    but the first layer's dW takes -inf * 0 = NaN. The step must not be applied."""
    x, y, batch = circles()
    x[2 * batch + 5] = [-np.inf, 0.5]  # in the third batch
    model = ann.Sequential([Dense(2, 8, init="glorot", rng=0, name="fc1"), ReLU(),
                            Dense(8, 2, init="glorot", rng=1, name="fc2")])
    w = model["fc1"].params["W"]
    w[...] = xp.abs(w)
    opt = ann.optim.Adam(model, lr=0.01)
    snapshots, history = Snapshots(), train.History()
    with pytest.raises(NonFiniteError) as caught:
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt,
                  DataLoader(x, y, batch, shuffle=False), epochs=2, progress=False,
                  callbacks=[snapshots], history=history)
    assert str(caught.value) == (
        "fit: epoch 1, step 3: NaN or infinite values, so this step was not applied (the "
        "parameters, the optimizer's state and the BatchNorm statistics are those after step "
        "2): the input batch (shape (16, 2)) has 0 NaN and 1 infinite values; gradients with "
        "NaN or infinite values: fc1.W")
    assert isinstance(caught.value, InputError) and isinstance(caught.value, ValueError)
    assert len(history.iterations) == 2
    assert_state_is_after_step(model, opt, snapshots, 2)
    ann.save_checkpoint(tmp_path / "last-good.h5", model, opt)  # the user can keep them
    fresh = ann.Sequential([Dense(2, 8, name="fc1"), ReLU(), Dense(8, 2, name="fc2")])
    ann.load_checkpoint(tmp_path / "last-good.h5", fresh)
    assert_bitwise({k: host(v) for k, v in fresh.params().items()}, snapshots.after[2][0])


class EpochBatches:
    """A loader that gives each epoch its own list of batches."""

    def __init__(self, *epochs):
        self.epochs = list(epochs)

    def __len__(self):
        return len(self.epochs[0])

    def __iter__(self):
        return iter(self.epochs.pop(0))


def test_the_loss_error_for_nan_logits_names_the_epoch_step_and_input(xp):
    x, y, batch = circles()
    good = list(DataLoader(x, y, batch, shuffle=False))
    x_bad = x[batch:2 * batch].copy()
    x_bad[1, 0], x_bad[7, 1] = np.nan, np.inf  # tanh saturates inf: only the NaN row is lost
    bad = good[:1] + [(ann.asarray(x_bad), good[1][1])] + good[2:]
    model = small_model()
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    snapshots = Snapshots()
    with pytest.raises(NonFiniteError, match=re.escape(
            "fit: epoch 2, step 8: NaN or infinite values, so this step was not applied (the "
            "parameters, the optimizer's state and the BatchNorm statistics are those after "
            "step 7): the input batch (shape (16, 2)) has 1 NaN and 1 infinite values; the "
            "model's output has 2 NaN or infinite values; the loss: SoftmaxCrossEntropy: "
            "logits: expected finite values")) as caught:
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, EpochBatches(good, bad),
                  epochs=2, progress=False, callbacks=[snapshots])
    assert isinstance(caught.value.__cause__, InputError)  # the loss's own error, chained
    assert_state_is_after_step(model, opt, snapshots, 7)


def test_batch_norm_statistics_stay_those_of_the_last_good_step(xp):
    x, y, batch = circles()
    x[3 * batch] = [np.inf, 1.0]
    model = small_model(batch_norm=True)
    opt = ann.optim.RMSProp(model, lr=0.01)
    snapshots = Snapshots()
    with pytest.raises(NonFiniteError, match="step 4: .* has 0 NaN and 1 infinite values"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt,
                  DataLoader(x, y, batch, shuffle=False), epochs=1, progress=False,
                  callbacks=[snapshots])
    assert_state_is_after_step(model, opt, snapshots, 3)
    assert all(bool(xp.all(xp.isfinite(v))) for v in model.buffers().values())


class HugeGradient(ann.layers.Layer):
    """Identity with a parameter whose gradient is the largest float32, 3.4e38, in every
    entry: finite, but their sum overflows to infinity."""

    def __init__(self, name=None):
        super().__init__(name)
        self.params["s"] = ann.asarray(np.zeros(4, np.float32))

    def _forward(self, x, train):
        return x, None

    def _backward(self, dy, cache, input_grad):
        xp = ann.backend.namespace(dy)
        return dy, {"s": xp.full((4,), float(np.finfo(np.float32).max), dtype=xp.float32)}


def test_finite_values_whose_screening_sum_overflows_still_train(xp):
    x, y, batch = circles()
    model = ann.Sequential([HugeGradient(name="huge"), *small_model().layers])
    opt = ann.optim.SGD(model, lr=1e-30)
    history = train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, DataLoader(x, y, batch),
                        epochs=1, progress=False)
    assert len(history.iterations) == 6 and opt.step_count == 6
    assert np.all(host(model.params()["huge.s"]) < 0)  # every step was applied


def test_parameters_made_infinite_by_hand_are_named():
    x, y, batch = circles()
    model = small_model()
    model["fc2"].params["b"][0] = np.inf
    with pytest.raises(NonFiniteError, match=r"epoch 1, step 1: .*parameters already not "
                                             r"finite before this step: fc2.b"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                  DataLoader(x, y, batch), epochs=1, progress=False)


def test_other_input_errors_of_a_step_name_the_epoch_and_step_and_keep_their_type():
    x, y, batch = circles()
    y[batch + 3] = 7  # a label outside the two classes
    model = small_model()
    with pytest.raises(InputError, match=r"^fit: epoch 1, step 2: SoftmaxCrossEntropy: labels: "
                                         r"expected class indices in \[0, 2\)") as caught:
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                  DataLoader(x, y, batch, shuffle=False), epochs=1, progress=False)
    assert not isinstance(caught.value, NonFiniteError)


def test_a_learning_rate_schedule_that_gives_nan_stops_before_the_update():
    x, y, batch = circles()
    model = small_model()
    opt = ann.optim.SGD(model, lr=0.1)
    snapshots = Snapshots()
    schedule = train.LearningRateSchedule(lambda t: 0.1 if t < 2 else float("nan"),
                                          per="iteration")
    with pytest.raises(ValueError, match=r"SGD: expected lr to be a finite number >= 0.0, got nan; it was "
                                         r"set after the optimizer was built .*step 3 was not"):
        train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, DataLoader(x, y, batch),
                  epochs=1, progress=False, callbacks=[snapshots, schedule])
    assert_state_is_after_step(model, opt, snapshots, 2)


def test_a_step_reads_the_device_once(monkeypatch):
    """The loss, the correct count and the finiteness screen come back in one read, the only
    one fit itself makes per step (the loss's own check of labels and values is another)."""
    x, y, batch = circles()
    model = small_model()
    reads = []
    real = ann.backend.to_host
    monkeypatch.setattr(train._backend, "to_host", lambda a: reads.append(a.shape) or real(a))
    train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
              DataLoader(x, y, batch), epochs=1, progress=False)
    assert reads == [(4,)] * 6  # loss, correct, counted, screen: one read per step
