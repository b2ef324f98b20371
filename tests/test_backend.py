"""The backend switch: names, precedence, moving data, clear errors."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import backend as B


def test_numpy_and_strict_are_always_available():
    assert {"numpy", "array_api_strict"} <= set(ann.available_backends())


def test_unknown_backend_lists_available_ones():
    with pytest.raises(ann.BackendError, match=r"unknown backend 'jaxx'.*numpy.*available here: .*numpy"):
        ann.get_backend("jaxx")


def test_missing_library_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` fail like a missing install
    B._cache.pop("cupy", None)
    with pytest.raises(ann.BackendError, match=r"'cupy' is not installed.*anyarray_nn\[cuda12\].*Available backends: numpy"):
        ann.get_backend("cupy")


def test_torch_cuda_without_gpu_is_a_clear_error(torch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ann.BackendError, match="needs a CUDA GPU"):
        ann.get_backend("torch:cuda")


def test_device_suffix_only_for_device_backends():
    with pytest.raises(ann.BackendError, match="takes no device"):
        ann.get_backend("numpy:1")


def test_using_nests_and_restores():
    ann.set_backend("numpy")
    with ann.using("array_api_strict"):
        assert ann.current_backend().name == "array_api_strict"
        with ann.using("numpy"):
            assert ann.current_backend().name == "numpy"
        assert ann.current_backend().name == "array_api_strict"
    assert ann.current_backend().name == "numpy"


def test_environment_variable_picks_the_default():
    code = "import anyarray_nn as ann; print(ann.current_backend().name)"
    env = dict(os.environ, ANYARRAY_NN_BACKEND="array_api_strict")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "array_api_strict"


def test_set_backend_overrides_environment(monkeypatch):
    monkeypatch.setattr(B, "_default", None)
    monkeypatch.setenv("ANYARRAY_NN_BACKEND", "array_api_strict")
    assert ann.current_backend().name == "array_api_strict"
    ann.set_backend("numpy")
    assert ann.current_backend().name == "numpy"


def test_asarray_moves_between_backends_and_casts(xp, backend_name):
    a = ann.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    assert B.backend_name_of(a) == backend_name
    assert B.dtype_name(a.dtype) == "float32"
    back = ann.asarray(a, backend="numpy")
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(ann.to_host(a), back)


def test_asarray_like_takes_the_backend_and_dtype_of_another_array(xp, backend_name):
    like = ann.asarray(np.zeros(3), dtype="float64")
    host = np.array([1, 2, 3], dtype=np.int32)
    out = B.asarray_like(host, like, copy=True)
    assert B.backend_name_of(out) == backend_name and B.dtype_name(out.dtype) == "float64"
    np.testing.assert_array_equal(ann.to_host(out), [1.0, 2.0, 3.0])


def test_asarray_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="unsupported dtype 'float8'"):
        ann.asarray([1.0], dtype="float8")


def test_mixing_backends_names_both():
    with pytest.raises(ann.BackendMismatchError, match="x is numpy, W is array_api_strict"):
        ann.functional.dense_forward(np.zeros((2, 3)), ann.asarray(np.zeros((4, 3)), backend="array_api_strict"))


def test_mixing_with_torch_names_both(torch):
    with pytest.raises(ann.BackendMismatchError, match="x is torch, W is numpy"):
        ann.functional.dense_forward(torch.zeros(2, 3, dtype=torch.float64), np.zeros((4, 3)))


def test_non_array_is_rejected():
    with pytest.raises(ann.BackendMismatchError, match="expected an array.*got builtins.list"):
        ann.functional.relu_forward([1.0, -1.0])


def test_synchronize_is_a_noop_on_cpu(xp):
    ann.synchronize()


def test_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setattr(B, "_default", None)
    monkeypatch.setenv("ANYARRAY_NN_BACKEND", "numpyy")
    with pytest.raises(ann.BackendError, match="ANYARRAY_NN_BACKEND='numpyy': unknown backend"):
        ann.current_backend()


def test_asarray_copy_never_shares_memory():
    a = np.zeros(3)
    assert ann.asarray(a, backend="numpy") is a
    b = ann.asarray(a, backend="numpy", copy=True)
    b[0] = 1.0
    assert a[0] == 0.0


@pytest.mark.parametrize("name", ["torch:gpu", "torch:cuda:x", "torch:mps", "torch:cuda:",
                                  "torch:CPU", "torch:cuda:0:1"])
def test_bad_torch_device_is_a_backend_error_naming_the_forms(name):
    before = ann.current_backend()
    with pytest.raises(ann.BackendError, match=re.escape(
            f"unknown device in backend name {name!r}; expected one of torch, torch:cpu, "
            f"torch:cuda, torch:cuda:N (N: a device index).")):
        ann.set_backend(name)
    assert ann.current_backend() is before


def test_bad_cupy_device_is_a_backend_error():
    with pytest.raises(ann.BackendError, match=r"unknown device in backend name 'cupy:x'; "
                                               r"expected one of cupy, cupy:N"):
        ann.get_backend("cupy:x")


def test_torch_cpu_is_the_same_as_torch(torch):
    assert ann.get_backend("torch:cpu").name == "torch"


@pytest.mark.parametrize("view", ["reversed", "flipped", "transposed", "big-endian"])
def test_asarray_takes_any_numpy_layout(xp, backend_name, view):
    base = np.arange(12.0).reshape(3, 4)
    data = {"reversed": base[::-1], "flipped": np.flip(base, axis=1), "transposed": base.T,
            "big-endian": base.astype(">f8")}[view]
    out = ann.asarray(data)
    assert B.backend_name_of(out) == backend_name and B.dtype_name(out.dtype) == "float64"
    np.testing.assert_array_equal(ann.to_host(out), data)
    out32 = ann.asarray(data, dtype="float32")
    np.testing.assert_array_equal(ann.to_host(out32), data.astype(np.float32))


def test_asarray_copies_only_the_views_torch_cannot_take(torch):
    base = np.arange(12.0).reshape(3, 4)
    assert np.shares_memory(ann.to_host(ann.asarray(base[:, ::2], backend="torch")), base)
    assert not np.shares_memory(ann.to_host(ann.asarray(base[::-1], backend="torch")), base)


def test_asarray_keeps_zero_dimensional_arrays(xp):
    assert tuple(ann.asarray(np.array(2.5)).shape) == ()
    assert tuple(ann.asarray(2.5).shape) == ()


@pytest.mark.parametrize("data,dtype", [([[0.1, 0.2], [0.3, 0.4]], "float64"), (0.5, "float64"),
                                        ([1, 2, 3], "int64"), ([True, False], "bool")])
def test_python_data_gets_numpys_dtype_on_every_backend(xp, data, dtype):
    assert B.dtype_name(ann.asarray(data).dtype) == dtype
    assert B.dtype_name(ann.asarray(data, dtype="float32").dtype) == "float32"


BACKENDS_ON_THE_HOST = ["numpy", "torch", "array_api_strict"]


@pytest.mark.parametrize("source", ["torch", "array_api_strict"])  # NumPy arrays: host data
@pytest.mark.parametrize("target", BACKENDS_ON_THE_HOST)
@pytest.mark.parametrize("dtype", [None, "float64", "float32"])
def test_asarray_from_another_backend_never_shares_memory(torch, source, target, dtype):
    if source == target:
        pytest.skip("same backend")
    original = ann.asarray(np.zeros(3), backend=source)
    out = ann.asarray(original, backend=target, dtype=dtype)
    assert B.backend_name_of(out) == target
    out[0] = 7.0
    assert float(original[0]) == 0.0 and float(out[0]) == 7.0


@pytest.mark.parametrize("target", BACKENDS_ON_THE_HOST)
def test_asarray_copy_from_numpy_never_shares_memory(torch, target):
    host = np.zeros(3)
    out = ann.asarray(host, backend=target, copy=True)
    out[0] = 7.0
    assert host[0] == 0.0


def test_asarray_from_numpy_to_torch_shares_memory_as_documented(torch):
    host = np.zeros(3)
    out = ann.asarray(host, backend="torch")
    out[0] = 7.0
    assert host[0] == 7.0


@pytest.mark.parametrize("name", BACKENDS_ON_THE_HOST)
def test_asarray_of_the_same_backend_keeps_the_array(torch, name):
    original = ann.asarray(np.zeros(3), backend=name)
    out = ann.asarray(original, backend=name)
    out[0] = 7.0
    assert float(original[0]) == 7.0
