"""The API reference (docs/api: Sphinx's autodoc over every public module) builds from the
docstrings with warnings as errors: a docstring that does not render fails the suite."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_api_reference_builds_without_a_warning(tmp_path):
    pytest.importorskip("sphinx", reason="the test extra installs Sphinx")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q",
                           "-b", "html", str(ROOT / "docs" / "api"), str(tmp_path / "html")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "html" / "index.html").read_text()
    for documented in ("anyarray_nn.weights.save_weights", "anyarray_nn.optim.clip_grad_norm",
                       "anyarray_nn.distributed.DistributedDataParallel",
                       "anyarray_nn.layers.Conv2D", "anyarray_nn.functional.conv2d_forward"):
        assert documented in page, documented
