"""Figures and reports: rendered with Agg into files, checked for size and content."""

import re
import sys

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import train
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU

mpl = pytest.importorskip("matplotlib")  # the optional "plot" extra
from matplotlib import image as mpimg  # noqa: E402

from anyarray_nn import plots  # noqa: E402


def trained(channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (60, channels, 8, 8), dtype=np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int64) + 2 * (x[:, 0, 0, 0] > 127)
    model = ann.Sequential([Conv2D(channels, 4, 3, padding=1, name="conv1", rng=0), ReLU(),
                            MaxPool2D(2), Flatten(), Dense(64, 4, name="fc", rng=1)])
    loader = DataLoader(x, y, 20, seed=0, preprocess=lambda b: b / 255.0)
    val = DataLoader(x, y, 30, shuffle=False, preprocess=lambda b: b / 255.0, train=False)
    history = train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                        loader, epochs=3, val_loader=val, progress=False)
    result = train.evaluate(model, ann.losses.SoftmaxCrossEntropy(), val)
    return model, history, result, x


def check_png(path, fig):
    pixels = mpimg.imread(path)
    width, height = fig.get_size_inches() * fig.dpi
    assert pixels.shape[:2] == (round(height), round(width))
    assert pixels[..., :3].std() > 0.01  # not blank


@pytest.mark.parametrize("channels", [1, 3])
def test_every_figure_renders(xp, tmp_path, channels):
    model, history, result, x = trained(channels)
    cm = ann.metrics.confusion_matrix(result.labels, result.predictions, 4)
    sample = ann.asarray(x[:1] / 255.0, dtype="float32")
    figures = {
        "curves.png": lambda p: plots.learning_curves(history, p),
        "filters.png": lambda p: plots.filters(model, p),
        "wrong.png": lambda p: plots.misclassified(ann.asarray(x), result.labels,
                                                   result.predictions, p, ["a", "b", "c", "d"]),
        "cm.png": lambda p: plots.confusion_matrix(cm, p, ["a", "b", "c", "d"]),
        "maps.png": lambda p: plots.feature_maps(model, sample, "conv1", p),
        "params.png": lambda p: plots.parameter_table(model, p),
    }
    for name, draw in figures.items():
        path = tmp_path / name
        fig = draw(path)
        check_png(path, fig)
        mpl.pyplot.close(fig)


def test_report_links_resolve(tmp_path):
    model, history, result, x = trained(3)
    report = plots.write_report(tmp_path / "report", title="toy", model=model, history=history,
                                test=result, test_images=x, class_names=["a", "b", "c", "d"],
                                summary={"images_per_second": 123.4, "epochs": 3})
    text = report.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 6
    for link in links:
        assert (report.parent / link).is_file(), link
    assert "Test accuracy" in text and "| conv1 | Conv2D | 108 | 4 | 112 |" in text
    assert "precision" in text and "images per second | 123.4" in text


def test_parameter_table_markdown_counts():
    model = ann.networks.mnist_net()
    table = plots.parameter_table_markdown(model)
    assert "| fc | Dense | 7,840 | 10 | 7,850 |" in table and "**14,682**" in table


def test_errors():
    model, history, result, x = trained(1)
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        plots.feature_maps(model, (x[:1] / 255.0).astype(np.float32), "nope")
    with pytest.raises(ValueError, match="expected one input of shape"):
        plots.feature_maps(model, (x[:2] / 255.0).astype(np.float32), "conv1")
    with pytest.raises(ValueError, match="no convolution layer"):
        plots.filters(ann.Sequential([Dense(2, 2)]))
    with pytest.raises(ValueError, match="every prediction is right"):
        plots.misclassified(x[:2], np.array([0, 1]), np.array([0, 1]))


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'anyarray_nn\[plot\]'"):
        plots.confusion_matrix(np.eye(2, dtype=np.int64))
