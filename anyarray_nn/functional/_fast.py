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
from typing import Any, Iterator

import array_api_compat

_portable_only = False


def cuda_kernels(xp: Any, dtype: Any) -> Any | None:
    """The CuPy kernels module when ``xp`` is CuPy's namespace, ``dtype`` one the kernels are
    built for and fast paths are on; else None."""
    if _portable_only or not array_api_compat.is_cupy_namespace(xp):
        return None
    from . import _cupy_kernels
    return _cupy_kernels if dtype in _cupy_kernels.FLOATS else None


@contextlib.contextmanager
def portable_kernels() -> Iterator[None]:
    """Run the block with the portable kernels only, on every backend (for comparisons and
    for ruling a fast path out when hunting a bug). Not thread-safe: it switches a global."""
    global _portable_only
    previous, _portable_only = _portable_only, True
    try:
        yield
    finally:
        _portable_only = previous
