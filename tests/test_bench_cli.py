"""anyarray-bench through click's CliRunner and a real subprocess. Timings are never asserted."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from anyarray_nn import distributed
from anyarray_nn.bench import cases as C
from anyarray_nn.bench import cli, harness, report

C_ALL = C.all_cases()

SMALL = ["-s", "dense", "-c", "dense/mnist.fc/*", "-n", "2", "--repeats", "2"]
ROW_KEYS = {"case", "suite", "layer", "piece", "batch", "dtype", "backend", "device", "shape",
            "flops", "repeats", "median_s", "q1_s", "q3_s", "gflops", "images_per_s",
            "reference", "ratio_to_reference", "peak_fraction"}


def invoke(*args):
    return CliRunner().invoke(cli.main, list(args))


def has_torch():
    return cli._available("torch") is None


def test_list_shows_every_suite():
    out = invoke("list")
    assert out.exit_code == 0, out.output
    for name in ("conv/mnist.conv2/dX", "dense/cifar10_large.fc1/backward",
                 "pool/mnist.maxpool1/forward", "train/cifar10_large/step"):
        assert name in out.output
    assert len(out.output.splitlines()) == len(C.all_cases())


def test_run_prints_a_table_and_writes_the_json_schema(tmp_path):
    path = tmp_path / "run.json"
    out = invoke("-b", "numpy", *SMALL, "--json", str(path))
    assert out.exit_code == 0, out.output
    header = out.stdout.splitlines()[0].split()
    assert header[:4] == ["case", "batch", "backend", "shape"] and "GFLOP/s" in header
    result = json.loads(path.read_text())
    assert result["schema"] == "anyarray-bench/1"
    env = result["environment"]
    assert {"date", "cpu", "cpu_count", "numpy", "python", "thread_pools"} <= set(env)
    assert result["settings"]["batches"] == [2] and result["settings"]["repeats"] == 2
    rows = result["rows"]
    assert {r["case"] for r in rows} == {"dense/mnist.fc/forward", "dense/mnist.fc/backward"}
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert row["batch"] == 2 and row["repeats"] == 2 and row["dtype"] == "float32"
        assert row["q1_s"] <= row["median_s"] <= row["q3_s"]
        assert row["flops"] == (2 if row["piece"] == "forward" else 4) * 2 * 784 * 10
    if has_torch():
        assert {r["backend"] for r in rows} == {"numpy", "pytorch"}
        for row in rows:  # the reference is measured in the same run, its own ratio is 1
            assert row["ratio_to_reference"] > 0
            if row["backend"] == "pytorch":
                assert row["ratio_to_reference"] == 1.0
        assert result["gemm_peak_gflops"]["cpu"] > 0


def test_no_reference_and_float64_and_threads():
    out = invoke("-b", "numpy", *SMALL, "--no-reference", "--dtype", "float64", "--threads", "1")
    assert out.exit_code == 0, out.output
    assert "pytorch" not in out.output and "float64" in out.output


def test_training_step_rows_report_images_per_second_and_memory(tmp_path):
    path = tmp_path / "train.json"
    out = invoke("-b", "numpy", "-c", "train/mnist/step", "-n", "2", "--repeats", "1",
                 "--no-reference", "--json", str(path))
    assert out.exit_code == 0, out.output
    (row,) = json.loads(path.read_text())["rows"]
    assert row["images_per_s"] > 0 and row["peak_memory_mb"] > 0
    assert row["flops"] == C.training_step_flops("mnist", 2)


def test_compare_two_runs(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        assert invoke("-b", "numpy", *SMALL, "--no-reference", "--json", str(path)).exit_code == 0
    out = invoke("compare", str(a), str(b))
    assert out.exit_code == 0, out.output
    assert "speed-up b.json vs a.json" in out.output
    assert "dense/mnist.fc/forward" in out.output and "dense/mnist.fc/backward" in out.output
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"rows": []}))
    bad = invoke("compare", str(a), str(foreign))
    assert bad.exit_code == 2 and "foreign.json: schema: expected 'anyarray-bench/1'" in bad.output


@pytest.mark.parametrize("args,message", [
    (["--batch", "0"], "0 is not in the range x>=1"),
    (["--dtype", "float16"], "'float16' is not one of"),
    (["-s", "attention"], "'attention' is not one of"),
    (["-b", "jaxx"], "unknown backend 'jaxx'"),
    (["-b", "torch:gpu"], "unknown device in backend name 'torch:gpu'"),
    (["-b", "torch:cuda:x"], "expected one of torch, torch:cpu, torch:cuda, torch:cuda:N"),
    (["-b", "numpy:cuda"], "backend 'numpy' takes no device"),
    (["-c", "nothing/*"], "'nothing/*' matches no case"),
    (["--repeats", "-1"], "-1 is not in the range"),
])
def test_bad_options_are_usage_errors(args, message):
    out = invoke(*args)
    assert out.exit_code == 2
    assert message in out.output


def test_a_missing_backend_is_reported_as_skipped(tmp_path, monkeypatch):
    real = cli._available
    monkeypatch.setattr(cli, "_available",
                        lambda name: "not installed here" if name == "cupy" else real(name))
    path = tmp_path / "skip.json"
    out = invoke("-b", "cupy", "-b", "numpy", *SMALL, "--no-reference", "--json", str(path))
    assert out.exit_code == 0, out.output
    assert "skipped cupy: not installed here" in out.output
    result = json.loads(path.read_text())
    assert result["skipped"] == [{"backend": "cupy", "reason": "not installed here"}]
    assert {r["backend"] for r in result["rows"]} == {"numpy"}
    only = invoke("-b", "cupy", *SMALL)
    assert only.exit_code == 0 and "nothing measured" in only.output


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "gflops.png"
    out = invoke("-b", "numpy", *SMALL, "--no-reference", "--plot", str(path))
    assert out.exit_code == 0, out.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = invoke("-b", "numpy", *SMALL, "--no-reference", "--plot", str(tmp_path / "x.png"))
    assert out.exit_code == 1 and "pip install 'anyarray_nn[plot]'" in out.output


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_every_case_builds_and_runs_on_our_kernels(backend):
    """The suite itself is portable: every case runs once at batch 1 (strict: standard only).
    Only the DataParallel and MPI steps are NumPy's alone; the MPI steps run at batch 2 (one
    example per rank at least: at batch 1 they are left out)."""
    for case in C.all_cases():
        batch = 2 if case.piece in C.MPI_STEPS else 1
        call = case.build(backend, batch, "float32")
        if (case.piece in C.PARALLEL_STEPS or case.piece in C.MPI_STEPS) and backend != "numpy":
            assert call is None
        else:
            call()
        if case.piece in C.MPI_STEPS:
            assert case.build(backend, 1, "float32") is None


def test_every_case_builds_the_pytorch_reference(torch):
    for case in C.all_cases():
        case.build("pytorch", 1, "float32")()


def test_real_subprocess():
    cmd = [sys.executable, "-m", "anyarray_nn.bench", "-b", "numpy", "-c", "dense/mnist.fc/forward",
           "-n", "2", "--repeats", "1", "--no-reference"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dense/mnist.fc/forward" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "anyarray_nn.bench", "--batch", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Invalid value for '-n' / '--batch'" in bad.stderr


def test_the_data_parallel_and_mpi_steps_run_on_numpy_only(tmp_path):
    path = tmp_path / "parallel.json"
    out = invoke("-b", "numpy", "-b", "array_api_strict", "-c", "train/mnist/step-*",
                 "-n", "4", "--repeats", "1", "--no-reference", "--json", str(path))
    assert out.exit_code == 0, out.output
    rows = json.loads(path.read_text())["rows"]
    expected = [("train/mnist/step-threads", "numpy")]
    if distributed.mpiexec() is not None:  # the mpi extra: the 2-rank step too
        expected.append(("train/mnist/step-mpi2", "numpy"))
    assert [(r["case"], r["backend"]) for r in rows] == expected
    # the 2-rank step: the sum of the ranks' peaks, more than one process's at half the batch
    assert all(r["peak_memory_mb"] > rows[0]["peak_memory_mb"] / 2 for r in rows[1:])


@pytest.mark.parametrize("repeats,blocks", [(1, 2), (3, 2), (5, 2), (4, 3), (2, 1)])
def test_repeats_is_the_number_of_timed_runs(repeats, blocks):
    calls = []
    times = harness.time_targets({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 repeats, blocks, warmup=1)
    assert len(times["a"]) == len(times["b"]) == repeats
    assert calls.count("a") == repeats + min(blocks, repeats)  # one warm-up call per block


def test_an_odd_repeats_and_quick_with_repeats_are_honoured(tmp_path):
    path = tmp_path / "r.json"
    args = ["-b", "numpy", "-s", "dense", "-c", "dense/mnist.fc/forward", "--no-reference"]
    assert invoke(*args, "-n", "2", "--repeats", "3", "--json", str(path)).exit_code == 0
    assert [r["repeats"] for r in json.loads(path.read_text())["rows"]] == [3]
    assert invoke(*args, "--quick", "--repeats", "5", "--json", str(path)).exit_code == 0
    result = json.loads(path.read_text())
    assert result["settings"]["repeats"] == 5 and [r["repeats"] for r in result["rows"]] == [5]
    assert result["settings"]["batches"] == [16]


@pytest.mark.parametrize("option,name,message", [
    ("--json", "missing/out.json", "does not exist"),
    ("--plot", "missing/out.png", "does not exist"),
    ("--plot", "out.xyz", "expected a file name ending in one of .png"),
])
def test_output_paths_are_checked_before_anything_is_timed(tmp_path, monkeypatch, option, name,
                                                          message):
    monkeypatch.setattr(harness, "run", lambda *a, **k: pytest.fail("timed before the check"))
    out = invoke("-b", "numpy", *SMALL, option, str(tmp_path / name))
    assert out.exit_code == 2 and message in out.output


def test_plot_of_a_run_without_gflops_writes_nothing(tmp_path):
    path = tmp_path / "pool.png"
    out = invoke("-b", "numpy", "-c", "pool/mnist.maxpool2/forward", "-n", "2", "--repeats", "1",
                 "--no-reference", "--plot", str(path))
    assert out.exit_code == 0, out.output
    assert "no row has a GFLOP/s figure" in out.output and not path.exists()


def test_a_case_a_backend_did_not_run_gets_no_bar():
    rows = [{"case": "a", "batch": 16, "backend": "numpy", "gflops": 5.0},
            {"case": "b", "batch": 16, "backend": "numpy", "gflops": 7.0},
            {"case": "b", "batch": 16, "backend": "torch", "gflops": 9.0}]
    assert report.bars(rows, 16, "torch", ["a", "b"]) == [(1, 9.0)]
    assert report.bars(rows, 16, "numpy", ["a", "b"]) == [(0, 5.0), (1, 7.0)]


def test_threads_reach_the_fresh_process_of_the_openblas_figure(monkeypatch):
    seen = {}

    def fake_run(cmd, env, **kwargs):
        seen.update(env)
        return subprocess.CompletedProcess(cmd, 0, stdout="123.0\n")

    monkeypatch.setattr(subprocess, "run", fake_run)
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(p.get("internal_api") == "openblas" for p in threadpoolctl.threadpool_info()):
        pytest.skip("NumPy does not use OpenBLAS here")
    assert harness.openblas_alternative(1)["numpy_sgemm_gflops"] == 123.0
    assert seen["OPENBLAS_NUM_THREADS"] == "1"


def test_small_flop_counts_keep_three_significant_digits():
    assert report.gflop(327_680) == "0.000328"
    assert report.gflop(4.053e9) == "4.053" and report.gflop(None) == "-"
    fc2 = next(line for line in invoke("list").output.splitlines()
               if line.startswith("dense/cifar10_large.fc2/forward"))
    assert "0.000328 GFLOP" in fc2  # 2 x 64 x 256 x 10 FLOPs


def test_each_device_gets_only_its_own_reference(monkeypatch):
    from anyarray_nn.bench import cli, harness
    monkeypatch.setattr(cli, "_available", lambda name: None)  # as on a machine with a GPU
    assert cli._references(["cupy"]) == ([harness.REFERENCE_CUDA], [])
    assert cli._references(["numpy", "torch:cuda"]) == (
        [harness.REFERENCE_CPU, harness.REFERENCE_CUDA], [])
    assert cli._references(["numpy"]) == ([harness.REFERENCE_CPU], [])


def test_portable_twins_run_with_the_fast_paths_off(monkeypatch, tmp_path):
    from anyarray_nn.functional import _fast
    # As if NumPy had fast paths: cuda_kernels answers while fast paths are on.
    monkeypatch.setattr(_fast, "cuda_kernels",
                        lambda xp, dtype: None if _fast.portable_only() else "kernels")
    seen = []
    real = C.OURS["dense"]

    def spy(case, target, batch, dtype):
        call = real(case, target, batch, dtype)
        return lambda: seen.append((target, _fast.portable_only())) or call()
    monkeypatch.setitem(C.OURS, "dense", spy)
    path = tmp_path / "r.json"
    out = invoke("-b", "numpy", "-s", "dense", "-c", "dense/mnist.fc/forward", "-n", "2",
                 "--repeats", "1", "--no-reference", "--portable", "--json", str(path))
    assert out.exit_code == 0, out.output
    rows = json.loads(path.read_text())["rows"]
    assert [r["backend"] for r in rows] == ["numpy", "numpy (portable)"]
    assert {r["device"] for r in rows} == {"cpu"}
    assert set(seen) == {("numpy", False), ("numpy", True)}  # the twin ran portable only
    assert not _fast.portable_only()
    plain = invoke("-b", "numpy", "-s", "dense", "-c", "dense/mnist.fc/forward", "-n", "2",
                   "--repeats", "1", "--no-reference", "--json", str(path))
    assert plain.exit_code == 0 and len(json.loads(path.read_text())["rows"]) == 1


@pytest.mark.parametrize("times, blocks, expected", [
    ([10.1, 10.3, 10.2, 10.0, 10.2, 10.1], 2, []),                        # steady
    ([8.0, 16.0, 8.0, 24.0, 16.0, 8.0], 2, ["wide spread", "quantized times",
                                            "blocks disagree"]),
    ([8.0, 8.0, 8.0, 16.0, 8.0, 8.0], 1, ["quantized times"]),            # a busy scheduler
    ([10.0, 10.1, 10.2, 14.0, 14.1, 14.2], 2, ["wide spread", "blocks disagree"]),
    ([10.0, 10.1, 10.2, 10.9, 11.0, 11.1], 2, []),                        # 8% apart: fine
    ([5.0, 9.0], 2, []),                                                  # too few to judge
])
def test_doubts_spot_spread_quantized_and_jumping_times(times, blocks, expected):
    assert harness.doubts([t / 1e3 for t in times], blocks) == expected


def _result(rows, load=0.1, cores=2):
    return {"rows": rows, "environment": {"load_before": load, "cpu_count": cores},
            "settings": {"dtype": "float32"}, "gemm_peak_gflops": {}}


def _step(network, piece, batch, backend, ratio, doubts=()):
    return {"case": f"train/{network}/{piece}", "suite": "train", "layer": network,
            "piece": piece, "batch": batch, "backend": backend, "images_per_s": 1000.0 * batch,
            "ratio_to_reference": ratio, "doubts": list(doubts)}


def test_the_summary_fits_120_columns_and_marks_doubt():
    rows = [_step(net, piece, b, backend, 1.2, ["reference: quantized times"] if b == 16 else [])
            for net in ("mnist", "cifar10_resnet") for piece in ("step", "step-mpi2")
            for backend in ("numpy", "array_api_strict") for b in (16, 64, 256)]
    rows.append({"case": "conv/mnist.conv2/dW", "suite": "conv", "layer": "mnist.conv2",
                 "piece": "dW", "batch": 64, "backend": "numpy", "ratio_to_reference": 2.0,
                 "doubts": []})
    rows.append({"case": "conv/mnist.conv2/dX", "suite": "conv", "layer": "mnist.conv2",
                 "piece": "dX", "batch": 64, "backend": "numpy", "ratio_to_reference": 0.5,
                 "doubts": []})
    text = report.summary(_result(rows, load=1.9))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert any(line.startswith("cifar10_resnet, mpi2") and "256,000 (1.20)" in line
               and "16,000 (1.20?)" in line for line in lines)
    assert any("conv" in line and "1.00 x PyTorch over 2 rows" in line for line in lines)
    assert "machine was busy" in text and "rows are in doubt" in text
    assert "anyarray-bench -c 'train/cifar10_resnet/step'" in text


def test_a_quiet_run_with_steady_times_has_no_warning():
    text = report.summary(_result([_step("mnist", "step", 64, "numpy", 0.9)], load=0.2))
    assert "WARNING" not in text and "0.90)" in text


def test_the_default_run_prints_the_summary_and_full_the_table(monkeypatch):
    monkeypatch.setattr(C, "all_cases", lambda: [c for c in C_ALL if c.name ==
                                                 "dense/mnist.fc/forward"])
    out = invoke("-b", "numpy", "-n", "2", "--repeats", "2", "--no-reference")
    assert out.exit_code == 0, out.output
    assert "kernels:" in out.stdout and "(every row: --full" in out.stdout
    assert "median ms" not in out.stdout
    full = invoke("-b", "numpy", "-n", "2", "--repeats", "2", "--no-reference", "--full")
    assert "median ms" in full.stdout and "x GEMM" in full.stdout
