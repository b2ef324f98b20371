"""2-D convolution (cross-correlation, as in every deep-learning library), NCHW.

For input x (N, C, H, W), weights w (O, C, kh, kw), stride s, dilation d and padding p:

    y[n, o, a, b] = b[o] + sum_{c, i, j} w[o, c, i, j] * xpad[n, c, a*s + i*d, b*s + j*d]

Forward is im2col plus one matrix product: the patches become the columns of a matrix
``cols`` of shape (C*kh*kw, N*Ho*Wo) and ``Y = W2 @ cols`` with ``W2 = w`` reshaped to
(O, C*kh*kw). The backward pass reuses the same two pieces:

    dW = dY @ cols.T                     (one GEMM; the course's dL/dW = dL/dZ X^T)
    db = sum of dY over n, a, b
    dX = the stride-1 convolution of dY, dilated by s and padded by d*(k-1) - p, with the
         weights flipped in space and with in/out channels swapped (the "transposed
         convolution"). It never scatters, so it needs no col2im.

Two layout choices make this fast within the array API standard (measured in
docs/benchmarks.md):

* Channels first in memory. im2col reads a (C, N, H, W) buffer, so ``cols`` is
  (C*kh*kw, N*L) and the whole batch is one GEMM, whose (O, N, ...) result is again channels
  first. The NCHW arrays users see are ``permute_dims`` views of it; element-wise layers
  keep that memory order, and the next convolution's padding copy reads it back in order.
* Contiguous patches for stride 1. Each padded plane is read as one flat row of width Wp.
  The patch row for kernel offset (i, j) is then one contiguous run starting at
  ``i*d*Wp + j*d``, if the output is computed on a "wide" grid of Ho x Wp positions whose
  last Wp - Wo columns are discarded. Copying whole runs costs about a memcpy, where
  strided 2-D slices of 14-32 floats cost about three.

On CuPy, where each of those slices is a kernel launch, one CUDA kernel writes the full
im2col matrix instead and dX is col2im of W^T dY (``_cupy_kernels``, chosen in ``_fast``).
On NumPy with numba, 3x3 stride-1 convolutions of 8 or more input channels run as Winograd
convolutions, whose GEMMs are 4x smaller (F(4x4, 3x3); 2.25x, F(2x2, 3x3), for outputs
below 4x4), and stride-1 convolutions with 1 to 3 input
channels (a first layer; on one core up to 16) are computed directly, forward, dW and dX,
from the same padded flat planes (``_numba_kernels``, chosen in ``_fast``). Depthwise
convolutions (groups == C) run numba's depthwise kernels for the forward pass, dX and dW, and
grouped ones of 8 or more channels per group run group by group through the ungrouped code,
on NumPy at the same time on the cores where the work is large enough (``_each_group``).

The options of ``torch.nn.functional.conv2d`` and ``torch.nn.Conv2d``:

* ``padding_mode`` reflect, replicate or circular pads x explicitly (each padded row and
  column gathers the input row or column it copies), then runs the zero-padding convolution
  with padding 0, fast paths included; dX folds the padded input's gradient back: each border
  row and column adds onto the one it copied (:func:`_fold_padding`).
* ``groups`` > 1 (W is (O, C / groups, kh, kw)) runs the grouped kernels below on every
  backend, block by block over the output positions so that each block stays in cache.
  Each kernel tap (i, j) reads the padded input as a view (at stride 1 one contiguous run of
  the flat padded batch). The forward pass multiplies W by the block's im2col matrix, one
  GEMM batched over the groups; depthwise (one input channel per group) it sums
  ``W[o, 0, i, j] * tap`` over the taps, a per-channel scaling each. dW is ``dY @ tap^T``
  per tap, batched over the groups; dX is the grouped forward pass of the spread, padded dY
  with W flipped and transposed within each group, as for one group.
* An unbatched (C, H, W) input gets a batch axis of 1 and loses it again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Sequence

import array_api_compat

from .._threads import map_on_cores
from ..backend import namespace
from ..errors import InputError, as_int
from ._checks import check_gradient, check_ndim, check_weights
from ._fast import cuda_kernels, depthwise_kernels, direct_kernels, winograd_kernels

Padding = tuple[int, int, int, int]  # top, bottom, left, right


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    """An int or a pair of ints (NumPy integers too, not bool) as a pair of Python ints."""
    if isinstance(value, (tuple, list)):
        pair = (as_int(value[0]), as_int(value[1])) if len(value) == 2 else (None,)
    else:
        pair = (as_int(value),) * 2
    if None in pair:
        raise InputError(f"{what}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _stride_dilation(stride: Any, dilation: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """``stride`` and ``dilation`` as pairs of ints >= 1."""
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise InputError(f"stride and dilation: expected ints >= 1, got stride {stride}, "
                         f"dilation {dilation}")
    return stride, dilation


def conv_padding(padding: Any, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> Padding:
    """Resolve ``padding`` (int, pair, 4-tuple, ``"same"`` or ``"valid"``) to 4 ints.

    ``"same"`` keeps the spatial size at stride 1; for even kernels the extra row and column
    go to the bottom and right.
    """
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise InputError(f"padding='same' needs stride 1, got stride {stride}")
        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
        return (total[0] // 2, total[0] - total[0] // 2, total[1] // 2, total[1] - total[1] // 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(as_int(p) for p in padding)
    elif as_int(padding) is not None or (isinstance(padding, (tuple, list)) and len(padding) == 2):
        ph, pw = _pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    else:
        raise InputError(f"padding: expected an int, a pair, 4 ints, 'same' or 'valid', "
                         f"got {padding!r}")
    if not all(p is not None and p >= 0 for p in pads):
        raise InputError(f"padding: expected non-negative ints, got {padding!r}")
    return pads  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                     dilation: int = 1) -> int:
    """Output length along one axis: floor((size + pads - d*(k-1) - 1) / s) + 1."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _padded_cnhw(xp: Any, x_nchw: Any, pads: Padding, spread: tuple[int, int] = (1, 1),
                 extra_rows: int = 0) -> Any:
    """Zero-padded copy of x in (C, N, Hp, Wp) memory order.

    ``spread`` > 1 places the input every ``spread`` rows and columns (the zeros in between
    dilate dY for the transposed convolution). ``extra_rows`` adds zero rows at the bottom
    so that the flat patch runs of the last rows stay in bounds.
    """
    n, c, h, w = x_nchw.shape
    sh, sw = spread
    hs, ws = (h - 1) * sh + 1, (w - 1) * sw + 1
    top, bottom, left, right = pads
    buf = xp.zeros((c, n, top + hs + bottom + extra_rows, left + ws + right),
                   dtype=x_nchw.dtype, device=x_nchw.device)
    buf[:, :, top:top + hs:sh, left:left + ws:sw] = xp.permute_dims(x_nchw, (1, 0, 2, 3))
    return buf


@dataclasses.dataclass(frozen=True)
class Patches:
    """The lowered input of one convolution, kept by the Conv2D layer for the weight gradient.

    ``kind`` is ``"full"`` (``matrix`` is the (C*kh*kw, N*Ho*Wv) im2col matrix),
    ``"rows"`` (``matrix`` is (C*kh, N*Ho*Wp): only kernel rows are unrolled, and the kw
    kernel columns are shifted views of it), ``"winograd"`` (``matrix`` is the (36, C, T)
    or, for outputs below 4x4, (16, C, T) stack of transformed input tiles) or ``"direct"`` (``matrix`` is the padded (C, N, Hp,
    Wp) input itself, see ``_numba_kernels``). ``width`` is Wv, the width of the output grid
    the columns encode. A grouped convolution keeps ``"grouped"`` (``matrix`` is its padded
    input) or ``"per_group"`` (``matrix`` is the list of each group's patches).
    """

    kind: str
    matrix: Any
    width: int


def _lowering(channels: int, kh: int, stride: tuple[int, int]) -> str:
    # Unrolling only kernel rows makes the im2col matrix kw times smaller, at the price of a
    # GEMM whose inner size is C*kh. That wins once C*kh is large enough to keep BLAS
    # efficient (batch 64, 16->16 5x5 at 14x14: forward 4.0 -> 1.9 ms, dX 4.1 -> 1.9) and
    # loses for few-channel first layers (1->16 5x5 at 28x28: forward 0.95 -> 2.0 ms).
    return "rows" if stride == (1, 1) and channels * kh >= 64 else "full"


def _lower(xp: Any, xpad: Any, kernel: tuple[int, int], out_hw: tuple[int, int],
           stride: tuple[int, int], dilation: tuple[int, int]) -> Patches:
    """Lower a padded (C, N, Hp, Wp) buffer to patches (see :class:`Patches`)."""
    c, n, hp, wp = xpad.shape
    (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel, out_hw, stride, dilation
    kind = _lowering(c, kh, stride)
    if kind == "rows":
        flat = xp.reshape(xpad, (c, n, hp * wp))
        run = ho * wp
        rows = [flat[:, :, i * dh * wp: i * dh * wp + run] for i in range(kh)]
        return Patches(kind, xp.reshape(xp.stack(rows, axis=1), (c * kh, n * run)), wp)
    if (sh, sw) == (1, 1):
        flat = xp.reshape(xpad, (c, n, hp * wp))
        run = ho * wp
        patches = [flat[:, :, i * dh * wp + j * dw: i * dh * wp + j * dw + run]
                   for i in range(kh) for j in range(kw)]
        width = wp
    else:
        patches = [xpad[:, :, i * dh: i * dh + (ho - 1) * sh + 1: sh,
                        j * dw: j * dw + (wo - 1) * sw + 1: sw]
                   for i in range(kh) for j in range(kw)]
        width = wo
    cols = xp.stack(patches, axis=1)  # (C, kh*kw, N, ...)
    return Patches(kind, xp.reshape(cols, (c * kh * kw, n * ho * width)), width)


def _apply(xp: Any, w: Any, patches: Patches, dilation: tuple[int, int]) -> Any:
    """The GEMM part of the convolution: (O, N*Ho*Wv) outputs on the patches' grid."""
    o, c, kh, kw = w.shape
    if patches.kind == "full":
        return xp.reshape(w, (o, c * kh * kw)) @ patches.matrix
    # One GEMM for all kernel columns (M = kw*O keeps BLAS efficient), then column j's block
    # is added shifted by j*dw. The shift runs past the end only for discarded wide-grid
    # columns, so each block covers the first L - shift outputs.
    by_column = xp.reshape(xp.permute_dims(w, (3, 0, 1, 2)), (kw * o, c * kh))
    z = by_column @ patches.matrix
    total = z.shape[1]
    y = z[:o, :]
    for j in range(1, kw):
        shift = j * dilation[1]
        y[:, :total - shift] += z[j * o:(j + 1) * o, shift:]  # portable: setitem writes back
    return y


def _weight_gradient(xp: Any, dy2: Any, patches: Patches, w_shape: tuple[int, ...],
                     dilation: tuple[int, int]) -> Any:
    """dW = dY @ patches^T; for row patches, one GEMM against dY shifted per kernel column."""
    o, c, kh, kw = w_shape
    m = patches.matrix
    if patches.kind == "full":
        # (m @ dy2^T)^T rather than dy2 @ m^T: OpenBLAS runs this orientation 1.2-1.8x faster
        # for the few-channel first layers that use full patches (docs/benchmarks.md).
        return xp.reshape(xp.matrix_transpose(m @ xp.matrix_transpose(dy2)), w_shape)
    total = m.shape[1]
    shifted = xp.zeros((kw, o, total), dtype=dy2.dtype, device=dy2.device)
    for j in range(kw):
        shift = j * dilation[1]
        shifted[j, :, shift:] = dy2[:, :total - shift]
    g = xp.reshape(shifted, (kw * o, total)) @ xp.matrix_transpose(m)  # (kw*O, C*kh)
    return xp.permute_dims(xp.reshape(g, (kw, o, c, kh)), (1, 2, 3, 0))


def _patches(xp: Any, x: Any, kernel: tuple[int, int], out_hw: tuple[int, int], pads: Padding,
             stride: tuple[int, int], dilation: tuple[int, int], out_channels: int) -> Patches:
    """The patches of NCHW ``x``: one CUDA kernel on CuPy, Winograd tiles for the 3x3
    convolutions numba runs and just the padded channels-first copy for its direct ones (see
    ``_fast``), else that copy lowered by :func:`_lower`."""
    fast = cuda_kernels(xp, x.dtype)
    if fast is not None:
        return Patches("full", fast.im2col(x, kernel, out_hw, stride, dilation, pads), out_hw[1])
    winograd = winograd_kernels(xp, x.dtype, (kernel, stride, dilation), x.shape[1])
    if winograd is not None:
        return Patches("winograd", winograd.winograd_patches(x, pads, out_hw), out_hw[1])
    wp = x.shape[3] + pads[2] + pads[3]
    xpad = _padded_cnhw(xp, x, pads, extra_rows=_extra_rows(kernel, stride, dilation, wp))
    if direct_kernels(xp, x.dtype, stride, x.shape[1],
                      (x.shape[1], out_channels, kernel)) is not None:
        return Patches("direct", xpad, wp)
    return _lower(xp, xpad, kernel, out_hw, stride, dilation)


def _convolve(xp: Any, w: Any, patches: Patches, batch: int, out_hw: tuple[int, int],
              dilation: tuple[int, int]) -> Any:
    """The (O, N, Ho, Wo) output on the patches: a view that drops the wide grid's extra columns."""
    grid = (w.shape[0], batch, out_hw[0], patches.width)
    return xp.reshape(_apply(xp, w, patches, dilation), grid)[:, :, :, :out_hw[1]]


def _dy_matrix(xp: Any, dy: Any) -> Any:
    """NCHW ``dy`` as the (O, N*Ho*Wo) matrix of its channels-first layout (a copy unless dy
    is a view of one)."""
    n, o, ho, wo = dy.shape
    return xp.reshape(xp.permute_dims(dy, (1, 0, 2, 3)), (o, n * ho * wo))


# Entries a stride-1 run may read past the wide grid: numba's direct kernels round their runs
# up to a multiple of the vector width (``_numba_kernels.RUN_MULTIPLE``).
_RUN_SLACK = 15


def _extra_rows(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                wp: int) -> int:
    # The last flat run of a stride-1 im2col overruns the plane by (kw - 1) * dw entries, and
    # a rounded-up run by up to _RUN_SLACK more.
    if stride != (1, 1):
        return 0
    return math.ceil(((kernel[1] - 1) * dilation[1] + _RUN_SLACK) / wp) if wp else 0


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@dataclasses.dataclass(frozen=True)
class _Conv:
    """The resolved options of one convolution call (see :func:`_resolve`)."""

    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: Padding               # as requested, in ``padding_mode``
    groups: int
    padding_mode: str
    batched: bool               # False for an unbatched (C, H, W) input
    out_hw: tuple[int, int]

    @property
    def inner_pads(self) -> Padding:
        """The zero padding the convolution itself applies: other modes pad x beforehand."""
        return self.pads if self.padding_mode == "zeros" else (0, 0, 0, 0)


def _resolve(x: Any, w: Any, b: Any | None, stride: Any, padding: Any, dilation: Any,
             groups: Any, padding_mode: Any) -> _Conv:
    """Check the arrays and options of a convolution call and resolve the options."""
    stride, dilation = _stride_dilation(stride, dilation)
    groups_int = as_int(groups)
    if groups_int is None or groups_int < 1:
        raise InputError(f"groups: expected an int >= 1, got {groups!r}")
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise InputError(f"padding_mode: expected one of {', '.join(map(repr, PADDING_MODES))}, "
                         f"got {padding_mode!r}")
    if x.ndim not in (3, 4):
        raise InputError(f"x: expected a 4-D array (N, C, H, W) or an unbatched 3-D array "
                         f"(C, H, W), got shape {tuple(x.shape)}")
    check_ndim(w, 4, "W", "(out_channels, in_channels / groups, kh, kw)")
    kernel = (w.shape[2], w.shape[3])
    pads = conv_padding(padding, kernel, stride, dilation)
    out_hw = _check_conv(x, w, b, pads, stride, dilation, groups_int)
    _check_padding_mode(x, pads, padding_mode)
    return _Conv(stride, dilation, pads, groups_int, padding_mode, x.ndim == 4, out_hw)


def _check_conv(x: Any, w: Any, b: Any | None, pads: Padding, stride: tuple[int, int],
                dilation: tuple[int, int], groups: int) -> tuple[int, int]:
    channels, h, wd = x.shape[-3:]
    o, kh, kw = w.shape[0], w.shape[2], w.shape[3]
    check_weights(x, w, b, got=channels, expected=w.shape[1] * groups, unit="input channels",
                  note=f", groups {groups}" if groups > 1 else "")
    if o % groups:
        raise InputError(f"W: expected out_channels divisible by groups {groups}, got shape "
                         f"{tuple(w.shape)}")
    ho = conv_output_size(h, kh, stride[0], pads[0], pads[1], dilation[0])
    wo = conv_output_size(wd, kw, stride[1], pads[2], pads[3], dilation[1])
    if ho < 1 or wo < 1:
        raise InputError(f"x: the kernel {(kh, kw)} (dilation {dilation}) is larger than the "
                         f"padded input {(h + pads[0] + pads[1], wd + pads[2] + pads[3])}; "
                         f"x has shape {tuple(x.shape)}, W has shape {tuple(w.shape)}")
    return ho, wo


def _check_padding_mode(x: Any, pads: Padding, mode: str) -> None:
    # As torch: a reflection must not reach past the opposite edge, a wrap not wrap twice.
    h, w = x.shape[-2], x.shape[-1]
    sizes = (h, h, w, w)
    if mode == "reflect" and any(p >= size for p, size in zip(pads, sizes)):
        raise InputError(f"padding_mode 'reflect': expected padding smaller than the input "
                         f"(H, W) = {(h, w)}, got padding {pads}")
    if mode == "circular" and any(p > size for p, size in zip(pads, sizes)):
        raise InputError(f"padding_mode 'circular': expected padding at most the input "
                         f"(H, W) = {(h, w)}, got padding {pads}")


# --- padding modes ---------------------------------------------------------------------------

def _source_positions(size: int, before: int, after: int, mode: str) -> list[int]:
    """For each position of an axis padded by ``before`` and ``after`` in ``mode``, the input
    position it copies: reflect mirrors about the edge (-1 -> 1), replicate repeats the edge,
    circular wraps around."""
    def source(p: int) -> int:
        if mode == "circular":
            return p % size
        if mode == "replicate":
            return min(max(p, 0), size - 1)
        return -p if p < 0 else (2 * (size - 1) - p if p >= size else p)  # reflect
    return [source(p) for p in range(-before, size + after)]


def _pad_input(xp: Any, x: Any, pads: Padding, mode: str) -> Any:
    """NCHW ``x`` padded in ``mode`` (reflect, replicate or circular): rows, then columns,
    gathered by their source positions."""
    top, bottom, left, right = pads
    rows = _source_positions(x.shape[2], top, bottom, mode)
    cols = _source_positions(x.shape[3], left, right, mode)
    x = xp.take(x, xp.asarray(rows, dtype=xp.int64, device=x.device), axis=2)
    return xp.take(x, xp.asarray(cols, dtype=xp.int64, device=x.device), axis=3)


def _fold_padding(xp: Any, dxpad: Any, in_hw: tuple[int, int], pads: Padding,
                  mode: str) -> Any:
    """The gradient of :func:`_pad_input`: each padded border row, then column, adds its
    gradient onto the input row or column it copied."""
    (h, w), (top, bottom, left, right) = in_hw, pads
    dx_rows = xp.asarray(dxpad[:, :, top:top + h, :], copy=True)
    for p, source in enumerate(_source_positions(h, top, bottom, mode)):
        if not top <= p < top + h:  # a border row
            dx_rows[:, :, source:source + 1, :] += dxpad[:, :, p:p + 1, :]
    dx = xp.asarray(dx_rows[:, :, :, left:left + w], copy=True)
    for q, source in enumerate(_source_positions(w, left, right, mode)):
        if not left <= q < left + w:  # a border column
            dx[:, :, :, source:source + 1] += dx_rows[:, :, :, q:q + 1]
    return dx


def _batch_input(xp: Any, x: Any, conv: _Conv) -> Any:
    """``x`` as the NCHW input of the zero-padded convolution: a batch axis added to an
    unbatched input, and padded beforehand where ``padding_mode`` is not zeros."""
    x = x if conv.batched else xp.expand_dims(x, axis=0)
    return x if conv.padding_mode == "zeros" else _pad_input(xp, x, conv.pads, conv.padding_mode)


# --- grouped convolutions ----------------------------------------------------------------------

# Values per block of the grouped kernels (channels x positions): the block's outputs stay
# in cache while all kh*kw taps add to them. Measured, forward of a depthwise 3x3 on 64
# channels at 32x32, batch 64 (loaded 2-core VM): unblocked 24 ms; 2**17 31 ms (short rows
# 300 kB apart defeat the prefetcher); 2**18 12 ms; 2**19 11 ms; 2**21 18 ms.
BLOCK_VALUES = 2**19


@dataclasses.dataclass(frozen=True)
class _Taps:
    """Where each kernel tap (i, j) reads a zero-padded (C, N, Hp, Wp) buffer, as a (C, M)
    matrix whose columns are output positions: the grouped kernels' im2col, a view per tap.

    Stride 1: the positions are the whole wide grid (N, Hp, Wp) read as one flat row per
    channel, and tap (i, j) is one contiguous run starting at ``i*dh*Wp + j*dw``; only the
    first ``M = N*Hp*Wp - reach`` positions are computed (the rest lie past the last valid
    output). The kernels then work in blocks of positions (:meth:`blocks`). Other strides:
    the (N, Ho, Wo) positions, each tap a strided slice (copied), in one block.
    """

    padded: tuple[int, int, int, int]  # C, N, Hp, Wp
    out_hw: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    kernel: tuple[int, int]

    @property
    def wide(self) -> bool:
        return self.stride == (1, 1)

    @property
    def grid(self) -> int:
        """Number of output positions on the grid (valid or not)."""
        _, n, hp, wp = self.padded
        return n * hp * wp if self.wide else n * self.out_hw[0] * self.out_hw[1]

    @property
    def positions(self) -> int:
        """M, the positions computed: the grid less the flat runs' overrun at stride 1."""
        return self.grid - self._offset(self.kernel[0] - 1, self.kernel[1] - 1)

    def blocks(self, channels: int) -> list[tuple[int, int]]:
        """(start, stop) blocks of positions for ``channels`` accumulated channels."""
        m = self.positions
        step = max(BLOCK_VALUES // max(channels, 1), 256) if self.wide else max(m, 1)
        return [(start, min(start + step, m)) for start in range(0, m, step)]

    def _offset(self, i: int, j: int) -> int:
        return (i * self.dilation[0] * self.padded[3] + j * self.dilation[1]) if self.wide else 0

    def _window(self, i: int, j: int) -> tuple[slice, slice]:
        (ho, wo), (sh, sw), (dh, dw) = self.out_hw, self.stride, self.dilation
        return (slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
                slice(j * dw, j * dw + (wo - 1) * sw + 1, sw))

    def read(self, xp: Any, buf: Any, i: int, j: int, block: tuple[int, int]) -> Any:
        """Positions ``block`` of tap (i, j) of the padded buffer ``buf``: (C, stop - start)."""
        c, (start, stop) = self.padded[0], block
        if self.wide:
            offset = self._offset(i, j)
            return xp.reshape(buf, (c, self.grid))[:, offset + start:offset + stop]
        rows, cols = self._window(i, j)  # one block: the whole grid
        return xp.reshape(buf[:, :, rows, cols], (c, self.grid))

    def outputs(self, xp: Any, y: Any) -> Any:
        """(O, grid) outputs as the (O, N, Ho, Wo) valid ones (a view at stride 1)."""
        _, n, hp, wp = self.padded
        (ho, wo), o = self.out_hw, y.shape[0]
        if self.wide:
            return xp.reshape(y, (o, n, hp, wp))[:, :, :ho, :wo]
        return xp.reshape(y, (o, n, ho, wo))

    def gradient(self, xp: Any, dy: Any) -> Any:
        """NCHW ``dy`` on the grid: (O, M), zero at the positions that are not outputs."""
        _, n, hp, wp = self.padded
        (ho, wo), o = self.out_hw, dy.shape[1]
        if not self.wide:
            return xp.reshape(xp.permute_dims(dy, (1, 0, 2, 3)), (o, self.grid))
        wide = xp.zeros((o, n, hp, wp), dtype=dy.dtype, device=dy.device)
        wide[:, :, :ho, :wo] = xp.permute_dims(dy, (1, 0, 2, 3))
        return xp.reshape(wide, (o, self.grid))[:, :self.positions]


def _grouped_taps(xp: Any, x: Any, w: Any, pads: Padding, conv: _Conv) -> tuple[Any, _Taps]:
    """The zero-padded (C, N, Hp, Wp) copy of NCHW ``x`` and its :class:`_Taps`."""
    xpad = _padded_cnhw(xp, x, pads)
    taps = _Taps(tuple(xpad.shape), conv.out_hw, conv.stride, conv.dilation,
                 (w.shape[2], w.shape[3]))
    return xpad, taps


def _block_columns(xp: Any, xpad: Any, taps: _Taps, block: tuple[int, int],
                   groups: int) -> Any:
    """The im2col matrix of one block of positions, by group: (G, Cg*kh*kw, positions),
    rows ordered (input channel, i, j) as W's (O, Cg, kh, kw) flattens."""
    kh, kw = taps.kernel
    cols = xp.stack([taps.read(xp, xpad, i, j, block) for i in range(kh) for j in range(kw)],
                    axis=1)  # (C, kh*kw, positions)
    return xp.reshape(cols, (groups, -1, block[1] - block[0]))


def _grouped_forward(xp: Any, xpad: Any, taps: _Taps, w: Any, b: Any | None,
                     groups: int) -> Any:
    """(O, grid) outputs of a grouped convolution, block by block of positions.

    Several input channels per group: the block's im2col matrix times W, one GEMM batched
    over the groups (few large GEMMs: BLAS threads stay busy). Depthwise (one input channel
    per group): the sum over taps (i, j) of ``W[o, 0, i, j] * tap``, a per-channel scaling of
    each tap while the block of outputs stays in cache."""
    o, cg, kh, kw = w.shape
    og = o // groups
    wg = xp.reshape(w, (groups, og, cg, kh, kw))
    w2 = xp.reshape(w, (groups, og, cg * kh * kw))
    y = xp.zeros((groups, og, taps.grid), dtype=w.dtype, device=w.device)
    bias = None if b is None else xp.reshape(b, (groups, og, 1))
    # a block's values: its outputs, and its im2col matrix where there is one
    for start, stop in taps.blocks(o if cg == 1 else o + cg * groups * kh * kw):
        if cg > 1:
            block = w2 @ _block_columns(xp, xpad, taps, (start, stop), groups)
        else:
            block = y[:, :, start:stop]  # a view on NumPy; written back below
            for i in range(kh):
                for j in range(kw):
                    tap = xp.reshape(taps.read(xp, xpad, i, j, (start, stop)),
                                     (groups, 1, stop - start))
                    block += wg[:, :, 0, i, j][:, :, None] * tap
        if bias is not None:  # here, while the block is in cache
            block += bias
        y[:, :, start:stop] = block
    return xp.reshape(y, (o, taps.grid))


def _grouped_weight_gradient(xp: Any, xpad: Any, taps: _Taps, dy_grid: Any,
                             w_shape: tuple[int, ...], groups: int) -> Any:
    """dW[g, :, :, i, j] = the sum over blocks of positions of dY_g @ tap_g^T: one batched
    GEMM per tap and block."""
    o, cg, kh, kw = w_shape
    og = o // groups
    dw = xp.zeros((groups, og, cg, kh, kw), dtype=dy_grid.dtype, device=dy_grid.device)
    for start, stop in taps.blocks(o):
        dyg = xp.reshape(dy_grid[:, start:stop], (groups, og, stop - start))
        for i in range(kh):
            for j in range(kw):
                tap = xp.reshape(taps.read(xp, xpad, i, j, (start, stop)),
                                 (groups, cg, stop - start))
                dw[:, :, :, i, j] += dyg @ xp.matrix_transpose(tap)
    return xp.reshape(dw, w_shape)


# --- the public kernels -----------------------------------------------------------------------

def conv2d_forward(x: Any, w: Any, b: Any | None = None, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1, groups: Any = 1, padding_mode: str = "zeros") -> Any:
    """2-D convolution of NCHW ``x`` (or unbatched (C, H, W)) with weights
    (O, C / groups, kh, kw); returns (N, O, Ho, Wo) (or (O, Ho, Wo)).

    Arguments in the order of ``torch.nn.functional.conv2d``. ``padding``: int, pair,
    4-tuple (top, bottom, left, right), ``"same"`` (stride 1) or ``"valid"``. ``stride`` and
    ``dilation``: int or pair. ``groups``: input and output channels split into that many
    groups, each convolved with its own weights (``groups == C``: depthwise).
    ``padding_mode`` (as ``torch.nn.Conv2d``): "zeros", "reflect", "replicate" or "circular".
    """
    return _conv2d_forward_with_patches(x, w, b, stride, padding, dilation, groups,
                                        padding_mode)[0]


def _conv2d_forward_with_patches(x: Any, w: Any, b: Any | None, stride: Any, padding: Any,
                                 dilation: Any, groups: Any = 1, padding_mode: str = "zeros"
                                 ) -> tuple[Any, Patches]:
    """Forward that also returns the :class:`Patches`, which the Conv2D layer keeps for dW."""
    xp = namespace(x, w, b, names=("x", "W", "b"))
    conv = _resolve(x, w, b, stride, padding, dilation, groups, padding_mode)
    x4 = _batch_input(xp, x, conv)
    if conv.groups == 1:
        y, patches = _dense_forward(xp, x4, w, b, conv.inner_pads, conv.stride, conv.dilation,
                                    conv.out_hw)
    elif _per_group(w):
        parts = _each_group(lambda group: _dense_forward(  # type: ignore[call-arg]
            xp, *group[:3], conv.inner_pads, conv.stride, conv.dilation, conv.out_hw),
            list(_groups(x4, w, b, None, conv)), x4, w)
        y = xp.concat([y_g for y_g, _ in parts], axis=1)
        patches = Patches("per_group", [p_g for _, p_g in parts], 0)
    else:
        xpad, taps = _grouped_taps(xp, x4, w, conv.inner_pads, conv)
        depthwise = depthwise_kernels(xp, x.dtype, conv.groups, x4.shape[1])
        if depthwise is not None:  # see _fast
            y = depthwise.depthwise_convolution(xpad, w, b, conv.out_hw, conv.stride,
                                                conv.dilation, conv.groups)
        else:
            y = taps.outputs(xp, _grouped_forward(xp, xpad, taps, w, b, conv.groups))
        y, patches = xp.permute_dims(y, (1, 0, 2, 3)), Patches("grouped", xpad, xpad.shape[3])
    return (y if conv.batched else y[0, ...]), patches


def _dense_forward(xp: Any, x: Any, w: Any, b: Any | None, pads: Padding,
                   stride: tuple[int, int], dilation: tuple[int, int],
                   out_hw: tuple[int, int]) -> tuple[Any, Patches]:
    """The forward pass with one group: through the fast paths where they apply."""
    kernel = (w.shape[2], w.shape[3])
    patches = _patches(xp, x, kernel, out_hw, pads, stride, dilation, w.shape[0])
    fast: Any  # the kernels module that made the patches (so not None)
    if patches.kind == "winograd":  # the bias is added by the output transform
        fast = winograd_kernels(xp, x.dtype, (kernel, stride, dilation), x.shape[1])
        return fast.winograd_forward(w, patches.matrix, b, x.shape[0], out_hw), patches
    if patches.kind == "direct":  # the bias starts each output's sums
        fast = direct_kernels(xp, x.dtype, stride, x.shape[1],
                              (x.shape[1], w.shape[0], kernel))
        y = fast.direct_convolution(patches.matrix, w, b, out_hw, dilation)
        return xp.permute_dims(y, (1, 0, 2, 3)), patches
    y = _convolve(xp, w, patches, x.shape[0], out_hw, dilation)
    if b is not None:
        y = y + b[:, None, None, None]
    return xp.permute_dims(y, (1, 0, 2, 3)), patches


def conv2d_backward(x: Any, w: Any, dy: Any, stride: Any = 1, padding: Any = 0,
                    dilation: Any = 1, groups: Any = 1, padding_mode: str = "zeros", *,
                    patches: Any = None, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dW, db)`` of :func:`conv2d_forward` for upstream gradient ``dy``.

    ``patches`` are the forward's :class:`Patches` if the caller kept them (the Conv2D layer
    does); without them they are recomputed from ``x``. ``input_grad=False`` skips dx (None).
    For a ``padding_mode`` other than zeros, dx is the gradient of the padded input folded
    back: each border row and column adds onto the input row or column it copied.
    """
    xp = namespace(x, w, dy, names=("x", "W", "dy"))
    conv = _resolve(x, w, None, stride, padding, dilation, groups, padding_mode)
    y_shape = (w.shape[0], *conv.out_hw)
    check_gradient(x, dy, (x.shape[0], *y_shape) if conv.batched else y_shape)
    x4 = _batch_input(xp, x, conv)
    dy4 = dy if conv.batched else xp.expand_dims(dy, axis=0)
    if conv.groups == 1:
        dx, dw, db = _dense_backward(xp, x4, w, dy4, conv.inner_pads, conv.stride,
                                     conv.dilation, conv.out_hw, patches, input_grad)
    elif _per_group(w):
        kept = (patches.matrix if patches is not None and patches.kind == "per_group"
                else [None] * conv.groups)
        parts = _each_group(lambda group: _dense_backward(
            xp, group[0][0], group[0][1], group[0][3], conv.inner_pads, conv.stride,
            conv.dilation, conv.out_hw, group[1], input_grad),
            list(zip(_groups(x4, w, None, dy4, conv), kept)), x4, w)
        dx = xp.concat([dx_g for dx_g, _, _ in parts], axis=1) if input_grad else None
        dw = xp.concat([dw_g for _, dw_g, _ in parts], axis=0)
        db = xp.concat([db_g for _, _, db_g in parts], axis=0)
    else:
        dx, dw, db = _grouped_backward(xp, x4, w, dy4, conv, patches, input_grad)
    if dx is not None and conv.padding_mode != "zeros":
        dx = _fold_padding(xp, dx, tuple(x.shape[-2:]), conv.pads, conv.padding_mode)
    if dx is not None and not conv.batched:
        dx = dx[0, ...]
    return dx, dw, db


# With this many input channels per group, each group's convolution is large enough for the
# ungrouped fast paths (Winograd from 8 channels): 4 groups of 16 channels at batch 64 took
# the forward pass from 42-44 to 26-35 ms, dX and dW from 94-107 to 66-70 ms.
_PER_GROUP_CHANNELS = 8


def _per_group(w: Any) -> bool:
    """Whether a grouped convolution runs group by group through the ungrouped kernels."""
    return w.shape[1] >= _PER_GROUP_CHANNELS


# Groups are independent: on NumPy, with enough work, they run at the same time, one per core
# (_threads.map_on_cores), each with one BLAS thread. Each group's 16-channel GEMMs are too
# small for OpenBLAS to split well, and the Winograd transforms run on one thread anyway: 4
# groups of 16 channels at 32x32, batch 64, two cores: forward 42 -> 23 ms, dX and dW
# 73 -> 45 ms. Below this many multiply-adds the threads' start costs more than they save.
_THREADED_GROUP_MACS = 2**24


def _each_group(function: Any, groups: list[Any], x: Any, w: Any) -> list[Any]:
    """``function`` of each group's arguments in ``groups``, on the cores where it pays."""
    macs = x.shape[0] * x.shape[2] * x.shape[3] * math.prod(w.shape)
    if array_api_compat.is_numpy_array(x) and macs >= _THREADED_GROUP_MACS:
        return map_on_cores(function, groups)
    return [function(group) for group in groups]


def _groups(x: Any, w: Any, b: Any | None, dy: Any | None,
            conv: _Conv) -> Iterator[tuple[Any, Any, Any, Any]]:
    """Each group's (x, W, b, dy) slices: its input channels, its output channels' weights,
    biases and upstream gradients (None where not given)."""
    cg, og = w.shape[1], w.shape[0] // conv.groups
    for g in range(conv.groups):
        outs = slice(g * og, (g + 1) * og)
        yield (x[:, g * cg:(g + 1) * cg, ...], w[outs, ...],
               None if b is None else b[outs], None if dy is None else dy[:, outs, ...])


def _grouped_dx(xp: Any, dy: Any, w: Any, in_hw: tuple[int, int], pads: Padding,
                stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> Any:
    """dX alone of a grouped convolution, by the path its backward pass takes: group by
    group through the ungrouped kernels, or the blocked grouped kernel."""
    if not _per_group(w):
        return _grouped_input_gradient(xp, dy, w, in_hw, pads, stride, dilation, groups)
    og = w.shape[0] // groups
    return xp.concat(_each_group(lambda g: _input_gradient(
        xp, dy[:, g * og:(g + 1) * og, ...], w[g * og:(g + 1) * og, ...], in_hw, pads, stride,
        dilation), list(range(groups)), dy, w), axis=1)


def _grouped_backward(xp: Any, x: Any, w: Any, dy: Any, conv: _Conv, patches: Any,
                      input_grad: bool) -> tuple[Any, Any, Any]:
    """dx (of ``x``, NCHW), dW and db of a grouped convolution, from the taps of the
    forward's padded buffer (kept in ``patches`` or made afresh)."""
    pads = conv.inner_pads
    if patches is not None and patches.kind == "grouped":
        xpad = patches.matrix
        taps = _Taps(tuple(xpad.shape), conv.out_hw, conv.stride, conv.dilation,
                     (w.shape[2], w.shape[3]))
    else:
        xpad, taps = _grouped_taps(xp, x, w, pads, conv)
    depthwise = depthwise_kernels(xp, x.dtype, conv.groups, x.shape[1])
    if depthwise is not None:  # see _fast
        dw = depthwise.depthwise_weight_gradient(xpad, dy, tuple(w.shape), conv.stride,
                                                 conv.dilation, conv.groups)
    else:
        dw = _grouped_weight_gradient(xp, xpad, taps, taps.gradient(xp, dy), tuple(w.shape),
                                      conv.groups)
    db = xp.sum(dy, axis=(0, 2, 3))
    if not input_grad:
        return None, dw, db
    return _grouped_input_gradient(xp, dy, w, (x.shape[2], x.shape[3]), pads, conv.stride,
                                   conv.dilation, conv.groups), dw, db


def _dense_backward(xp: Any, x: Any, w: Any, dy: Any, pads: Padding, stride: tuple[int, int],
                    dilation: tuple[int, int], out_hw: tuple[int, int], patches: Any,
                    input_grad: bool) -> tuple[Any, Any, Any]:
    """dx, dW and db with one group: through the fast paths where they apply."""
    kernel = (w.shape[2], w.shape[3])
    (ho, wo), (n, c, h, wd), o = out_hw, x.shape, w.shape[0]
    # Winograd and direct patches are used by the kernels that made them, unless a
    # portable_kernels() block now rules those out: then the portable patches are made afresh.
    # (Any: used only where patches.kind says they made the patches, so not None)
    winograd: Any = winograd_kernels(xp, x.dtype, (kernel, stride, dilation), c)
    direct: Any = direct_kernels(xp, x.dtype, stride, c, (c, o, kernel))
    if (patches is None or patches.kind == "grouped"
            or (patches.kind == "winograd" and winograd is None)
            or (patches.kind == "direct" and direct is None)):
        patches = _patches(xp, x, kernel, (ho, wo), pads, stride, dilation, o)
    dm = dy2 = None
    if patches.kind == "winograd":
        dm = winograd.winograd_output_gradient(dy)  # the first step of dW and (mostly) dX
        dw, db = winograd.winograd_weight_gradient(dm, patches.matrix, tuple(w.shape))
    elif patches.kind == "direct":
        dw = direct.direct_weight_gradient(patches.matrix, dy, tuple(w.shape), dilation)
        db = xp.sum(dy, axis=(0, 2, 3))
    else:
        # dW = dY @ patches^T, with dY laid out on the same (possibly wide) grid as the patches.
        if patches.width == wo:
            dy2 = _dy_matrix(xp, dy)
        else:
            dy_cnhw = xp.zeros((o, n, ho, patches.width), dtype=dy.dtype, device=dy.device)
            dy_cnhw[:, :, :, :wo] = xp.permute_dims(dy, (1, 0, 2, 3))
            dy2 = xp.reshape(dy_cnhw, (o, n * ho * patches.width))
        dw = _weight_gradient(xp, dy2, patches, tuple(w.shape), dilation)
        db = xp.sum(dy2, axis=1)

    if not input_grad:
        return None, dw, db
    # dX reuses dY's matrix where it has no wide grid (CuPy's col2im needs it too).
    plain = dy2 if patches.width == wo else None
    return _input_gradient(xp, dy, w, (h, wd), pads, stride, dilation, plain, dm), dw, db


def _input_gradient(xp: Any, dy: Any, w: Any, in_hw: tuple[int, int], pads: Padding,
                    stride: tuple[int, int], dilation: tuple[int, int], dy2: Any = None,
                    dm: Any = None) -> Any:
    """dX by the path this backend takes: Winograd where numba runs the window with both the
    input and the output channels (dX's GEMMs are C x O) numerous enough, else
    :func:`_conv2d_input_gradient`. ``dy2`` and ``dm``: dY's plain matrix and Winograd
    transform if the caller has them."""
    window = ((w.shape[2], w.shape[3]), stride, dilation)
    winograd = winograd_kernels(xp, dy.dtype, window, min(w.shape[0], w.shape[1]))
    if winograd is not None:
        dm = winograd.winograd_output_gradient(dy) if dm is None else dm
        return winograd.winograd_input_gradient(dm, w, dy.shape[0], tuple(dy.shape[2:]), in_hw,
                                                pads)
    return _conv2d_input_gradient(xp, dy, w, in_hw, pads, stride, dilation, dy2)


def _conv2d_input_gradient(xp: Any, dy: Any, w: Any, in_hw: tuple[int, int], pads: Padding,
                           stride: tuple[int, int], dilation: tuple[int, int],
                           dy2: Any = None) -> Any:
    """dX as the stride-1 convolution of the dilated, padded dY with flipped, transposed W
    (on CuPy: col2im, see ``_fast``). ``dy2``: dY's :func:`_dy_matrix` if the caller has it."""
    fast = cuda_kernels(xp, dy.dtype)
    if fast is not None:
        dy2 = _dy_matrix(xp, dy) if dy2 is None else dy2
        return fast.conv2d_input_gradient(dy2, tuple(dy.shape), w, in_hw, pads, stride,
                                          dilation)
    (h, wd), (kh, kw) = in_hw, (w.shape[2], w.shape[3])
    qpads, crop = _transposed_padding(in_hw, (dy.shape[2], dy.shape[3]), (kh, kw), pads,
                                      stride, dilation)
    wp = (dy.shape[3] - 1) * stride[1] + 1 + qpads[2] + qpads[3]
    one = (1, 1)
    dypad = _padded_cnhw(xp, dy, qpads, spread=stride,
                         extra_rows=_extra_rows((kh, kw), one, dilation, wp))
    w_t = xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3))  # (C, O, kh, kw)
    out_hw = (h + crop[0] + crop[1], wd + crop[2] + crop[3])
    # dX convolves dY's O channels down to the C of x: few channels on the output side
    direct = direct_kernels(xp, dy.dtype, one, w_t.shape[0],
                            (w_t.shape[1], w_t.shape[0], (kh, kw)))
    if direct is not None:  # few input channels: see _fast
        dx = direct.direct_convolution(dypad, w_t, None, out_hw, dilation)
    else:
        patches = _lower(xp, dypad, (kh, kw), out_hw, one, dilation)
        dx = _convolve(xp, w_t, patches, dy.shape[0], out_hw, dilation)
    dx = dx[:, :, crop[0]:crop[0] + h, crop[2]:crop[2] + wd]
    return xp.permute_dims(dx, (1, 0, 2, 3))


def _transposed_padding(in_hw: tuple[int, int], out_hw: tuple[int, int],
                        kernel: tuple[int, int], pads: Padding, stride: tuple[int, int],
                        dilation: tuple[int, int]) -> tuple[Padding, Padding]:
    """How dX's transposed convolution pads the spread dY, and what it crops off afterwards
    (top, bottom, left, right each)."""
    (h, wd), (ho, wo), (kh, kw) = in_hw, out_hw, kernel
    reach = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
    # Input rows/columns past the last window get no gradient from it: pad dY further there.
    rest = (h + pads[0] + pads[1] - reach[0] - 1 - (ho - 1) * stride[0],
            wd + pads[2] + pads[3] - reach[1] - 1 - (wo - 1) * stride[1])
    full = (reach[0] - pads[0], reach[0] - pads[1] + rest[0],
            reach[1] - pads[2], reach[1] - pads[3] + rest[1])
    # Padding larger than the kernel's reach means cropping: pad by 0 and slice afterwards.
    top, bottom, left, right = full
    return ((max(top, 0), max(bottom, 0), max(left, 0), max(right, 0)),
            (max(-top, 0), max(-bottom, 0), max(-left, 0), max(-right, 0)))


def _grouped_input_gradient(xp: Any, dy: Any, w: Any, in_hw: tuple[int, int], pads: Padding,
                            stride: tuple[int, int], dilation: tuple[int, int],
                            groups: int) -> Any:
    """dX of a grouped convolution as for one group: the stride-1 grouped convolution of the
    spread, padded dY with W flipped and its in/out channels swapped within each group."""
    o, cg, kh, kw = w.shape
    og = o // groups
    qpads, crop = _transposed_padding(in_hw, (dy.shape[2], dy.shape[3]), (kh, kw), pads,
                                      stride, dilation)
    dypad = _padded_cnhw(xp, dy, qpads, spread=stride)
    flipped = xp.reshape(xp.flip(w, axis=(2, 3)), (groups, og, cg, kh, kw))
    w_t = xp.reshape(xp.permute_dims(flipped, (0, 2, 1, 3, 4)), (groups * cg, og, kh, kw))
    (h, wd) = in_hw
    out_hw = (h + crop[0] + crop[1], wd + crop[2] + crop[3])
    depthwise = depthwise_kernels(xp, dy.dtype, groups, groups * cg)
    if depthwise is not None:  # see _fast
        dx = depthwise.depthwise_convolution(dypad, w_t, None, out_hw, (1, 1), dilation, groups)
    else:
        taps = _Taps(tuple(dypad.shape), out_hw, (1, 1), dilation, (kh, kw))
        dx = taps.outputs(xp, _grouped_forward(xp, dypad, taps, w_t, None, groups))
    dx = dx[:, :, crop[0]:crop[0] + h, crop[2]:crop[2] + wd]
    return xp.permute_dims(dx, (1, 0, 2, 3))
