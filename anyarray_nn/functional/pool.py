"""2-D max, average and adaptive pooling of NCHW (or unbatched CHW) arrays, as strided slices.

For window offset (i, j) the slice ``xpad[:, :, i*dh::sh, j*dw::sw]`` (cut to Ho x Wo) holds,
for every output position, the element at that offset of its window. So

    max pool:  y  = maximum over the kh*kw slices
    avg pool:  y  = sum over the kh*kw slices / divisor

and the backward passes walk the same slices:

    max pool:  the gradient goes to one arg-max per window: the first offset, in row-major
               order, whose value equals y (PyTorch's rule for ties, also what its indices
               hold); padding never takes it, even where the whole window is -inf
    avg pool:  every slice receives dy / divisor

Maximum of strided slices was 20-33x faster than reshape-and-max on NumPy (docs/benchmarks.md).
Max-pool padding is -inf, so padded positions never win; average-pool padding is zero. The
output size follows PyTorch: floor((H + 2p - d*(k-1) - 1) / s) + 1, or with ``ceil_mode`` the
ceiling, less one where the last window would start in the right padding. ``ceil_mode``
windows that run past the padded input are cut there. The average's divisor is
``divisor_override`` if given, else the window's size inside the padded input
(``count_include_pad=True``) or inside the input (False).

Adaptive pooling to (Ho, Wo) uses PyTorch's windows, rows floor(a*H/Ho) to ceil((a+1)*H/Ho):
the average is ``Ah @ x @ Aw`` with averaging matrices (one row per window), the maximum a
max over offsets gathered with ``take`` (or plain max pooling where Ho divides H and Wo
divides W: then the windows are a uniform k x k grid).

A window whose maximum is NaN sends its gradient to its last NaN in row-major order (and that
is its index), as PyTorch's kernels do: they take a value as the new maximum when it is
greater or NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backend import namespace
from ..errors import InputError, as_int
from ._checks import check_floating, check_gradient
from ._fast import pool_kernels
from .conv import _pair

Window = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # kernel, stride, padding
Pair = tuple[int, int]
_NO_INDEX = -2  # the flat position of a padded element: matches no index (unclaimed is -1)


def _both(value: Any) -> Any:
    """A one-element sequence as its element (PyTorch's pooling takes (k,) for (k, k))."""
    return value[0] if isinstance(value, (tuple, list)) and len(value) == 1 else value


def _is_empty(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 0


def pool_window(kernel: Any, stride: Any, padding: Any) -> Window:
    """Resolve and check (kernel_size, stride, padding) as pairs; ``stride`` None (or empty,
    as PyTorch allows): the kernel. Each may also be one value in a sequence, for both axes."""
    k = _pair(_both(kernel), "kernel_size")
    s = _pair(k if stride is None or _is_empty(stride) else _both(stride), "stride")
    p = _pair(_both(padding), "padding")
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise InputError(f"expected kernel_size and stride >= 1 and padding >= 0, got "
                         f"kernel_size {k}, stride {s}, padding {p}")
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise InputError(f"padding: expected at most half the kernel {k}, got {p}")
    return k, s, p


def pool_dilation(dilation: Any) -> Pair:
    """Resolve and check ``dilation`` as a pair of ints >= 1."""
    d = _pair(_both(dilation), "dilation")
    if min(d) < 1:
        raise InputError(f"dilation: expected ints >= 1, got {d}")
    return d


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is a bool, else a clear error naming ``what``."""
    if not isinstance(value, bool):
        raise InputError(f"{what}: expected True or False, got {value!r}")
    return value


def check_divisor_override(value: Any) -> int | None:
    """None, or a nonzero int (PyTorch refuses zero)."""
    if value is None:
        return None
    divisor = as_int(value)
    if divisor is None or divisor == 0:
        raise InputError(f"divisor_override: expected None or a nonzero int, got {value!r}")
    return divisor


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length along one axis, as PyTorch computes it (< 1 where no window fits).

    In ceil mode a window may run past the padded input (a 2x2 window over one row
    gives one output), as long as it starts inside the input or the left padding.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    steps = (span + stride - 1) // stride if ceil_mode else span // stride  # floor division
    if ceil_mode and steps * stride >= size + padding:
        steps -= 1
    return steps + 1


@dataclass(frozen=True)
class _Geometry:
    """Where the windows of one pooling call lie in the input's (H, W) plane."""
    kernel: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    size: Pair   # (H, W)
    out: Pair    # (Ho, Wo)

    @property
    def window(self) -> Window:
        return self.kernel, self.stride, self.padding

    @property
    def ceil_adds_window(self) -> bool:
        """Whether ``ceil_mode`` gave an output larger than floor mode's."""
        return self.out != tuple(
            pool_output_size(n, k, s, p, d) for n, k, s, p, d in
            zip(self.size, self.kernel, self.stride, self.padding, self.dilation))

    def pad_end(self, axis: int) -> int:
        """Padding needed after the input along ``axis``: ``padding``, or what ceil mode's
        last window reaches (cut windows read it, as padding, and it never counts)."""
        reach = (self.out[axis] - 1) * self.stride[axis] + self.dilation[axis] * (
            self.kernel[axis] - 1) + 1
        return max(0, reach - self.size[axis] - self.padding[axis])

    def offsets(self) -> list[Pair]:
        """The kh*kw window offsets in row-major order."""
        return [(i, j) for i in range(self.kernel[0]) for j in range(self.kernel[1])]

    def slices(self) -> list[tuple[slice, slice, slice, slice]]:
        """Index tuples of the offsets' strided slices of the padded input."""
        (sh, sw), (dh, dw), (ho, wo) = self.stride, self.dilation, self.out
        every = slice(None)
        return [(every, every, slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
                 slice(j * dw, j * dw + (wo - 1) * sw + 1, sw)) for i, j in self.offsets()]

    def flat_positions(self, xp: Any, device: Any) -> list[Any]:
        """For each offset, the (Ho, Wo) int64 flat index h*W + w of the element it reads
        (``_NO_INDEX`` where that is padding): what max pooling's indices hold."""
        (h, w), (sh, sw), (ph, pw), (dh, dw) = self.size, self.stride, self.padding, self.dilation
        a = xp.arange(self.out[0], dtype=xp.int64, device=device)
        b = xp.arange(self.out[1], dtype=xp.int64, device=device)
        flats = []
        for i, j in self.offsets():
            rows, cols = a * sh + (i * dh - ph), b * sw + (j * dw - pw)
            valid = (((rows >= 0) & (rows < h))[:, None]) & (((cols >= 0) & (cols < w))[None, :])
            flats.append(xp.where(valid, rows[:, None] * w + cols[None, :], _NO_INDEX))
        return flats


def _batched(xp: Any, x: Any) -> tuple[Any, bool]:
    """``x`` as (N, C, H, W), and whether it came unbatched as (C, H, W)."""
    if x.ndim == 4:
        return x, False
    if x.ndim == 3:
        return xp.expand_dims(x, axis=0), True
    raise InputError(f"x: expected a 4-D array (N, C, H, W) or a 3-D array (C, H, W), "
                     f"got shape {tuple(x.shape)}")


def _unbatched(a: Any, unbatched: bool) -> Any:
    return a[0, ...] if unbatched else a


def _batched_like(xp: Any, x: Any, a: Any, out_shape: tuple[int, ...], unbatched: bool,
                  what: str) -> Any:
    """Check the output-shaped ``a`` (dy or y) against ``out_shape`` (batched) and x's dtype."""
    check_gradient(x, a, out_shape[1:] if unbatched else out_shape, what)
    return xp.expand_dims(a, axis=0) if unbatched else a


def _batched_indices(xp: Any, indices: Any, out_shape: tuple[int, ...],
                     unbatched: bool) -> Any:
    """Check the forward's ``indices`` against ``out_shape`` (batched) and int64."""
    expected = out_shape[1:] if unbatched else out_shape
    if tuple(indices.shape) != tuple(expected):
        raise InputError(f"indices: expected shape {tuple(expected)} (the forward output), "
                         f"got {tuple(indices.shape)}")
    if indices.dtype != xp.int64:
        raise InputError(f"indices: expected dtype int64 (as the forward returns them), "
                         f"got {indices.dtype}")
    return xp.expand_dims(indices, axis=0) if unbatched else indices


def _geometry(x: Any, kernel: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: Any) -> _Geometry:
    """The windows of pooling ``x`` (N, C, H, W) or (C, H, W), all options checked."""
    check_floating(x, "x")
    shape = tuple(x.shape)
    k, s, p = pool_window(kernel, stride, padding)
    d = pool_dilation(dilation)
    ceil_mode = check_flag(ceil_mode, "ceil_mode")
    size = (shape[-2], shape[-1])
    out = (pool_output_size(size[0], k[0], s[0], p[0], d[0], ceil_mode),
           pool_output_size(size[1], k[1], s[1], p[1], d[1], ceil_mode))
    if min(out) < 1:
        reach = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
        window = f"{k}" if d == (1, 1) else f"{reach} (kernel_size {k}, dilation {d})"
        raise InputError(f"x: the pooling window {window} is larger than the padded input "
                         f"{(size[0] + 2 * p[0], size[1] + 2 * p[1])}; x has shape {shape}")
    return _Geometry(k, s, p, d, size, out)


def _pad(xp: Any, x: Any, g: _Geometry, fill: float) -> Any:
    (ph, pw), bottom, right = g.padding, g.pad_end(0), g.pad_end(1)
    if (ph, pw, bottom, right) == (0, 0, 0, 0):
        return x
    n, c, h, w = x.shape
    buf = xp.full((n, c, ph + h + bottom, pw + w + right), fill, dtype=x.dtype, device=x.device)
    buf[:, :, ph:ph + h, pw:pw + w] = x
    return buf


def _crop(dxpad: Any, g: _Geometry) -> Any:
    (ph, pw), (h, w) = g.padding, g.size
    return dxpad[:, :, ph:ph + h, pw:pw + w]


def _zeros_padded(xp: Any, x: Any, g: _Geometry) -> Any:
    n, c, h, w = x.shape
    shape = (n, c, g.padding[0] + h + g.pad_end(0), g.padding[1] + w + g.pad_end(1))
    return xp.zeros(shape, dtype=x.dtype, device=x.device)


def _argmax_indices(xp: Any, candidates: list[Any], flats: list[Any], y: Any) -> Any:
    """Indices (int64) of the first candidate, in order, equal to ``y``, or where ``y`` is
    NaN of the last NaN candidate (PyTorch's rule); -1 where none is. Candidates at a
    ``_NO_INDEX`` position (padding, or past an adaptive window) are never NaN matches."""
    indices = xp.full(tuple(y.shape), -1, dtype=xp.int64, device=y.device)
    nan_maximum = xp.isnan(y)
    for value, flat in zip(candidates, flats):
        first_equal = (value == y) & (indices < 0)
        later_nan = nan_maximum & xp.isnan(value) & (flat >= 0)
        indices = xp.where(first_equal | later_nan, flat, indices)
    return indices


def _max_indices(xp: Any, x4: Any, g: _Geometry, y: Any) -> Any:
    """:func:`_argmax_indices` of max pooling's windows, padding NaN (it is no index)."""
    xcmp = _pad(xp, x4, g, float("nan"))
    return _argmax_indices(xp, [xcmp[index] for index in g.slices()],
                           g.flat_positions(xp, x4.device), y)


def maxpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                      dilation: Any = 1, ceil_mode: bool = False,
                      return_indices: bool = False) -> Any:
    """Max pooling of NCHW (or unbatched CHW) ``x``; ``stride`` defaults to ``kernel_size``.

    With ``return_indices`` returns ``(y, indices)``: for each output, the flat index
    h*W + w (int64) of its window's first arg-max within its input plane (its last NaN where
    the maximum is NaN), as PyTorch's.
    """
    xp = namespace(x)
    x4, unbatched = _batched(xp, x)
    g = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    fast = pool_kernels(xp, x.dtype, g.window, g.dilation, g.ceil_adds_window)
    if fast is not None:  # one compiled kernel: CUDA on CuPy, numba on NumPy (see _fast)
        y = fast.maxpool2d_forward(x4, *g.window, g.out)
    else:
        xpad = _pad(xp, x4, g, float("-inf"))
        parts = g.slices()
        y = xpad[parts[0]]
        for index in parts[1:]:
            y = xp.maximum(y, xpad[index])
    if not check_flag(return_indices, "return_indices"):
        return _unbatched(y, unbatched)
    return _unbatched(y, unbatched), _unbatched(_max_indices(xp, x4, g, y), unbatched)


def maxpool2d_backward(x: Any, dy: Any, kernel_size: Any, stride: Any = None,
                       padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False, *,
                       y: Any = None, indices: Any = None) -> Any:
    """dL/dx of max pooling: each window's gradient goes to its first arg-max (its last NaN
    where the maximum is NaN, as PyTorch).

    Pass the forward output ``y`` to avoid recomputing it, or the forward's ``indices``
    (``return_indices=True``) to send each gradient straight to its index.
    """
    xp = namespace(x, dy, y, indices, names=("x", "dy", "y", "indices"))
    x4, unbatched = _batched(xp, x)
    g = _geometry(x, kernel_size, stride, padding, dilation, ceil_mode)
    out_shape = (x4.shape[0], x4.shape[1], *g.out)
    dy4 = _batched_like(xp, x, dy, out_shape, unbatched, "dy")
    if indices is not None:
        indices4 = _batched_indices(xp, indices, out_shape, unbatched)
        return _unbatched(_crop(_to_indices(xp, x4, g, dy4, indices4), g), unbatched)
    if y is None:
        y4 = maxpool2d_forward(x4, g.kernel, g.stride, g.padding, g.dilation, ceil_mode)
    else:
        y4 = _batched_like(xp, x, y, out_shape, unbatched, "y")
    fast = pool_kernels(xp, x.dtype, g.window, g.dilation, g.ceil_adds_window)
    if fast is not None:  # one compiled kernel: CUDA on CuPy, numba on NumPy (see _fast)
        return _unbatched(fast.maxpool2d_backward(x4, y4, dy4, *g.window), unbatched)
    if bool(xp.any(xp.isnan(y4))):  # rare: the last-NaN rule below needs the indices
        indices4 = _max_indices(xp, x4, g, y4)
        return _unbatched(_crop(_to_indices(xp, x4, g, dy4, indices4), g), unbatched)
    xpad = _pad(xp, x4, g, float("nan"))  # NaN padding equals no maximum, -inf included
    dxpad = _zeros_padded(xp, x4, g)
    disjoint = g.dilation == (1, 1) and g.stride[0] >= g.kernel[0] and g.stride[1] >= g.kernel[1]
    # `remaining` is dy where no earlier offset of the window has claimed the maximum yet:
    # subtracting each claimed share leaves exactly the first arg-max with the gradient.
    remaining = dy4
    parts = g.slices()
    for k, index in enumerate(parts):
        share = remaining * xp.astype(xpad[index] == y4, x.dtype)
        if k < len(parts) - 1:
            remaining = remaining - share
        if disjoint:  # each element is written once
            dxpad[index] = share
        else:
            dxpad[index] += share
    return _unbatched(_crop(dxpad, g), unbatched)


def _to_indices(xp: Any, x4: Any, g: _Geometry, dy4: Any, indices4: Any) -> Any:
    """The padded dx that sends each window's dy to its flat index ``indices4``."""
    dxpad = _zeros_padded(xp, x4, g)
    for index, flat in zip(g.slices(), g.flat_positions(xp, x4.device)):
        dxpad[index] += dy4 * xp.astype(indices4 == flat, x4.dtype)
    return dxpad


def _window_sizes(g: _Geometry, axis: int, count_include_pad: bool) -> list[int]:
    """Along ``axis``, each window's length inside the padded input (or the input)."""
    size, k, s, p = g.size[axis], g.kernel[axis], g.stride[axis], g.padding[axis]
    lengths = []
    for o in range(g.out[axis]):
        start = o * s - p
        end = min(start + k, size + p)  # ceil mode's last window is cut at the padding
        if not count_include_pad:
            start, end = max(start, 0), min(end, size)
        lengths.append(end - start)
    return lengths


def _avg_divisor(xp: Any, x: Any, g: _Geometry, count_include_pad: Any,
                 divisor_override: Any) -> Any:
    """The divisor of each output: a Python float where all windows share it, else an
    (Ho, Wo) array."""
    count_include_pad = check_flag(count_include_pad, "count_include_pad")
    divisor = check_divisor_override(divisor_override)
    if divisor is not None:
        return float(divisor)
    rows, cols = _window_sizes(g, 0, count_include_pad), _window_sizes(g, 1, count_include_pad)
    if len(set(rows)) == 1 and len(set(cols)) == 1:
        return float(rows[0] * cols[0])
    rows_a = xp.asarray(rows, dtype=x.dtype, device=x.device)
    cols_a = xp.asarray(cols, dtype=x.dtype, device=x.device)
    return rows_a[:, None] * cols_a[None, :]


def avgpool2d_forward(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                      ceil_mode: bool = False, count_include_pad: bool = True,
                      divisor_override: Any = None) -> Any:
    """Average pooling of NCHW (or unbatched CHW) ``x``; ``stride`` defaults to the kernel.

    Each window's sum is divided by ``divisor_override`` if given, else by its size inside
    the padded input (``count_include_pad``, PyTorch's default) or inside the input.
    """
    xp = namespace(x)
    x4, unbatched = _batched(xp, x)
    g = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    divisor = _avg_divisor(xp, x, g, count_include_pad, divisor_override)
    xpad = _pad(xp, x4, g, 0.0)
    parts = g.slices()
    total = xpad[parts[0]]
    for index in parts[1:]:
        total = total + xpad[index]
    return _unbatched(total / divisor, unbatched)


def avgpool2d_backward(x: Any, dy: Any, kernel_size: Any, stride: Any = None,
                       padding: Any = 0, ceil_mode: bool = False,
                       count_include_pad: bool = True, divisor_override: Any = None) -> Any:
    """dL/dx of average pooling: every element of a window receives its dy / divisor."""
    xp = namespace(x, dy, names=("x", "dy"))
    x4, unbatched = _batched(xp, x)
    g = _geometry(x, kernel_size, stride, padding, 1, ceil_mode)
    dy4 = _batched_like(xp, x, dy, (x4.shape[0], x4.shape[1], *g.out), unbatched, "dy")
    share = dy4 / _avg_divisor(xp, x, g, count_include_pad, divisor_override)
    dxpad = _zeros_padded(xp, x4, g)
    for index in g.slices():
        dxpad[index] += share
    return _unbatched(_crop(dxpad, g), unbatched)


def global_avgpool2d_forward(x: Any) -> Any:
    """Mean over the spatial axes: (N, C, H, W) -> (N, C), or (C, H, W) -> (C,)."""
    xp = namespace(x)
    x4, unbatched = _batched(xp, x)
    check_floating(x, "x")
    return _unbatched(xp.mean(x4, axis=(2, 3)), unbatched)


def global_avgpool2d_backward(x: Any, dy: Any) -> Any:
    """Every position of a plane receives dy / (H*W)."""
    xp = namespace(x, dy, names=("x", "dy"))
    x4, unbatched = _batched(xp, x)
    dy4 = _batched_like(xp, x, dy, tuple(x4.shape[:2]), unbatched, "dy")
    share = dy4 / float(x4.shape[2] * x4.shape[3])
    dx = xp.zeros(tuple(x4.shape), dtype=x.dtype, device=x.device) + share[:, :, None, None]
    return _unbatched(dx, unbatched)


# --- adaptive pooling --------------------------------------------------------------------

def adaptive_output_size(output_size: Any, size: Pair) -> Pair:
    """``output_size`` (an int, or a pair of ints or None: None keeps that input size) as a
    pair of ints >= 0."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        pair = tuple(n if o is None else as_int(o) for o, n in zip(output_size, size))
    else:
        pair = (as_int(output_size),) * 2
    if None in pair or min(pair) < 0:  # type: ignore[operator, type-var]
        raise InputError(f"output_size: expected an int >= 0 or a pair of them (None keeps "
                         f"the input size), got {output_size!r}")
    return pair  # type: ignore[return-value]


def adaptive_windows(size: int, out: int) -> list[Pair]:
    """PyTorch's adaptive windows along one axis: [floor(a*size/out), ceil((a+1)*size/out))."""
    return [(a * size // out, -(-(a + 1) * size // out)) for a in range(out)]


def _adaptive_input(xp: Any, x: Any, output_size: Any) -> tuple[Any, bool, Pair]:
    x4, unbatched = _batched(xp, x)
    check_floating(x, "x")
    size = (x4.shape[2], x4.shape[3])
    out = adaptive_output_size(output_size, size)
    if min(size) < 1:
        raise InputError(f"x: expected non-empty planes (H, W >= 1) for adaptive pooling, "
                         f"got shape {tuple(x.shape)}")
    return x4, unbatched, out


def _averaging_matrix(xp: Any, size: int, out: int, like: Any, transposed: bool) -> Any:
    """(out, size) matrix whose row a averages window a; (size, out) if ``transposed``."""
    windows = adaptive_windows(size, out)
    starts = xp.asarray([s for s, _ in windows], dtype=xp.int64, device=like.device)
    ends = xp.asarray([e for _, e in windows], dtype=xp.int64, device=like.device)
    lengths = xp.astype(ends - starts, like.dtype)
    k = xp.arange(size, dtype=xp.int64, device=like.device)
    if transposed:
        inside = (k[:, None] >= starts[None, :]) & (k[:, None] < ends[None, :])
        return xp.astype(inside, like.dtype) / lengths[None, :]
    inside = (starts[:, None] <= k[None, :]) & (k[None, :] < ends[:, None])
    return xp.astype(inside, like.dtype) / lengths[:, None]


def adaptive_avgpool2d_forward(x: Any, output_size: Any) -> Any:
    """Average over PyTorch's adaptive windows: (N, C, H, W) -> (N, C, Ho, Wo), or unbatched.

    ``y = Ah @ x @ Aw`` where row a of Ah (Ho, H) averages rows floor(a*H/Ho) to
    ceil((a+1)*H/Ho) - 1, and column b of Aw (W, Wo) the columns of window b.
    """
    xp = namespace(x)
    x4, unbatched, (ho, wo) = _adaptive_input(xp, x, output_size)
    h, w = x4.shape[2], x4.shape[3]
    y = _averaging_matrix(xp, h, ho, x, False) @ x4 @ _averaging_matrix(xp, w, wo, x, True)
    return _unbatched(y, unbatched)


def adaptive_avgpool2d_backward(x: Any, dy: Any, output_size: Any) -> Any:
    """dL/dx of adaptive average pooling: ``Ah.T @ dy @ Aw.T``."""
    xp = namespace(x, dy, names=("x", "dy"))
    x4, unbatched, out = _adaptive_input(xp, x, output_size)
    h, w = x4.shape[2], x4.shape[3]
    dy4 = _batched_like(xp, x, dy, (x4.shape[0], x4.shape[1], *out), unbatched, "dy")
    dx = _averaging_matrix(xp, h, out[0], x, True) @ dy4 @ _averaging_matrix(xp, w, out[1], x,
                                                                             False)
    return _unbatched(dx, unbatched)


def _uniform_kernel(size: Pair, out: Pair) -> Pair | None:
    """The k x k kernel (stride k) that equals the adaptive windows where out divides size."""
    if min(out) >= 1 and size[0] % out[0] == 0 and size[1] % out[1] == 0:
        return size[0] // out[0], size[1] // out[1]
    return None


def _adaptive_offsets(xp: Any, size: int, out: int, device: Any) -> list[tuple[Any, Any]]:
    """Per offset i along one axis: each window's position start + i (int64), clamped to the
    window's last (a repeat, which never changes the max nor takes its index), and whether
    it is inside the window."""
    windows = adaptive_windows(size, out)
    longest = max((e - s for s, e in windows), default=0)
    return [(xp.asarray([min(s + i, e - 1) for s, e in windows], dtype=xp.int64, device=device),
             xp.asarray([s + i < e for s, e in windows], dtype=xp.bool, device=device))
            for i in range(longest)]


def _adaptive_max(xp: Any, x4: Any, out: Pair, y: Any = None) -> tuple[Any, Any]:
    """(y, indices) of adaptive max pooling over windows of varying size (given ``y``, only
    its indices are computed)."""
    w = x4.shape[3]
    cols = _adaptive_offsets(xp, w, out[1], x4.device)
    candidates, flats = [], []
    for row, row_inside in _adaptive_offsets(xp, x4.shape[2], out[0], x4.device):
        picked_rows = xp.take(x4, row, axis=2)
        for col, col_inside in cols:
            candidates.append(xp.take(picked_rows, col, axis=3))
            inside = row_inside[:, None] & col_inside[None, :]
            flats.append(xp.where(inside, row[:, None] * w + col[None, :], _NO_INDEX))
    if y is None:
        y = candidates[0]
        for value in candidates[1:]:
            y = xp.maximum(y, value)
    return y, _argmax_indices(xp, candidates, flats, y)


def adaptive_maxpool2d_forward(x: Any, output_size: Any, return_indices: bool = False) -> Any:
    """Maximum over PyTorch's adaptive windows (rows floor(a*H/Ho) to ceil((a+1)*H/Ho) - 1);
    with ``return_indices`` also each window's first arg-max as a flat index h*W + w."""
    xp = namespace(x)
    x4, unbatched, out = _adaptive_input(xp, x, output_size)
    return_indices = check_flag(return_indices, "return_indices")
    kernel = _uniform_kernel((x4.shape[2], x4.shape[3]), out)
    if kernel is not None:  # a uniform grid: plain max pooling, fast paths included
        return maxpool2d_forward(x, kernel, return_indices=return_indices)
    if min(out) == 0:
        y = xp.zeros((x4.shape[0], x4.shape[1], *out), dtype=x.dtype, device=x.device)
        indices = xp.zeros(tuple(y.shape), dtype=xp.int64, device=x.device)
    else:
        y, indices = _adaptive_max(xp, x4, out)
    if not return_indices:
        return _unbatched(y, unbatched)
    return _unbatched(y, unbatched), _unbatched(indices, unbatched)


def adaptive_maxpool2d_backward(x: Any, dy: Any, output_size: Any, *, y: Any = None,
                                indices: Any = None) -> Any:
    """dL/dx of adaptive max pooling: each window's gradient goes to its first arg-max (or
    to the forward's ``indices`` if given; ``y`` saves recomputing the maximum)."""
    xp = namespace(x, dy, y, indices, names=("x", "dy", "y", "indices"))
    x4, unbatched, out = _adaptive_input(xp, x, output_size)
    h, w = x4.shape[2], x4.shape[3]
    kernel = _uniform_kernel((h, w), out)
    if kernel is not None:
        return maxpool2d_backward(x, dy, kernel, y=y, indices=indices)
    out_shape = (x4.shape[0], x4.shape[1], *out)
    dy4 = _batched_like(xp, x, dy, out_shape, unbatched, "dy")
    dx = xp.zeros(tuple(x4.shape), dtype=x.dtype, device=x.device)
    if min(out) == 0:
        return _unbatched(dx, unbatched)
    if indices is not None:
        indices4 = _batched_indices(xp, indices, out_shape, unbatched)
    else:
        y4 = None if y is None else _batched_like(xp, x, y, out_shape, unbatched, "y")
        indices4 = _adaptive_max(xp, x4, out, y4)[1]
    # No scatter in the standard: each offset's claimed dy is placed by one-hot matrices,
    # dx += Rows_i @ share_ij @ Cols_j (exact: products with 1 and sums with 0).
    all_rows = xp.arange(h, dtype=xp.int64, device=x.device)
    all_cols = xp.arange(w, dtype=xp.int64, device=x.device)
    cols = _adaptive_offsets(xp, w, out[1], x.device)
    for row, row_inside in _adaptive_offsets(xp, h, out[0], x.device):
        placed = None
        for col, col_inside in cols:
            inside = row_inside[:, None] & col_inside[None, :]
            flat = xp.where(inside, row[:, None] * w + col[None, :], _NO_INDEX)
            share = dy4 * xp.astype(indices4 == flat, x.dtype)
            part = share @ xp.astype(col[:, None] == all_cols[None, :], x.dtype)
            placed = part if placed is None else placed + part
        dx = dx + xp.astype(all_rows[:, None] == row[None, :], x.dtype) @ placed
    return _unbatched(dx, unbatched)
