"""Element-wise activations. Each backward takes the forward input ``x`` and ``dy``.

    relu:        y = max(x, 0)                 dx = dy * [x > 0]
    leaky_relu:  y = x if x > 0 else a x       dx = dy * (1 if x > 0 else a)
    tanh:        y = tanh(x)                   dx = dy * (1 - y^2)
    sigmoid:     y = 1 / (1 + exp(-x))         dx = dy * y (1 - y)

tanh and sigmoid backward accept the forward output ``y`` to skip recomputing it.
"""

from __future__ import annotations

from typing import Any

from ..backend import namespace
from ._checks import check_floating, check_gradient
from ._fast import cuda_kernels


def _prepare(x: Any, dy: Any | None = None, y: Any | None = None) -> Any:
    """Check ``x`` and, if given, ``dy`` and the forward output ``y`` (both of x's shape)."""
    xp = namespace(x, dy, y, names=("x", "dy", "y"))
    check_floating(x, "x")
    if dy is not None:
        check_gradient(x, dy, tuple(x.shape))
    if y is not None:
        check_gradient(x, y, tuple(x.shape), "y")
    return xp


def relu_forward(x: Any) -> Any:
    """``max(x, 0)`` element-wise."""
    xp = _prepare(x)
    fast = cuda_kernels(xp, x.dtype)
    if fast is not None:  # one CUDA kernel on CuPy (see _fast)
        return fast.relu_forward(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype))


def relu_backward(x: Any, dy: Any) -> Any:
    """``dy`` where ``x > 0``, else 0 (the subgradient at 0 is taken as 0, like PyTorch)."""
    xp = _prepare(x, dy)
    fast = cuda_kernels(xp, x.dtype)
    if fast is not None:  # one CUDA kernel on CuPy (see _fast)
        return fast.relu_backward(x, dy)
    # Multiplying by a cast mask is an order of magnitude faster than `where` on NumPy.
    return dy * xp.astype(x > 0, x.dtype)


def leaky_relu_forward(x: Any, negative_slope: float = 0.01) -> Any:
    """``x`` where ``x > 0``, else ``negative_slope * x``."""
    xp = _prepare(x)
    return x * _leaky_factor(xp, x, negative_slope)


def leaky_relu_backward(x: Any, dy: Any, negative_slope: float = 0.01) -> Any:
    """``dy`` where ``x > 0``, else ``negative_slope * dy``."""
    xp = _prepare(x, dy)
    return dy * _leaky_factor(xp, x, negative_slope)


def _leaky_factor(xp: Any, x: Any, negative_slope: float) -> Any:
    # 1 where x > 0, negative_slope elsewhere: a + (1 - a) * [x > 0].
    return xp.astype(x > 0, x.dtype) * (1.0 - negative_slope) + negative_slope


def tanh_forward(x: Any) -> Any:
    """``tanh(x)`` element-wise."""
    xp = _prepare(x)
    return xp.tanh(x)


def tanh_backward(x: Any, dy: Any, y: Any | None = None) -> Any:
    """``dy * (1 - tanh(x)^2)``; pass the forward output ``y`` to avoid recomputing it."""
    xp = _prepare(x, dy, y)
    y = xp.tanh(x) if y is None else y
    return dy * (1.0 - y * y)


def sigmoid_forward(x: Any) -> Any:
    """The logistic function, computed without overflow for inputs of any magnitude."""
    xp = _prepare(x)
    # exp(-|x|) never overflows; the two branches are the same function rearranged.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(x: Any, dy: Any, y: Any | None = None) -> Any:
    """``dy * y * (1 - y)``; pass the forward output ``y`` to avoid recomputing it."""
    _prepare(x, dy, y)
    y = sigmoid_forward(x) if y is None else y
    return dy * y * (1.0 - y)
