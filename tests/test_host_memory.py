"""host_memory: glibc's malloc keeps freed step buffers (or is left alone when asked)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from anyarray_nn import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_thresholds_are_set_on_glibc():
    assert host_memory.keep_freed_memory() is True


def test_the_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setenv(host_memory.ENV_VAR, "0")
    assert host_memory.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_arrays_stay_mapped_after_import():
    """An 8 MiB array freed and allocated again reuses the same mapped memory: resident
    memory does not fall back after the free (it would with glibc's default thresholds)."""
    code = """
import numpy as np, anyarray_nn
def rss():
    return int(open('/proc/self/statm').read().split()[1])
a = np.ones(2 << 20, np.float32); before_free = rss(); del a
print(before_free - rss())
"""
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, host_memory.ENV_VAR: "0"})
    pages = (8 << 20) // 4096
    assert int(kept.stdout) < pages // 4        # the 8 MiB stayed resident
    assert int(off.stdout) > pages * 3 // 4     # the default gave it back
