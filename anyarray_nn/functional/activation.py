"""Element-wise activations. Each backward takes the forward input ``x`` and ``dy``.

    relu:        y = max(x, 0)                 dx = dy * [not x <= 0]
    leaky_relu:  y = x if x > 0 else a x       dx = dy * (1 if x > 0 else a)
    tanh:        y = tanh(x)                   dx = dy * (1 - y^2)
    sigmoid:     y = 1 / (1 + exp(-x))         dx = dy * y (1 - y)
    gelu:        y = x Phi(x)                  dx = dy * (Phi(x) + x phi(x))
    gelu tanh:   y = x (1 + t) / 2,  t = tanh(u),  u = sqrt(2/pi) (x + 0.044715 x^3)
                 dx = dy * ((1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2)
    silu:        y = x s(x), s = sigmoid       dx = dy * s(x) (1 + x (1 - s(x)))

Phi and phi are the standard normal distribution and density. At a NaN input every gradient
follows PyTorch: relu passes dy (NaN is not <= 0), leaky_relu scales it by a (NaN is not > 0),
the others give NaN. tanh and sigmoid backward accept the forward output ``y`` to skip
recomputing it.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace
from ..errors import InputError
from ._checks import check_floating, check_gradient
from ._fast import activation_kernels, cuda_kernels


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
    """``dy`` unless ``x <= 0``, where 0: the subgradient at 0 is 0 and a NaN input passes
    ``dy``, like PyTorch."""
    xp = _prepare(x, dy)
    fast = cuda_kernels(xp, x.dtype)
    if fast is not None:  # one CUDA kernel on CuPy (see _fast)
        return fast.relu_backward(x, dy)
    # Multiplying by a cast mask is an order of magnitude faster than `where` on NumPy.
    return dy * xp.astype(~(x <= 0), x.dtype)


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


_GELU_APPROXIMATIONS = ("none", "tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def _check_approximate(approximate: str) -> None:
    if approximate not in _GELU_APPROXIMATIONS:
        raise InputError(f"gelu: expected approximate to be 'none' or 'tanh', got "
                         f"{approximate!r}")


def gelu_forward(x: Any, approximate: str = "none") -> Any:
    """``x * Phi(x)`` with Phi the standard normal distribution; ``approximate="tanh"`` uses
    ``Phi(x) ~ (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``, as torch.nn.functional.gelu."""
    xp = _prepare(x)
    _check_approximate(approximate)
    fast = activation_kernels(xp, x.dtype, approximate)
    if fast is not None:  # one compiled pass (numba) on NumPy
        return fast.gelu(x, None)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + xp.tanh(_SQRT_2_OVER_PI * (x + _TANH_CUBIC * x * x * x)))
    return x * _normal_cdf(xp, x)


def gelu_backward(x: Any, dy: Any, approximate: str = "none") -> Any:
    """The gradient of :func:`gelu_forward` with the same ``approximate``."""
    xp = _prepare(x, dy)
    _check_approximate(approximate)
    fast = activation_kernels(xp, x.dtype, approximate)
    if fast is not None and dy.dtype == x.dtype:
        return fast.gelu(x, dy)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x + _TANH_CUBIC * x * x * x))
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * x * x)
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)
    density = xp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return dy * (_normal_cdf(xp, x) + x * density)


def silu_forward(x: Any) -> Any:
    """``x * sigmoid(x)`` (also called swish)."""
    _prepare(x)
    return x * sigmoid_forward(x)


def silu_backward(x: Any, dy: Any) -> Any:
    """``dy * s (1 + x (1 - s))`` with ``s = sigmoid(x)``."""
    _prepare(x, dy)
    s = sigmoid_forward(x)
    return dy * s * (1.0 + x * (1.0 - s))


# The standard has no erf, so Phi(x) = erfc(-x / sqrt 2) / 2 is computed here, to about 1e-15
# in float64: for |z| < 2.5 by erf(z) = 2/sqrt(pi) exp(-z^2) z sum_k c_k z^(2k) with
# c_k = 2^k / (1 3 5 ... (2k+1)) (all terms positive: no cancellation; Horner's rule), beyond by
# Laplace's continued fraction erfc(z) = exp(-z^2)/sqrt(pi) / (z + (1/2) / (z + 1 / (z + ...))).
_ERF_SPLIT = 2.5
_ERF_SERIES = [2.0 ** k / math.prod(range(1, 2 * k + 2, 2)) for k in range(40)]
_ERFC_FRACTION_TERMS = 30


def _erfc_of_abs(xp: Any, a: Any) -> Any:
    """erfc(a) for a >= 0 (NaN stays NaN); each formula sees only its own range."""
    small = xp.minimum(a, xp.asarray(_ERF_SPLIT, dtype=a.dtype))
    z2 = small * small
    series = xp.full_like(small, _ERF_SERIES[-1])
    for c in reversed(_ERF_SERIES[:-1]):
        series = series * z2 + c
    erf_small = (2.0 / math.sqrt(math.pi)) * xp.exp(-z2) * small * series
    large = xp.maximum(a, xp.asarray(_ERF_SPLIT, dtype=a.dtype))
    fraction = large
    for k in range(_ERFC_FRACTION_TERMS, 0, -1):
        fraction = large + (0.5 * k) / fraction
    erfc_large = xp.exp(-large * large) / (math.sqrt(math.pi) * fraction)
    return xp.where(a < _ERF_SPLIT, 1.0 - erf_small, erfc_large)


def _normal_cdf(xp: Any, x: Any) -> Any:
    """Phi(x), accurate in the lower tail too (no 1 - erf cancellation there)."""
    half_erfc = 0.5 * _erfc_of_abs(xp, xp.abs(x) * (1.0 / math.sqrt(2.0)))
    return xp.where(x >= 0, 1.0 - half_erfc, half_erfc)
