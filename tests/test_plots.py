"""Figures and reports: rendered into files, checked for size and content."""

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
from matplotlib import pyplot as plt  # noqa: E402  (only to see that plots leave it alone)

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
    with pytest.raises(KeyError, match="no node named 'nope'"):
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


# --- checking inputs and writing whole reports -------------------------------------------

def tiny_report_inputs(images_shape, predictions, labels, conv=False):
    """A model, a one-step history and an EvalResult for write_report, without training."""
    rng = np.random.default_rng(0)
    images = rng.random(images_shape)
    if conv:
        model = ann.Sequential([Conv2D(images_shape[1], 2, 3, padding=1, name="conv1", rng=0),
                                ReLU(), MaxPool2D(2), Flatten(),
                                Dense(2 * (images_shape[2] // 2) ** 2, 2, name="fc", rng=1)])
    else:
        model = ann.Sequential([Flatten(), Dense(int(np.prod(images_shape[1:])), 2, name="fc",
                                                 rng=0)])
    history = train.History(
        iterations=[{"step": 1, "epoch": 0, "loss": 0.5, "accuracy": 0.5, "lr": 0.1}],
        epochs=[{"epoch": 1, "loss": 0.5, "accuracy": 0.5, "steps": 1}])
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    test = train.EvalResult(loss=0.5, accuracy=float(np.mean(labels == predictions)),
                            predictions=predictions, labels=labels)
    return dict(title="tiny", model=model, history=history, test=test, test_images=images)


def linked_files(report):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


@pytest.fixture
def no_new_figures():
    """Fails the test when it leaves a matplotlib figure open."""
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before


LABELS = np.array([0, 1, 2, 0, 1, 2])
PREDICTIONS = np.array([0, 2, 2, 1, 1, 2])  # wrong at 1 and 3


def test_misclassified_titles_the_wrong_images_in_order():
    images = np.random.default_rng(0).random((6, 1, 8, 8))
    fig = plots.misclassified(images, LABELS, PREDICTIONS, count=2)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["1 / 2", "0 / 1"]


@pytest.mark.parametrize("labels,predictions,shown", [
    (LABELS[:, None], PREDICTIONS, r"labels to be 1-D class indices, got shape \(6, 1\)"),
    (LABELS, PREDICTIONS[None, :], r"predictions to be 1-D class indices, got shape \(1, 6\)"),
    (LABELS, PREDICTIONS[:5], "got 6 images, 6 labels and 5 predictions"),
    (LABELS[:5], PREDICTIONS[:5], "got 6 images, 5 labels and 5 predictions"),
    (LABELS.astype(np.float64), PREDICTIONS, "integer class indices in labels, got dtype float64"),
])
def test_misclassified_requires_one_label_and_prediction_per_image(labels, predictions, shown,
                                                                   no_new_figures):
    images = np.random.default_rng(0).random((6, 1, 8, 8))
    with pytest.raises(ValueError, match="misclassified: expected .*" + shown):
        plots.misclassified(images, labels, predictions)


@pytest.mark.parametrize("shape", [(6, 64), (6, 2, 8, 8), (6,), (6, 1, 1, 8, 8)])
def test_misclassified_refuses_what_is_not_images(shape, no_new_figures):
    with pytest.raises(ValueError, match=r"misclassified: expected images of shape \(N, C, H, W\) "
                                         r"with C 1 or 3, or \(N, H, W\), got shape "
                                         + re.escape(str(shape))):
        plots.misclassified(np.zeros(shape), LABELS, PREDICTIONS)


def test_misclassified_draws_images_without_a_channel_axis(tmp_path):
    images = np.random.default_rng(0).random((6, 8, 8))
    fig = plots.misclassified(images, LABELS, PREDICTIONS, tmp_path / "wrong.png")
    check_png(tmp_path / "wrong.png", fig)
    drawn = [ax.get_images()[0].get_array() for ax in fig.axes if ax.get_images()]
    assert [a.shape for a in drawn] == [(8, 8), (8, 8)]


@pytest.mark.parametrize("argument,value", [("count", 0), ("count", -1), ("count", 2.0),
                                            ("count", True), ("columns", 0)])
def test_misclassified_checks_count_and_columns(argument, value, no_new_figures):
    images = np.random.default_rng(0).random((6, 1, 8, 8))
    with pytest.raises(ValueError, match=f"misclassified: expected {argument} to be an int >= 1, "
                                         f"got {value!r}"):
        plots.misclassified(images, LABELS, PREDICTIONS, **{argument: value})


def test_grids_check_columns(no_new_figures):
    model = ann.Sequential([Conv2D(1, 2, 3, name="conv1", rng=0)])
    with pytest.raises(ValueError, match="filters: expected columns to be an int >= 1, got 0"):
        plots.filters(model, columns=0)
    with pytest.raises(ValueError, match="feature_maps: expected columns to be an int >= 1, got 0"):
        plots.feature_maps(model, np.zeros((1, 1, 4, 4), np.float32), "conv1", columns=0)


def test_class_names_may_be_a_numpy_array(tmp_path):
    names = np.array(["cat", "dog", "owl"])
    images = np.random.default_rng(0).random((6, 3, 8, 8))
    fig = plots.misclassified(images, LABELS, PREDICTIONS, class_names=names)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["dog / owl", "cat / dog"]
    cm = ann.metrics.confusion_matrix(LABELS, PREDICTIONS, 3)
    fig = plots.confusion_matrix(cm, class_names=names)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["cat", "dog", "owl"]
    inputs = tiny_report_inputs((6, 3, 8, 8), PREDICTIONS, LABELS)
    report = plots.write_report(tmp_path / "r", class_names=names, **inputs)
    assert "owl" in report.read_text() and (tmp_path / "r" / "misclassified.png").is_file()


def test_class_names_must_name_every_class(no_new_figures):
    images = np.random.default_rng(0).random((6, 1, 8, 8))
    with pytest.raises(ValueError, match=r"misclassified: expected class indices in \[0, 2\) in "
                                         r"labels and predictions, one per name of class_names "
                                         r"\(2 names\), got 2"):
        plots.misclassified(images, LABELS, PREDICTIONS, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match=r"confusion_matrix: expected 3 class names \(one per "
                                         r"class\), got 2: \['cat', 'dog'\]"):
        plots.confusion_matrix(np.eye(3, dtype=np.int64), None, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"confusion_matrix: expected a square confusion matrix"):
        plots.confusion_matrix(np.zeros((2, 3), dtype=np.int64))


def test_figures_leave_pyplot_and_its_backend_alone(tmp_path):
    previous = mpl.get_backend()
    mpl.use("pdf")  # a backend of the user's (in Jupyter: the inline one)
    user = plt.figure()
    try:
        fig = plots.confusion_matrix(np.eye(2, dtype=np.int64), tmp_path / "cm.png")
        plots.misclassified(np.zeros((6, 8, 8)), LABELS, PREDICTIONS)
        assert mpl.get_backend() == "pdf" and plt.get_fignums() == [user.number]
        check_png(tmp_path / "cm.png", fig)
        with pytest.raises(FileNotFoundError):  # a failed save leaves nothing open either
            plots.confusion_matrix(np.eye(2, dtype=np.int64), tmp_path / "missing" / "cm.png")
        assert plt.get_fignums() == [user.number]
    finally:
        plt.close(user)
        mpl.use(previous)


def test_report_when_every_prediction_is_right(tmp_path, no_new_figures):
    inputs = tiny_report_inputs((8, 1, 8, 8), [0, 1] * 4, [0, 1] * 4, conv=True)
    report = plots.write_report(tmp_path / "r", class_names=["a", "b"], **inputs)
    text = report.read_text()
    assert "Every test image was classified correctly; there is nothing to show." in text
    assert "misclassified.png" not in text
    files = sorted(p.name for p in report.parent.iterdir())
    assert files == ["confusion_matrix.png", "feature_maps.png", "filters.png",
                     "learning_curves.png", "parameters.png", "report.md"]
    assert sorted(linked_files(report)) == [f for f in files if f.endswith(".png")]


@pytest.mark.parametrize("shape,drawn", [((6, 64), False), ((6, 2), False), ((6, 8, 8), True)])
def test_report_for_a_dense_model(tmp_path, shape, drawn, no_new_figures):
    inputs = tiny_report_inputs(shape, PREDICTIONS, LABELS)
    report = plots.write_report(tmp_path / "r", **inputs)
    text = report.read_text()
    assert ("misclassified.png" in linked_files(report)) == drawn
    assert (report.parent / "misclassified.png").is_file() == drawn
    if not drawn:
        assert f"The test images have shape {shape}; only (N, C, H, W)" in text
    for link in linked_files(report):
        assert (report.parent / link).is_file()
    assert "filters" not in text and "## Parameters" in text


def test_report_with_bad_inputs_writes_nothing(tmp_path, no_new_figures):
    inputs = tiny_report_inputs((5, 1, 8, 8), PREDICTIONS, LABELS)  # 5 images, 6 labels
    with pytest.raises(ValueError, match="write_report: misclassified: expected one label and "
                                         "one prediction per image, got 5 images, 6 labels"):
        plots.write_report(tmp_path / "new", **inputs)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.md").write_text("the last report")
    inputs = tiny_report_inputs((6, 1, 8, 8), PREDICTIONS, LABELS)
    with pytest.raises(ValueError, match=r"write_report: confusion_matrix: expected labels in "
                                         r"\[0, 2\)"):
        plots.write_report(old, class_names=["a", "b"], **inputs)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in old.iterdir()] == ["report.md"]
    assert (old / "report.md").read_text() == "the last report"


def test_report_that_fails_while_writing_leaves_no_files(tmp_path, monkeypatch, no_new_figures):
    inputs = tiny_report_inputs((6, 1, 8, 8), PREDICTIONS, LABELS)

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="No space left"):
        patched.setattr(type(tmp_path), "write_text", disk_full)
        plots.write_report(tmp_path / "r", **inputs)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the temporary one


def test_report_folder_must_not_be_a_file(tmp_path, no_new_figures):
    (tmp_path / "r").write_text("x")
    with pytest.raises(ValueError, match="write_report: expected folder to be a directory"):
        plots.write_report(tmp_path / "r", **tiny_report_inputs((6, 1, 8, 8), PREDICTIONS, LABELS))
    assert (tmp_path / "r").read_text() == "x"
