"""The one dispatch point for backend-specific fast paths.

The portable kernels of this package run on every backend and are the reference. On a GPU
through CuPy they are bound by kernel launches rather than arithmetic: im2col from kh*kw
slices, a max-pool backward of k*k masked updates and the like queue dozens of tiny launches
where one would do. For those few places ``_cupy_kernels`` has one CUDA kernel each, tested
equal to the portable code (tests/test_cupy_kernels.py) and measured by ``anyarray-bench
--portable`` (docs/benchmarks.md).

Every such place asks :func:`cuda_kernels` and takes the portable path when it answers None;
nothing else in the library knows the fast paths exist.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import array_api_compat

# A context variable rather than a global: one thread's portable_kernels() block leaves the
# fast paths of other threads alone.
_portable_only = contextvars.ContextVar("anyarray_nn_portable_only", default=False)


def portable_only() -> bool:
    """Whether a :func:`portable_kernels` block is active here."""
    return _portable_only.get()


def cuda_kernels(xp: Any, dtype: Any) -> Any | None:
    """The CuPy kernels module when ``xp`` is CuPy's namespace, ``dtype`` one the kernels are
    built for and fast paths are on; else None."""
    if _portable_only.get() or not array_api_compat.is_cupy_namespace(xp):
        return None
    from . import _cupy_kernels
    return _cupy_kernels if dtype in _cupy_kernels.FLOATS else None


@contextlib.contextmanager
def portable_kernels() -> Iterator[None]:
    """Run the block with the portable kernels only, on every backend (for comparisons and
    for ruling a fast path out when hunting a bug). It applies to the calling thread (its
    context) only."""
    token = _portable_only.set(True)
    try:
        yield
    finally:
        _portable_only.reset(token)
