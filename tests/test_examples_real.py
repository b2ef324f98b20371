"""The MNIST and CIFAR-10 examples on the real data (skipped without ANYARRAY_NN_DATA)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from helpers import REAL_DATA_REASON, real_data_root

DATA = real_data_root()
pytestmark = pytest.mark.skipif(DATA is None, reason=REAL_DATA_REASON)


def summary(output):
    line = next(l for l in output.splitlines() if l.startswith("summary "))
    return json.loads(line[len("summary "):])


def run_on_ranks(module, *args):
    """``python -m module args --workers 2``: the example starts itself on 2 MPI ranks."""
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed")
    import anyarray_nn as ann
    env = {k: v for k, v in os.environ.items() if k not in ann.distributed.LAUNCHER_VARIABLES}
    return subprocess.run([sys.executable, "-m", module, *args, "--workers", "2",
                           "--no-progress"], capture_output=True, text=True, timeout=600,
                          env=env)


def test_mnist_example_learns_from_a_few_thousand_images(tmp_path):
    """Trained on 2 MPI ranks (--workers 2), saved and reported by rank 0."""
    saved = tmp_path / "mnist.h5"
    done = run_on_ranks("anyarray_nn.examples.mnist", "--limit", "5000", "--epochs", "2",
                        "--save", str(saved), "--report", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    result = summary(done.stdout)
    assert result["test_accuracy"] > 0.9  # chance is 0.1; the old default lr 0.05 gave 0.85
    assert result["workers"] == 2 and "batch split over 2 MPI ranks" in done.stdout
    assert done.stdout.count("confusion matrix") == 1 and "precision" in done.stdout
    import anyarray_nn as ann
    assert ann.load_model(saved).num_params() == 14_682
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Test accuracy" in report and len(list((tmp_path / "r").glob("*.png"))) == 6


def test_cifar10_example_learns_from_a_few_thousand_images():
    from anyarray_nn.examples import cifar10
    out = CliRunner().invoke(cifar10.main, ["--network", "baseline", "--limit", "3000",
                                            "--epochs", "2", "--no-progress"])
    assert out.exit_code == 0, out.output
    result = summary(out.output)
    assert result["test_accuracy"] > 0.25  # chance is 0.1
    assert "airplane" in out.output


def test_a_network_with_batch_normalization_trains_on_ranks():
    """The strong network (batch norm and dropout), which the threads of DataParallel
    refuse, trains on 2 ranks."""
    done = run_on_ranks("anyarray_nn.examples.cifar10", "--network", "strong", "--limit",
                        "300", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert summary(done.stdout)["workers"] == 2
