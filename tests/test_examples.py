"""The first end-to-end result: the circles toy set learned on every backend."""

import numpy as np
from click.testing import CliRunner

from anyarray_nn.data import make_circles
from anyarray_nn.examples import circles


def test_circles_is_seeded_and_balanced():
    x1, y1 = make_circles(200, seed=3)
    x2, y2 = make_circles(200, seed=3)
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (200, 2) and y1.dtype == np.int64 and y1.sum() == 100
    radius = np.hypot(x1[:, 0], x1[:, 1])
    assert radius[y1 == 0].mean() > radius[y1 == 1].mean() + 0.3


def test_circles_mlp_reaches_95_percent(xp, backend_name):
    result = circles.train_circles(backend_name, epochs=30, verbose=False)
    assert result["test_accuracy"] >= 0.95, result


def test_circles_command_line():
    out = CliRunner().invoke(circles.main, ["--backend", "numpy", "--epochs", "20"])
    assert out.exit_code == 0, out.output
    accuracy = float(out.output.strip().split("test accuracy ")[1].split(",")[0])
    assert accuracy >= 0.95
    bad = CliRunner().invoke(circles.main, ["--epochs", "0"])
    assert bad.exit_code == 2
