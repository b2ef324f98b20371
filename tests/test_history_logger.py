"""train.HistoryLogger: the history written as CSV or JSON lines while training runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import train
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import Dense, ReLU


def run(rng, callbacks, epochs=3, history=None, val=True):
    x, y = rng.standard_normal((40, 4)), rng.integers(0, 3, 40)
    model = ann.Sequential([Dense(4, 8, rng=0, dtype="float64"), ReLU(),
                            Dense(8, 3, rng=1, dtype="float64")])
    loader = DataLoader(x, y, 16, seed=0, backend="numpy", dtype="float64")
    val_loader = DataLoader(x, y, 40, shuffle=False, backend="numpy", dtype="float64")
    return ann.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                   loader, epochs=epochs, val_loader=val_loader if val else None,
                   progress=False, callbacks=callbacks, history=history)


def test_csv_rows_are_the_epoch_summaries(tmp_path, rng):
    path = tmp_path / "log.csv"
    history = run(rng, [train.HistoryLogger(path)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row, epoch in zip(rows, history.epochs):
        assert set(row) == set(epoch)
        assert float(row["loss"]) == pytest.approx(epoch["loss"], rel=1e-12)
        assert float(row["val_accuracy"]) == epoch["val_accuracy"]


def test_json_lines_per_step_and_a_resumed_run_appends(tmp_path, rng):
    path = tmp_path / "steps.jsonl"
    history = run(rng, [train.HistoryLogger(path, per="iteration")], epochs=1)
    run(rng, [train.HistoryLogger(path, per="iteration", append=True)], epochs=2,
        history=history)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 10))  # 3 steps an epoch, 3 epochs
    assert rows == [{k: v for k, v in it.items()} for it in history.iterations]


def test_a_new_log_replaces_an_old_one_and_csv_continues_its_header(tmp_path, rng):
    path = tmp_path / "log.csv"
    path.write_text("an old file\n")
    run(rng, [train.HistoryLogger(path)], epochs=1)
    first = path.read_text().splitlines()
    assert first[0].startswith("epoch,") and len(first) == 2
    run(rng, [train.HistoryLogger(path, append=True)], epochs=1, val=False)
    lines = path.read_text().splitlines()
    assert lines[0] == first[0] and len(lines) == 3  # one header; no val_* now: empty cells
    assert lines[2].endswith(",,") or ",," in lines[2]


def test_a_value_a_later_csv_row_adds_is_left_out_and_logged(tmp_path, rng, caplog):
    path = tmp_path / "log.csv"
    logger = train.HistoryLogger(path, per="iteration")
    clip = train.GradientClipping(max_norm=1e9)  # adds grad_norm from the first row on

    class Late(train.Callback):  # adds a value from the second step on
        def on_iteration_end(self, state):
            if state.step >= 2:
                state.history.iterations[-1]["late"] = 1.0
    with caplog.at_level("INFO", logger="anyarray_nn"):
        run(rng, [clip, Late(), logger], epochs=1)
    header = path.read_text().splitlines()[0].split(",")
    assert "grad_norm" in header and "late" not in header
    assert sum("late not in the CSV's columns" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(path="log.txt"), r"expected a path ending in .csv or .jsonl, got 'log.txt'"),
    (dict(path="log.csv", per="batch"), r"per='epoch' or 'iteration', got 'batch'"),
    (dict(path="log.csv", append="yes"), r"append to be True or False"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.HistoryLogger(**kwargs)


def test_an_unwritable_log_stops_training_before_the_first_step(tmp_path, rng):
    with pytest.raises(OSError, match="nowhere"):
        run(rng, [train.HistoryLogger(tmp_path / "nowhere" / "log.csv")])
