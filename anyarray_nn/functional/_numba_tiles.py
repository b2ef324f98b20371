"""Register-tiled direct convolution for numba: the forward pass (also dX) and dW of a
stride-1 convolution with 8 or more output channels and 128 or more taps per output
(``_numba_kernels``'s direct convolutions call these). They run on one thread: splitting a layer's images over two
threads gave no steady gain in an unsplit training step (OpenBLAS's threads, spinning after
each GEMM, take the second core; docs/benchmarks.md).

Why a tile. numba vectorizes an innermost loop over memory. A direct convolution written
that way adds each tap's weighted run of the input to a run of outputs held in memory, so
every multiply-add also loads and stores an output: the loads and stores, not the arithmetic,
set the pace (about 50 GFLOP/s on one core of the project's VM, where PyTorch's oneDNN
kernels reach 110-120). A tile keeps ``count`` outputs for 16 output channels in vector
registers instead, as oneDNN's kernels and every GEMM micro-kernel do:

    acc[q] (16 channels of output q) += W[tap, 16 channels] * x[tap's input for output q]

one vector load of 16 weights, then ``count`` multiply-adds, each with one input value
broadcast to 16 lanes; the outputs leave the registers once, after every tap of every
input channel. LLVM promotes a tile on the stack to registers only when every access to it
has a constant index, which numba cannot express, so four small intrinsics write those
accesses as LLVM IR (:func:`_tile` allocates, :func:`_tile_fill`, :func:`_tile_fma`,
:func:`_tile_store`); the loops around them are ordinary numba code. The tile's ``count``
and the input's layout within a tile are compile-time constants (a kernel is compiled for
each, :func:`_forward_kernel`, :func:`_weight_kernel`).

The two kernels differ only in what the tile holds:

* forward (and dX, the transposed convolution): ``count`` consecutive outputs of one output
  row; the taps' inputs for them are ``count`` consecutive values of a padded plane row.
* dW: the taps of ``rows`` kernel rows (``count = rows * kw``) for 16 output channels, summed
  over every output position: the 16 channels' dY at one position (one vector load, dY laid
  out by position, channels last) times the input under each tap.

MNIST's 16 -> 16 5x5 layer at batch 32 (one core, with the padding copy): forward 1.58 ->
0.90 ms, backward 3.03 -> 1.77; PyTorch's oneDNN forward 0.68 (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


LANES = 16  # output channels per tile: one AVX-512 vector of float32
# Where a tile beats ``_numba_kernels``' paired runs (batch 32, one core): with 8 or more
# output channels (fewer leave most of a tile's lanes empty) and 128 or more taps per output
# (16 -> 16 3x3: forward 0.50 -> 0.38 ms; 8 -> 16 5x5: 0.75 -> 0.47). A first layer's 25 or
# 75 taps leave too little work per tile for its fill and store (3 -> 16 5x5 at 32x32:
# 1.01 -> 1.20 ms; 1 -> 16 at 28x28: 0.36 -> 0.65).
MIN_CHANNELS = 8
MIN_TAPS = 128


def _vector(context: Any, dtype: Any) -> ir.VectorType:
    return ir.VectorType(context.get_data_type(dtype), LANES)


def _tile_vector(builder: Any, tile: Any, q: int, vector: ir.VectorType) -> Any:
    """Pointer to vector ``q`` of a tile (a constant index: the tile stays in registers)."""
    return builder.gep(builder.bitcast(tile, vector.as_pointer()), [ir.Constant(ir.IntType(64), q)])


def _element(context: Any, builder: Any, array_type: Any, array: Any, index: Any) -> Any:
    """Pointer to element ``index`` of a 1-D contiguous array."""
    return builder.gep(context.make_array(array_type)(context, builder, array).data, [index])


@intrinsic
def _tile(typingctx: Any, count: Any, like: Any) -> Any:  # pragma: no cover - compile time
    """An uninitialized tile of ``count`` vectors of ``like``'s dtype, on the stack."""
    if not isinstance(count, types.IntegerLiteral):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        vector = _vector(context, like.dtype)
        tile = cgutils.alloca_once(builder, ir.ArrayType(vector, count.literal_value))
        return builder.bitcast(tile, vector.element.as_pointer())
    return types.CPointer(like.dtype)(count, like), codegen


@intrinsic
def _tile_fill(typingctx: Any, tile: Any, count: Any, source: Any,
               index: Any) -> Any:  # pragma: no cover - compile time
    """Every vector of the tile set to ``source[index:index + LANES]``."""
    if not isinstance(count, types.IntegerLiteral):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> None:
        vector = _vector(context, tile.dtype)
        start = _element(context, builder, source, args[2], args[3])
        value = builder.load(builder.bitcast(start, vector.as_pointer()), align=1)
        for q in range(count.literal_value):
            builder.store(value, _tile_vector(builder, args[0], q, vector))
    return types.void(tile, count, source, index), codegen


@intrinsic
def _tile_fma(typingctx: Any, tile: Any, count: Any, cols: Any, w: Any, w_index: Any, x: Any,
              x_index: Any, row_step: Any, col_step: Any) -> Any:  # pragma: no cover
    """``tile[q] += w[w_index:w_index + LANES] * x[x_index + (q // cols) * row_step +
    (q % cols) * col_step]`` for every q < count: one vector load, count fused
    multiply-adds with a broadcast input each."""
    if not (isinstance(count, types.IntegerLiteral) and isinstance(cols, types.IntegerLiteral)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> None:
        acc, _, _, w_array, w_at, x_array, x_at, rows, step = args
        vector = _vector(context, tile.dtype)
        kind = "f32" if vector.element == ir.FloatType() else "f64"
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{LANES}{kind}")
        weights = builder.load(builder.bitcast(
            _element(context, builder, w, w_array, w_at), vector.as_pointer()), align=1)
        lanes = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
        width = cols.literal_value
        for q in range(count.literal_value):
            offset = builder.add(builder.mul(rows, ir.Constant(rows.type, q // width)),
                                 builder.mul(step, ir.Constant(step.type, q % width)))
            value = builder.load(_element(context, builder, x, x_array,
                                          builder.add(x_at, offset)))
            one = builder.insert_element(ir.Constant(vector, ir.Undefined), value,
                                         ir.Constant(ir.IntType(32), 0))
            broadcast = builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined), lanes)
            target = _tile_vector(builder, acc, q, vector)
            builder.store(builder.call(fma, [weights, broadcast, builder.load(target)]), target)
    return types.void(tile, count, cols, w, w_index, x, x_index, row_step, col_step), codegen


@intrinsic
def _tile_store(typingctx: Any, tile: Any, count: Any, out: Any) -> Any:  # pragma: no cover
    """``out[q * LANES:(q + 1) * LANES] = tile[q]`` for every q < count."""
    if not isinstance(count, types.IntegerLiteral):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> None:
        vector = _vector(context, tile.dtype)
        for q in range(count.literal_value):
            at = _element(context, builder, out, args[2], ir.Constant(ir.IntType(64), q * LANES))
            builder.store(builder.load(_tile_vector(builder, args[0], q, vector)),
                          builder.bitcast(at, vector.as_pointer()), align=1)
    return types.void(tile, count, out), codegen


@functools.cache
def _forward_kernel(count: int) -> Any:
    """The forward kernel for tiles of ``count`` consecutive outputs of a row."""

    @numba.njit(cache=True, nogil=True)
    def forward(x: Any, offsets: Any, weights: Any, bias: Any, width: int,
                out: Any) -> None:  # pragma: no cover - compiled
        # x (K*N*L,): K planes of N images, each plane L values (rows of ``width``);
        # offsets (T,): each tap's start within a plane; weights (K*T*C16,), tap-major with
        # the output channels padded to C16 (a multiple of LANES); bias (C16,);
        # out (O, N, Ho, Wo)
        channels, images, ho, wo = out.shape
        taps = offsets.shape[0]
        padded = bias.shape[0]
        planes = weights.shape[0] // (taps * padded)
        size = x.shape[0] // (planes * images)
        tile = _tile(count, weights)  # type: ignore[call-arg, var-annotated]  # intrinsic
        part = np.empty(count * LANES, dtype=out.dtype)
        for first in range(0, channels, LANES):
            lanes = min(LANES, channels - first)
            for n in range(images):
                for r in range(ho):
                    for c in range(0, wo, count):
                        _tile_fill(tile, count, bias, first)
                        for k in range(planes):
                            row = (k * images + n) * size + r * width + c
                            for t in range(taps):
                                _tile_fma(tile, count, count, weights,
                                          (k * taps + t) * padded + first, x, row + offsets[t],
                                          0, 1)
                        _tile_store(tile, count, part)
                        for o in range(lanes):  # each output plane's row in order
                            for q in range(min(count, wo - c)):
                                out[first + o, n, r, c + q] = part[q * LANES + o]
    return forward


@functools.cache
def _weight_kernel(count: int, cols: int) -> Any:
    """The dW kernel for tiles of ``count // cols`` kernel rows of ``cols`` taps each."""

    @numba.njit(cache=True, nogil=True)
    def weight_gradient(x: Any, dy: Any, width: int, sizes: Any,
                        grad: Any) -> None:  # pragma: no cover - compiled
        # x (K*N*L,) as above; dy (N*Ho*Wo*C16,): dY by position, channels last, padded to
        # C16; sizes: the dilation (dh, dw) and the output's (Ho, Wo); grad (O, K, kh, kw),
        # every entry written
        channels, planes, kh, kw = grad.shape
        rows = count // cols
        padded = padded_channels(channels)
        ho, wo = sizes[2], sizes[3]
        images = dy.shape[0] // (padded * ho * wo)
        size = x.shape[0] // (planes * images)
        row_step, col_step = sizes[0] * width, sizes[1]
        tile = _tile(count, dy)  # type: ignore[call-arg, var-annotated]  # intrinsic
        part = np.empty(count * LANES, dtype=grad.dtype)
        zeros = np.zeros(LANES, dtype=grad.dtype)
        for first in range(0, channels, LANES):
            lanes = min(LANES, channels - first)
            for k in range(planes):
                for i0 in range(0, kh, rows):
                    _tile_fill(tile, count, zeros, 0)
                    for n in range(images):
                        plane = (k * images + n) * size + i0 * row_step
                        at = n * ho * wo * padded + first
                        for r in range(ho):
                            for c in range(wo):
                                _tile_fma(tile, count, cols, dy, at, x, plane + r * width + c,
                                          row_step, col_step)
                                at += padded
                    _tile_store(tile, count, part)
                    for q in range(count):
                        for o in range(lanes):
                            grad[first + o, k, i0 + q // cols, q % cols] = part[q * LANES + o]
    return weight_gradient


@numba.njit(cache=True)
def padded_channels(channels: int) -> int:
    """``channels`` rounded up to whole tiles of LANES: the weights', bias's and dY's width."""
    return -(-channels // LANES) * LANES


def applies(channels: int, out_channels: int, kernel: tuple[int, int]) -> bool:
    """Whether a stride-1 convolution from ``channels`` to ``out_channels`` with ``kernel``
    runs on tiles (see MIN_CHANNELS and MIN_TAPS)."""
    return out_channels >= MIN_CHANNELS and channels * kernel[0] * kernel[1] >= MIN_TAPS


@functools.cache
def _registers() -> tuple[int, int]:
    """The host's vector registers: how many, and their bytes (what numba compiles for)."""
    import llvmlite.binding
    features = llvmlite.binding.get_host_cpu_features()
    if features.get("avx512f"):
        return 32, 64
    return (16, 32) if features.get("avx") else (16, 16)


def _most(dtype: Any) -> int:
    """Vectors per tile: the registers that hold them, with 4 left for the operands (28 of
    AVX-512's 32 for float32; 16 float64 values take two registers, on AVX2 16 float32 two
    of its 16)."""
    count, size = _registers()
    per_vector = -(-LANES * np.dtype(dtype).itemsize // size)
    return max(1, (count - 4) // per_vector)


def forward_tile(wo: int, dtype: Any) -> int:
    """Outputs per forward tile for rows of ``wo``: the rows split into equal tiles of at
    most 16 (and :func:`_most`; 14 for 28 columns, 16 for 32 with float32 on AVX-512), so
    that no tile computes many columns that are thrown away."""
    tiles = -(-wo // min(16, _most(dtype)))
    return -(-wo // tiles)


def weight_rows(kh: int, kw: int, dtype: Any) -> int:
    """Kernel rows per dW tile: the most that divide ``kh`` with at most :func:`_most` taps
    (28 for float32 on AVX-512)."""
    most = max(1, _most(dtype) // kw)
    return max(d for d in range(1, kh + 1) if kh % d == 0 and d <= most)


def convolution(xpad: Any, w: Any, b: Any | None, out_hw: tuple[int, int],
                dilation: tuple[int, int]) -> Any | None:
    """The stride-1 convolution of the padded (K, N, Hp, Wp) C-contiguous buffer ``xpad``
    with ``w`` (O, K, kh, kw) and bias ``b``: (O, N, Ho, Wo), or None where the tiles do not
    pay (see MIN_CHANNELS and MIN_TAPS) or a tile's last columns would read past the buffer
    (the caller's paired runs then compute it)."""
    k, n, hp, wp = xpad.shape
    o, _, kh, kw = w.shape
    ho, wo = out_hw
    count = forward_tile(wo, xpad.dtype)
    offsets = np.array([i * dilation[0] * wp + j * dilation[1]
                        for i in range(kh) for j in range(kw)], dtype=np.int64)
    reach = (ho - 1) * wp + -(-wo // count) * count - 1 + int(offsets.max())
    if not applies(k, o, (kh, kw)) or reach >= hp * wp:
        return None
    padded = padded_channels(o)
    weights = np.zeros((k, kh * kw, padded), dtype=xpad.dtype)
    weights[:, :, :o] = np.permute_dims(np.reshape(w, (o, k, kh * kw)), (1, 2, 0))
    bias = np.zeros(padded, dtype=xpad.dtype)
    if b is not None:
        bias[:o] = b
    out = np.empty((o, n, ho, wo), dtype=xpad.dtype)
    _forward_kernel(count)(np.reshape(xpad, -1), offsets, np.reshape(weights, -1), bias, wp,
                           out)
    return out


def weight_gradient(xpad: Any, dy: Any, w_shape: tuple[int, ...],
                    dilation: tuple[int, int]) -> Any | None:
    """dW (O, K, kh, kw) of :func:`convolution` from NCHW ``dy`` (any strides), or None
    where the tiles do not pay (see MIN_CHANNELS and MIN_TAPS)."""
    k, n, hp, wp = xpad.shape
    o, _, kh, kw = w_shape
    if not applies(k, o, (kh, kw)) or kw > _most(xpad.dtype):
        return None
    ho, wo = dy.shape[2], dy.shape[3]
    padded = padded_channels(o)
    by_position = np.zeros((n, ho, wo, padded), dtype=xpad.dtype)
    by_position[..., :o] = np.permute_dims(dy, (0, 2, 3, 1))
    rows = weight_rows(kh, kw, xpad.dtype)
    sizes = np.array([dilation[0], dilation[1], ho, wo], dtype=np.int64)
    grad = np.empty(w_shape, dtype=xpad.dtype)
    _weight_kernel(rows * kw, kw)(np.reshape(xpad, -1), np.reshape(by_position, -1), wp,
                                  sizes, grad)
    return grad
