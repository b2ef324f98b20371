"""Metrics against confusion matrices and scores worked out by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import metrics
from anyarray_nn.backend import backend_name_of

# --- the worked example: 3 classes, 8 samples --------------------------------------------
#
#   sample     0  1  2  3  4  5  6  7
#   label      0  0  0  1  1  1  2  2
#   predicted  0  1  0  1  1  1  2  0
#
# Counting (true, predicted) pairs: (0,0) twice, (0,1) once, (1,1) three times, (2,2) once,
# (2,0) once. Rows are true classes, columns predicted classes:
#
#              pred 0  pred 1  pred 2 | support
#   true 0        2       1       0   |   3
#   true 1        0       3       0   |   3
#   true 2        1       0       1   |   2
#   predicted     3       4       1      8
#
# precision = diagonal / column sum = 2/3, 3/4, 1/1
# recall    = diagonal / row sum    = 2/3, 3/3, 1/2
# F1 = 2PR/(P+R): class 0: 2/3; class 1: 2(3/4)(1)/(7/4) = 6/7; class 2: 2(1)(1/2)/(3/2) = 2/3
# accuracy = (2 + 3 + 1) / 8 = 0.75
# macro precision = (2/3 + 3/4 + 1) / 3 = 29/36 = 0.8056
# macro recall    = (2/3 + 1 + 1/2) / 3 = 13/18 = 0.7222
# macro F1        = (2/3 + 6/7 + 2/3) / 3 = 46/63 = 0.7302

LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PREDICTED = np.array([0, 1, 0, 1, 1, 1, 2, 0])
CM = np.array([[2, 1, 0],
               [0, 3, 0],
               [1, 0, 1]])
PRECISION = np.array([2 / 3, 3 / 4, 1.0])
RECALL = np.array([2 / 3, 1.0, 1 / 2])
F1 = np.array([2 / 3, 6 / 7, 2 / 3])
NAMES = ["cat", "dog", "bird"]


def test_confusion_matrix_worked_example():
    cm = metrics.confusion_matrix(LABELS, PREDICTED)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_rows_are_true_classes():
    # one sample of class 0 predicted as 1: the count sits in row 0, column 1
    cm = metrics.confusion_matrix([0], [1])
    np.testing.assert_array_equal(cm, [[0, 1], [0, 0]])


def test_accuracy_worked_example():
    assert metrics.accuracy(PREDICTED, LABELS) == 0.75
    assert isinstance(metrics.accuracy(PREDICTED, LABELS), float)


def test_precision_recall_worked_example():
    scores = metrics.precision_recall(CM)
    assert set(scores) == {"precision", "recall", "f1", "support"}
    np.testing.assert_allclose(scores["precision"], PRECISION)
    np.testing.assert_allclose(scores["recall"], RECALL)
    np.testing.assert_allclose(scores["f1"], F1)
    np.testing.assert_array_equal(scores["support"], [3, 3, 2])
    assert scores["support"].dtype == np.int64


def test_class_never_predicted_has_precision_zero():
    # label      0 0 1 1 2 2
    # predicted  0 0 1 0 1 1      class 2 is never predicted
    # cm = [[2, 0, 0],            precision = 2/3, 1/3, 0/0 -> 0
    #       [1, 1, 0],            recall    = 2/2, 1/2, 0/2 = 0
    #       [0, 2, 0]]            F1 = 2(2/3)(1)/(5/3) = 4/5, 2(1/3)(1/2)/(5/6) = 2/5, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 must not warn
        cm = metrics.confusion_matrix([0, 0, 1, 1, 2, 2], [0, 0, 1, 0, 1, 1])
        scores = metrics.precision_recall(cm)
    np.testing.assert_array_equal(cm, [[2, 0, 0], [1, 1, 0], [0, 2, 0]])
    np.testing.assert_allclose(scores["precision"], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(scores["recall"], [1.0, 1 / 2, 0.0])
    np.testing.assert_allclose(scores["f1"], [4 / 5, 2 / 5, 0.0])


def test_empty_class_has_recall_zero():
    # label      0 0 1 1
    # predicted  0 2 1 1          class 2 has no samples but is predicted once
    # cm = [[1, 0, 1],            precision = 1/1, 2/2, 0/1 = 0
    #       [0, 2, 0],            recall    = 1/2, 2/2, 0/0 -> 0
    #       [0, 0, 0]]            F1 = 2(1)(1/2)/(3/2) = 2/3, 1, 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm = metrics.confusion_matrix([0, 0, 1, 1], [0, 2, 1, 1], num_classes=3)
        scores = metrics.precision_recall(cm)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(scores["precision"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(scores["recall"], [1 / 2, 1.0, 0.0])
    np.testing.assert_allclose(scores["f1"], [2 / 3, 1.0, 0.0])
    np.testing.assert_array_equal(scores["support"], [2, 2, 0])
    assert not any(np.isnan(v).any() for v in scores.values())


def test_num_classes_adds_unseen_classes():
    cm = metrics.confusion_matrix(LABELS, PREDICTED, num_classes=5)
    assert cm.shape == (5, 5)
    np.testing.assert_array_equal(cm[:3, :3], CM)
    assert cm[3:].sum() == 0 and cm[:, 3:].sum() == 0


def test_default_num_classes_covers_predictions_too():
    # the largest index is a prediction, not a label
    cm = metrics.confusion_matrix([0, 1], [0, 3])
    assert cm.shape == (4, 4) and cm[1, 3] == 1


def test_all_empty_confusion_matrix_scores_zero():
    scores = metrics.precision_recall(np.zeros((2, 2), dtype=np.int64))
    for key in ("precision", "recall", "f1"):
        np.testing.assert_array_equal(scores[key], [0.0, 0.0])


# --- any backend -------------------------------------------------------------------------

def test_metrics_accept_arrays_of_every_backend(xp):
    labels, predicted = ann.asarray(LABELS), ann.asarray(PREDICTED)
    assert backend_name_of(labels) == ann.current_backend().name  # really on that backend
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, predicted), CM)
    assert metrics.accuracy(predicted, labels) == 0.75
    scores = metrics.precision_recall(ann.asarray(CM))
    np.testing.assert_allclose(scores["f1"], F1)
    report = metrics.classification_report(labels, predicted, NAMES)
    assert report == metrics.classification_report(LABELS, PREDICTED, NAMES)


def test_labels_and_predictions_may_come_from_different_backends(xp):
    # typical: labels kept on the host, predictions from a model on the device
    np.testing.assert_array_equal(metrics.confusion_matrix(LABELS, ann.asarray(PREDICTED)), CM)


def test_model_predictions_on_torch(torch):
    logits = torch.tensor([[2.0, 0.1], [0.3, 1.0], [0.0, -1.0]], requires_grad=True)
    predicted = torch.argmax(logits, dim=1)
    np.testing.assert_array_equal(metrics.confusion_matrix(torch.tensor([0, 1, 1]), predicted),
                                  [[1, 0], [1, 1]])


# --- errors ------------------------------------------------------------------------------

def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"labels \(3,\) and predicted \(2,\)"):
        metrics.confusion_matrix([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"labels \(3,\) and predicted \(2,\)"):
        metrics.accuracy([0, 1], [0, 1, 2])


def test_labels_out_of_range_name_range_and_values():
    with pytest.raises(ValueError, match=r"labels in \[0, 3\).*got values outside it: 3, 7"):
        metrics.confusion_matrix([0, 3, 7, 7], [0, 1, 2, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"predicted in \[0, 2\).*: 2"):
        metrics.confusion_matrix([0, 1], [0, 2], num_classes=2)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\).*: -1"):
        metrics.confusion_matrix([-1, 1], [0, 1])


def test_non_integer_and_scores_rejected():
    with pytest.raises(ValueError, match="integer class indices in labels, got dtype float64"):
        metrics.confusion_matrix(np.array([0.0, 1.0]), [0, 1])
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*model.predict"):
        metrics.accuracy(np.zeros((2, 3)), [0, 1])


def test_bad_num_classes_and_empty_inputs():
    with pytest.raises(ValueError, match="positive int, got 0"):
        metrics.confusion_matrix([0], [0], num_classes=0)
    with pytest.raises(ValueError, match="pass num_classes"):
        metrics.confusion_matrix([], [])
    np.testing.assert_array_equal(metrics.confusion_matrix([], [], num_classes=2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="at least one sample"):
        metrics.accuracy([], [])


def test_bad_confusion_matrix_and_class_names():
    with pytest.raises(ValueError, match=r"square.*got shape \(2, 3\)"):
        metrics.precision_recall(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="integer counts"):
        metrics.precision_recall(np.eye(2))
    with pytest.raises(ValueError, match=r"expected 3 class names \(one per class\), got 2"):
        metrics.format_confusion_matrix(CM, ["cat", "dog"])
    with pytest.raises(ValueError, match="classification_report: expected 3 class names"):
        metrics.classification_report(LABELS, PREDICTED, ["cat", "dog"], num_classes=3)


# --- the text tables ---------------------------------------------------------------------

def test_format_confusion_matrix_worked_example():
    text = metrics.format_confusion_matrix(CM, NAMES)
    assert text == "\n".join([
        "true \\ predicted  cat  dog  bird  total",
        "---------------------------------------",
        "cat                 2    1     0      3",
        "dog                 0    3     0      3",
        "bird                1    0     1      2",
        "---------------------------------------",
        "total               3    4     1      8",
    ])


def test_format_confusion_matrix_default_names():
    lines = metrics.format_confusion_matrix(CM).splitlines()
    assert lines[0].split() == ["true", "\\", "predicted", "0", "1", "2", "total"]
    assert lines[4].split() == ["2", "1", "0", "1", "2"]


def test_classification_report_worked_example():
    text = metrics.classification_report(LABELS, PREDICTED, NAMES)
    assert text == "\n".join([
        "class      precision  recall     f1  support",
        "--------------------------------------------",
        "cat            0.667   0.667  0.667        3",
        "dog            0.750   1.000  0.857        3",
        "bird           1.000   0.500  0.667        2",
        "--------------------------------------------",
        "accuracy                      0.750        8",
        "macro avg      0.806   0.722  0.730        8",
    ])


def test_classification_report_empty_and_absent_classes():
    # class 2 (no samples, predicted once) counts in the macro average:
    #   precision (1 + 1 + 0)/3 = 0.667, recall (1/2 + 1 + 0)/3 = 0.500, F1 (2/3 + 1 + 0)/3 = 0.556
    # class 3 occurs nowhere and is left out of it
    lines = metrics.classification_report([0, 0, 1, 1], [0, 2, 1, 1], num_classes=4).splitlines()
    assert lines[4].split() == ["2", "0.000", "0.000", "0.000", "0"]
    assert lines[5].split() == ["3", "0.000", "0.000", "0.000", "0"]
    assert lines[7].split() == ["accuracy", "0.750", "4"]
    assert lines[8].split() == ["macro", "avg", "0.667", "0.500", "0.556", "4"]
