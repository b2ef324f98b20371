"""The backend switch: which array library (and device) new arrays live on.

This is the only module that imports NumPy, CuPy or PyTorch by name for array work on the
device. Kernels find their library from their inputs with :func:`namespace`; layers ask this
module where to create parameters; host transfers, synchronisation and seeding live here.

Backend names::

    "numpy"             NumPy arrays through array_api_compat.numpy.
    "cupy"              CuPy arrays on the current CUDA device (needs a GPU).
    "torch"             PyTorch CPU tensors; "torch:cuda" or "torch:cuda:1" for a GPU.
    "array_api_strict"  the reference implementation of the standard: proves only the
                        standard is used.

The active backend comes from, in order: the innermost :func:`using` block, the last
:func:`set_backend` call, the ``ANYARRAY_NN_BACKEND`` environment variable, ``"numpy"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import threading
from typing import Any, Iterator

import array_api_compat
import numpy as np

ENV_VAR = "ANYARRAY_NN_BACKEND"
BACKEND_NAMES = ("numpy", "cupy", "torch", "array_api_strict")
DTYPES = ("float32", "float64")
DEFAULT_DTYPE = "float32"

_INSTALL_HINTS = {
    "numpy": "pip install numpy",
    "cupy": "pip install 'anyarray_nn[cuda12]' or 'anyarray_nn[cuda13]' (matching your CUDA "
            "driver) on a machine with an NVIDIA GPU",
    "torch": "pip install torch",
    "array_api_strict": "pip install array-api-strict",
}


# The device suffixes a backend accepts: a regular expression and the forms it allows.
_DEVICE_FORMS = {
    "torch": (r"cpu|cuda(:[0-9]+)?", "torch, torch:cpu, torch:cuda, torch:cuda:N"),
    "cupy": (r"[0-9]+", "cupy, cupy:N"),
}


class BackendError(RuntimeError):
    """A backend is unknown, not installed, or cannot run on this machine."""


class BackendMismatchError(TypeError):
    """Arrays from two different backends or devices met in one operation."""


@dataclasses.dataclass(frozen=True)
class Backend:
    """A resolved backend: its name, its array namespace and the device arrays go to."""

    name: str
    xp: Any
    device: Any = None

    def __str__(self) -> str:
        return self.name

    def asarray(self, data: Any, dtype: str | None = None) -> Any:
        """Return ``data`` (host data or an array of any backend) as an array of this backend."""
        return asarray(data, backend=self, dtype=dtype)


class _State(threading.local):
    def __init__(self) -> None:
        self.stack: list[Backend] = []


_state = _State()
_default: Backend | None = None
_cache: dict[str, Backend] = {}


def _split(name: str) -> tuple[str, str | None]:
    base, _, device = name.partition(":")
    return base, (device or None)


def _import_namespace(base: str, device: str | None) -> tuple[Any, Any, str]:
    """Import the library behind ``base``; return (namespace, device, canonical name)."""
    if base == "numpy":
        xp = importlib.import_module("array_api_compat.numpy")
        return xp, None, base
    if base == "array_api_strict":
        xp = importlib.import_module("array_api_strict")
        return xp, None, base
    if base == "torch":
        torch = importlib.import_module("torch")
        xp = importlib.import_module("array_api_compat.torch")
        dev = torch.device(device or "cpu")  # a form of _DEVICE_FORMS: cpu or cuda[:N]
        if dev.type == "cpu":
            return xp, dev, base
        if not torch.cuda.is_available():
            raise BackendError(
                f"backend 'torch:{device}' needs a CUDA GPU, but torch.cuda.is_available() is "
                f"False. Available backends: {', '.join(available_backends())}.")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        return xp, dev, f"torch:{dev}"
    if base == "cupy":
        cupy = importlib.import_module("cupy")
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # the CUDA runtime raises its own error types
            raise BackendError(
                f"backend 'cupy' is installed but has no usable GPU ({exc}). Available "
                f"backends: {', '.join(available_backends())}.") from None
        if count == 0:
            raise BackendError("backend 'cupy' is installed but found no CUDA device. "
                               f"Available backends: {', '.join(available_backends())}.")
        xp = importlib.import_module("array_api_compat.cupy")
        index = int(device or 0)
        return xp, cupy.cuda.Device(index), base if index == 0 else f"cupy:{index}"
    raise AssertionError(base)


def check_backend_name(name: str) -> tuple[str, str | None]:
    """Split a backend name into (library, device suffix or None) without importing anything
    but what the error lists; a misspelt library or device raises :class:`BackendError`."""
    base, device = _split(name)
    if base not in BACKEND_NAMES:
        raise BackendError(
            f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)} "
            f"(available here: {', '.join(available_backends())}).")
    if device is not None:
        if base not in _DEVICE_FORMS:
            raise BackendError(f"backend {base!r} takes no device, got {name!r}.")
        pattern, forms = _DEVICE_FORMS[base]
        if not re.fullmatch(pattern, device):
            raise BackendError(f"unknown device in backend name {name!r}; expected one of "
                               f"{forms} (N: a device index).")
    return base, device


def get_backend(name: str | Backend | None = None) -> Backend:
    """Resolve a backend name (or ``None`` for the active backend) to a :class:`Backend`.

    Raises :class:`BackendError` naming the available backends and what to install when
    the name is unknown, its library is missing, or it cannot run here (CuPy without a GPU).
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        return current()
    if name in _cache:
        return _cache[name]
    base, device = check_backend_name(str(name))
    try:
        xp, dev, canonical = _import_namespace(base, device)
    except ImportError as exc:
        raise BackendError(
            f"backend {base!r} is not installed ({exc}). Install it with: "
            f"{_INSTALL_HINTS[base]}. Available backends: {', '.join(available_backends())}."
        ) from None
    backend = Backend(canonical, xp, dev)
    _cache[str(name)] = backend
    return backend


def available_backends() -> list[str]:
    """Names of the backends that import and can run on this machine."""
    found = []
    for base in BACKEND_NAMES:
        try:
            _import_namespace(base, None)
        except (ImportError, BackendError):
            continue
        found.append(base)
    return found


def current() -> Backend:
    """The active backend (see the module docstring for the order of precedence)."""
    if _state.stack:
        return _state.stack[-1]
    if _default is not None:
        return _default
    name = os.environ.get(ENV_VAR) or "numpy"
    try:
        return get_backend(name)
    except BackendError as exc:
        raise BackendError(f"{ENV_VAR}={name!r}: {exc}") from None


def set_backend(name: str | Backend) -> Backend:
    """Make ``name`` the active backend for new parameters and data; returns it."""
    global _default
    _default = get_backend(name)
    return _default


@contextlib.contextmanager
def using(name: str | Backend) -> Iterator[Backend]:
    """Context manager: ``with using("torch"): ...`` makes a backend active inside the block."""
    backend = get_backend(name)
    _state.stack.append(backend)
    try:
        yield backend
    finally:
        _state.stack.pop()


# --- identifying arrays -----------------------------------------------------------------

def _is_strict(x: Any) -> bool:
    return type(x).__module__.startswith("array_api_strict")


def backend_name_of(x: Any) -> str:
    """The backend name of an array, with its device where that matters (``"torch:cuda:0"``)."""
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_cupy_array(x):
        return "cupy" if x.device.id == 0 else f"cupy:{x.device.id}"
    if array_api_compat.is_torch_array(x):
        return "torch" if x.device.type == "cpu" else f"torch:{x.device}"
    if _is_strict(x):
        return "array_api_strict"
    raise BackendMismatchError(
        f"expected an array of one of the backends {', '.join(BACKEND_NAMES)}, "
        f"got {type(x).__module__}.{type(x).__name__}")


def on_gpu(name: str) -> bool:
    """Whether a backend name (``backend_name_of`` output, or a benchmark target such as
    ``"pytorch:cuda"``) runs on a GPU."""
    return name.startswith("cupy") or ":cuda" in name


def namespace(*arrays: Any, names: tuple[str, ...] | None = None) -> Any:
    """The array namespace shared by ``arrays`` (``None`` entries are ignored).

    Every kernel starts here. Arrays from two backends or devices raise
    :class:`BackendMismatchError` naming both (``names`` labels the arguments in the message).
    """
    present = [(i, a) for i, a in enumerate(arrays) if a is not None]
    if present and all(type(a) is np.ndarray for _, a in present):
        return _numpy_namespace()  # the common case, without array_api_compat's full search
    kinds = [backend_name_of(a) for _, a in present]
    if len(set(kinds)) > 1:
        labels = [names[i] if names else f"argument {i}" for i, _ in present]
        parts = ", ".join(f"{lab} is {kind}" for lab, kind in zip(labels, kinds))
        raise BackendMismatchError(
            f"arrays from different backends cannot be mixed: {parts}. Move them to one "
            f"backend first (anyarray_nn.asarray(x, backend=...) or model.to(...); a "
            f"DataLoader brings its batches to the backend named by its backend=...).")
    return array_api_compat.array_namespace(*(a for _, a in present))


# --- moving data ------------------------------------------------------------------------

def to_host(x: Any) -> np.ndarray:
    """An array of any backend as a NumPy array on the host (synchronises a GPU).

    Device arrays are copied; host memory (NumPy, CPU tensors, array-api-strict) may be
    shared, so copy the result before writing into it.
    """
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):
        return x.get()
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)  # array-api-strict arrays and host data


def asarray(data: Any, backend: str | Backend | None = None, dtype: str | None = None,
            copy: bool = False) -> Any:
    """Return ``data`` as an array of ``backend`` (default: the active one), optionally cast.

    ``data`` may be host data (Python numbers and lists, NumPy arrays) or an array of any
    backend. Python numbers and lists get NumPy's dtypes on every backend (float64 for
    floats, int64 for ints). ``dtype`` is a name such as ``"float32"`` and casts the result.

    Whether the result shares memory with ``data``:

    * an array of another backend (a PyTorch tensor or an array-api-strict array for the
      ``"numpy"`` backend, an array-api-strict array for ``"torch"``, ...) is copied through
      the host: it never shares memory with the result;
    * a NumPy array is host data: on a CPU backend the result may share its memory, as
      ``np.asarray`` and ``torch.asarray`` do (the ``"numpy"`` backend returns the array
      itself); views that PyTorch or array-api-strict cannot take (negative strides,
      non-native byte order) are copied first;
    * an array of the target backend itself is returned as it is, or cast.

    With ``copy=True`` the result never shares memory with ``data``.
    """
    target = get_backend(backend)
    xp = target.xp
    if not isinstance(data, np.ndarray):
        if not _is_array(data):
            data = np.asarray(data)  # Python data: NumPy's default dtypes on every backend
        elif (source := backend_name_of(data)) != target.name:
            data = to_host(data)
            copy = copy or not on_gpu(source)  # to_host shares host memory: copy it here
    if isinstance(data, np.ndarray):
        data = _plain_host(data, base_name(target.name))
    kwargs = {} if target.device is None else {"device": target.device}
    out = xp.asarray(data, copy=True if copy else None, **kwargs)
    if dtype is not None:
        out = xp.astype(out, resolve_dtype(xp, dtype), copy=False)
    return out


def _plain_host(host: np.ndarray, base: str) -> np.ndarray:
    """``host`` as backend ``base`` can take it, copied only when it has to change: in native
    byte order for every backend; for the others than NumPy also without negative strides,
    and C-contiguous for array-api-strict."""
    if not host.dtype.isnative:
        return host.astype(host.dtype.newbyteorder("="), order="C")
    if base == "numpy":
        return host
    if min(host.strides, default=0) < 0 or (base == "array_api_strict"
                                             and not host.flags.c_contiguous):
        return np.array(host, order="C")
    return host


def asarray_like(data: Any, like: Any, copy: bool = False) -> Any:
    """``data`` as an array of ``like``'s backend, device and dtype (e.g. stored weights put
    where a parameter lives)."""
    return asarray(data, backend=backend_name_of(like), dtype=dtype_name(like.dtype), copy=copy)


def _is_array(x: Any) -> bool:
    return (array_api_compat.is_numpy_array(x) or array_api_compat.is_cupy_array(x)
            or array_api_compat.is_torch_array(x) or _is_strict(x))


def base_name(name: str) -> str:
    """``"torch:cuda"`` -> ``"torch"``."""
    return _split(name)[0]


def resolve_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype object of namespace ``xp`` for a name (``"float32"``) or a dtype object."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return getattr(xp, dtype)
    return dtype


def dtype_name(dtype: Any) -> str:
    """The standard name of a dtype object of any backend (``"float32"``)."""
    # Keyed by type first, so the cache never compares dtypes of two libraries (array-api-
    # strict warns when its dtypes meet NumPy's).
    return _dtype_name(type(dtype), dtype)  # type: ignore[arg-type]  # types hash


@functools.lru_cache(maxsize=64)
def _dtype_name(kind: Any, dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]


@functools.cache
def _numpy_namespace() -> Any:
    import array_api_compat.numpy as xp
    return xp


def synchronize(backend: str | Backend | None = None) -> None:
    """Wait until all queued work on the backend's device has finished (no-op on the CPU)."""
    b = get_backend(backend)
    if base_name(b.name) == "cupy":
        import cupy
        cupy.cuda.get_current_stream().synchronize()
    elif base_name(b.name) == "torch" and b.device.type == "cuda":
        import torch
        torch.cuda.synchronize(b.device)


# --- seeding ----------------------------------------------------------------------------

_rng = np.random.default_rng(0)


def seed(value: int) -> None:
    """Seed the generator behind parameter initialisation (and every other seeded default).

    Weights are drawn on the host in float64 and then cast and moved, so the same seed gives
    bit-identical initial weights on every backend.
    """
    global _rng
    _rng = np.random.default_rng(value)


def host_rng(rng: np.random.Generator | int | None = None) -> np.random.Generator:
    """A host random generator: ``rng`` itself, a new one seeded with an int, or the global one."""
    if rng is None:
        return _rng
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)
