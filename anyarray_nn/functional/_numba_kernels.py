"""Compiled CPU kernels for NumPy arrays, built with numba (the optional ``cpu`` extra).

Five families: the exact GELU (its erf one library call, not the portable kernel's
series), the 2x2 max-pool of the course networks, the Winograd transforms that make
a 3x3 convolution cheaper than its GEMM (below, before :func:`winograd_patches`), a
direct convolution for a network's first layer, whose few input channels make im2col
memory-bound, and on one core for up to 16 input channels (:func:`direct_convolution`,
:func:`direct_weight_gradient`; with 8 or more output channels and 128 or more taps they run
the register tiles of ``_numba_tiles``), and the
depthwise convolution, too few products per output for a GEMM
(:func:`depthwise_convolution`, :func:`depthwise_weight_gradient`).

NumPy runs an element-wise pass as one loop per call, so a 2x2 max-pool written as four
strided slices costs four comparisons, four masked products and four strided writes, each a
full pass over memory: on one core 2.5 ms for a (32, 32, 32, 32) input, about as long as the
convolution that feeds it. One compiled loop reads each window once and writes its four
gradients at once (0.6 ms; forward 1.2 -> 0.25 ms). ``_fast.pool_kernels`` picks these
kernels only for NumPy float arrays and the window they are written for (2x2, stride 2, no
padding: the pooling of every course network), undilated and without a window that
``ceil_mode`` adds past the input; any other window takes the portable code.

The results equal the portable kernels' (tests/test_numba_kernels.py): the forward maximum
propagates NaN as ``maximum`` does, and the backward sends each window's gradient to its
first arg-max in row-major order (its last NaN where the maximum is NaN, as PyTorch's
kernels). One documented difference: a NaN or infinite dy stays in
the arg-max, where the portable masked products spread NaN over the window.

The loops walk (C, N, H, W) order, which is the memory order of the convolutions' outputs
(channels first, see ``conv``); ``nogil`` lets ``DataParallel`` threads run them at once.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numba
import numpy as np

from .._threads import cpu_count, map_on_cores
from . import _numba_tiles

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
WINDOW = ((2, 2), (2, 2), (0, 0))  # kernel, stride, padding these kernels are written for


def _compile(function: Any = None, **options: Any) -> Any:
    """``numba.njit`` (with ``options``) with the machine code cached on disk, or kept in
    memory where the package directory and numba's user cache are both read-only."""
    if function is None:  # @_compile(fastmath=...)
        return lambda f: _compile(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, **options)(function)


def _inline(function: Any) -> Any:
    return numba.njit(inline="always")(function)


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


@_inline
def _has_nan(values: Any) -> bool:  # pragma: no cover - compiled
    found = False
    for v in values:
        found |= v != v
    return found


@_inline
def _first_maxima(t0: Any, t1: Any, b0: Any, b1: Any, m: Any) -> Any:  # pragma: no cover
    # which of a window's four values gets its gradient: the first, in row-major order,
    # that equals the maximum m. Bitwise operators, not "and"/"or": the arg-max of random
    # data is unpredictable, and short-circuit branches made the loop three times slower.
    first = t0 == m
    second = (t1 == m) & (not first)
    third = (b0 == m) & (not (first | second))
    fourth = (b1 == m) & (not (first | second | third))
    return first, second, third, fourth


@_inline
def _last_nan(t0: Any, t1: Any, b0: Any, b1: Any) -> Any:  # pragma: no cover - compiled
    # where a window whose maximum is NaN sends its gradient: its last NaN, as PyTorch
    fourth = b1 != b1
    third = (b0 != b0) & (not fourth)
    second = (t1 != t1) & (not (third | fourth))
    return not (second | third | fourth), second, third, fourth


@_inline
def _send(dtop: Any, dbottom: Any, b: int, g: Any, flags: Any) -> None:  # pragma: no cover
    # window b's gradient g to the position flags names, zeros to the other three
    first, second, third, fourth = flags
    dtop[2 * b] = g if first else 0.0
    dtop[2 * b + 1] = g if second else 0.0
    dbottom[2 * b] = g if third else 0.0
    dbottom[2 * b + 1] = g if fourth else 0.0


@_compile
def _maxpool2x2_backward(x: Any, y: Any, dy: Any, dx: Any) -> None:  # pragma: no cover
    for c in range(y.shape[0]):
        for n in range(y.shape[1]):
            for a in range(y.shape[2]):
                top, bottom = x[c, n, 2 * a], x[c, n, 2 * a + 1]
                dtop, dbottom = dx[c, n, 2 * a], dx[c, n, 2 * a + 1]
                best, grad = y[c, n, a], dy[c, n, a]
                nan_row = False
                for m in best:
                    nan_row |= m != m
                # Rows of windows without a NaN maximum (nearly always) take a loop with no
                # branch in it: twice as fast as choosing the rule per window.
                if nan_row:
                    for b in range(y.shape[3]):
                        t0, t1 = top[2 * b], top[2 * b + 1]
                        b0, b1 = bottom[2 * b], bottom[2 * b + 1]
                        m, g = best[b], grad[b]
                        flags = (_first_maxima(t0, t1, b0, b1, m) if m == m
                                 else _last_nan(t0, t1, b0, b1))
                        _send(dtop, dbottom, b, g, flags)
                else:
                    for b in range(y.shape[3]):
                        flags = _first_maxima(top[2 * b], top[2 * b + 1], bottom[2 * b],
                                              bottom[2 * b + 1], best[b])
                        _send(dtop, dbottom, b, grad[b], flags)


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
    """dL/dx of :func:`maxpool2d_forward`: each window's dy goes to its first arg-max (its
    last NaN where the maximum is NaN)."""
    n, c, h, w = x.shape
    covered = h % 2 == 0 and w % 2 == 0  # else the last row or column gets no gradient
    dx = (np.empty if covered else np.zeros)((c, n, h, w), dtype=x.dtype)
    _maxpool2x2_backward(_cnhw(x), _cnhw(y), _cnhw(dy), dx)
    return _cnhw(dx)


# Winograd F(2x2, 3x3) convolution (Lavin and Gray, "Fast algorithms for convolutional neural
# networks", 2015). A 2x2 block of outputs of a 3x3 convolution needs a 4x4 input tile d; with
#
#     B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#     G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#     A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
#
# the block is  Y = A^T [(G g G^T) * (B^T d B)] A  (element-wise product of 4x4 matrices): 16
# multiplications where direct convolution needs 36. Summed over input channels, each of the
# 16 positions xi of the 4x4 product is one matrix product, M[xi] = U[xi] @ V[xi], with
# U[xi] (O, C) the transformed weights and V[xi] (C, T) the transformed tiles (T tiles: every
# image's grid of 2x2 output blocks). So the convolution's GEMM work drops 2.25x, and the
# transforms are a few additions per element. The backward pass is the exact transpose:
#
#     dM = A dY A^T   per tile (one pass over dY)
#     dU[xi] = dM[xi] @ V[xi]^T,  dW = G^T dU G       (V is kept from the forward)
#     dV[xi] = U[xi]^T @ dM[xi],  dX = the overlapping sum of the tiles B dV B^T
#
# The results equal direct convolution up to rounding (float32: a few units in the 6th digit).
# Each of the 16 matrices is padded by a cache line: with plane strides that are multiples of a
# large power of two, the transforms' 16 concurrent streams fall into the same cache sets (the
# input transform ran 7x slower).

WINOGRAD = ((3, 3), (1, 1), (1, 1))  # kernel, stride, dilation these kernels are written for
# With fewer input channels the 16 small GEMMs and the transforms cost more than they save
# (batch 32, one core, 3 -> 32 channels at 32x32: forward 1.0 -> 1.9 ms, dW 1.5 -> 3.6 ms;
# 8 -> 16: even). dX needs as many output channels too: the 3 -> 32 convolution's dX was 2x
# faster on one core, but 1.2-1.9x slower with two BLAS threads, which speed up the GEMMs of
# im2col and not the transforms.
WINOGRAD_MIN_CHANNELS = 8
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_G4 = ((1 / 4, 0.0, 0.0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
       (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0.0, 0.0, 1.0))


def _planes(count: int, rows: int, cols: int, dtype: Any) -> Any:
    """``count`` (rows, cols) matrices (16 or 36), each row-major, placed a cache line apart
    (see above)."""
    flat = np.empty((count, rows * cols + 16), dtype=dtype)
    return np.reshape(flat[:, :rows * cols], (count, rows, cols))


# The four 1-D transforms, on scalars. A 2-D transform applies one to the tile's columns, then
# to the rows of the result.
@_inline
def _bt(d0: Any, d1: Any, d2: Any, d3: Any) -> Any:  # pragma: no cover - compiled
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3  # B^T d


@_inline
def _b(e0: Any, e1: Any, e2: Any, e3: Any) -> Any:  # pragma: no cover - compiled
    return e0, e1 - e2 + e3, e1 + e2 - e0, -e3  # B e


@_inline
def _at(m0: Any, m1: Any, m2: Any, m3: Any) -> Any:  # pragma: no cover - compiled
    return m0 + m1 + m2, m1 - m2 - m3  # A^T m


@_inline
def _a(g0: Any, g1: Any) -> Any:  # pragma: no cover - compiled
    return g0, g0 + g1, g0 - g1, -g1  # A g


@_inline
def _store(planes: Any, first: int, row: int, t: int, values: Any) -> None:  # pragma: no cover
    # The four values into planes first .. first + 3 at (row, t)
    planes[first, row, t], planes[first + 1, row, t] = values[0], values[1]
    planes[first + 2, row, t], planes[first + 3, row, t] = values[2], values[3]


@_inline
def _columns(planes: Any, row: int, t: int, transform: Any) -> Any:  # pragma: no cover
    # The 4x4 matrix held at (row, t) of the 16 planes, ``transform`` applied to each column
    return (transform(planes[0, row, t], planes[4, row, t], planes[8, row, t], planes[12, row, t]),
            transform(planes[1, row, t], planes[5, row, t], planes[9, row, t], planes[13, row, t]),
            transform(planes[2, row, t], planes[6, row, t], planes[10, row, t], planes[14, row, t]),
            transform(planes[3, row, t], planes[7, row, t], planes[11, row, t], planes[15, row, t]))


@_compile
def _winograd_input(xpad: Any, v: Any) -> None:  # pragma: no cover - compiled
    # xpad (C, N, 2*th + 2, 2*tw + 2) -> v[xi, c, t] = (B^T d B)[xi] of tile t = (n, ty, tx)
    th, tw = (xpad.shape[2] - 2) // 2, (xpad.shape[3] - 2) // 2
    for c in range(xpad.shape[0]):
        for n in range(xpad.shape[1]):
            for ty in range(th):
                r0, r1 = xpad[c, n, 2 * ty], xpad[c, n, 2 * ty + 1]
                r2, r3 = xpad[c, n, 2 * ty + 2], xpad[c, n, 2 * ty + 3]
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    j, t = 2 * tx, t0 + tx
                    # B^T d, column by column (k0[i]: row i of column 0)
                    k0 = _bt(r0[j], r1[j], r2[j], r3[j])
                    k1 = _bt(r0[j + 1], r1[j + 1], r2[j + 1], r3[j + 1])
                    k2 = _bt(r0[j + 2], r1[j + 2], r2[j + 2], r3[j + 2])
                    k3 = _bt(r0[j + 3], r1[j + 3], r2[j + 3], r3[j + 3])
                    for i in range(4):  # (B^T d) B, row by row
                        _store(v, 4 * i, c, t, _bt(k0[i], k1[i], k2[i], k3[i]))


@_compile
def _winograd_output(m: Any, bias: Any, y: Any) -> None:  # pragma: no cover - compiled
    # m (16, O, T) -> y (O, N, 2*th, 2*tw): each tile's A^T M A, plus the bias
    th, tw = y.shape[2] // 2, y.shape[3] // 2
    for o in range(y.shape[0]):
        b = bias[o]
        for n in range(y.shape[1]):
            for ty in range(th):
                top, bottom = y[o, n, 2 * ty], y[o, n, 2 * ty + 1]
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    k0, k1, k2, k3 = _columns(m, o, t, _at)  # A^T M; then its two rows times A
                    y0, y1 = _at(k0[0], k1[0], k2[0], k3[0])
                    y2, y3 = _at(k0[1], k1[1], k2[1], k3[1])
                    top[2 * tx], top[2 * tx + 1] = y0 + b, y1 + b
                    bottom[2 * tx], bottom[2 * tx + 1] = y2 + b, y3 + b


@_compile
def _winograd_output_gradient(dy: Any, dm: Any) -> None:  # pragma: no cover - compiled
    # dy (O, N, 2*th, 2*tw) -> dm[xi, o, t] = (A dY A^T)[xi] of tile t
    th, tw = dy.shape[2] // 2, dy.shape[3] // 2
    for o in range(dy.shape[0]):
        for n in range(dy.shape[1]):
            for ty in range(th):
                top, bottom = dy[o, n, 2 * ty], dy[o, n, 2 * ty + 1]
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    k0 = _a(top[2 * tx], bottom[2 * tx])  # A dY, column by column
                    k1 = _a(top[2 * tx + 1], bottom[2 * tx + 1])
                    for i in range(4):  # (A dY) A^T, row by row
                        _store(dm, 4 * i, o, t, _a(k0[i], k1[i]))


@_compile
def _winograd_input_gradient(dv: Any, dxpad: Any) -> None:  # pragma: no cover - compiled
    # dv (16, C, T) -> dxpad (C, N, 2*th + 2, 2*tw + 2), zeroed: the sum of the tiles' B dV B^T,
    # which overlap by two rows and columns
    th, tw = (dxpad.shape[2] - 2) // 2, (dxpad.shape[3] - 2) // 2
    for c in range(dxpad.shape[0]):
        for n in range(dxpad.shape[1]):
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    k0, k1, k2, k3 = _columns(dv, c, t, _b)  # B dV
                    for i in range(4):  # (B dV) B^T, row by row, added into the input's rows
                        row = dxpad[c, n, 2 * ty + i]
                        e0, e1, e2, e3 = _b(k0[i], k1[i], k2[i], k3[i])
                        row[2 * tx] += e0
                        row[2 * tx + 1] += e1
                        row[2 * tx + 2] += e2
                        row[2 * tx + 3] += e3


# Winograd F(4x4, 3x3): a 4x4 block of outputs from a 6x6 input tile, with the points 0, 1,
# -1, 2, -2 and infinity (Lavin and Gray's matrices):
#
#     B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
#     G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6],
#            [1/24, -1/12, 1/6], [0, 0, 1]]
#     A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
#
# 36 products per 16 outputs where F(2x2, 3x3) needs 64 (4x fewer multiplications than direct
# convolution, against 2.25x), and 2.25 transformed values per output instead of 4: the GEMMs
# with 32-128 input channels are bound by memory, so they read and write 1.8x less. The price
# is rounding: the larger coefficients make float32 results differ from direct convolution
# by about 1e-6 to 1e-5 of the largest value, where F(2x2, 3x3) stays near 2e-7. The
# transforms below are written with additions only, since a Python int times a float32 is a
# float64 in numba.

@_inline
def _four(a: Any) -> Any:  # pragma: no cover - compiled
    a2 = a + a
    return a2 + a2


@_inline
def _bt6(d0: Any, d1: Any, d2: Any, d3: Any, d4: Any, d5: Any) -> Any:  # pragma: no cover
    a, b = d4 - d2, d3 - d1
    return (_four(d0 - d2) + a, d3 + d4 - _four(d1 + d2), _four(d1 - d2) + d4 - d3,
            b + b + a, a - b - b, _four(d1 - d3) + d5 - d3)  # B^T d


@_inline
def _b6(e0: Any, e1: Any, e2: Any, e3: Any, e4: Any, e5: Any) -> Any:  # pragma: no cover
    d43, d34 = e4 - e3, e3 - e4
    return (_four(e0), _four(e2 - e1 + e5) + d43 + d43, -_four(e0 + e1 + e2) - e0 - e3 - e4,
            e1 - e2 + d34 + d34 - _four(e5) - e5, e0 + e1 + e2 + e3 + e4, e5)  # B e


@_inline
def _at6(m0: Any, m1: Any, m2: Any, m3: Any, m4: Any, m5: Any) -> Any:  # pragma: no cover
    s, d, s2, d2 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s + s2, d + d2 + d2, s + _four(s2), d + _four(d2 + d2) + m5  # A^T m


@_inline
def _a6(g0: Any, g1: Any, g2: Any, g3: Any) -> Any:  # pragma: no cover - compiled
    even, odd = g0 + g2, g1 + g3
    even4, odd2 = g0 + _four(g2), g1 + g1 + _four(g3 + g3)
    return g0, even + odd, even - odd, even4 + odd2, even4 - odd2, g3  # A g


@_inline
def _store6(planes: Any, first: int, row: int, t: int, values: Any) -> None:  # pragma: no cover
    # The six values into planes first .. first + 5 at (row, t)
    planes[first, row, t], planes[first + 1, row, t] = values[0], values[1]
    planes[first + 2, row, t], planes[first + 3, row, t] = values[2], values[3]
    planes[first + 4, row, t], planes[first + 5, row, t] = values[4], values[5]


@_compile
def _winograd4_input(xpad: Any, v: Any) -> None:  # pragma: no cover - compiled
    # xpad (C, N, 4*th + 2, 4*tw + 2) -> v[xi, c, t] = (B^T d B)[xi] of tile t = (n, ty, tx)
    th, tw = (xpad.shape[2] - 2) // 4, (xpad.shape[3] - 2) // 4
    k = np.empty((6, 6), dtype=xpad.dtype)
    for c in range(xpad.shape[0]):
        for n in range(xpad.shape[1]):
            for ty in range(th):
                r0, r1, r2 = xpad[c, n, 4 * ty], xpad[c, n, 4 * ty + 1], xpad[c, n, 4 * ty + 2]
                r3, r4, r5 = xpad[c, n, 4 * ty + 3], xpad[c, n, 4 * ty + 4], xpad[c, n, 4 * ty + 5]
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    for q in range(6):  # B^T d, column by column
                        j = 4 * tx + q
                        e = _bt6(r0[j], r1[j], r2[j], r3[j], r4[j], r5[j])
                        k[0, q], k[1, q], k[2, q], k[3, q], k[4, q], k[5, q] = e
                    for i in range(6):  # (B^T d) B, row by row
                        _store6(v, 6 * i, c, t, _bt6(k[i, 0], k[i, 1], k[i, 2], k[i, 3],
                                                     k[i, 4], k[i, 5]))


@_compile
def _winograd4_output(m: Any, bias: Any, y: Any) -> None:  # pragma: no cover - compiled
    # m (36, O, T) -> y (O, N, 4*th, 4*tw): each tile's A^T M A, plus the bias
    th, tw = y.shape[2] // 4, y.shape[3] // 4
    k = np.empty((4, 6), dtype=y.dtype)
    for o in range(y.shape[0]):
        b = bias[o]
        for n in range(y.shape[1]):
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    for q in range(6):  # A^T M, column by column
                        k[0, q], k[1, q], k[2, q], k[3, q] = _at6(
                            m[q, o, t], m[6 + q, o, t], m[12 + q, o, t], m[18 + q, o, t],
                            m[24 + q, o, t], m[30 + q, o, t])
                    for i in range(4):  # its four rows times A
                        row = y[o, n, 4 * ty + i]
                        e = _at6(k[i, 0], k[i, 1], k[i, 2], k[i, 3], k[i, 4], k[i, 5])
                        row[4 * tx], row[4 * tx + 1] = e[0] + b, e[1] + b
                        row[4 * tx + 2], row[4 * tx + 3] = e[2] + b, e[3] + b


@_compile
def _winograd4_output_gradient(dy: Any, dm: Any) -> None:  # pragma: no cover - compiled
    # dy (O, N, 4*th, 4*tw) -> dm[xi, o, t] = (A dY A^T)[xi] of tile t
    th, tw = dy.shape[2] // 4, dy.shape[3] // 4
    k = np.empty((6, 4), dtype=dy.dtype)
    for o in range(dy.shape[0]):
        for n in range(dy.shape[1]):
            for ty in range(th):
                r0, r1 = dy[o, n, 4 * ty], dy[o, n, 4 * ty + 1]
                r2, r3 = dy[o, n, 4 * ty + 2], dy[o, n, 4 * ty + 3]
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    for q in range(4):  # A dY, column by column
                        j = 4 * tx + q
                        k[0, q], k[1, q], k[2, q], k[3, q], k[4, q], k[5, q] = _a6(
                            r0[j], r1[j], r2[j], r3[j])
                    for i in range(6):  # (A dY) A^T, row by row
                        _store6(dm, 6 * i, o, t, _a6(k[i, 0], k[i, 1], k[i, 2], k[i, 3]))


@_compile
def _winograd4_input_gradient(dv: Any, dxpad: Any) -> None:  # pragma: no cover - compiled
    # dv (36, C, T) -> dxpad (C, N, 4*th + 2, 4*tw + 2), zeroed: the sum of the tiles'
    # B dV B^T, which overlap by two rows and columns
    th, tw = (dxpad.shape[2] - 2) // 4, (dxpad.shape[3] - 2) // 4
    k = np.empty((6, 6), dtype=dxpad.dtype)
    for c in range(dxpad.shape[0]):
        for n in range(dxpad.shape[1]):
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    for q in range(6):  # B dV, column by column
                        k[0, q], k[1, q], k[2, q], k[3, q], k[4, q], k[5, q] = _b6(
                            dv[q, c, t], dv[6 + q, c, t], dv[12 + q, c, t], dv[18 + q, c, t],
                            dv[24 + q, c, t], dv[30 + q, c, t])
                    for i in range(6):  # (B dV) B^T, row by row, added into the input's rows
                        row = dxpad[c, n, 4 * ty + i]
                        e = _b6(k[i, 0], k[i, 1], k[i, 2], k[i, 3], k[i, 4], k[i, 5])
                        row[4 * tx] += e[0]
                        row[4 * tx + 1] += e[1]
                        row[4 * tx + 2] += e[2]
                        row[4 * tx + 3] += e[3]
                        row[4 * tx + 4] += e[4]
                        row[4 * tx + 5] += e[5]


# The transforms run on one thread each; those of large layers run on every core, split by
# channels (each channel's tiles are independent), as long as the process is not already
# splitting work over its cores (_threads.map_on_cores).
_SPLIT_VALUES = 1 << 22


def _by_channels(transform: Any, channels: int, values: int) -> None:
    """``transform(lo, hi)`` over the channel range [0, channels): whole on this thread, or
    in one part per core where ``values`` (the transformed planes' size) makes it pay."""
    parts = min(cpu_count(), channels) if values >= _SPLIT_VALUES else 1
    bounds = [(channels * k // parts, channels * (k + 1) // parts) for k in range(parts)]
    map_on_cores(lambda bound: transform(*bound), bounds)


class _Scheme(NamedTuple):
    """One Winograd algorithm F(b x b, 3x3): its output block, its number of planes, its G,
    the plane that holds each block's plain sum in ``A dY A^T`` (the bias gradient), and its
    four compiled transforms."""
    block: int
    planes: int
    g: tuple
    sum_plane: int
    input: Any
    output: Any
    output_gradient: Any
    input_gradient: Any


_F2 = _Scheme(2, 16, _G, 5, _winograd_input, _winograd_output, _winograd_output_gradient,
              _winograd_input_gradient)
_F4 = _Scheme(4, 36, _G4, 7, _winograd4_input, _winograd4_output, _winograd4_output_gradient,
              _winograd4_input_gradient)
_BY_PLANES = {16: _F2, 36: _F4}
# F(4x4, 3x3) from this output size on; below it, most of a 4x4 block would be padding.
# Measured per layer (forward, dW and dX together, 2 cores): 1.1-1.4x faster than F(2x2,
# 3x3) at 15 to 32 pixels, even at 7 and 8, 0.9-1.15x at 4; the residual and fast networks'
# steps 1.03-1.10x faster, with a quarter less peak memory (docs/benchmarks.md).
WINOGRAD_F4_MIN_SIZE = 4


def _scheme(out_hw: tuple[int, int]) -> _Scheme:
    """The algorithm for an output of ``out_hw``; the forward pass and both gradients of one
    convolution ask with the same size, so they agree."""
    return _F4 if min(out_hw) >= WINOGRAD_F4_MIN_SIZE else _F2


def _tiles(out_hw: tuple[int, int], block: int) -> tuple[int, int]:
    """The grid of ``block`` x ``block`` output blocks that covers an output of ``out_hw``."""
    return -(-out_hw[0] // block), -(-out_hw[1] // block)


def _weight_transform(scheme: _Scheme, dtype: Any) -> Any:
    """The (planes, 9) matrix that maps a flattened 3x3 kernel g to the flattened G g G^T
    (in float64, then rounded once)."""
    g = np.asarray(scheme.g, dtype=np.float64)
    return np.kron(g, g).astype(dtype)


def _winograd_weights(scheme: _Scheme, w: Any) -> Any:
    """U (planes, O, C): every kernel's G g G^T, one (O, C) matrix per position of the tile."""
    o, c = w.shape[0], w.shape[1]
    u = np.reshape(w, (o * c, 9)) @ _weight_transform(scheme, w.dtype).T
    return np.reshape(np.matrix_transpose(u), (scheme.planes, o, c))  # a copy: matmul wants it compact


def winograd_patches(x: Any, pads: tuple[int, int, int, int], out_hw: tuple[int, int]) -> Any:
    """V (planes, C, T): the transformed input tiles of NCHW ``x`` (any strides), zero-padded
    by ``pads`` (top, bottom, left, right) and, for an output size that is not a multiple of
    the block, by the rows and columns that complete the last blocks."""
    n, c, h, w = x.shape
    scheme = _scheme(out_hw)
    b = scheme.block
    th, tw = _tiles(out_hw, b)
    top, _, left, _ = pads
    xpad = np.zeros((c, n, b * th + 2, b * tw + 2), dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + w] = _cnhw(x)
    v = _planes(scheme.planes, c, n * th * tw, x.dtype)
    _by_channels(lambda lo, hi: scheme.input(xpad[lo:hi], v[:, lo:hi]), c, v.size)
    return v


def winograd_forward(w: Any, v: Any, b: Any | None, batch: int, out_hw: tuple[int, int]) -> Any:
    """(N, O, Ho, Wo) output, bias added, of the 3x3 convolution of :func:`winograd_patches`
    ``v`` with weights ``w`` (O, C, 3, 3): a view of channels-first memory."""
    scheme, o = _BY_PLANES[v.shape[0]], w.shape[0]
    th, tw = _tiles(out_hw, scheme.block)
    m = _planes(scheme.planes, o, v.shape[2], w.dtype)
    np.matmul(_winograd_weights(scheme, w), v, out=m)
    y = np.empty((o, batch, scheme.block * th, scheme.block * tw), dtype=w.dtype)
    bias = np.zeros(o, dtype=w.dtype) if b is None else b
    _by_channels(lambda lo, hi: scheme.output(m[:, lo:hi], bias[lo:hi], y[lo:hi]), o, m.size)
    return _cnhw(y[:, :, :out_hw[0], :out_hw[1]])


def winograd_output_gradient(dy: Any) -> Any:
    """dM (planes, O, T): the transformed blocks ``A dY A^T`` of NCHW ``dy`` (any strides),
    shared by :func:`winograd_weight_gradient` and :func:`winograd_input_gradient`."""
    n, o, ho, wo = dy.shape
    scheme = _scheme((ho, wo))
    b = scheme.block
    th, tw = _tiles((ho, wo), b)
    dy_grid = _cnhw(dy)
    if (ho, wo) != (b * th, b * tw):  # zeros complete the last blocks
        dy_grid = np.zeros((o, n, b * th, b * tw), dtype=dy.dtype)
        dy_grid[:, :, :ho, :wo] = _cnhw(dy)
    dm = _planes(scheme.planes, o, n * th * tw, dy.dtype)
    _by_channels(lambda lo, hi: scheme.output_gradient(dy_grid[lo:hi], dm[:, lo:hi]), o,
                 dm.size)
    return dm


def winograd_weight_gradient(dm: Any, v: Any, w_shape: tuple[int, ...]) -> tuple[Any, Any]:
    """``(dW, db)`` from :func:`winograd_output_gradient` ``dm`` and the forward's tiles ``v``."""
    scheme, o, c = _BY_PLANES[dm.shape[0]], w_shape[0], w_shape[1]
    db = np.sum(dm[scheme.sum_plane], axis=1)  # (A dY A^T) at (1, 1) is the block's sum
    du = np.matmul(dm, np.matrix_transpose(v))  # (planes, O, C)
    g = (np.matrix_transpose(np.reshape(du, (scheme.planes, o * c)))
         @ _weight_transform(scheme, dm.dtype))
    return np.reshape(g, w_shape), db


def winograd_input_gradient(dm: Any, w: Any, batch: int, out_hw: tuple[int, int],
                            in_hw: tuple[int, int], pads: tuple[int, int, int, int]) -> Any:
    """dX (N, C, H, W) from :func:`winograd_output_gradient` ``dm``: the overlapping sum of
    the tiles ``B dV B^T``, cropped to the input (a view of channels-first memory)."""
    scheme, c = _BY_PLANES[dm.shape[0]], w.shape[1]
    b = scheme.block
    th, tw = _tiles(out_hw, b)
    dv = _planes(scheme.planes, c, dm.shape[2], dm.dtype)
    np.matmul(np.matrix_transpose(_winograd_weights(scheme, w)), dm, out=dv)
    dxpad = np.zeros((c, batch, b * th + 2, b * tw + 2), dtype=dm.dtype)
    _by_channels(lambda lo, hi: scheme.input_gradient(dv[:, lo:hi], dxpad[lo:hi]), c, dv.size)
    top, _, left, _ = pads
    return _cnhw(dxpad[:, :, top:top + in_hw[0], left:left + in_hw[1]])


# Direct convolution, for the convolutions with few channels on one side: the forward pass
# and dW of a network's first layer (1 to 3 input channels), and dX of it (a convolution down
# to those channels); on one core also those with up to 16 channels. im2col copies every
# input element kh*kw times into a matrix that one GEMM with a short inner size (3*5*5 = 75)
# then reads once: memory-bound work on both sides (the MNIST network's first layer at batch
# 64: a 92 MB matrix for dX's 0.2 MB result).
#
# Computed directly, each padded plane is read as one flat row of width Wp, and the output on
# the "wide" grid of Ho x Wp positions (see ``conv``): kernel tap (k, i, j) contributes the
# run of plane k that starts at i*dh*Wp + j*dw, times its weight, to every output plane. The
# taps go in groups of five, and output planes in pairs: one pass over a run adds five taps
# to two planes, ten multiply-adds for every 7 reads and 2 writes of the cache. Slices make
# the indices provably in range, so numba vectorizes the loop over the run (AVX-512 here).
# The two planes' sums stay in the cache, and only their valid columns are written out.
# dW is the same walk with the roles turned: ten running sums of dY run times tap run.
#
# Batch 64 on one core, against im2col and a GEMM (docs/benchmarks.md): the CIFAR-10
# network's first layer forward 3.9 -> 1.3 ms and dW 4.1 -> 1.0 ms, MNIST's 0.7 -> 0.4 and
# 1.3 -> 0.25; with two BLAS threads for the GEMM still 2.7 -> 1.4 and 3.0 -> 1.1. With 16
# channels (the course networks' second layers) the kernel wins on one core (batch 32: the
# CIFAR-10 network's forward 1.4 -> 1.3 ms, dW and dX 2.9 -> 2.2), where DataParallel runs
# each slice, but loses to a GEMM on two threads (forward 2.0 -> 2.6). Those 16-channel
# layers now run register tiles (``_numba_tiles``: MNIST's at batch 32, the kernel alone
# 1.46 -> 0.82 ms forward); the paired runs below keep the first layers.
DIRECT_MAX_CHANNELS = 3
DIRECT_MAX_CHANNELS_ONE_CORE = 16  # where a GEMM gets one core too (_fast.one_core), and
# on any number of cores where the register tiles apply: on one core they beat a GEMM on two
# (unsplit steps, alternating: MNIST 11.5 -> 9.7 ms at batch 64, 55.5 -> 37.1 at 256)
tiles_apply = _numba_tiles.applies
GROUP = 5  # taps per pass


def _tap_groups(taps: tuple[int, int, int], width: int,
                dilation: tuple[int, int]) -> tuple[Any, Any]:
    """The ``taps`` (K, kh, kw) of a kernel on planes of width ``width``, in groups of
    :data:`GROUP`: the plane and the start of each tap's run, both (groups, GROUP). The last
    group is filled up with repeats of the first taps, which :func:`_grouped_weights` gives
    weight 0."""
    count = math.prod(taps)
    groups = -(-count // GROUP)
    plane, i, j = np.unravel_index(np.arange(groups * GROUP) % count, taps)
    start = i * dilation[0] * width + j * dilation[1]
    return np.reshape(plane, (groups, GROUP)), np.reshape(start, (groups, GROUP))


def _grouped_weights(w: Any, groups: int) -> Any:
    """Weights ``w`` (O, K, kh, kw) as (O, groups, GROUP), in the order of
    :func:`_tap_groups`, with 0 for the taps that fill up the last group."""
    o, count = w.shape[0], math.prod(w.shape[1:])
    weights = np.zeros((o, groups * GROUP), dtype=w.dtype)
    weights[:, :count] = np.reshape(w, (o, count))
    return np.reshape(weights, (o, groups, GROUP))


@_inline
def _tap_runs(xflat: Any, plane: Any, start: Any, n: int, run: int) -> Any:  # pragma: no cover
    # The runs of one group's five taps in image n: slices, so their indices are in range
    return (xflat[plane[0], n, start[0]:start[0] + run],
            xflat[plane[1], n, start[1]:start[1] + run],
            xflat[plane[2], n, start[2]:start[2] + run],
            xflat[plane[3], n, start[3]:start[3] + run],
            xflat[plane[4], n, start[4]:start[4] + run])


@_inline
def _five(values: Any) -> Any:  # pragma: no cover - compiled
    return values[0], values[1], values[2], values[3], values[4]


@_inline
def _copy_row(source: Any, target: Any) -> None:  # pragma: no cover - compiled
    # Element by element: numba's slice assignment checks for overlap, which costs more than
    # the copy for rows of 28 (MNIST's forward pass 0.6 -> 1.1 ms at batch 64)
    for j in range(target.shape[0]):
        target[j] = source[j]


@_compile(fastmath={"contract"})  # contract: fused multiply-adds
def _convolve_groups(xflat: Any, plane: Any, start: Any, weights: Any, bias: Any,
                     wide: Any, width: int, out: Any) -> None:  # pragma: no cover - compiled
    # xflat (K, N, Hp*Wp) -> out (O, N, Ho, Wo): for each image, output planes in pairs (the
    # last one twice when O is odd), computed on the wide grid (rows of ``width``) in the two
    # rows of ``wide``, to which every group of taps adds its five weighted runs; then their
    # valid columns are copied out, so the output is compact and the sums stay in the cache
    run, last = wide.shape[1], out.shape[0] - 1
    ho, wo = out.shape[2], out.shape[3]
    a, b = wide[0], wide[1]
    for n in range(out.shape[1]):
        for o in range(0, last + 1, 2):
            q = min(o + 1, last)
            a[:], b[:] = bias[o], bias[q]
            for g in range(plane.shape[0]):
                t0, t1, t2, t3, t4 = _tap_runs(xflat, plane[g], start[g], n, run)
                u, v = weights[o, g], weights[q, g]
                (u0, u1, u2, u3, u4), (v0, v1, v2, v3, v4) = _five(u), _five(v)
                for p in range(run):
                    e0, e1, e2, e3, e4 = t0[p], t1[p], t2[p], t3[p], t4[p]
                    a[p] += u0 * e0 + u1 * e1 + u2 * e2 + u3 * e3 + u4 * e4
                    b[p] += v0 * e0 + v1 * e1 + v2 * e2 + v3 * e3 + v4 * e4
            for r in range(ho):
                _copy_row(a[r * width:r * width + wo], out[o, n, r])
                _copy_row(b[r * width:r * width + wo], out[q, n, r])


@_compile(fastmath={"contract", "reassoc"})  # reassoc: vectorized running sums
def _correlate_groups(xflat: Any, plane: Any, start: Any, dy: Any, wide: Any, width: int,
                      grad: Any) -> None:  # pragma: no cover - compiled
    # grad (O, groups, 5), zeroed, += the sum over images and the run of dY times each tap's
    # run. dY (O, N, Ho, Wo) planes, in pairs as in _convolve_groups (an odd last plane is
    # summed twice and stored twice, the same value), are first copied onto the wide grid
    # (rows of ``width``) of the two zeroed rows of ``wide``, whose extra columns stay zero
    ho, wo = dy.shape[2], dy.shape[3]
    run, last = wide.shape[1], dy.shape[0] - 1
    a, b = wide[0], wide[1]
    for n in range(dy.shape[1]):
        for o in range(0, last + 1, 2):
            q = min(o + 1, last)
            for r in range(ho):
                _copy_row(dy[o, n, r], a[r * width:r * width + wo])
                _copy_row(dy[q, n, r], b[r * width:r * width + wo])
            for g in range(plane.shape[0]):
                t0, t1, t2, t3, t4 = _tap_runs(xflat, plane[g], start[g], n, run)
                u, v = grad[o, g], grad[q, g]
                # the sums start from the stored values: same dtype as the arrays
                (u0, u1, u2, u3, u4), (v0, v1, v2, v3, v4) = _five(u), _five(v)
                for p in range(run):
                    e0, e1, e2, e3, e4 = t0[p], t1[p], t2[p], t3[p], t4[p]
                    da, db = a[p], b[p]
                    u0, u1, u2, u3, u4 = u0 + da * e0, u1 + da * e1, u2 + da * e2, \
                        u3 + da * e3, u4 + da * e4
                    v0, v1, v2, v3, v4 = v0 + db * e0, v1 + db * e1, v2 + db * e2, \
                        v3 + db * e3, v4 + db * e4
                u[0], u[1], u[2], u[3], u[4] = u0, u1, u2, u3, u4
                v[0], v[1], v[2], v[3], v[4] = v0, v1, v2, v3, v4


def _flat(xpad: Any) -> Any:
    k, n, hp, wp = xpad.shape
    return np.reshape(xpad, (k, n, hp * wp))


# A run whose length is not a multiple of the vector width ends in a remainder loop (scalar
# for dW's running sums, whose vector sums are also reduced after every run): MNIST's second
# layer (runs of 14 x 18 = 252) spent about a third of its time there. Runs are lengthened to
# a multiple of RUN_MULTIPLE (16 floats, one AVX-512 vector) where the padded planes' zero
# rows allow it: the extra outputs are discarded, and dW's extra dY values are zeros.
RUN_MULTIPLE = 16


def _run(xpad: Any, start: Any, out_hw: tuple[int, int]) -> int:
    """The length of the runs over the wide grid of ``out_hw`` outputs in planes of
    ``xpad``: Ho x Wp rounded up to :data:`RUN_MULTIPLE` if the plane holds that far for
    every tap (``start``), else Ho x Wp."""
    hp, wp = xpad.shape[2], xpad.shape[3]
    run = out_hw[0] * wp
    longer = -(-run // RUN_MULTIPLE) * RUN_MULTIPLE
    return longer if int(start.max()) + longer <= hp * wp else run


def direct_convolution(xpad: Any, w: Any, b: Any | None, out_hw: tuple[int, int],
                       dilation: tuple[int, int]) -> Any:
    """The stride-1 convolution of the padded (K, N, Hp, Wp) buffer ``xpad`` (C-contiguous,
    with the extra rows the flat runs need, see ``conv._extra_rows``) with weights ``w``
    (O, K, kh, kw), plus bias ``b`` if given: (O, N, Ho, Wo), C-contiguous."""
    tiled = _numba_tiles.convolution(xpad, w, b, out_hw, dilation)
    if tiled is not None:
        return tiled
    k, n, hp, wp = xpad.shape
    o = w.shape[0]
    plane, start = _tap_groups(tuple(w.shape[1:]), wp, dilation)
    weights = _grouped_weights(w, plane.shape[0])
    bias = np.zeros(o, dtype=w.dtype) if b is None else np.asarray(b, dtype=w.dtype)
    wide = np.empty((2, _run(xpad, start, out_hw)), dtype=xpad.dtype)
    out = np.empty((o, n, *out_hw), dtype=xpad.dtype)
    _convolve_groups(_flat(xpad), plane, start, weights, bias, wide, wp, out)
    return out


def direct_weight_gradient(xpad: Any, dy: Any, w_shape: tuple[int, ...],
                           dilation: tuple[int, int]) -> Any:
    """dW (O, K, kh, kw) of :func:`direct_convolution` of ``xpad``, from NCHW ``dy`` (any
    strides)."""
    tiled = _numba_tiles.weight_gradient(xpad, dy, w_shape, dilation)
    if tiled is not None:
        return tiled
    k, n, hp, wp = xpad.shape
    o = w_shape[0]
    plane, start = _tap_groups((w_shape[1], w_shape[2], w_shape[3]), wp, dilation)
    grad = np.zeros((o, plane.shape[0], GROUP), dtype=xpad.dtype)
    wide = np.zeros((2, _run(xpad, start, tuple(dy.shape[2:]))), dtype=xpad.dtype)
    _correlate_groups(_flat(xpad), plane, start, _cnhw(dy), wide, wp, grad)
    count = math.prod(w_shape[1:])
    return np.reshape(np.reshape(grad, (o, -1))[:, :count], w_shape)


# --- depthwise convolutions ------------------------------------------------------------------
# A depthwise convolution (groups == input channels) has kh*kw products per output: too few
# for a GEMM, and the portable kernel's per-tap scaling costs a pass over memory for each
# multiply and each add. Here each output plane is summed in the cache. At stride 1 the
# plane is computed on the wide grid, as the direct convolution above: tap (i, j) of the
# padded plane read as one flat row is one long contiguous run, which numba vectorizes,
# added three taps at a time; the valid columns are then copied out. Other strides add
# each tap's strided run to each output row. The same kernel runs dX, whose transposed
# convolution has one output channel per group and the channel multiplier as the input
# channels of each group. One thread: it beats PyTorch's single thread already, and with
# numba.prange over the planes numba's OpenMP threads, spinning after each call, made both
# libraries slower on the shared 2 cores (and would oversubscribe DataParallel's threads).
#
# Batch 64, 64 channels at 32x32, float32, 3x3, one thread, the 2-vCPU VM loaded by another
# benchmark: rows of 32 one tap per pass 7.7 ms (too short a loop to amortize vectorizing
# it), the wide grid three taps per pass 2.7-3.2 ms; the portable kernel 19-25 ms.
# dW correlates each dY plane, copied onto the same wide grid, with each tap's run: one dot
# product per tap, three taps per pass (batch 16 on the quiet VM, two threads for PyTorch:
# 0.84 ms against the portable per-tap GEMMs' 1.95 and PyTorch's 0.45).

@_inline
def _add_tap(row: Any, weight: Any, source: Any, start: int, span: int,
             step: int) -> None:  # pragma: no cover - compiled
    # row += weight * source[start::step]; slices, so the indices are provably in range
    if step == 1:  # contiguous: numba vectorizes the loop
        run = source[start:start + span]
        for b in range(row.shape[0]):
            row[b] += weight * run[b]
    else:
        strided = source[start:start + span:step]
        for b in range(row.shape[0]):
            row[b] += weight * strided[b]


@_inline
def _add_three_taps(row: Any, w0: Any, w1: Any, w2: Any, source: Any, start: int, step: int,
                    span: int) -> None:  # pragma: no cover - compiled
    # three neighbouring taps of a contiguous run at once: a third of the loads and stores
    # of the row
    r0 = source[start:start + span]
    r1 = source[start + step:start + step + span]
    r2 = source[start + 2 * step:start + 2 * step + span]
    for b in range(row.shape[0]):
        row[b] += w0 * r0[b] + w1 * r1[b] + w2 * r2[b]


@_inline
def _add_kernel_row(row: Any, weights: Any, source: Any, start: int, step: int, span: int,
                    dilation: int) -> None:  # pragma: no cover - compiled
    # row += the taps of one kernel row; three at a time where the runs are contiguous
    j, kw = 0, weights.shape[0]
    if step == 1:
        while j + 3 <= kw:
            _add_three_taps(row, weights[j], weights[j + 1], weights[j + 2], source,
                            start + j * dilation, dilation, span)
            j += 3
    for rest in range(j, kw):
        _add_tap(row, weights[rest], source, start + rest * dilation, span, step)


@_compile(fastmath={"contract"})
def _depthwise(xpad: Any, w: Any, bias: Any, stride: Any, dilation: Any, group_outputs: int,
               out: Any) -> None:  # pragma: no cover - compiled
    # xpad (C, N, Hp, Wp) -> out (O, N, Ho, Wo); output channel o is in group
    # o // group_outputs and reads its K = w.shape[1] input channels
    planes, batch, ho, wo = out.shape
    inputs, kh = w.shape[1], w.shape[2]
    (sh, sw), (dh, dw) = stride, dilation
    hp, wp = xpad.shape[2], xpad.shape[3]
    xflat = xpad.reshape((xpad.shape[0], batch, hp * wp))
    wide = sh == 1 and sw == 1
    # the wide grid up to the last valid output: the last tap's run ends inside the plane
    run = (ho - 1) * wp + wo
    sums = np.empty(run, dtype=out.dtype)
    for o in range(planes):
        for n in range(batch):
            first = (o // group_outputs) * inputs
            if wide:
                sums[:] = bias[o]
                for k in range(inputs):
                    for i in range(kh):
                        _add_kernel_row(sums, w[o, k, i], xflat[first + k, n], i * dh * wp, 1,
                                        run, dw)
                for a in range(ho):
                    _copy_row(sums[a * wp:a * wp + wo], out[o, n, a])
            else:
                span = (wo - 1) * sw + 1
                for a in range(ho):
                    row = out[o, n, a]
                    row[:] = bias[o]
                    for k in range(inputs):
                        for i in range(kh):
                            source = xpad[first + k, n, a * sh + i * dh]
                            _add_kernel_row(row, w[o, k, i], source, 0, sw, span, dw)


def depthwise_convolution(xpad: Any, w: Any, b: Any | None, out_hw: tuple[int, int],
                          stride: tuple[int, int], dilation: tuple[int, int],
                          groups: int) -> Any:
    """The grouped convolution with ``groups`` of the zero-padded (C, N, Hp, Wp) buffer
    ``xpad`` with weights ``w`` (O, C / groups, kh, kw), plus bias ``b`` if given:
    (O, N, Ho, Wo), C-contiguous. Written for few channels per group (depthwise: one)."""
    o = w.shape[0]
    bias = np.zeros(o, dtype=w.dtype) if b is None else np.asarray(b, dtype=w.dtype)
    out = np.empty((o, xpad.shape[1], *out_hw), dtype=xpad.dtype)
    _depthwise(np.ascontiguousarray(xpad), np.ascontiguousarray(w), bias, tuple(stride),
               tuple(dilation), o // groups, out)
    return out


@_inline
def _dot_three_taps(dy: Any, source: Any, start: int, step: int) -> Any:  # pragma: no cover
    # the sums of dy times three neighbouring contiguous runs of ``source``: one read of dy
    r0 = source[start:start + dy.shape[0]]
    r1 = source[start + step:start + step + dy.shape[0]]
    r2 = source[start + 2 * step:start + 2 * step + dy.shape[0]]
    s0 = s1 = s2 = dy.dtype.type(0)
    for b in range(dy.shape[0]):
        s0 += dy[b] * r0[b]
        s1 += dy[b] * r1[b]
        s2 += dy[b] * r2[b]
    return s0, s1, s2


@_inline
def _dot_tap(dy: Any, source: Any, start: int, step: int) -> Any:  # pragma: no cover
    # the sum of dy times source[start::step], as many as dy has
    run = source[start:start + (dy.shape[0] - 1) * step + 1:step]
    total = dy.dtype.type(0)
    for b in range(dy.shape[0]):
        total += dy[b] * run[b]
    return total


@_inline
def _correlate_kernel_row(grad: Any, dy: Any, source: Any, start: int, step: int,
                          dilation: int) -> None:  # pragma: no cover - compiled
    # grad[j] += the sum of dy times tap j's run; three taps per pass where runs are contiguous
    j, kw = 0, grad.shape[0]
    if step == 1:
        while j + 3 <= kw:
            s0, s1, s2 = _dot_three_taps(dy, source, start + j * dilation, dilation)
            grad[j] += s0
            grad[j + 1] += s1
            grad[j + 2] += s2
            j += 3
    for rest in range(j, kw):
        grad[rest] += _dot_tap(dy, source, start + rest * dilation, step)


@_compile(fastmath={"contract", "reassoc"})  # reassoc: vectorized running sums
def _depthwise_weight_gradient(xpad: Any, dy: Any, stride: Any, dilation: Any,
                               group_outputs: int, wide: Any,
                               grad: Any) -> None:  # pragma: no cover - compiled
    # grad (O, K, kh, kw), zeroed, += for each image the correlation of dY's plane o (NCHW
    # dy) with the K input planes of its group. At stride 1 the dY plane is first copied onto
    # the wide grid (``wide``, zeroed: its extra columns stay zero) and each tap is one dot
    # product with a contiguous run of the flat padded plane, as _depthwise reads it
    planes, inputs, kh = grad.shape[0], grad.shape[1], grad.shape[2]
    batch, ho, wo = dy.shape[0], dy.shape[2], dy.shape[3]
    (sh, sw), (dh, dw) = stride, dilation
    hp, wp = xpad.shape[2], xpad.shape[3]
    xflat = xpad.reshape((xpad.shape[0], batch, hp * wp))
    for o in range(planes):
        first = (o // group_outputs) * inputs
        for n in range(batch):
            if sh == 1 and sw == 1:
                for a in range(ho):
                    _copy_row(dy[n, o, a], wide[a * wp:a * wp + wo])
                for k in range(inputs):
                    for i in range(kh):
                        _correlate_kernel_row(grad[o, k, i], wide, xflat[first + k, n],
                                              i * dh * wp, 1, dw)
            else:
                for a in range(ho):
                    row = dy[n, o, a]
                    for k in range(inputs):
                        for i in range(kh):
                            _correlate_kernel_row(grad[o, k, i], row,
                                                  xpad[first + k, n, a * sh + i * dh], 0, sw, dw)


def depthwise_weight_gradient(xpad: Any, dy: Any, w_shape: tuple[int, ...],
                              stride: tuple[int, int], dilation: tuple[int, int],
                              groups: int) -> Any:
    """dW (O, C / groups, kh, kw) of :func:`depthwise_convolution` of ``xpad`` for the
    upstream gradient ``dy`` (N, O, Ho, Wo)."""
    o = w_shape[0]
    ho, wo = dy.shape[2], dy.shape[3]
    wp = xpad.shape[3]
    grad = np.zeros(w_shape, dtype=xpad.dtype)
    wide = np.zeros((ho - 1) * wp + wo if ho and wo else 0, dtype=xpad.dtype)
    _depthwise_weight_gradient(np.ascontiguousarray(xpad), np.ascontiguousarray(dy),
                               tuple(stride), tuple(dilation), o // groups, wide, grad)
    return grad


# --- batch normalization ---------------------------------------------------------------------
# NumPy's batch norm makes about eight passes over x for the forward pass (mean, centering,
# squares, their mean, the division, scale and shift) and more for the backward one. Here each
# channel's statistics take two reads of its values, summed in float64 (as accurate as NumPy's
# pairwise float32 sums or better) and rounded once to x's dtype, and the output one read and
# one write, y = a x + b with a = gamma / std and b = beta - a mean. The backward pass takes the
# forward's statistics (as PyTorch keeps its saved mean and inverse std) and adds one read of x
# and dY for the two sums, and dx = A dY + B x + C per channel. Channels are independent, so
# large inputs are split by channels over the cores as the Winograd transforms are.
#
# A ReLU after the batch norm can run in the same passes (``relu``): the forward writes
# max(a x + b, 0), and the backward, from the same statistics and so the same a and b, passes
# dY only where a x + b > 0; the ReLU's own read-and-write pass each way is gone.

@_inline
def _row(a: Any, channels_first: bool, i: int, k: int) -> Any:  # pragma: no cover - compiled
    # the P values of sample i, channel k of a 3-D array held as (N, C, P) or (C, N, P)
    return a[k, i] if channels_first else a[i, k]


@_inline
def _channel_moments(x: Any, cf: bool, n: int, k: int) -> Any:  # pragma: no cover - compiled
    # mean and biased variance of channel k of x, in float64, two passes
    p = x.shape[2]
    total = 0.0
    for i in range(n):
        row = _row(x, cf, i, k)
        for j in range(p):
            total += row[j]
    mean = total / (n * p)
    squares = 0.0
    for i in range(n):
        row = _row(x, cf, i, k)
        for j in range(p):
            d = row[j] - mean
            squares += d * d
    return mean, squares / (n * p)


@_inline
def _scale_and_shift(gamma: Any, beta: Any, means: Any, variances: Any, eps: float,
                     k: int) -> Any:  # pragma: no cover - compiled
    # (a, b) of y = a x + b for channel k, from the statistics the forward pass stored
    a = gamma[k] / math.sqrt(variances[k] + eps)
    return a, beta[k] - a * means[k]


@_inline
def _through_relu(relu: bool, y: float, g: Any) -> Any:  # pragma: no cover - compiled
    # g where the ReLU passes it, as relu_backward's dy * mask: g * 0 where y <= 0 (so an
    # infinite g gives NaN there, as the product does), g elsewhere (NaN y included)
    return g * 0.0 if relu and y <= 0.0 else g


@_compile(fastmath={"contract", "reassoc"})  # reassoc: vectorized running sums
def _batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float, relu: bool, lo: int, hi: int,
                       y: Any, means: Any, variances: Any, cf: bool,
                       n: int) -> None:  # pragma: no cover - compiled
    # channels lo .. hi - 1 of x and y (both (N, C, P), or both (C, N, P) if cf); means and
    # variances have x's dtype
    for k in range(lo, hi):
        means[k], variances[k] = _channel_moments(x, cf, n, k)
        a, b = _scale_and_shift(gamma, beta, means, variances, eps, k)
        for i in range(n):
            row, out = _row(x, cf, i, k), _row(y, cf, i, k)
            if relu:
                for j in range(x.shape[2]):
                    v = a * row[j] + b
                    out[j] = 0.0 if v <= 0.0 else v  # NaN passes, as NumPy's maximum
            else:
                for j in range(x.shape[2]):
                    out[j] = a * row[j] + b


@_compile(fastmath={"contract", "reassoc"})
def _batchnorm_backward(x: Any, gamma: Any, beta: Any, dy: Any, eps: float, relu: bool,
                        means: Any, variances: Any, lo: int, hi: int, dx: Any, dgamma: Any,
                        dbeta: Any, cf: bool, dy_cf: bool,
                        n: int) -> None:  # pragma: no cover - compiled
    # x and dx in one layout (cf), dy in its own (dy_cf)
    p = x.shape[2]
    m = n * p
    for k in range(lo, hi):
        mean = np.float64(means[k])
        inv_std = 1.0 / math.sqrt(variances[k] + eps)
        a, b = _scale_and_shift(gamma, beta, means, variances, eps, k)
        sum_dy, sum_dy_centered = 0.0, 0.0  # of the gradient after the ReLU's mask
        for i in range(n):
            row, grad = _row(x, cf, i, k), _row(dy, dy_cf, i, k)
            for j in range(p):
                g = _through_relu(relu, a * row[j] + b, grad[j])
                sum_dy += g
                sum_dy_centered += g * (row[j] - mean)
        dbeta[k], dgamma[k] = sum_dy, sum_dy_centered * inv_std
        # dx = gamma inv_std / m (m dy - sum(dy) - xhat sum(dy xhat)) = A dy + B x + C
        big_a = gamma[k] * inv_std
        big_b = -big_a * inv_std * inv_std * sum_dy_centered / m
        big_c = -big_a * sum_dy / m - big_b * mean
        for i in range(n):
            row, grad, out = _row(x, cf, i, k), _row(dy, dy_cf, i, k), _row(dx, cf, i, k)
            for j in range(p):
                g = _through_relu(relu, a * row[j] + b, grad[j])
                out[j] = big_a * g + big_b * row[j] + big_c


def _rows(a: Any) -> tuple[Any, bool]:
    """``(a3, channels_first)``: (N, C, *) ``a`` as a C-contiguous 3-D view, (N, C, P) for
    NCHW memory or (C, N, P) for CNHW memory (a convolution's output), else as an (N, C, P)
    copy. numba vectorizes loops over contiguous rows only: on a strided view of the same
    memory the kernels ran 4-7x slower."""
    a3 = np.reshape(a, (a.shape[0], a.shape[1], -1)) if a.ndim > 2 else a[:, :, None]
    if a3.flags.c_contiguous:
        return a3, False
    swapped = np.permute_dims(a3, (1, 0, 2))
    if swapped.flags.c_contiguous:
        return swapped, True
    return np.ascontiguousarray(a3), False


def _like(a3: Any, channels_first: bool, shape: tuple[int, ...]) -> tuple[Any, Any]:
    """``(out3, out)``: a new array laid out as ``a3`` and the (N, C, *) view of it."""
    out3 = np.empty(a3.shape, dtype=a3.dtype)
    nc = np.permute_dims(out3, (1, 0, 2)) if channels_first else out3
    return out3, np.reshape(nc, shape)


def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float,
                      relu: bool = False) -> tuple[Any, Any, Any]:
    """``(y, mean, var)`` of training-mode batch normalization of ``x`` (N, C, *), at least
    two values per channel, followed by a ReLU if ``relu``; y has x's shape and memory order
    (NCHW, or CNHW as a convolution's output), mean and var x's dtype."""
    x3, cf = _rows(x)
    y3, y = _like(x3, cf, x.shape)
    means, variances = np.empty(x.shape[1], x.dtype), np.empty(x.shape[1], x.dtype)
    _by_channels(lambda lo, hi: _batchnorm_forward(x3, gamma, beta, eps, relu, lo, hi, y3,
                                                   means, variances, cf, x.shape[0]),
                 x.shape[1], x.size)
    return y, means, variances


def batchnorm_backward(x: Any, gamma: Any, beta: Any, dy: Any, eps: float, mean: Any, var: Any,
                       relu: bool = False) -> tuple[Any, Any, Any]:
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_forward` for the upstream gradient ``dy``,
    from the forward's ``mean`` and ``var``; dx has x's memory order."""
    (x3, cf), (dy3, dy_cf) = _rows(x), _rows(dy)
    dx3, dx = _like(x3, cf, x.shape)
    dgamma, dbeta = np.empty(x.shape[1]), np.empty(x.shape[1])
    _by_channels(lambda lo, hi: _batchnorm_backward(x3, gamma, beta, dy3, eps, relu, mean, var,
                                                    lo, hi, dx3, dgamma, dbeta, cf, dy_cf,
                                                    x.shape[0]),
                 x.shape[1], x.size)
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# --- GELU -----------------------------------------------------------------------------------
# The exact form in one pass, with the C library's erf, where the portable kernel sums its own
# series in about 150 NumPy passes. Sums in float64, rounded once to x's dtype. (The tanh form
# stays with NumPy: its vectorized tanh beats a loop over the scalar one.)

_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@_compile(fastmath={"contract"})
def _gelu(x: Any, dy: Any, out: Any, lo: int, hi: int,
          backward: bool) -> None:  # pragma: no cover - compiled
    for i in range(lo, hi):
        v = np.float64(x[i])
        cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
        if backward:
            out[i] = dy[i] * (cdf + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)
        else:
            out[i] = v * cdf


def gelu(x: Any, dy: Any | None) -> Any:
    """The exact GELU of ``x`` (``dy`` None), or its gradient for the upstream gradient
    ``dy``: an array of x's shape and dtype. Large arrays are split into one range per
    core."""
    # In x's memory order: views, not copies, for a convolution's channels-first output.
    out = np.empty_like(x)
    flat, out_flat = np.ravel(x, order="K"), np.ravel(out, order="K")
    if dy is not None and dy.strides != x.strides:
        dy = _copy_into(np.empty_like(x), dy)
    grad = flat if dy is None else np.ravel(dy, order="K")
    # every value is independent: split the flat range as the transforms split channels
    _by_channels(lambda lo, hi: _gelu(flat, grad, out_flat, lo, hi, dy is not None),
                 flat.size, flat.size)
    return out


def _copy_into(target: Any, source: Any) -> Any:
    target[...] = source
    return target
