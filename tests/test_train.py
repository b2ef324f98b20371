"""fit / evaluate: learning on every backend, determinism, History, callbacks, errors."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import train
from anyarray_nn.data.pipeline import DataLoader, Standardize, train_val_split
from anyarray_nn.layers import Dense, Tanh
from helpers import host


def setup(seed=0, n=600):
    x, y = ann.data.make_circles(n, noise=0.1, seed=seed)
    xt, yt, xv, yv = train_val_split(x, y, 0.25, seed=seed)
    st = Standardize.fit(xt)
    model = ann.Sequential([Dense(2, 16, init="glorot", rng=seed), Tanh(),
                            Dense(16, 2, init="glorot", rng=seed + 1)])
    return (model, ann.losses.SoftmaxCrossEntropy(), DataLoader(xt, yt, 32, seed=seed, preprocess=st),
            DataLoader(xv, yv, 100, shuffle=False, preprocess=st, train=False))


def test_fit_learns_on_every_backend(xp):
    model, loss_fn, tl, vl = setup()
    history = train.fit(model, loss_fn, ann.optim.Adam(model, lr=0.02), tl, epochs=12,
                        val_loader=vl, progress=False)
    losses = history.series("loss")
    assert losses[-1] < 0.5 * losses[0]
    assert history.epochs[-1]["val_accuracy"] > 0.9  # chance is 0.5
    result = train.evaluate(model, loss_fn, vl)
    assert result.accuracy == history.epochs[-1]["val_accuracy"]
    assert result.predictions.shape == result.labels.shape == (150,)


def test_fit_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        model, loss_fn, tl, vl = setup()
        h = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1, momentum=0.9), tl, epochs=3,
                      val_loader=vl, progress=False)
        runs.append((h.series("loss", per="iteration"), {k: host(v) for k, v in model.params().items()}))
    assert runs[0][0] == runs[1][0]
    for key in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][key], runs[1][1][key])


def test_iterations_validation_every_n_and_history():
    model, loss_fn, tl, vl = setup()
    h = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, iterations=20,
                  val_loader=vl, val_every=5, progress=False)
    assert len(h.iterations) == 20 and [v["step"] for v in h.validations] == [5, 10, 15, 20]
    assert set(h.iterations[0]) == {"step", "epoch", "loss", "accuracy", "lr"}
    assert h.epochs[-1]["steps"] == 20 and len(h.epochs) == 2  # 15 steps per epoch
    assert train.History.from_dict(h.to_dict()) == h
    # validations every N steps are read per validation; the epoch rows have none
    assert len(h.series("val_loss", per="validation")) == 4 and h.series("val_loss") == []
    with pytest.raises(ValueError, match="expected per to be 'epoch', 'iteration' or "
                                         "'validation', got 'validations'"):
        h.series("val_loss", per="validations")
    more = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, iterations=5,
                     history=h, progress=False)
    assert [r["step"] for r in more.iterations][-6:] == [20, 21, 22, 23, 24, 25]


def test_learning_rate_schedule_per_epoch_and_per_iteration():
    model, loss_fn, tl, _ = setup()
    opt = ann.optim.SGD(model, lr=1.0)
    h = train.fit(model, loss_fn, opt, tl, epochs=3, progress=False,
                  callbacks=[train.LearningRateSchedule(ann.schedules.step_decay(0.1, 1, 0.5))])
    assert sorted({r["lr"] for r in h.iterations}) == [0.025, 0.05, 0.1]
    h2 = train.fit(model, loss_fn, opt, tl, iterations=4, progress=False,
                   callbacks=[train.LearningRateSchedule(lambda t: 0.01 * (t + 1), per="iteration")])
    assert [r["lr"] for r in h2.iterations] == pytest.approx([0.01, 0.02, 0.03, 0.04])


def test_early_stopping_stops_and_restores_the_best_parameters():
    model, loss_fn, tl, vl = setup()
    snapshots = []

    class Worsen(train.Callback):  # makes val_loss rise after the first validation
        def on_validation_end(self, state):
            snapshots.append({k: host(v).copy() for k, v in state.model.params().items()})
            state.last["val_loss"] = len(snapshots)

    stopper = train.EarlyStopping(patience=2)
    h = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.5), tl, epochs=20, val_loader=vl,
                  callbacks=[Worsen(), stopper], progress=False)
    assert len(h.epochs) == 3 and stopper.best == 1
    for key, value in model.params().items():
        np.testing.assert_array_equal(host(value), snapshots[0][key])


def test_every_calls_its_hook():
    model, loss_fn, tl, _ = setup()
    steps, epochs = [], []
    train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, epochs=2, progress=False,
              callbacks=[train.Every(7, lambda s: steps.append(s.step)),
                         train.Every(1, lambda s: epochs.append(s.epoch), per="epoch")])
    assert steps == [7, 14, 21, 28] and epochs == [1, 2]


def test_progress_bar_can_be_shown(capsys):
    model, loss_fn, tl, _ = setup()
    train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, iterations=3, progress=True)
    assert "3/3" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one of epochs= or iterations="),
    ({"epochs": 1, "iterations": 1}, "exactly one"),
    ({"epochs": 0}, "positive number"),
    ({"epochs": 1, "val_every": 3}, "val_every needs a val_loader"),
])
def test_fit_errors(kwargs, match):
    model, loss_fn, tl, _ = setup()
    with pytest.raises(ValueError, match=match):
        train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, progress=False, **kwargs)


def test_schedules_by_hand():
    assert ann.schedules.step_decay(1.0, 2, 0.1)(3) == pytest.approx(0.1)
    cos = ann.schedules.cosine(1.0, 10, min_lr=0.1)
    assert cos(0) == 1.0 and cos(10) == pytest.approx(0.1) and cos(5) == pytest.approx(0.55)
    assert cos(50) == pytest.approx(0.1)


def test_more_schedules_by_hand():
    assert ann.schedules.exponential(1.0, 0.5)(3) == pytest.approx(0.125)
    warm = ann.schedules.warmup(ann.schedules.constant(1.0), 4, start_factor=0.2)
    assert [warm(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    with pytest.raises(ValueError, match="warmup: expected steps >= 1"):
        ann.schedules.warmup(ann.schedules.constant(1.0), 0)


def test_piecewise_linear_schedule_by_hand():
    tri = ann.schedules.piecewise_linear(2.0, [(0, 0.2), (4, 1.0), (10, 0.1)])
    assert [tri(t) for t in (-1, 0, 2, 4, 7, 10, 12)] == pytest.approx(
        [0.4, 0.4, 1.2, 2.0, 1.1, 0.2, 0.2])
    for bad in ([], [(0, 1.0), (0, 2.0)], [(0, 1.0), (1, -0.5)], [(0, float("nan"))]):
        with pytest.raises(ValueError, match=r"piecewise_linear: expected \(t, factor\) "
                                             r"points with t finite and increasing"):
            ann.schedules.piecewise_linear(1.0, bad)


def test_lookahead_pulls_toward_the_slow_copy_as_by_hand(xp):
    """Lookahead over two epochs of SGD equals the same steps with the pull written out:
    every 2 steps slow = d slow + (1 - d) w, w = slow, d = 0.5 (t / T)^2; at each epoch's end
    w = slow."""
    def run(lookahead):
        model, loss_fn, tl, _ = setup()
        opt = ann.optim.SGD(model, lr=0.2, momentum=0.9, form="classic")
        if lookahead:
            train.fit(model, loss_fn, opt, tl, epochs=2, progress=False,
                      callbacks=[train.Lookahead(2 * len(tl), every=2, decay=0.5, power=2)])
            return model
        slow = {k: host(v).copy() for k, v in model.params().items()}
        total, step = 2 * len(tl), 0
        for _ in range(2):
            for xb, yb in tl:
                loss_fn.forward(model.forward(xb, train=True), yb)
                model.backward(loss_fn.backward())
                opt.step()
                step += 1
                d = 0.5 * (step / total) ** 2 if step % 2 == 0 else None
                for key, w in model.params().items() if d is not None else ():
                    slow[key] = d * slow[key] + (1 - d) * host(w)
                    w[...] = ann.backend.asarray_like(slow[key], w)
            for key, w in model.params().items():
                w[...] = ann.backend.asarray_like(slow[key], w)
        return model
    pulled, by_hand = run(True), run(False)
    for key, value in pulled.params().items():
        np.testing.assert_allclose(host(value), host(by_hand.params()[key]), rtol=1e-5,
                                   atol=1e-6)
    plain_model, loss_fn, tl, _ = setup()
    train.fit(plain_model, loss_fn, ann.optim.SGD(plain_model, lr=0.2, momentum=0.9,
                                                  form="classic"), tl, epochs=2, progress=False)
    assert not np.allclose(host(plain_model.params()["dense1.W"]),
                           host(pulled.params()["dense1.W"]), atol=1e-4)
    with pytest.raises(ValueError, match=r"Lookahead: expected total_steps >= 1, every >= 1 "
                                         r"\(ints\), 0 <= decay <= 1 and power >= 0, got "
                                         r"total_steps=0"):
        train.Lookahead(0)


def test_reduce_on_plateau_lowers_the_rate_after_patience():
    model, loss_fn, tl, vl = setup()
    opt = ann.optim.SGD(model, lr=1.0)

    class Flat(train.Callback):  # a validation loss that never improves after the first
        def on_validation_end(self, state):
            state.last["val_loss"] = 1.0

    reducer = train.ReduceOnPlateau(factor=0.5, patience=2, min_lr=0.2)
    h = train.fit(model, loss_fn, opt, tl, epochs=7, val_loader=vl, progress=False,
                  callbacks=[Flat(), reducer])
    per_epoch = [h.iterations[i * len(tl)]["lr"] for i in range(7)]
    assert per_epoch == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    assert opt.lr == pytest.approx(0.2)  # floored at min_lr after the last reduction


class Scripted(train.Callback):
    """Replaces each validation's ``val_loss`` by the next of ``values``."""

    def __init__(self, values):
        self.values = list(values)

    def on_validation_end(self, state):
        state.last["val_loss"] = self.values.pop(0)


def test_callbacks_start_afresh_when_reused_in_a_second_fit():
    stopper = train.EarlyStopping(patience=5)
    reducer = train.ReduceOnPlateau(factor=0.5, patience=3)
    model_a, loss_fn, tl, vl = setup()
    train.fit(model_a, loss_fn, ann.optim.SGD(model_a, lr=0.1), tl, epochs=3, val_loader=vl,
              callbacks=[Scripted([0.1, 0.2, 0.3]), stopper, reducer], progress=False)
    assert stopper.best == 0.1 and stopper.tracker.waited == 2
    model_b, *_ = setup(seed=5)  # a second run (a sweep) reusing both callbacks
    opt = ann.optim.SGD(model_b, lr=0.1)
    h = train.fit(model_b, loss_fn, opt, tl, epochs=4, val_loader=vl,
                  callbacks=[Scripted([5.0, 4.0, 3.0, 2.0]), stopper, reducer], progress=False)
    assert len(h.epochs) == 4 and stopper.best == 2.0 and reducer.tracker.best == 2.0
    assert opt.lr == 0.1  # improving every epoch: never reduced
    assert not np.array_equal(host(model_b.params()["dense1.W"]),
                              host(model_a.params()["dense1.W"]))


def test_early_stopping_restores_the_best_buffers_too(xp):
    _, loss_fn, tl, vl = setup()
    model = ann.Sequential([Dense(2, 16, init="glorot", rng=0), ann.layers.BatchNorm1D(16),
                            Tanh(), Dense(16, 2, init="glorot", rng=1)])
    snapshots = []

    class Worsen(train.Callback):  # makes val_loss rise after the first validation
        def on_validation_end(self, state):
            snapshots.append({k: host(v).copy() for k, v in state.model.buffers().items()})
            state.last["val_loss"] = len(snapshots)

    train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.5), tl, epochs=20, val_loader=vl,
              callbacks=[Worsen(), train.EarlyStopping(patience=2)], progress=False)
    assert len(snapshots) == 3 and snapshots[0]
    for key, value in model.buffers().items():
        np.testing.assert_array_equal(host(value), snapshots[0][key])


@pytest.mark.parametrize("limit", [{"epochs": 2}, {"iterations": 5}])
@pytest.mark.parametrize("n,drop_last", [(10, True), (0, False)])
def test_fit_refuses_a_loader_without_batches(limit, n, drop_last):
    model, loss_fn, _, _ = setup()
    x, y = ann.data.make_circles(10, seed=0)
    loader = DataLoader(x[:n], y[:n], 32, drop_last=drop_last)
    with pytest.raises(ValueError, match=rf"fit: the training loader yields no batches "
                                         rf"\({n} examples, batch_size 32, "
                                         rf"drop_last={drop_last}\)"):
        train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), loader, progress=False, **limit)


@pytest.mark.parametrize("callback", [train.EarlyStopping, train.ReduceOnPlateau])
def test_monitor_errors_name_the_problem(callback):
    model, loss_fn, tl, vl = setup()
    opt = ann.optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match=rf"{callback.__name__}: monitor='val_acc' is not "
                                         r"logged; available: .*'val_accuracy', 'val_loss'"):
        train.fit(model, loss_fn, opt, tl, epochs=2, val_loader=vl, progress=False,
                  callbacks=[callback(monitor="val_acc")])
    for monitor in ("val_loss", "loss"):  # both act only after a validation
        with pytest.raises(ValueError, match=rf"{callback.__name__}: .*'{monitor}'.* no "
                                             r"val_loader"):
            train.fit(model, loss_fn, opt, tl, epochs=2, progress=False,
                      callbacks=[callback(monitor=monitor)])


def test_reduce_on_plateau_never_raises_a_rate_below_its_floor():
    model, loss_fn, tl, vl = setup()
    opt = ann.optim.SGD(model, lr=1e-5)

    class Flat(train.Callback):
        def on_validation_end(self, state):
            state.last["val_loss"] = 1.0

    train.fit(model, loss_fn, opt, tl, epochs=4, val_loader=vl, progress=False,
              callbacks=[Flat(), train.ReduceOnPlateau(factor=0.5, patience=1, min_lr=1e-3)])
    assert opt.lr == 1e-5  # as in PyTorch and Keras: min_lr is a floor, not a target


class _Bar:
    def __init__(self):
        self.closed = False

    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_the_progress_bar_is_closed_when_training_stops_on_an_error(monkeypatch, error):
    bars = []
    monkeypatch.setattr(train, "_progress_bar", lambda total, enabled: bars.append(_Bar()) or bars[-1])

    class Fails(train.Callback):
        def on_iteration_end(self, state):
            if state.step == 3:
                raise error("stop")

    model, loss_fn, tl, vl = setup()
    history = train.History()
    with pytest.raises(error):
        train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, epochs=2, callbacks=[Fails()],
                  history=history)
    assert bars[0].closed and len(history.iterations) == 3  # what was done is kept


def test_epochs_need_a_loader_with_a_length():
    model, loss_fn, tl, vl = setup()

    def batches():
        yield from tl

    with pytest.raises(ValueError, match="fit: epochs= needs a training loader with len"):
        train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), batches(), epochs=1,
                  progress=False)
    h = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), batches(), iterations=3,
                  progress=False)
    assert len(h.iterations) == 3


def test_validation_time_is_left_out_of_the_epoch_time_in_both_modes(monkeypatch):
    model, loss_fn, tl, vl = setup()
    clock = [0.0]

    class FakeTime:  # a clock on which every validation takes 1000 s
        @staticmethod
        def perf_counter():
            clock[0] += 0.001
            return clock[0]

    class Slow:
        def __len__(self):
            return len(vl)

        def __iter__(self):
            clock[0] += 1000.0
            yield from vl

    monkeypatch.setattr(train, "time", FakeTime)
    for kwargs in ({}, {"val_every": len(tl) // 2}):
        h = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.1), tl, epochs=1,
                      val_loader=Slow(), progress=False, **kwargs)
        assert len(h.validations) >= 1 and h.epochs[-1]["seconds"] < 1.0, kwargs


class FixedLoader:
    """The same batches every epoch, with a len(): what fit and evaluate need."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_accuracy_counts_neither_ignored_labels_nor_rows_twice():
    """Labels equal to the loss's ignore_index are left out of the accuracy, and probability
    targets count as their most probable class: what fit logs and evaluate returns."""
    model = ann.Sequential([Dense(2, 3, name="out", rng=0)])
    x = ann.asarray(np.random.default_rng(0).standard_normal((8, 2)), dtype="float32")
    predicted = np.argmax(host(model.forward(x)), axis=1)
    labels = predicted.copy()
    labels[:3] = (predicted[:3] + 1) % 3  # three wrong
    labels[3:5] = -100                    # two ignored, both would be right
    batch = [(x, ann.asarray(labels))]
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    result = train.evaluate(model, loss_fn, FixedLoader(batch))
    assert result.accuracy == 3 / 6       # three right of the six counted
    np.testing.assert_array_equal(result.labels, labels)
    history = train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.0), FixedLoader(batch),
                        epochs=1, progress=False)
    assert history.iterations[0]["accuracy"] == history.epochs[0]["accuracy"] == 3 / 6

    soft = np.eye(3, dtype=np.float32)[labels.clip(0)] * 0.8 + 0.2 / 3  # rows sum to 1
    result = train.evaluate(model, loss_fn, FixedLoader([(x, ann.asarray(soft))]))
    expected = np.mean(predicted == labels.clip(0))
    assert result.accuracy == expected and result.labels.shape == (8,)
