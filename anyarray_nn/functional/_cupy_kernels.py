"""CUDA kernels for the hot paths of a training step on CuPy (see ``_fast``).

Each kernel does in one launch what the portable code does in a chain of array operations,
and computes the same thing (tests/test_cupy_kernels.py):

* ``im2col``: the (C*kh*kw, N*Ho*Wo) patch matrix straight from x, padding and all, where the
  portable code pads into a new buffer and stacks kh*kw slices (docs/benchmarks.md).
* ``conv2d_input_gradient``: dX by col2im, i.e. dcols = W^T dY as one GEMM, then one kernel
  in which every input element sums the kh*kw entries of dcols that came from it. It gathers
  rather than scatters, so it needs no atomics and adds in a fixed order.
* ``maxpool2d_forward`` / ``maxpool2d_backward``: one thread per output (forward) or input
  (backward) element. The backward recomputes each window's first arg-max, as the portable
  kernel defines it: the first offset in row-major order whose value equals y (the last NaN
  where y is NaN, as PyTorch), padding never.
  Unlike the portable kernel, a NaN or infinite dy stays in the window's arg-max alone.
* ``relu_forward`` / ``relu_backward``: one element-wise kernel each, the same arithmetic.
* ``softmax_rows``: each row's maximum, log-sum-exp of the shifted logits and loss, which the
  softmax cross-entropy forward (one sum over rows) and backward (one element-wise kernel,
  ``softmax_cross_entropy_gradient``) share.
* ``sgd_update``: the SGD step of one parameter (momentum and weight decay) in place, in one
  launch instead of five or six, compiled without fused multiply-add so that it rounds as the
  portable chain of operations does.

Arrays are read through their strides (NCHW views of channels-first buffers are the rule
here); outputs are channels-first (C, N, H, W) buffers returned as NCHW views, as in
``conv.py``. Kernels compile on first use, once per dtype (float32 and float64: ``FLOATS``).
"""

from __future__ import annotations

import functools
from typing import Any

import cupy

FLOATS = (cupy.float32, cupy.float64)

_IM2COL = r"""
const T* xs = &x[0];
const long long L = (long long)batch * out_h * out_w;
const long long row = i / L, column = i - row * L;
const int j = row % k_w, ki = (row / k_w) % k_h, c = row / (k_w * k_h);
const int b = column % out_w, a = (column / out_w) % out_h, n = column / ((long long)out_w * out_h);
const int y = a * s_h - pad_t + ki * d_h, xx = b * s_w - pad_l + j * d_w;
cols = (y >= 0 && y < height && xx >= 0 && xx < width)
    ? xs[n * st_n + c * st_c + y * st_h + xx * st_w] : (T)0;
"""

_COL2IM = r"""
const T* d = &dcols[0];
const int xx = i % width, y = (i / width) % height;
const int n = (i / ((long long)width * height)) % batch;
const int c = i / ((long long)width * height * batch);
const long long L = (long long)batch * out_h * out_w;
T sum = 0;
for (int ki = 0; ki < k_h; ++ki) {
    const int ty = y + pad_t - ki * d_h;
    if (ty < 0 || ty % s_h != 0 || ty / s_h >= out_h) continue;
    for (int j = 0; j < k_w; ++j) {
        const int tx = xx + pad_l - j * d_w;
        if (tx < 0 || tx % s_w != 0 || tx / s_w >= out_w) continue;
        sum += d[((long long)(c * k_h + ki) * k_w + j) * L
                 + ((long long)n * out_h + ty / s_h) * out_w + tx / s_w];
    }
}
dx = sum;
"""

_MAXPOOL_FORWARD = r"""
const T* xs = &x[0];
const int b = i % out_w, a = (i / out_w) % out_h;
const int n = (i / ((long long)out_w * out_h)) % batch;
const int c = i / ((long long)out_w * out_h * batch);
const T* plane = xs + n * st_n + c * st_c;
T m = 0;
for (int k = 0; k < k_h * k_w; ++k) {
    const int y = a * s_h - pad_h + k / k_w, xx = b * s_w - pad_w + k % k_w;
    const T v = (y >= 0 && y < height && xx >= 0 && xx < width)
        ? plane[y * st_h + xx * st_w] : neg_inf;
    // The maximum of the slices in row-major order: NaN, once met, stays (as xp.maximum).
    if (k == 0 || (!isnan(m) && (isnan(v) || v > m))) m = v;
}
pooled = m;
"""

_MAXPOOL_BACKWARD = r"""
const T* xs = &x[0];
const T* ys = &y[0];
const T* gs = &dy[0];
const int xx = i % width, yy = (i / width) % height;
const int n = (i / ((long long)width * height)) % batch;
const int c = i / ((long long)width * height * batch);
const T* plane = xs + n * xst_n + c * xst_c;
const T* yplane = ys + n * yst_n + c * yst_c;
const T* gplane = gs + n * gst_n + c * gst_c;
// The windows that contain (yy, xx): a * s_h - pad_h <= yy <= a * s_h - pad_h + k_h - 1.
const int a_lo = max(0, (yy + pad_h - k_h + s_h) / s_h), a_hi = min(out_h - 1, (yy + pad_h) / s_h);
const int b_lo = max(0, (xx + pad_w - k_w + s_w) / s_w), b_hi = min(out_w - 1, (xx + pad_w) / s_w);
T g = 0;
for (int a = a_lo; a <= a_hi; ++a) {
    for (int b = b_lo; b <= b_hi; ++b) {
        const T target = yplane[a * yst_h + b * yst_w];
        const bool nan_target = isnan(target);
        // The window's first input element whose value equals y, or its last NaN where y is
        // NaN (PyTorch's rule): padding never wins, even in a window of -inf (as the
        // portable kernel)
        int found = -1;
        for (int k = 0; k < k_h * k_w; ++k) {
            const int wy = a * s_h - pad_h + k / k_w, wx = b * s_w - pad_w + k % k_w;
            if (wy < 0 || wy >= height || wx < 0 || wx >= width) continue;
            const T v = plane[wy * xst_h + wx * xst_w];
            if (nan_target ? isnan(v) : v == target) {
                found = k;
                if (!nan_target) break;
            }
        }
        if (found >= 0 && a * s_h - pad_h + found / k_w == yy
            && b * s_w - pad_w + found % k_w == xx)
            g += gplane[a * gst_h + b * gst_w];
    }
}
dx = g;
"""


_RELU_FORWARD = "y = (x > (T)0 || isnan(x)) ? x : (T)0;  // NaN stays, as xp.maximum"
_RELU_BACKWARD = "dx = dy * (T)(!(x <= (T)0));  // NaN passes dy, as PyTorch"

_SOFTMAX_ROWS = r"""
const T* row = &z[0] + i * z_row;
T m = row[0];
for (int j = 1; j < classes; ++j) m = row[j * z_col] > m ? row[j * z_col] : m;
T total = 0;
for (int j = 0; j < classes; ++j) total += exp(row[j * z_col] - m);
row_max = m;
row_lse = log(total);
const long long label = (&labels[0])[i * t_step];
// A label out of range makes the row's loss NaN: the caller's finiteness check then finds it.
row_loss = (label >= 0 && label < classes) ? row_lse - (row[label * z_col] - m) : not_a_number;
"""

_SOFTMAX_GRADIENT = r"""
const long long r = i / classes;
const int j = i % classes;
const T p = exp(((&z[0])[r * z_row + j * z_col] - row_max[r]) - row_lse[r]);
dz = (p - (T)((&labels[0])[r * t_step] == j)) * scale;
"""

_SGD = r"""
if (form == 0) {  // "ema"
    m = m * mu + one_minus_mu * g;
    w = w - (decay != (T)0 ? lr * (m + decay * w) : lr * m);
} else {          // "classic" (1) and "nesterov" (2)
    const T grad = decay != (T)0 ? g + decay * w : g;
    m = m * mu + grad;
    w = w - lr * (form == 2 ? grad + mu * m : m);
}
"""
SGD_FORMS = {"ema": 0, "classic": 1, "nesterov": 2}


@functools.cache
def _kernel(name: str) -> Any:
    """Each ElementwiseKernel is built once (CuPy compiles it per dtype on first call)."""
    sizes = "int32 batch, int32 height, int32 width, int32 out_h, int32 out_w, int32 k_h, int32 k_w"
    strides = "int64 st_n, int64 st_c, int64 st_h, int64 st_w"
    specs = {
        "im2col": (f"raw T x, {sizes}, int32 s_h, int32 s_w, int32 d_h, int32 d_w, "
                   f"int32 pad_t, int32 pad_l, {strides}", "T cols", _IM2COL),
        "col2im": (f"raw T dcols, {sizes}, int32 s_h, int32 s_w, int32 d_h, int32 d_w, "
                   "int32 pad_t, int32 pad_l", "T dx", _COL2IM),
        "maxpool_forward": (f"raw T x, {sizes}, int32 s_h, int32 s_w, int32 pad_h, "
                            f"int32 pad_w, T neg_inf, {strides}", "T pooled", _MAXPOOL_FORWARD),
        "maxpool_backward": (f"raw T x, raw T y, raw T dy, {sizes}, int32 s_h, int32 s_w, "
                             "int32 pad_h, int32 pad_w, T neg_inf, "
                             + ", ".join(f"int64 {p}st_{a}" for p in "xyg" for a in "nchw"),
                             "T dx", _MAXPOOL_BACKWARD),
        "relu_forward": ("T x", "T y", _RELU_FORWARD),
        "relu_backward": ("T x, T dy", "T dx", _RELU_BACKWARD),
        "softmax_rows": ("raw T z, raw int64 labels, int32 classes, int64 z_row, int64 z_col, "
                         "int64 t_step, T not_a_number", "T row_max, T row_lse, T row_loss",
                         _SOFTMAX_ROWS),
        "softmax_gradient": ("raw T z, raw int64 labels, raw T row_max, raw T row_lse, "
                             "int32 classes, int64 z_row, int64 z_col, int64 t_step, T scale",
                             "T dz", _SOFTMAX_GRADIENT),
        "sgd": ("T g, T lr, T mu, T one_minus_mu, T decay, int32 form", "T w, T m", _SGD),
    }
    inputs, output, body = specs[name]
    # Without fused multiply-add, a*b + c rounds twice, as the portable operations do.
    options = ("--fmad=false",) if name == "sgd" else ()
    return cupy.ElementwiseKernel(inputs, output, body, f"anyarray_nn_{name}", options=options)


def _strides(a: Any) -> tuple[int, ...]:
    """Strides in elements (CuPy gives bytes)."""
    return tuple(s // a.itemsize for s in a.strides)


def _minus_infinity(like: Any) -> Any:
    """-inf as a scalar of ``like``'s dtype: max-pool padding (NVRTC has no INFINITY macro)."""
    return like.dtype.type(float("-inf"))


def im2col(x: Any, kernel: tuple[int, int], out_hw: tuple[int, int], stride: tuple[int, int],
           dilation: tuple[int, int], pads: tuple[int, int, int, int]) -> Any:
    """The (C*kh*kw, N*Ho*Wo) patch matrix of NCHW ``x``, zero padding included."""
    n, c, h, w = x.shape
    (kh, kw), (ho, wo) = kernel, out_hw
    with x.device:  # allocate and launch on x's GPU
        cols = cupy.empty((c * kh * kw, n * ho * wo), dtype=x.dtype)
        _kernel("im2col")(x, n, h, w, ho, wo, kh, kw, *stride, *dilation, pads[0], pads[2],
                          *_strides(x), cols)
    return cols


def conv2d_input_gradient(dy2: Any, dy_shape: tuple[int, ...], w: Any, in_hw: tuple[int, int],
                          pads: tuple[int, int, int, int], stride: tuple[int, int],
                          dilation: tuple[int, int]) -> Any:
    """dX of the convolution from dY as its (O, N*Ho*Wo) matrix ``dy2`` (``dy_shape``: NCHW):
    dcols = W^T dY (one GEMM), then col2im."""
    n, o, ho, wo = dy_shape
    c, (kh, kw), (h, wd) = w.shape[1], w.shape[2:], in_hw
    with dy2.device:
        dcols = cupy.ascontiguousarray(cupy.reshape(w, (o, c * kh * kw)).T @ dy2)
        dx = cupy.empty((c, n, h, wd), dtype=dy2.dtype)
        _kernel("col2im")(dcols, n, h, wd, ho, wo, kh, kw, *stride, *dilation, pads[0],
                          pads[2], dx)
    return cupy.transpose(dx, (1, 0, 2, 3))


def maxpool2d_forward(x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int], out_hw: tuple[int, int]) -> Any:
    """Max pooling with -inf padding: (N, C, Ho, Wo), a view of a (C, N, Ho, Wo) buffer."""
    n, c, h, w = x.shape
    with x.device:
        out = cupy.empty((c, n, *out_hw), dtype=x.dtype)
        _kernel("maxpool_forward")(x, n, h, w, *out_hw, *kernel, *stride, *padding,
                                   _minus_infinity(x), *_strides(x), out)
    return cupy.transpose(out, (1, 0, 2, 3))


def maxpool2d_backward(x: Any, y: Any, dy: Any, kernel: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int]) -> Any:
    """dX of max pooling: each window's dy goes to its first arg-max, or its last NaN where
    the maximum is NaN (x, y, dy: NCHW)."""
    n, c, h, w = x.shape
    with x.device:
        dx = cupy.empty((c, n, h, w), dtype=x.dtype)
        _kernel("maxpool_backward")(x, y, dy, n, h, w, *y.shape[2:], *kernel, *stride,
                                    *padding, _minus_infinity(x), *_strides(x), *_strides(y),
                                    *_strides(dy), dx)
    return cupy.transpose(dx, (1, 0, 2, 3))


def relu_forward(x: Any) -> Any:
    """max(x, 0), NaN kept."""
    with x.device:
        return _kernel("relu_forward")(x)


def relu_backward(x: Any, dy: Any) -> Any:
    """dy * [x > 0]."""
    with x.device:
        return _kernel("relu_backward")(x, dy)


def softmax_rows(logits: Any, labels: Any) -> tuple[Any, Any, Any]:
    """Per row of (N, C) ``logits``: the maximum, the log-sum-exp of the shifted logits and
    the cross-entropy against int64 ``labels`` (NaN where a label is outside [0, C))."""
    n, c = logits.shape
    (z_row, z_col), (t_step,) = _strides(logits), _strides(labels)
    with logits.device:
        rows = [cupy.empty((n,), dtype=logits.dtype) for _ in range(3)]
        _kernel("softmax_rows")(logits, labels, c, z_row, z_col, t_step,
                                logits.dtype.type(float("nan")), *rows)
    return tuple(rows)  # type: ignore[return-value]


def softmax_cross_entropy_gradient(logits: Any, labels: Any, row_max: Any, row_lse: Any,
                                   scale: float) -> Any:
    """(softmax(logits) - onehot(labels)) * scale, from :func:`softmax_rows`' outputs."""
    n, c = logits.shape
    (z_row, z_col), (t_step,) = _strides(logits), _strides(labels)
    with logits.device:
        dz = cupy.empty((n, c), dtype=logits.dtype)
        _kernel("softmax_gradient")(logits, labels, row_max, row_lse, c, z_row, z_col, t_step,
                                    logits.dtype.type(scale), dz)
    return dz


def sgd_update(w: Any, g: Any, m: Any, lr: float, mu: float, decay: float, form: str) -> None:
    """One SGD step of parameter ``w`` and its momentum ``m``, both in place."""
    t = w.dtype.type
    with w.device:
        _kernel("sgd")(g, t(lr), t(mu), t(1.0 - mu), t(decay), SGD_FORMS[form], w, m)
