"""Pooling layers (NCHW)."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import errors_named
from ..functional.pool import pool_window
from .base import Layer, register


class _Pool2D(Layer):
    """Shared constructor and config of the pooling layers."""

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0,
                 name: str | None = None) -> None:
        super().__init__(name)
        with errors_named(self.type_name):  # checked now, not at the first forward
            self.kernel_size, self.stride, self.padding = pool_window(kernel_size, stride, padding)

    def get_config(self) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "name": self.name}


@register
class MaxPool2D(_Pool2D):
    """Max pooling; the gradient goes to the first arg-max of each window."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.maxpool2d_backward(x, dy, self.kernel_size, self.stride, self.padding, y=y), {}


@register
class AvgPool2D(_Pool2D):
    """Average pooling (zero padding counts towards the average, as PyTorch's default)."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.avgpool2d_backward(x, dy, self.kernel_size, self.stride, self.padding), {}


@register
class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.global_avgpool2d_forward(x), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.global_avgpool2d_backward(x, dy), {}
