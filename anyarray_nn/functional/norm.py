"""Batch normalization and dropout kernels.

Batch normalization over the batch (and, for images, the spatial) axes, with m values per
feature, in training mode:

    mean = sum(x) / m      var = sum((x - mean)^2) / m      (biased, as in the paper)
    xhat = (x - mean) / sqrt(var + eps)         y = gamma * xhat + beta
    dgamma = sum(dy * xhat)       dbeta = sum(dy)
    dx = gamma / sqrt(var + eps) / m * (m dy - sum(dy) - xhat sum(dy * xhat))

In evaluation mode the running statistics replace mean and var. The running statistics are
updated like PyTorch's: running = (1 - momentum) running + momentum batch, with the
unbiased batch variance (var * m / (m - 1)).

Inverted dropout with a given 0/1 ``mask`` (drawn by the layer): y = x * mask / (1 - p), and
the same factor on the way back, so evaluation needs no rescaling.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace
from ..errors import InputError, as_int
from ._checks import (
    check_floating,
    check_gradient,
    check_ndim,
    check_same_dtype,
    check_same_shape,
)


def _axes(x: Any) -> tuple[int, ...]:
    if x.ndim == 2:
        return (0,)
    if x.ndim == 4:
        return (0, 2, 3)
    raise InputError(f"x: expected (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")


def _per_feature(v: Any, x: Any) -> Any:
    """A (C,) vector shaped to broadcast against x along axis 1."""
    return v[None, :] if x.ndim == 2 else v[None, :, None, None]


def _check_features(x: Any, vectors: dict[str, Any]) -> None:
    """Raise unless x fits the per-feature vectors, the first (gamma) being the reference: x
    must have its dtype and its number of features (as Dense blames x, not W, for a mismatch);
    then every vector must have shape (C,) and x's dtype."""
    ref_name, ref = next(iter(vectors.items()))
    check_same_dtype(x, ref, "x", ref_name)
    if ref.ndim == 1 and x.shape[1] != ref.shape[0]:
        unit = "features" if x.ndim == 2 else "channels"
        raise InputError(f"x: expected {ref.shape[0]} {unit} ({ref_name} has shape "
                         f"{tuple(ref.shape)}), got shape {tuple(x.shape)}")
    for name, v in vectors.items():
        check_same_dtype(v, x, name, "x")
        if tuple(v.shape) != (x.shape[1],):
            raise InputError(f"{name}: expected shape ({x.shape[1]},) for x of shape "
                             f"{tuple(x.shape)}, got {tuple(v.shape)}")


def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """Training-mode batch normalization: returns ``(y, mean, var)`` (var biased)."""
    xp = namespace(x, gamma, beta, names=("x", "gamma", "beta"))
    check_floating(x, "x")
    axes = _axes(x)
    _check_features(x, {"gamma": gamma, "beta": beta})
    if math.prod(x.shape) // x.shape[1] < 2:
        raise InputError(f"x: batch normalization needs at least 2 values per feature in "
                         f"training, got shape {tuple(x.shape)}")
    mean = xp.mean(x, axis=axes)
    centered = x - _per_feature(mean, x)
    var = xp.mean(centered * centered, axis=axes)
    xhat = centered / _per_feature(xp.sqrt(var + eps), x)
    return _per_feature(gamma, x) * xhat + _per_feature(beta, x), mean, var


def batchnorm_backward(x: Any, gamma: Any, dy: Any, eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dgamma, dbeta)`` of training-mode batch normalization."""
    xp = namespace(x, gamma, dy, names=("x", "gamma", "dy"))
    check_floating(x, "x")
    axes = _axes(x)
    _check_features(x, {"gamma": gamma})
    check_gradient(x, dy, tuple(x.shape))
    m = math.prod(x.shape) // x.shape[1]
    mean = xp.mean(x, axis=axes)
    centered = x - _per_feature(mean, x)
    inv_std = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=axes) + eps)
    xhat = centered * _per_feature(inv_std, x)
    dbeta = xp.sum(dy, axis=axes)
    dgamma = xp.sum(dy * xhat, axis=axes)
    scale = _per_feature(gamma * inv_std / m, x)
    dx = scale * (m * dy - _per_feature(dbeta, x) - xhat * _per_feature(dgamma, x))
    return dx, dgamma, dbeta


def batchnorm_inference(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                        eps: float = 1e-5) -> Any:
    """Evaluation-mode batch normalization with the running statistics."""
    xp = namespace(x, gamma, beta, running_mean, running_var,
                   names=("x", "gamma", "beta", "running_mean", "running_var"))
    check_floating(x, "x")
    _axes(x)
    _check_features(x, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                        "running_var": running_var})
    scale = gamma / xp.sqrt(running_var + eps)
    return _per_feature(scale, x) * x + _per_feature(beta - running_mean * scale, x)


def batchnorm_update_running(running_mean: Any, running_var: Any, mean: Any, var: Any,
                             count: int, momentum: float = 0.1) -> tuple[Any, Any]:
    """PyTorch's running-statistics update (unbiased variance); returns the new pair.

    ``count`` is the number of values per feature the batch statistics came from (>= 2).
    """
    namespace(running_mean, running_var, mean, var,
              names=("running_mean", "running_var", "mean", "var"))
    check_ndim(running_mean, 1, "running_mean", "(features,)")
    check_floating(running_mean, "running_mean")
    for name, v in (("running_var", running_var), ("mean", mean), ("var", var)):
        check_same_shape(v, running_mean, name, "running_mean")
        check_same_dtype(v, running_mean, name, "running_mean")
    n = as_int(count)
    if n is None or n < 2:
        raise InputError(f"count: expected an int >= 2 (values per feature, for the unbiased "
                         f"variance), got {count!r}")
    unbiased = var * (count / (count - 1))
    return ((1.0 - momentum) * running_mean + momentum * mean,
            (1.0 - momentum) * running_var + momentum * unbiased)


def dropout_forward(x: Any, mask: Any, p: float) -> Any:
    """Inverted dropout: ``x * mask / (1 - p)`` with a 0/1 ``mask`` of x's shape and dtype."""
    namespace(x, mask, names=("x", "mask"))
    check_floating(x, "x")
    _check_mask(x, mask, p)
    return x * mask * (1.0 / (1.0 - p))


def dropout_backward(mask: Any, dy: Any, p: float) -> Any:
    """The gradient of :func:`dropout_forward`: ``dy * mask / (1 - p)``."""
    namespace(mask, dy, names=("mask", "dy"))
    check_gradient(mask, dy, tuple(mask.shape))  # the mask has the forward's shape and dtype
    _check_mask(dy, mask, p)
    return dy * mask * (1.0 / (1.0 - p))


def _check_mask(x: Any, mask: Any, p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise InputError(f"p: expected 0 <= p < 1, got {p}")
    if tuple(mask.shape) != tuple(x.shape):
        raise InputError(f"mask: expected shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    check_same_dtype(mask, x, "mask", "x")
