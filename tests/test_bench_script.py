"""bench/hotpath.py runs and reports (speed itself is never asserted)."""

import math
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def hotpath(torch, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.hotpath as module
    return module


def test_conv_case_and_training_step_rows(hotpath, torch):
    layer = hotpath.NETWORKS["mnist"](rng=0)[3]  # conv2: 16->16 5x5, the "rows" lowering
    rows = hotpath.conv_case(layer, 2, 14, 14, repeats=2, torch=torch)
    assert [r["case"].split()[-1] for r in rows] == ["forward", "dX", "dW"]
    assert all(r["ours_ms"] > 0 and r["torch_ms"] > 0 and r["lowering"] == "rows" for r in rows)
    steps = hotpath.train_step_rows([2], repeats=2, torch=torch)
    assert {r["case"] for r in steps} == {f"train_step/{n}" for n in hotpath.NETWORKS}
    env = {"sgemm_gflops": 100.0}
    for row in rows + steps:
        text = hotpath.describe(row, env)
        assert ("GFLOP/s" in text) or ("img/s" in text and "IQR" in text)
        assert math.isfinite(row["ratio"])
