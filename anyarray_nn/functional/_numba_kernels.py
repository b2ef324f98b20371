"""Compiled CPU kernels for NumPy arrays, built with numba (the optional ``cpu`` extra).

NumPy runs an element-wise pass as one loop per call, so a 2x2 max-pool written as four
strided slices costs four comparisons, four masked products and four strided writes, each a
full pass over memory: on one core 2.5 ms for a (32, 32, 32, 32) input, about as long as the
convolution that feeds it. One compiled loop reads each window once and writes its four
gradients at once (0.6 ms; forward 1.2 -> 0.25 ms). ``_fast.pool_kernels`` picks these
kernels only for NumPy float arrays and the window they are written for (2x2, stride 2, no
padding: the pooling of every course network); any other window takes the portable code.

The results equal the portable kernels' (tests/test_numba_kernels.py): the forward maximum
propagates NaN as ``maximum`` does, and the backward sends each window's gradient to its
first arg-max in row-major order. One documented difference: a NaN or infinite dy stays in
the arg-max, where the portable masked products spread NaN over the window.

The loops walk (C, N, H, W) order, which is the memory order of the convolutions' outputs
(channels first, see ``conv``); ``nogil`` lets ``DataParallel`` threads run them at once.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
WINDOW = ((2, 2), (2, 2), (0, 0))  # kernel, stride, padding these kernels are written for


def _compile(function: Any) -> Any:
    """``numba.njit`` with the machine code cached on disk, or kept in memory where the
    package directory and numba's user cache are both read-only."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


@_compile
def _maxpool2x2_forward(x: Any, y: Any) -> None:  # pragma: no cover - compiled
    for c in range(y.shape[0]):
        for n in range(y.shape[1]):
            for a in range(y.shape[2]):
                top, bottom, out = x[c, n, 2 * a], x[c, n, 2 * a + 1], y[c, n, a]
                for b in range(y.shape[3]):
                    best = top[2 * b]
                    for value in (top[2 * b + 1], bottom[2 * b], bottom[2 * b + 1]):
                        # NaN wins, as in maximum(); "|", not "or": no branch to mispredict
                        best = value if (value > best) | (value != value) else best
                    out[b] = best


@_compile
def _maxpool2x2_backward(x: Any, y: Any, dy: Any, dx: Any) -> None:  # pragma: no cover
    for c in range(y.shape[0]):
        for n in range(y.shape[1]):
            for a in range(y.shape[2]):
                top, bottom = x[c, n, 2 * a], x[c, n, 2 * a + 1]
                dtop, dbottom = dx[c, n, 2 * a], dx[c, n, 2 * a + 1]
                best, grad = y[c, n, a], dy[c, n, a]
                for b in range(y.shape[3]):
                    m, g = best[b], grad[b]
                    # The first position in row-major order that holds the maximum. Bitwise
                    # operators, not "and"/"or": the arg-max of random data is unpredictable,
                    # and short-circuit branches made this loop three times slower.
                    first = top[2 * b] == m
                    second = (top[2 * b + 1] == m) & (not first)
                    third = (bottom[2 * b] == m) & (not (first | second))
                    fourth = (bottom[2 * b + 1] == m) & (not (first | second | third))
                    dtop[2 * b] = g if first else 0.0
                    dtop[2 * b + 1] = g if second else 0.0
                    dbottom[2 * b] = g if third else 0.0
                    dbottom[2 * b + 1] = g if fourth else 0.0


def _cnhw(a: Any) -> Any:
    return np.permute_dims(a, (1, 0, 2, 3))


def maxpool2d_forward(x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int], out: tuple[int, int]) -> Any:
    """2x2 max pooling, stride 2, no padding, of NCHW ``x`` (any strides)."""
    n, c = x.shape[0], x.shape[1]
    y = np.empty((c, n, *out), dtype=x.dtype)
    _maxpool2x2_forward(_cnhw(x), y)
    return _cnhw(y)


def maxpool2d_backward(x: Any, y: Any, dy: Any, kernel: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int]) -> Any:
    """dL/dx of :func:`maxpool2d_forward`: each window's dy goes to its first arg-max."""
    n, c, h, w = x.shape
    covered = h % 2 == 0 and w % 2 == 0  # else the last row or column gets no gradient
    dx = (np.empty if covered else np.zeros)((c, n, h, w), dtype=x.dtype)
    _maxpool2x2_backward(_cnhw(x), _cnhw(y), _cnhw(dy), dx)
    return _cnhw(dx)
