"""Figures of what a network learned, and a Markdown report that links them.

Every function takes arrays of any backend (they are moved to the host here), returns the
matplotlib Figure and, given ``path``, saves it as a PNG. The figures are not pyplot's (see
:func:`new_figure`): they need no display and no closing, and they leave the user's backend
and open figures alone. Needs the optional extra ``plot`` (matplotlib); without it, a clear
error says how to install it.
"""

from __future__ import annotations

import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np

from . import backend as _backend
from . import metrics
from .errors import as_int


def new_figure(user: str = "anyarray_nn.plots", **kwargs: Any) -> Any:
    """A matplotlib Figure of its own (``kwargs`` as for ``Figure``, e.g. ``figsize``), or an
    ImportError naming ``user`` and the ``plot`` extra that installs matplotlib.

    The figure is not registered with pyplot: drawing it neither switches matplotlib's
    backend nor touches the user's open figures, it needs no display and no closing (it is
    freed with its last reference), and Jupyter still shows a returned figure.
    """
    try:
        import matplotlib  # noqa: F401  (first: a cached submodule would hide a blocked one)
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{user} needs matplotlib: pip install 'anyarray_nn[plot]'") from None
    return Figure(**kwargs)


def _finish(fig: Any, path: str | pathlib.Path | None) -> Any:
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def _check_count(value: Any, name: str, caller: str) -> None:
    """Raise ValueError naming ``caller`` and ``name`` unless ``value`` is an int >= 1."""
    if as_int(value) is None or value < 1:
        raise ValueError(f"{caller}: expected {name} to be an int >= 1, got {value!r}")


def _image_problem(shape: tuple[int, ...]) -> str | None:
    """Why an array of ``shape`` cannot be drawn as images, or None when it can: (N, C, H, W)
    with C 1 or 3, or (N, H, W) (single-channel)."""
    if len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, 3)):
        return None
    return (f"expected images of shape (N, C, H, W) with C 1 or 3, or (N, H, W), got "
            f"shape {shape}")


def learning_curves(history: Any, path: str | pathlib.Path | None = None) -> Any:
    """Loss (left) and accuracy (right) per iteration (thin) and per epoch (markers), with the
    validation values where the History has them."""
    fig = new_figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = history.series("step", per="iteration")
    per_epoch_steps = history.series("steps")
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        ax.plot(steps, history.series(key, per="iteration"), lw=0.6, alpha=0.5,
                label=f"train {label} (iteration)")
        ax.plot(per_epoch_steps, history.series(key), "o-", label=f"train {label} (epoch)")
        val = [v for v in history.validations if f"val_{key}" in v]
        if val:
            ax.plot([v["step"] for v in val], [v[f"val_{key}"] for v in val], "s-",
                    label=f"validation {label}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_yscale("log")
    return _finish(fig, path)


def _grid(images: np.ndarray, titles: Sequence[str] | None, columns: int, path: Any,
          cell: float = 1.3) -> Any:
    """Images (N, C, H, W) with C in {1, 3} as a grid; each one scaled to [0, 1] by itself."""
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig = new_figure(figsize=(columns * cell, rows * (cell + 0.25)))
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        image = images[i].astype(np.float64)
        image = (image - image.min()) / max(image.max() - image.min(), 1e-12)
        if image.shape[0] == 3:
            ax.imshow(np.transpose(image, (1, 2, 0)))
        else:
            ax.imshow(image[0], cmap="gray")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    return _finish(fig, path)


def filters(model: Any, path: str | pathlib.Path | None = None, layer: str | None = None,
            columns: int = 8) -> Any:
    """The weights of the first convolution (or ``layer``) as an image grid: grayscale for
    one input channel, RGB for three (other counts: the first channel)."""
    _check_count(columns, "columns", "filters")
    conv = model[layer] if layer else next(
        (l for l in model if l.type_name == "Conv2D"), None)
    if conv is None or "W" not in conv.params or conv.params["W"].ndim != 4:
        raise ValueError("filters: the model has no convolution layer"
                         + (f" named {layer!r}" if layer else ""))
    w = _backend.to_host(conv.params["W"])
    if w.shape[1] not in (1, 3):
        w = w[:, :1]
    return _grid(w, [f"{conv.name} #{i}" for i in range(len(w))], columns, path)


def misclassified(images: Any, labels: Any, predictions: Any, path: str | pathlib.Path | None = None,
                  class_names: Sequence[Any] | None = None, count: int = 24,
                  columns: int = 8) -> Any:
    """Up to ``count`` test images the model got wrong, titled "true / predicted".

    ``images`` has shape (N, C, H, W) with C 1 or 3, or (N, H, W); ``labels`` and
    ``predictions`` are 1-D integer class indices, one per image. ``class_names`` (any
    sequence, e.g. a list or a NumPy array) names the class indices that occur. Raises
    ValueError for inputs that do not fit, and when every prediction is right.
    """
    caller = "misclassified"
    _check_count(count, "count", caller)
    _check_count(columns, "columns", caller)
    images = np.asarray(_backend.to_host(images))
    problem = _image_problem(images.shape)
    if problem:
        raise ValueError(f"{caller}: {problem}")
    labels = metrics._labels_on_host(labels, "labels", caller)
    predictions = metrics._labels_on_host(predictions, "predictions", caller)
    if not len(images) == len(labels) == len(predictions):
        raise ValueError(f"{caller}: expected one label and one prediction per image, got "
                         f"{len(images)} images, {len(labels)} labels and {len(predictions)} "
                         f"predictions")
    names = None if class_names is None else [str(n) for n in class_names]
    if names is not None:
        classes = np.concatenate([labels, predictions])
        bad = np.unique(classes[(classes < 0) | (classes >= len(names))])
        if bad.size:
            raise ValueError(f"{caller}: expected class indices in [0, {len(names)}) in labels "
                             f"and predictions, one per name of class_names ({len(names)} "
                             f"names), got {', '.join(str(c) for c in bad[:10])}")
    wrong = np.flatnonzero(labels != predictions)[:count]
    if len(wrong) == 0:
        raise ValueError(f"{caller}: every prediction is right; nothing to show")
    if images.ndim == 3:
        images = images[:, None]
    show = str if names is None else (lambda c: names[c])
    titles = [f"{show(labels[i])} / {show(predictions[i])}" for i in wrong]
    return _grid(images[wrong], titles, columns, path)


def confusion_matrix(cm: Any, path: str | pathlib.Path | None = None,
                     class_names: Sequence[Any] | None = None) -> Any:
    """The confusion matrix (rows: true class, columns: predicted) as an annotated heatmap.

    ``cm`` is a square matrix of counts (:func:`anyarray_nn.metrics.confusion_matrix`);
    ``class_names`` (any sequence, one per class) label the rows and columns.
    """
    cm = metrics._confusion_on_host(cm, "confusion_matrix")
    n = cm.shape[0]
    names = metrics._names(class_names, n, "confusion_matrix")
    fig = new_figure(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax = fig.subplots()
    shown = ax.imshow(cm, cmap="Blues")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    return _finish(fig, path)


def feature_maps(model: Any, x: Any, layer: str, path: str | pathlib.Path | None = None,
                 columns: int = 8) -> Any:
    """The output channels of ``layer`` (a node of the model: a layer's name, or
    ``"<name>:<k>"`` for the k-th call of a shared layer) for one input ``x`` of shape
    (1, C, H, W)."""
    _check_count(columns, "columns", "feature_maps")
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"feature_maps: expected one input of shape (1, C, H, W), got "
                         f"{tuple(x.shape)}")
    try:
        x = model.node_outputs(x, [layer])[layer]
    except KeyError as exc:
        raise KeyError(f"feature_maps: {exc.args[0]}") from None
    maps = _backend.to_host(x)
    if maps.ndim != 4:
        raise ValueError(f"feature_maps: {layer!r} gives shape {maps.shape}, not feature maps")
    return _grid(maps[0][:, None], [f"{layer} #{i}" for i in range(maps.shape[1])], columns, path)


def parameter_table(model: Any, path: str | pathlib.Path | None = None) -> Any:
    """The model's parameter table (model.summary()) as a figure."""
    text = model.summary(print_fn=None)
    lines = text.splitlines()
    fig = new_figure(figsize=(0.085 * max(len(l) for l in lines), 0.22 * len(lines) + 0.3))
    fig.text(0.01, 0.98, text, family="monospace", fontsize=9, va="top")
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def parameter_table_markdown(model: Any) -> str:
    """The parameter table as a Markdown table."""
    rows = ["| layer | type | weights | biases | total |", "| --- | --- | ---: | ---: | ---: |"]
    for layer in model:
        sizes = {k: math.prod(v.shape) for k, v in layer.params.items()}
        biases = sizes.get("b", 0)
        weights = sum(sizes.values()) - biases
        rows.append(f"| {layer.name} | {layer.type_name} | {weights:,} | {biases:,} | "
                    f"{weights + biases:,} |")
    rows.append(f"| **total** | | | | **{model.num_params():,}** |")
    return "\n".join(rows)


def write_report(folder: str | pathlib.Path, *, title: str, model: Any, history: Any,
                 test: Any, test_images: Any, class_names: Sequence[Any] | None = None,
                 summary: dict[str, Any] | None = None, preprocess: Any = None) -> pathlib.Path:
    """Write the figures and a Markdown summary (``report.md``) into ``folder``.

    ``test`` is the result of :func:`anyarray_nn.train.evaluate` on ``test_images`` (in the
    same order; shown as they are). ``preprocess`` (e.g. the Standardize used in training)
    prepares the image whose feature maps are drawn. The summary gives the accuracy,
    per-class precision and recall, the parameter table and the timing from ``summary``,
    and links every figure.

    Models without a convolution get no filters and feature maps. The misclassified images
    are replaced by a note when every prediction is right, or when ``test_images`` are not
    images: (N, C, H, W) with C 1 or 3, or (N, H, W). Every figure is drawn before anything
    is written, and the files are written into a temporary folder first and then moved
    into ``folder``; so on an error (a ValueError naming write_report for bad inputs)
    ``folder`` is left as it was.
    """
    folder = pathlib.Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"write_report: expected folder to be a directory, got the file "
                         f"{folder}")
    try:
        figures, lines = _draw_report(title, model, history, test, test_images, class_names,
                                      summary, preprocess)
    except ValueError as exc:
        raise ValueError(f"write_report: {exc}") from None
    return _write_files(folder, figures, "\n".join(lines))


def _draw_report(title: str, model: Any, history: Any, test: Any, test_images: Any,
                 class_names: Sequence[Any] | None, summary: dict[str, Any] | None,
                 preprocess: Any) -> tuple[dict[str, Any], list[str]]:
    """The figures of :func:`write_report` by file name, and the lines of ``report.md``."""
    names = None if class_names is None else [str(n) for n in class_names]
    cm = metrics.confusion_matrix(test.labels, test.predictions,
                                  None if names is None else len(names))
    report_text = metrics.classification_report(test.labels, test.predictions, names)
    images = np.asarray(_backend.to_host(test_images))
    if np.trace(cm) == cm.sum():
        wrong_note = "Every test image was classified correctly; there is nothing to show."
    elif _image_problem(images.shape):
        wrong_note = (f"The test images have shape {images.shape}; only (N, C, H, W) with C "
                      f"1 or 3 and (N, H, W) are drawn as images.")
    else:
        wrong_note = None
    first_conv = next((l.name for l in model if l.type_name == "Conv2D"), None)
    draw = {"learning_curves.png": lambda: learning_curves(history),
            "confusion_matrix.png": lambda: confusion_matrix(cm, None, names),
            "parameters.png": lambda: parameter_table(model)}
    if wrong_note is None:
        draw["misclassified.png"] = lambda: misclassified(images, test.labels,
                                                          test.predictions, None, names)
    if first_conv:
        sample = _backend.asarray(images[:1], backend=model.backend, dtype=model.dtype)
        if preprocess is not None:
            sample = preprocess(sample)
        draw["filters.png"] = lambda: filters(model)
        draw["feature_maps.png"] = lambda: feature_maps(model, sample, first_conv)
    figures = {file_name: make() for file_name, make in draw.items()}

    lines = [f"# {title}", "", f"Test accuracy: **{test.accuracy:.2%}** "
             f"({len(test.labels):,} images), test loss {test.loss:.4f}."]
    if summary:
        lines += ["", "| | |", "| --- | --- |"]
        lines += [f"| {k.replace('_', ' ')} | {v:.4g} |" if isinstance(v, float) else
                  f"| {k.replace('_', ' ')} | {v} |" for k, v in summary.items()]
    lines += ["", "## Learning curves", "", "![learning curves](learning_curves.png)",
              "", "## Confusion matrix", "", "![confusion matrix](confusion_matrix.png)",
              "", "## Precision and recall", "", "```text", report_text, "```", "",
              "## Misclassified test images (true / predicted)", "",
              wrong_note or "![misclassified](misclassified.png)"]
    if first_conv:
        lines += ["", f"## Filters of {first_conv}", "", "![filters](filters.png)", "",
                  f"## Feature maps of {first_conv} for the first test image", "",
                  "![feature maps](feature_maps.png)"]
    lines += ["", "## Parameters", "", parameter_table_markdown(model), "",
              "![parameter table](parameters.png)", ""]
    return figures, lines


def _write_files(folder: pathlib.Path, figures: dict[str, Any], report: str) -> pathlib.Path:
    """Save ``figures`` (PNGs by file name) and ``report.md`` into a temporary folder next to
    ``folder``, then move them into ``folder``; on an error nothing reaches ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for file_name, fig in figures.items():
            fig.savefig(staging / file_name, dpi=100)
        (staging / "report.md").write_text(report)
        folder.mkdir(exist_ok=True)
        for file_name in [*figures, "report.md"]:
            os.replace(staging / file_name, folder / file_name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "report.md"
