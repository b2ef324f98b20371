"""anyarray_nn/_allocator.py: freed temporaries are reused, not faulted in again each step."""

import os
import platform
import subprocess
import sys

import pytest

from anyarray_nn import _allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Two arrays and their sum, freed, again and again: a training step's temporaries in small
# (2.8 MB each) or as at large batches (48 MB each: above glibc's largest mmap threshold),
# after one training forward pass (CALL: or what the test puts there). Prints whether
# anyarray_nn tuned malloc and the page faults per round.
ROUNDS = """
import resource, numpy as np
import anyarray_nn as ann
import anyarray_nn._allocator as allocator
assert allocator._decided == []  # importing decided nothing
ann.Sequential([ann.layers.ReLU()]).forward(np.zeros((1, 2), np.float32), train=True)
CALL

def round_():
    a = np.ones(SIZE, np.float32)
    b = np.ones(SIZE, np.float32)
    c = a + b
    del a, b, c

for _ in range(3):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_()
print(bool(allocator._decided and allocator._decided[0]),
      (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def run_rounds(size=700_000, call="", **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("ANYARRAY_NN_TUNE_MALLOC", *_allocator._GLIBC_VARIABLES)}
    code = ROUNDS.replace("SIZE", str(size)).replace("CALL", call)
    done = subprocess.run([sys.executable, "-c", code], env={**environment, **env},
                          capture_output=True, text=True, check=True)
    tuned, faults = done.stdout.split()
    return tuned == "True", float(faults)


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
@pytest.mark.parametrize("size, untuned_at_least", [(700_000, 1000), (12_000_000, 100)],
                         ids=["2.8MB", "48MB"])
def test_asked_for_freed_temporaries_come_back_without_page_faults(size, untuned_at_least):
    """Training asked for it by ANYARRAY_NN_TUNE_MALLOC=1, or ann.tune_malloc() called: the
    freed blocks come back without faults; a training step without either leaves malloc
    alone (an opt-in)."""
    tuned, faults = run_rounds(size, ANYARRAY_NN_TUNE_MALLOC="1")
    called, called_faults = run_rounds(size, call="ann.tune_malloc()")
    untuned, untuned_faults = run_rounds(size)
    refused, _ = run_rounds(size, call="ann.tune_malloc()", ANYARRAY_NN_TUNE_MALLOC="0")
    assert tuned and called and not untuned and not refused
    assert called_faults < 50
    # Untuned, every round maps its three arrays afresh: about 2,000 faults of 4 KB pages
    # for the small ones (fewer for the large ones, whose pages may be 2 MB huge pages).
    assert untuned_faults > untuned_at_least
    assert faults < 50


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
@pytest.mark.parametrize("variable", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                      "MALLOC_MMAP_MAX_"])
def test_the_users_own_glibc_settings_win(variable):
    tuned, _ = run_rounds(call="ann.tune_malloc()", **{variable: str(1 << 20)})
    assert not tuned


def test_nothing_is_tuned_outside_glibc_or_when_turned_off(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert _allocator.tune_malloc() is False
    monkeypatch.undo()
    monkeypatch.setenv("ANYARRAY_NN_TUNE_MALLOC", "0")
    assert _allocator.tune_malloc() is False


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_importing_anyarray_nn_changes_no_malloc_setting():
    # a process that only imports: its freed temporaries are faulted in again, as without us
    code = ROUNDS.replace("ann.Sequential([ann.layers.ReLU()]).forward(", "(lambda *a, **k: 0)(")
    code = code.replace("SIZE", "700_000").replace("CALL", "")
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("ANYARRAY_NN_TUNE_MALLOC", *_allocator._GLIBC_VARIABLES)}
    done = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, check=True)
    decided, faults = done.stdout.split()
    assert decided == "False" and float(faults) > 1000
