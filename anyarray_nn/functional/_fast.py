"""The one dispatch point for backend-specific fast paths.

The portable kernels of this package run on every backend and are the reference. On a GPU
through CuPy they are bound by kernel launches rather than arithmetic: im2col from kh*kw
slices, a max-pool backward of k*k masked updates and the like queue dozens of tiny launches
where one would do. For those few places ``_cupy_kernels`` has one CUDA kernel each, tested
equal to the portable code (tests/test_cupy_kernels.py). On the CPU, NumPy runs each of the
max-pool's k*k masked passes as a separate loop over memory; with numba installed (the
``cpu`` extra) ``_numba_kernels`` does the 2x2 max-pool of the course networks in one
compiled loop instead, runs 3x3 convolutions as Winograd convolutions, whose GEMMs are
4x smaller (2.25x for outputs below 4x4), computes a first layer's convolutions (1 to 3 input channels; on one
core up to 16) directly instead of through im2col matrices kh*kw times the size of the image
or dY, sums depthwise convolutions (forward, dX and dW) plane by plane in the cache, and
normalizes batches in one or two passes per channel (tests/test_numba_kernels.py). ``anyarray-bench
--portable`` measures both against the portable code (docs/benchmarks.md).

Every such place asks :func:`cuda_kernels`, :func:`pool_kernels`, :func:`winograd_kernels`,
:func:`direct_kernels`, :func:`depthwise_kernels` or :func:`norm_kernels` and takes the
portable path when it answers None; nothing else in the library knows the fast paths exist.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import warnings
from typing import Any, Iterator

import array_api_compat

from .. import _threads

logger = logging.getLogger("anyarray_nn")
_logged: set[str] = set()  # the fast paths this process has chosen (each logged once)


def _chosen(module: Any, what: str) -> Any:
    """``module``, logging the first time this process takes the fast path ``what``."""
    if module is not None and what not in _logged:
        _logged.add(what)
        logger.info("fast path: %s", what)
    return module


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
    return _chosen(_cupy_kernels if dtype in _cupy_kernels.FLOATS else None,
                   "CuPy's CUDA kernels (im2col, col2im, max-pool, ...)")


def pool_kernels(xp: Any, dtype: Any, window: Any, dilation: Any = (1, 1),
                 ceil_adds_window: bool = False) -> Any | None:
    """The kernels module for max pooling with ``window`` (kernel, stride, padding pairs):
    CuPy's for any undilated window, numba's for NumPy and the 2x2 window it is written for
    when ``ceil_mode`` adds no window past the input (``ceil_adds_window`` False); else None.
    Neither is written for ``dilation`` other than (1, 1)."""
    if tuple(dilation) != (1, 1):
        return None
    fast = cuda_kernels(xp, dtype)
    if fast is not None:
        return fast
    numba_kernels = _numba_kernels(xp, dtype)
    if numba_kernels is None or ceil_adds_window:
        return None
    return _chosen(numba_kernels if window == numba_kernels.WINDOW else None,
                   "NumPy 2x2 max-pooling in numba's compiled loop")


def winograd_kernels(xp: Any, dtype: Any, window: Any, channels: int) -> Any | None:
    """The numba kernels module when a convolution with ``window`` (kernel, stride, dilation
    pairs) runs as a Winograd convolution: NumPy float arrays, the 3x3, stride-1, undilated
    window of those kernels, and enough ``channels`` (the forward pass and dW ask with the
    input channels, dX with the fewer of input and output channels); else None."""
    numba_kernels = _numba_kernels(xp, dtype)
    if numba_kernels is None or window != numba_kernels.WINOGRAD:
        return None
    return _chosen(numba_kernels if channels >= numba_kernels.WINOGRAD_MIN_CHANNELS else None,
                   "NumPy 3x3 convolutions as Winograd convolutions (numba)")


def direct_kernels(xp: Any, dtype: Any, stride: tuple[int, int], channels: int,
                   convolution: tuple[int, int, tuple[int, int]] = (0, 0, (0, 0))
                   ) -> Any | None:
    """The numba kernels module when a convolution with ``stride`` runs as a direct
    convolution: NumPy float arrays, stride 1 and few ``channels`` (the input channels for
    the forward pass and dW, the output channels for dX): at most ``DIRECT_MAX_CHANNELS``,
    or ``DIRECT_MAX_CHANNELS_ONE_CORE`` where a GEMM would get no more cores than the kernel
    (``_threads.one_core``) or where the register tiles apply to the direct
    ``convolution`` (its input planes, output channels and kernel: on one core the tiles
    beat a GEMM on two); else None."""
    numba_kernels = _numba_kernels(xp, dtype)
    if numba_kernels is None or stride != (1, 1):
        return None
    if channels <= numba_kernels.DIRECT_MAX_CHANNELS:
        return _chosen(numba_kernels, "NumPy convolutions of few channels computed directly "
                                      "(numba)")
    if channels > numba_kernels.DIRECT_MAX_CHANNELS_ONE_CORE:
        return None
    tiled = numba_kernels.tiles_apply(*convolution)
    return _chosen(numba_kernels if _threads.one_core() or tiled else None,
                   "NumPy convolutions of up to 16 channels computed directly "
                   + ("(numba, register tiles)" if tiled else "(numba, one core)"))


def depthwise_kernels(xp: Any, dtype: Any, groups: int, in_channels: int) -> Any | None:
    """The numba kernels module when a grouped convolution is depthwise (``groups`` equal to
    its ``in_channels``, any channel multiplier, stride and dilation): NumPy float arrays;
    its forward pass and dX then run :func:`depthwise_convolution`, its dW
    :func:`depthwise_weight_gradient`; else None."""
    numba_kernels = _numba_kernels(xp, dtype)
    return _chosen(numba_kernels if numba_kernels is not None and groups == in_channels
                   else None, "NumPy depthwise convolutions (numba)")


def activation_kernels(xp: Any, dtype: Any, approximate: str) -> Any | None:
    """The numba kernels module for the exact GELU of NumPy float arrays (:func:`gelu`: one
    pass with the C library's erf, where the portable kernel evaluates its own series in
    about 150 NumPy passes); else None. The tanh form stays with NumPy: its vectorized tanh
    beat a compiled loop calling the scalar one (1M float32 values: 1.6 against 19 ms)."""
    return _chosen(_numba_kernels(xp, dtype) if approximate == "none" else None,
                   "NumPy's exact GELU in one compiled pass (numba)")


def norm_kernels(xp: Any, dtype: Any) -> Any | None:
    """The numba kernels module for training-mode batch normalization of NumPy float arrays
    (:func:`batchnorm_forward`, :func:`batchnorm_backward`: one or two passes per channel
    instead of NumPy's many); else None."""
    return _chosen(_numba_kernels(xp, dtype), "NumPy batch normalization in numba's passes")


# How many cores a GEMM may use decides between it and a numba kernel, which runs on one:
# while work is split over threads (DataParallel's slices, a grouped convolution's groups)
# each core computes one piece, with one BLAS thread (_threads.one_core).


def has_fast_paths(xp: Any, dtype: Any) -> bool:
    """Whether some fast path may run for arrays of ``xp`` and ``dtype`` (outside a
    :func:`portable_kernels` block)."""
    return cuda_kernels(xp, dtype) is not None or _numba_kernels(xp, dtype) is not None


def _numba_kernels(xp: Any, dtype: Any) -> Any | None:
    if _portable_only.get() or not array_api_compat.is_numpy_namespace(xp):
        return None
    module = _load_numba_kernels()
    return module if module is not None and dtype in module.FLOATS else None


@functools.cache  # the import is tried once; a broken install is reported once
def _load_numba_kernels() -> Any | None:
    try:
        from . import _numba_kernels as module
    except ImportError as exc:
        if getattr(exc, "name", None) != "numba":  # installed but broken: say so
            warnings.warn(f"anyarray_nn: numba is installed but its CPU kernels cannot "
                          f"load ({exc}); using the portable kernels", RuntimeWarning,
                          stacklevel=4)
        return None
    return module


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
