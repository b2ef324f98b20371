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
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..backend import namespace
from ..errors import InputError
from ._checks import check_floating, check_gradient, check_ndim, check_same_dtype

Padding = tuple[int, int, int, int]  # top, bottom, left, right


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise InputError(f"{what}: expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


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
    if isinstance(padding, int) or (isinstance(padding, (tuple, list)) and len(padding) == 2):
        ph, pw = _pair(padding, "padding")
        pads = (ph, ph, pw, pw)
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:
        pads = tuple(padding)
    else:
        raise InputError(f"padding: expected an int, a pair, 4 ints, 'same' or 'valid', "
                         f"got {padding!r}")
    if not all(isinstance(p, int) and p >= 0 for p in pads):
        raise InputError(f"padding: expected non-negative ints, got {padding!r}")
    return pads  # type: ignore[return-value]


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                     dilation: int = 1) -> int:
    """Output length along one axis: floor((size + pads - d*(k-1) - 1) / s) + 1."""
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _check_conv(x: Any, w: Any, b: Any | None, pads: Padding, stride: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    check_ndim(x, 4, "x", "(N, C, H, W)")
    check_ndim(w, 4, "W", "(out_channels, in_channels, kh, kw)")
    check_floating(w, "W")
    check_same_dtype(x, w, "x", "W")
    if x.shape[1] != w.shape[1]:
        raise InputError(f"x: expected {w.shape[1]} input channels (W has shape "
                         f"{tuple(w.shape)}), got shape {tuple(x.shape)}")
    if b is not None:
        check_same_dtype(b, w, "b", "W")
        if tuple(b.shape) != (w.shape[0],):
            raise InputError(f"b: expected shape ({w.shape[0]},), got {tuple(b.shape)}")
    if min(stride) < 1 or min(dilation) < 1:
        raise InputError(f"stride and dilation: expected ints >= 1, got stride {stride}, "
                         f"dilation {dilation}")
    h, wd = x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    ho = conv_output_size(h, kh, stride[0], pads[0], pads[1], dilation[0])
    wo = conv_output_size(wd, kw, stride[1], pads[2], pads[3], dilation[1])
    if ho < 1 or wo < 1:
        raise InputError(f"x: the kernel {(kh, kw)} (dilation {dilation}) is larger than the "
                         f"padded input {(h + pads[0] + pads[1], wd + pads[2] + pads[3])}; "
                         f"x has shape {tuple(x.shape)}, W has shape {tuple(w.shape)}")
    return ho, wo


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


def _im2col(xp: Any, xpad: Any, kernel: tuple[int, int], out_hw: tuple[int, int],
            stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[Any, int]:
    """Patches of a padded (C, N, Hp, Wp) buffer as a (C*kh*kw, N*Ho*Wv) matrix.

    Returns the matrix and Wv, the width of the output grid it encodes: Wp for stride 1
    (the wide grid of contiguous runs; columns Wo..Wp-1 are discarded later), Wo otherwise.
    """
    c, n, hp, wp = xpad.shape
    (kh, kw), (ho, wo), (sh, sw), (dh, dw) = kernel, out_hw, stride, dilation
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
    return xp.reshape(cols, (c * kh * kw, n * ho * width)), width


def _conv_cnhw(xp: Any, xpad: Any, w2: Any, kernel: tuple[int, int], out_hw: tuple[int, int],
               stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[Any, Any, int]:
    """One GEMM over a padded (C, N, Hp, Wp) buffer: returns (y_cnhw, cols, Wv).

    ``y_cnhw`` has shape (O, N, Ho, Wo), a view that drops the wide grid's extra columns.
    """
    cols, width = _im2col(xp, xpad, kernel, out_hw, stride, dilation)
    ho, wo = out_hw
    y = xp.reshape(w2 @ cols, (w2.shape[0], xpad.shape[1], ho, width))
    return y[:, :, :, :wo], cols, width


def _extra_rows(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                wp: int) -> int:
    # The last flat run of a stride-1 im2col overruns the plane by (kw - 1) * dw entries.
    if stride != (1, 1):
        return 0
    return math.ceil((kernel[1] - 1) * dilation[1] / wp) if wp else 0


def conv2d_forward(x: Any, w: Any, b: Any | None = None, stride: Any = 1, padding: Any = 0,
                   dilation: Any = 1) -> Any:
    """2-D convolution of NCHW ``x`` with weights (O, C, kh, kw); returns (N, O, Ho, Wo).

    ``padding``: int, pair, 4-tuple (top, bottom, left, right), ``"same"`` (stride 1) or
    ``"valid"``. ``stride`` and ``dilation``: int or pair.
    """
    return _conv2d_forward_with_cols(x, w, b, stride, padding, dilation)[0]


def _conv2d_forward_with_cols(x: Any, w: Any, b: Any | None, stride: Any, padding: Any,
                              dilation: Any) -> tuple[Any, Any]:
    """Forward that also returns the im2col matrix, which the Conv2D layer keeps for dW."""
    xp = namespace(x, w, b, names=("x", "W", "b"))
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    check_ndim(w, 4, "W", "(out_channels, in_channels, kh, kw)")
    kernel = (w.shape[2], w.shape[3])
    pads = conv_padding(padding, kernel, stride, dilation)
    out_hw = _check_conv(x, w, b, pads, stride, dilation)
    extra = _extra_rows(kernel, stride, dilation, x.shape[3] + pads[2] + pads[3])
    xpad = _padded_cnhw(xp, x, pads, extra_rows=extra)
    w2 = xp.reshape(w, (w.shape[0], -1))
    y, cols, _ = _conv_cnhw(xp, xpad, w2, kernel, out_hw, stride, dilation)
    if b is not None:
        y = y + b[:, None, None, None]
    return xp.permute_dims(y, (1, 0, 2, 3)), cols


def conv2d_backward(x: Any, w: Any, dy: Any, stride: Any = 1, padding: Any = 0,
                    dilation: Any = 1, *, cols: Any = None, input_grad: bool = True
                    ) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dW, db)`` of :func:`conv2d_forward` for upstream gradient ``dy``.

    ``cols`` is the forward's im2col matrix if the caller kept it (the Conv2D layer does);
    without it, it is recomputed from ``x``. ``input_grad=False`` skips dx (None).
    """
    xp = namespace(x, w, dy, names=("x", "W", "dy"))
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    check_ndim(w, 4, "W", "(out_channels, in_channels, kh, kw)")
    kernel = (w.shape[2], w.shape[3])
    pads = conv_padding(padding, kernel, stride, dilation)
    ho, wo = _check_conv(x, w, None, pads, stride, dilation)
    n, c, h, wd = x.shape
    o = w.shape[0]
    check_gradient(x, dy, (n, o, ho, wo))

    # dW = dY @ cols.T, with dY laid out on the same (possibly wide) grid as cols.
    wp = wd + pads[2] + pads[3]
    width = wp if stride == (1, 1) else wo
    if cols is None:
        xpad = _padded_cnhw(xp, x, pads, extra_rows=_extra_rows(kernel, stride, dilation, wp))
        cols, width = _im2col(xp, xpad, kernel, (ho, wo), stride, dilation)
    dy_cnhw = xp.zeros((o, n, ho, width), dtype=dy.dtype, device=dy.device)
    dy_cnhw[:, :, :, :wo] = xp.permute_dims(dy, (1, 0, 2, 3))
    dy2 = xp.reshape(dy_cnhw, (o, n * ho * width))
    dw = xp.reshape(dy2 @ xp.matrix_transpose(cols), tuple(w.shape))
    db = xp.sum(dy2, axis=1)

    if not input_grad:
        return None, dw, db
    return _conv2d_input_gradient(xp, dy, w, (h, wd), pads, stride, dilation), dw, db


def _conv2d_input_gradient(xp: Any, dy: Any, w: Any, in_hw: tuple[int, int], pads: Padding,
                           stride: tuple[int, int], dilation: tuple[int, int]) -> Any:
    """dX as the stride-1 convolution of the dilated, padded dY with flipped, transposed W."""
    (h, wd), (kh, kw) = in_hw, (w.shape[2], w.shape[3])
    ho, wo = dy.shape[2], dy.shape[3]
    reach = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
    # Input rows/columns past the last window get no gradient from it: pad dY further there.
    rest = (h + pads[0] + pads[1] - reach[0] - 1 - (ho - 1) * stride[0],
            wd + pads[2] + pads[3] - reach[1] - 1 - (wo - 1) * stride[1])
    full = (reach[0] - pads[0], reach[0] - pads[1] + rest[0],
            reach[1] - pads[2], reach[1] - pads[3] + rest[1])
    # Padding larger than the kernel's reach means cropping: pad by 0 and slice afterwards.
    qpads = tuple(max(q, 0) for q in full)
    crop = tuple(max(-q, 0) for q in full)
    wp = (wo - 1) * stride[1] + 1 + qpads[2] + qpads[3]
    one = (1, 1)
    dypad = _padded_cnhw(xp, dy, qpads, spread=stride,
                         extra_rows=_extra_rows((kh, kw), one, dilation, wp))
    w_t = xp.permute_dims(xp.flip(w, axis=(2, 3)), (1, 0, 2, 3))  # (C, O, kh, kw)
    w2 = xp.reshape(w_t, (w_t.shape[0], -1))
    out_hw = (h + crop[0] + crop[1], wd + crop[2] + crop[3])
    dx, _, _ = _conv_cnhw(xp, dypad, w2, (kh, kw), out_hw, one, dilation)
    dx = dx[:, :, crop[0]:crop[0] + h, crop[2]:crop[2] + wd]
    return xp.permute_dims(dx, (1, 0, 2, 3))
