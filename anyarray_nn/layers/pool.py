"""Pooling layers (NCHW, or unbatched CHW)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import errors_named
from ..functional.pool import (
    adaptive_output_size,
    check_divisor_override,
    check_flag,
    pool_dilation,
    pool_window,
)
from .base import Layer, register


class _Pool2D(Layer):
    """Shared constructor and config of the windowed pooling layers."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, name: str | None = None) -> None:
        super().__init__(name)
        with errors_named(self.type_name):  # checked now, not at the first forward
            self.kernel_size, self.stride, self.padding = pool_window(kernel_size, stride, padding)
            self.ceil_mode = check_flag(ceil_mode, "ceil_mode")

    def probe_elements(self, shapes: Any) -> int:
        """Every window's every tap, over the padded input: kernel area x output positions
        (at most one window per input position, stride 1)."""
        c, h, w = shapes[0][-3:]
        (ph, pw), (kh, kw) = self.padding, self.kernel_size
        return max(super().probe_elements(shapes), c * kh * kw * (h + 2 * ph) * (w + 2 * pw))

    def get_config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "ceil_mode": self.ceil_mode, "name": self.name}


@register
class MaxPool2D(_Pool2D):
    """Max pooling; the gradient goes to the first arg-max of each window, or its last NaN
    where the maximum is NaN (PyTorch's rule).

    Options as ``torch.nn.MaxPool2d`` except ``return_indices``, which the functional
    ``maxpool2d_forward`` offers: a layer returns one array.
    """

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 dilation: Any = 1, ceil_mode: bool = False, name: str | None = None) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, name)
        with errors_named(self.type_name):
            self.dilation = pool_dilation(dilation)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dilation": list(self.dilation)}

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.maxpool2d_backward(x, dy, self.kernel_size, self.stride, self.padding,
                                    self.dilation, self.ceil_mode, y=y), {}


@register
class AvgPool2D(_Pool2D):
    """Average pooling; options as ``torch.nn.AvgPool2d`` (zero padding counts towards the
    average unless ``count_include_pad=False``; ``divisor_override`` replaces the divisor)."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None, name: str | None = None) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, name)
        with errors_named(self.type_name):
            self.count_include_pad = check_flag(count_include_pad, "count_include_pad")
            self.divisor_override = check_divisor_override(divisor_override)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def _options(self) -> tuple[Any, ...]:
        return (self.kernel_size, self.stride, self.padding, self.ceil_mode,
                self.count_include_pad, self.divisor_override)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.avgpool2d_forward(x, *self._options()), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.avgpool2d_backward(x, dy, *self._options()), {}


@register
class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C), or (C, H, W) -> (C,)."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.global_avgpool2d_forward(x), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.global_avgpool2d_backward(x, dy), {}


class _AdaptivePool2D(Layer):
    """Shared constructor and config of the adaptive pooling layers."""

    def __init__(self, output_size: Any, name: str | None = None) -> None:
        super().__init__(name)
        with errors_named(self.type_name):  # checked now (None entries: any input size)
            adaptive_output_size(output_size, (0, 0))
        if isinstance(output_size, (tuple, list)):
            self.output_size: Any = tuple(None if o is None else int(o) for o in output_size)
        else:
            self.output_size = int(output_size)

    def probe_elements(self, shapes: Any) -> int:
        """The output, and the windows, which overlap by at most one row or column each."""
        c, h, w = shapes[0][-3:]
        oh, ow = adaptive_output_size(self.output_size, (h, w))
        return max(super().probe_elements(shapes), c * (h + oh) * (w + ow))

    def get_config(self) -> dict[str, Any]:
        size = self.output_size
        return {"output_size": list(size) if isinstance(size, tuple) else size,
                "name": self.name}


@register
class AdaptiveAvgPool2D(_AdaptivePool2D):
    """Average pooling to ``output_size`` (an int, or a pair whose None entries keep that
    input size) over PyTorch's adaptive windows, as ``torch.nn.AdaptiveAvgPool2d``."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.adaptive_avgpool2d_forward(x, self.output_size), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.adaptive_avgpool2d_backward(x, dy, self.output_size), {}


@register
class AdaptiveMaxPool2D(_AdaptivePool2D):
    """Max pooling to ``output_size`` over PyTorch's adaptive windows, as
    ``torch.nn.AdaptiveMaxPool2d``; the gradient goes to each window's first arg-max."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.adaptive_maxpool2d_forward(x, self.output_size)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.adaptive_maxpool2d_backward(x, dy, self.output_size, y=y), {}
