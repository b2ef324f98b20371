"""The toy data sets: reproducible, the documented shapes and geometry, and learnable."""

from __future__ import annotations

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import metrics
from anyarray_nn.data import make_circles, make_moons, make_spirals

MAKERS = [make_circles, make_moons, make_spirals]


@pytest.mark.parametrize("make", MAKERS)
def test_shapes_and_dtypes(make):
    x, y = make(101, seed=0)
    assert x.shape == (101, 2) and x.dtype == np.float64
    assert y.shape == (101,) and y.dtype == np.int64
    assert np.isfinite(x).all()


@pytest.mark.parametrize("make", MAKERS)
def test_seeded_determinism(make):
    x1, y1 = make(200, seed=7)
    x2, y2 = make(200, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = make(200, seed=8)
    assert not np.array_equal(x1, x3)
    # a Generator works as the seed, and the global seed drives seed=None
    x4, _ = make(200, seed=np.random.default_rng(7))
    np.testing.assert_array_equal(x1, x4)
    ann.seed(3)
    x5, _ = make(200)
    ann.seed(3)
    x6, _ = make(200)
    np.testing.assert_array_equal(x5, x6)


@pytest.mark.parametrize("make", MAKERS)
def test_shuffled(make):
    # not all of class 0 first: the first half must contain both classes
    _, y = make(200, seed=0)
    assert len(np.unique(y[:100])) > 1


def test_moons_class_balance_and_geometry():
    _, y = make_moons(1001, seed=0)
    np.testing.assert_array_equal(np.bincount(y), [500, 501])
    # without noise, class 0 lies on the upper unit half circle around (0, 0) and class 1 on
    # the lower unit half circle around (1, 0.5)
    x, y = make_moons(400, noise=0.0, seed=0)
    up, down = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.hypot(up[:, 0], up[:, 1]), 1.0)
    np.testing.assert_allclose(np.hypot(down[:, 0] - 1.0, down[:, 1] - 0.5), 1.0)
    assert (up[:, 1] >= 0).all() and (down[:, 1] <= 0.5).all()


@pytest.mark.parametrize("classes,n,sizes", [(3, 1000, [334, 333, 333]), (2, 7, [4, 3]),
                                             (5, 500, [100] * 5)])
def test_spirals_class_balance(classes, n, sizes):
    _, y = make_spirals(n, classes=classes, seed=0)
    np.testing.assert_array_equal(np.bincount(y, minlength=classes), sizes)


def test_spirals_geometry():
    # without noise, the point at radius r on arm k has angle 4 r + 2 pi k / classes, measured
    # as in x = r sin(angle), y = r cos(angle); radii run evenly from 0 to 1 along each arm
    x, y = make_spirals(300, classes=3, noise=0.0, seed=0)
    r = np.hypot(x[:, 0], x[:, 1])
    for k in range(3):
        np.testing.assert_allclose(np.sort(r[y == k]), np.linspace(0.0, 1.0, 100), atol=1e-12)
    outer = r > 0
    expected = 4.0 * r + 2.0 * np.pi * y / 3
    diff = np.angle(np.exp(1j * (np.arctan2(x[:, 0], x[:, 1]) - expected)))
    np.testing.assert_allclose(diff[outer], 0.0, atol=1e-9)


@pytest.mark.parametrize("call,message", [
    (lambda: make_moons(1), r"make_moons: expected n_samples >= 2, got 1"),
    (lambda: make_moons(10.0), r"make_moons: expected n_samples >= 2, got 10.0"),
    (lambda: make_moons(10, noise=-0.1), r"make_moons: expected noise >= 0, got -0.1"),
    (lambda: make_spirals(10, classes=1), r"make_spirals: expected classes >= 2, got 1"),
    (lambda: make_spirals(2, classes=3),
     r"make_spirals: expected n_samples >= classes \(3\) so every arm has a point, got 2"),
    (lambda: make_spirals(10, noise=float("nan")), r"expected noise >= 0, got nan"),
    (lambda: make_circles(10, noise=-0.1), r"make_circles: expected noise >= 0, got -0.1"),
    (lambda: make_circles(10, noise=float("nan")), r"make_circles: expected noise >= 0, got nan"),
    (lambda: make_circles(True), r"make_circles: expected n_samples >= 2, got True"),
])
def test_validation_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("make", [make_circles, make_moons, make_spirals])
def test_numpy_integer_sizes_are_sizes(make):
    x, y = make(np.int64(30), seed=0)
    assert x.shape == (30, 2) and y.shape == (30,)
    np.testing.assert_array_equal(x, make(30, seed=0)[0])


# --- learnable ---------------------------------------------------------------------------

def _train_and_score(make, classes: int, *, hidden: int, epochs: int, lr: float) -> float:
    """Train a 2 -> hidden -> hidden -> classes tanh MLP with Adam (numpy backend) on one
    sample of the data set; return its accuracy on a second, independent sample."""
    x_train, y_train = make(600, seed=0)
    x_test, y_test = make(600, seed=1)
    rng = np.random.default_rng(0)
    with ann.using("numpy"):
        model = ann.Sequential([
            ann.layers.Dense(2, hidden, init="glorot", rng=rng), ann.layers.Tanh(),
            ann.layers.Dense(hidden, hidden, init="glorot", rng=rng), ann.layers.Tanh(),
            ann.layers.Dense(hidden, classes, init="glorot", rng=rng),
        ])
        loss_fn = ann.losses.SoftmaxCrossEntropy()
        opt = ann.optim.Adam(model, lr=lr)
        x, y = ann.asarray(x_train, dtype="float32"), ann.asarray(y_train)
        for _ in range(epochs):
            order = rng.permutation(len(y_train))
            for i in range(0, len(order), 32):
                batch = order[i:i + 32]
                loss_fn.forward(model.forward(x[batch], train=True), y[batch])
                model.backward(loss_fn.backward())
                opt.step()
        predicted = model.predict(ann.asarray(x_test, dtype="float32"))
    return metrics.accuracy(predicted, y_test)


def test_moons_learnable():
    assert _train_and_score(make_moons, 2, hidden=16, epochs=30, lr=0.02) >= 0.95


def test_spirals_learnable():
    assert _train_and_score(make_spirals, 3, hidden=32, epochs=60, lr=0.02) >= 0.90
