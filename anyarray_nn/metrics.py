"""Evaluation metrics for classifiers: accuracy, the confusion matrix, precision and recall.

Metrics are computed on the host. Every function accepts arrays of any backend (NumPy,
CuPy, PyTorch, array-api-strict) or plain lists and moves them with
:func:`anyarray_nn.to_host`, so labels and predictions may even come from different
backends. Labels and predictions are integer class indices ``0 .. C-1``; turn a network's
scores into predictions first with ``model.predict(x)`` (the argmax of each row).

Definitions, for class ``k`` of a confusion matrix ``cm`` (rows: true class, columns:
predicted class)::

    TP_k      = cm[k, k]              correct predictions of class k
    support_k = sum of row k          samples whose true class is k
    predicted = sum of column k       samples predicted as class k
    precision = TP_k / predicted      of the samples called k, the fraction that are k
    recall    = TP_k / support_k      of the samples that are k, the fraction found
    F1        = 2 P R / (P + R)       the harmonic mean of precision and recall

A ratio with a zero denominator is reported as 0, never NaN: a class that is never predicted
has precision 0, a class without samples has recall 0, and F1 is 0 when both are 0.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .backend import to_host

__all__ = ["accuracy", "confusion_matrix", "precision_recall", "format_confusion_matrix",
           "classification_report"]


# --- checking inputs --------------------------------------------------------------------

def _labels_on_host(values: Any, name: str, caller: str) -> np.ndarray:
    """``values`` as a 1-D NumPy integer array, or a ValueError saying what is wrong."""
    host = np.asarray(to_host(values))
    if host.ndim != 1:
        hint = (" (scores of shape (N, C)? use model.predict(x) or argmax(axis=1) first)"
                if host.ndim == 2 else "")
        raise ValueError(f"{caller}: expected {name} to be 1-D class indices, got shape "
                         f"{host.shape}{hint}")
    # an empty list arrives as float64; with no values there is nothing to reject
    if host.size and not np.issubdtype(host.dtype, np.integer):
        raise ValueError(f"{caller}: expected integer class indices in {name}, got dtype "
                         f"{host.dtype}")
    return host.astype(np.int64, copy=False)


def _pair(labels: Any, predicted: Any, caller: str) -> tuple[np.ndarray, np.ndarray]:
    """Both label arrays on the host, checked to be 1-D integers of the same shape."""
    labels = _labels_on_host(labels, "labels", caller)
    predicted = _labels_on_host(predicted, "predicted", caller)
    if labels.shape != predicted.shape:
        raise ValueError(f"{caller}: labels and predicted must have the same shape, got "
                         f"labels {labels.shape} and predicted {predicted.shape}")
    return labels, predicted


def _check_range(values: np.ndarray, name: str, num_classes: int, caller: str) -> None:
    bad = np.unique(values[(values < 0) | (values >= num_classes)])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise ValueError(f"{caller}: expected {name} in [0, {num_classes}) "
                         f"(num_classes={num_classes}), got values outside it: {shown}")


def _confusion_on_host(cm: Any, caller: str) -> np.ndarray:
    cm = np.asarray(to_host(cm))
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"{caller}: expected a square confusion matrix of shape (C, C) with "
                         f"C >= 1, got shape {cm.shape}")
    if not np.issubdtype(cm.dtype, np.integer):
        raise ValueError(f"{caller}: expected integer counts in the confusion matrix, got "
                         f"dtype {cm.dtype}")
    if (cm < 0).any():
        raise ValueError(f"{caller}: expected counts >= 0 in the confusion matrix, got "
                         f"minimum {cm.min()}")
    return cm.astype(np.int64, copy=False)


def _names(class_names: Sequence[Any] | None, num_classes: int, caller: str) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{caller}: expected {num_classes} class names (one per class), got "
                         f"{len(names)}: {names}")
    return names


# --- the metrics ------------------------------------------------------------------------

def accuracy(predicted: Any, labels: Any) -> float:
    """The fraction of samples whose predicted class equals the true class.

    ``predicted`` and ``labels`` are 1-D integer arrays of the same shape (any backend).
    Raises ValueError for a shape mismatch or when there are no samples.
    """
    labels, predicted = _pair(labels, predicted, "accuracy")
    if labels.size == 0:
        raise ValueError("accuracy: expected at least one sample, got 0")
    return float(np.mean(predicted == labels))


def confusion_matrix(labels: Any, predicted: Any, num_classes: int | None = None) -> np.ndarray:
    """Count matrix ``cm`` of shape (C, C): ``cm[i, j]`` samples of true class i predicted as j.

    Rows are true classes and columns predicted classes, so the diagonal holds the correct
    predictions, row sums are each class's support and column sums how often each class was
    predicted. ``num_classes`` defaults to the largest index in either array plus one; pass
    it to include classes that happen not to occur. Returns a NumPy int64 array.

    Raises ValueError when the shapes differ or a value lies outside ``[0, num_classes)``.
    """
    caller = "confusion_matrix"
    labels, predicted = _pair(labels, predicted, caller)
    if num_classes is None:
        if labels.size == 0:
            raise ValueError(f"{caller}: cannot infer num_classes from 0 samples; pass "
                             f"num_classes")
        num_classes = int(max(labels.max(), predicted.max(), 0)) + 1
    elif not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"{caller}: expected num_classes to be a positive int, got "
                         f"{num_classes!r}")
    num_classes = int(num_classes)
    _check_range(labels, "labels", num_classes, caller)
    _check_range(predicted, "predicted", num_classes, caller)
    # each (true, predicted) pair gets its own cell index i*C + j; counting those cell
    # indices fills the whole matrix in one pass
    cells = labels * num_classes + predicted
    counts = np.bincount(cells, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, with 0 where the denominator is 0 (and no warning)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def precision_recall(cm: Any) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix.

    Returns ``{"precision", "recall", "f1"}`` as float64 arrays of shape (C,) and
    ``"support"`` (samples per true class) as int64. A class that is never predicted has
    precision 0 and a class with no samples has recall 0 (the ratio 0/0 is taken as 0, not
    NaN); F1 is 0 when precision and recall are both 0.
    """
    cm = _confusion_on_host(cm, "precision_recall")
    true_positives = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2.0 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1,
            "support": support.astype(np.int64)}


# --- tables -----------------------------------------------------------------------------

def _table(header: Sequence[str], body: Sequence[Sequence[str]],
           foot: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the numbers right-aligned, ruled like
    ``Sequential.summary``."""
    rows = [header, *body, *foot]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, *map(fmt, foot)])


def format_confusion_matrix(cm: Any, class_names: Sequence[Any] | None = None) -> str:
    """The confusion matrix as a text table with row and column totals.

    Rows are true classes, columns predicted classes; the ``total`` column is each class's
    support and the ``total`` row how often each class was predicted. ``class_names`` (one
    per class) label both; by default the class indices do.
    """
    cm = _confusion_on_host(cm, "format_confusion_matrix")
    names = _names(class_names, cm.shape[0], "format_confusion_matrix")
    header = ["true \\ predicted", *names, "total"]
    body = [[name, *(str(v) for v in row), str(row.sum())] for name, row in zip(names, cm)]
    foot = [["total", *(str(v) for v in cm.sum(axis=0)), str(cm.sum())]]
    return _table(header, body, foot)


def classification_report(labels: Any, predicted: Any, class_names: Sequence[Any] | None = None,
                          num_classes: int | None = None) -> str:
    """A text report: per class precision, recall, F1 and support; then accuracy, macro averages.

    ``num_classes`` defaults to ``len(class_names)`` when names are given, otherwise to the
    largest index plus one (as in :func:`confusion_matrix`). The macro average is the plain
    mean over classes, so every class counts the same however many samples it has; classes
    that occur neither in ``labels`` nor in ``predicted`` are left out of it, since they say
    nothing about the classifier. Values are shown with three decimals.
    """
    if num_classes is None and class_names is not None:
        num_classes = len(class_names)
    cm = confusion_matrix(labels, predicted, num_classes)
    names = _names(class_names, cm.shape[0], "classification_report")
    scores = precision_recall(cm)
    support = scores["support"]
    total = int(support.sum())
    if total == 0:
        raise ValueError("classification_report: expected at least one sample, got 0")

    def num(v: float) -> str:
        return f"{v:.3f}"

    header = ["class", "precision", "recall", "f1", "support"]
    body = [[name, num(p), num(r), num(f), str(s)]
            for name, p, r, f, s in zip(names, scores["precision"], scores["recall"],
                                        scores["f1"], support)]
    occurs = (support > 0) | (cm.sum(axis=0) > 0)
    macro = [float(np.mean(scores[key][occurs])) for key in ("precision", "recall", "f1")]
    acc = float(np.trace(cm)) / total
    foot = [["accuracy", "", "", num(acc), str(total)],
            ["macro avg", *(num(v) for v in macro), str(total)]]
    return _table(header, body, foot)
