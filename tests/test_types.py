"""The package type-checks: mypy at the level setup.cfg's [mypy] section sets (its default
checks, libraries without type information taken as Any)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mypy_finds_no_type_error(tmp_path):
    pytest.importorskip("mypy", reason="the test extra installs mypy")
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file",
                           str(ROOT / "setup.cfg"), "--cache-dir", str(tmp_path / "cache"),
                           str(ROOT / "anyarray_nn")], capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
