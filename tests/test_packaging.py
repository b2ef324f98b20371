"""What the package says about itself: its version on every command, its license file and
its type marker (PEP 561), and the reference extra as a range."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import anyarray_nn as ann
from anyarray_nn.bench import cli as bench_cli
from anyarray_nn.examples import cifar10, circles, mnist

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command, name", [(bench_cli.main, "anyarray-bench"),
                                           (circles.main, "anyarray-circles"),
                                           (mnist.main, "anyarray_nn.examples.mnist"),
                                           (cifar10.main, "anyarray_nn.examples.cifar10")])
def test_every_command_says_its_version(command, name):
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0, result.output
    assert name in result.output and f"version {ann.__version__}" in result.output


def test_a_module_run_with_dash_m_names_itself():
    done = subprocess.run([sys.executable, "-m", "anyarray_nn.examples.mnist", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"python -m anyarray_nn.examples.mnist, version {ann.__version__}"


def test_the_license_file_and_the_type_marker_ship_with_the_package():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "MIT"
    assert config["metadata"]["license_files"].strip() == "LICENSE"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "py.typed" in config["options.package_data"]["anyarray_nn"]
    assert (Path(ann.__file__).parent / "py.typed").is_file()  # in the installed package too


def test_the_reference_extra_is_a_range_not_a_pin():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    reference = config["options.extras_require"]["reference"].strip()
    assert reference.startswith("torch>=") and "<" in reference and "==" not in reference
