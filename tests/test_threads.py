"""_threads: one place decides how many threads the library computes on. map_on_cores runs
independent pieces (a grouped convolution's groups) at the same time, one BLAS thread each,
in the caller's context, and never inside another split; results equal the serial ones."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import _threads
from anyarray_nn import functional as F
from anyarray_nn.functional import _fast
from anyarray_nn.functional import conv as conv_module


@pytest.fixture
def several_cores(monkeypatch):
    monkeypatch.setattr(_threads, "_single_threaded_process", lambda: False)


def blas_limits():
    """The threads of the BLAS libraries the limit knows (those loaded when first used)."""
    with _threads.one_blas_thread:
        pass
    return [info["num_threads"] for info in _threads.one_blas_thread.controller.info()
            if info["user_api"] == "blas"]


def test_pieces_run_on_the_pool_with_one_blas_thread_and_the_limit_is_restored(several_cores):
    before = blas_limits()
    seen = _threads.map_on_cores(
        lambda item: (item, threading.current_thread().name, _threads.one_core(), blas_limits()),
        range(4))
    assert [item for item, *_ in seen] == [0, 1, 2, 3]  # in order
    assert all(name.startswith("anyarray_nn") for _, name, _, _ in seen)
    assert all(one for _, _, one, _ in seen)
    assert all(set(limits) <= {1} for *_, limits in seen)
    assert blas_limits() == before and not _threads.one_core()


def test_inside_a_split_and_for_one_item_pieces_run_in_order_on_this_thread(several_cores):
    here = threading.current_thread().name
    with _threads.one_thread_each():
        assert _threads.map_on_cores(lambda i: threading.current_thread().name,
                                     range(3)) == [here] * 3
    assert _threads.map_on_cores(lambda i: threading.current_thread().name, [0]) == [here]
    assert _threads.map_on_cores(lambda i: i, []) == []


def test_every_piece_finishes_before_the_first_error_is_raised(several_cores):
    finished = []

    def piece(item):
        if item == 0:
            raise ValueError("piece 0 failed")
        finished.append(item)
        return item

    with pytest.raises(ValueError, match="piece 0 failed"):
        _threads.map_on_cores(piece, range(4))
    assert sorted(finished) == [1, 2, 3]
    assert not _threads.one_core()  # the limit was left on the way out


def test_the_pieces_see_the_callers_portable_kernels_block(several_cores):
    with F.portable_kernels():
        inside = _threads.map_on_cores(lambda i: _fast.portable_only(), range(3))
    assert inside == [True] * 3
    assert _threads.map_on_cores(lambda i: _fast.portable_only(), range(3)) == [False] * 3


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 2e-6)])
def test_grouped_convolutions_run_their_groups_on_the_cores_and_equal_the_serial_result(
        several_cores, monkeypatch, rng, dtype, rtol):
    x = rng.standard_normal((2, 32, 7, 6)).astype(dtype)
    w, b = rng.standard_normal((16, 8, 3, 3)).astype(dtype), rng.standard_normal(16).astype(dtype)
    dy = rng.standard_normal((2, 16, 7, 6)).astype(dtype)
    kwargs = dict(padding=1, groups=4)

    def run():
        return (F.conv2d_forward(x, w, b, **kwargs), *F.conv2d_backward(x, w, dy, **kwargs),
                conv_module._grouped_dx(np, dy, w, (7, 6), (1,) * 4, (1, 1), (1, 1), 4))

    serial = run()  # 2 * 7 * 6 * 16 * 8 * 9 multiply-adds: below the threshold, in order
    counts, names = [], set()
    real = _threads.map_on_cores

    def recorded(function, items):
        counts.append(len(items))
        return real(lambda item: names.add(threading.current_thread().name) or function(item),
                    items)

    monkeypatch.setattr(conv_module, "_THREADED_GROUP_MACS", 0)
    monkeypatch.setattr(conv_module, "map_on_cores", recorded)
    threaded = run()
    assert counts == [4, 4, 4]  # forward, backward, dX alone
    assert names and all(name.startswith("anyarray_nn") for name in names)
    for what, a, e in zip(("y", "dx", "dW", "db", "dX alone"), threaded, serial):
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * float(np.abs(e).max()),
                                   err_msg=what)


def test_other_backends_and_small_convolutions_keep_the_groups_in_order(monkeypatch, rng):
    import array_api_strict
    calls = []
    monkeypatch.setattr(conv_module, "map_on_cores", lambda f, items: calls.append(1))
    x, w = rng.standard_normal((1, 16, 5, 5)), rng.standard_normal((16, 8, 3, 3))
    F.conv2d_forward(x, w, padding=1, groups=2)  # 5 * 5 * 16 * 8 * 9 multiply-adds
    monkeypatch.setattr(conv_module, "_THREADED_GROUP_MACS", 0)
    F.conv2d_forward(ann.asarray(x, backend="array_api_strict"),
                     ann.asarray(w, backend="array_api_strict"), padding=1, groups=2)
    assert calls == [] and array_api_strict


@pytest.mark.parametrize("files, expected", [
    ({"/sys/fs/cgroup/cpu.max": "50000 100000\n"}, 1),       # cgroup v2: half a CPU
    ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),      # no quota: the affinity
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "100000\n",     # cgroup v1: 1 CPU
      "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 1),
])
def test_a_container_s_cpu_quota_is_honoured(monkeypatch, files, expected):
    """A fake quota file in place of the kernel's: the process counts the quota's cores (or
    its affinity where there is no quota), as joblib reads them."""
    import builtins
    from joblib.externals.loky.backend import context
    real_open, real_exists = builtins.open, context.os.path.exists
    monkeypatch.setattr(context.os.path, "exists",
                        lambda path: path in files or (not path.startswith("/sys/fs/cgroup")
                                                       and real_exists(path)))
    monkeypatch.setattr(context, "open", lambda path, *a, **k: io.StringIO(files[path])
                        if path in files else real_open(path, *a, **k), raising=False)
    monkeypatch.setattr(_threads, "_share", [])
    _threads._machine_cores.cache_clear()
    try:
        affinity = len(os.sched_getaffinity(0))
        assert _threads.cpu_count() == (expected if expected is not None else affinity)
    finally:
        _threads._machine_cores.cache_clear()
