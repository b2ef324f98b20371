"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import os

import h5py
import numpy as np

import anyarray_nn as ann


def host(a):
    """Any backend's array (or a torch tensor with grad) as a NumPy array."""
    if hasattr(a, "detach"):
        a = a.detach()
    return ann.to_host(a)


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(host(actual), host(expected), rtol=rtol, atol=atol)


def fast_and_portable(call):
    """``call()`` with the fast paths, then with the portable kernels only."""
    fast = call()
    with ann.functional.portable_kernels():
        portable = call()
    return fast, portable


def away_from_zero(rng, shape, margin=0.05):
    """Standard-normal values with |v| >= margin, so kinks (ReLU at 0) stay out of reach of eps."""
    v = rng.standard_normal(shape)
    return np.where(np.abs(v) < margin, np.sign(v + 1e-12) * margin, v)


class FailsOnNegativeFirstValue(ann.layers.Layer):
    """Identity that raises ValueError when its batch starts with a negative value: lets a
    test make one slice of a DataParallel batch fail."""

    def _forward(self, x, train):
        if float(x[0, ...].reshape(-1)[0]) < 0:
            raise ValueError("first value is negative")
        return x, None

    def _backward(self, dy, cache, input_grad):
        return dy, {}


class ScaledByBuffer(ann.layers.Layer):
    """y = x * s with a buffer s that is not trained (lets a test change a buffer under
    DataParallel)."""

    def __init__(self, features, name=None):
        super().__init__(name)
        self.buffers["s"] = np.ones(features)

    def _forward(self, x, train):
        return x * self.buffers["s"], None

    def _backward(self, dy, cache, input_grad):
        return dy * self.buffers["s"], {}


class _TwoArgumentError(Exception):
    def __init__(self, a, b):  # pickled with one argument, its message: cannot be rebuilt
        super().__init__(f"two arguments {a} {b}")


class FailsWithAnOddError(ann.layers.Layer):
    """Identity that raises an exception pickle cannot rebuild when its batch starts with a
    negative value."""

    def _forward(self, x, train):
        if float(x[0, ...].reshape(-1)[0]) < 0:
            raise _TwoArgumentError(1, 2)
        return x, None

    def _backward(self, dy, cache, input_grad):
        return dy, {}


@contextlib.contextmanager
def edited_checkpoint(path):
    """Change a checkpoint with plain h5py, then accept the change (reseal its digest): how
    tests make files whose HDF5 content is wrong but whose bytes are intact."""
    with h5py.File(path, "a") as f:
        yield f
    ann.checkpoint.reseal_checkpoint(path)


def legacy_copy(source, target, version=1):
    """``source`` as a file without the integrity header (format_version 1): what anyarray_nn
    wrote before the header, and what other tools write."""
    with h5py.File(source, "r") as old, h5py.File(target, "w") as new:
        for key, value in old.attrs.items():
            new.attrs[key] = value
        for name in old:
            old.copy(old[name], new, name=name)
        new.attrs["format_version"] = version
    return target


REAL_DATA_REASON = ("real-data test: set ANYARRAY_NN_DATA to an existing folder holding mnist/ "
                    "and cifar-10/ (see docs/data.md) to run it")


def real_data_root():
    """ANYARRAY_NN_DATA where it names an existing folder, else None: the real-data tests
    skip in a fresh clone without the data (where .ci/run points the variable at
    ../shared/data whether or not it exists)."""
    root = os.environ.get("ANYARRAY_NN_DATA")
    return root if root and os.path.isdir(root) else None
