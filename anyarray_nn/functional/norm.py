"""Normalization (batch, layer, group) and dropout kernels.

Batch normalization of x of shape ``(N, C, *)`` over every axis but the channels (the batch and
any length or spatial axes), with m values per feature, in training mode:

    mean = sum(x) / m      var = sum((x - mean)^2) / m      (biased, as in the paper)
    xhat = (x - mean) / sqrt(var + eps)         y = gamma * xhat + beta
    dgamma = sum(dy * xhat)       dbeta = sum(dy)
    dx = gamma / sqrt(var + eps) / m * (m dy - sum(dy) - xhat sum(dy * xhat))

In evaluation mode the running statistics replace mean and var. The running statistics are
updated like PyTorch's: running = (1 - momentum) running + momentum batch, with the
unbiased batch variance (var * m / (m - 1)). An empty batch (m = 0) gives an empty output and
zero parameter gradients, and the layers leave the running statistics as they are, as PyTorch.

Layer normalization standardizes each sample over its last axes (``normalized_shape``, m
values), group normalization over each group of C / G channels and the spatial axes; both use
the same statistics in training and evaluation. With g = dy * gamma (gamma broadcast):

    dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))      (means over the normalized values)

and dgamma, dbeta sum dy * xhat and dy over every other axis.

Inverted dropout with a given 0/1 ``mask`` (drawn by the layer): y = x * mask / (1 - p), and
the same factor on the way back, so evaluation needs no rescaling; p = 1 multiplies by 0.
"""

from __future__ import annotations

import math
import numbers
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
from ._fast import norm_kernels


def _axes(x: Any) -> tuple[int, ...]:
    """Every axis of x but the channels (axis 1)."""
    if x.ndim < 2:
        raise InputError(f"x: expected (N, C) or (N, C, *) (channels in axis 1), got shape "
                         f"{tuple(x.shape)}")
    return (0,) + tuple(range(2, x.ndim))


def _values_per_feature(x: Any) -> int:
    return math.prod(x.shape[i] for i in _axes(x))


def _per_feature(v: Any, x: Any) -> Any:
    """A (C,) vector shaped to broadcast against x along axis 1."""
    xp = namespace(v)
    return xp.reshape(v, (1, v.shape[0]) + (1,) * (x.ndim - 2))


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


def _normalize(xp: Any, x: Any, gamma: Any, beta: Any, mean: Any, var: Any,
               eps: float) -> tuple[Any, Any]:
    """``(gamma * xhat + beta, xhat)`` for x standardized with the statistics ``mean`` and
    ``var``: the forward pass, and the backward's ReLU mask, compute y by this one function."""
    xhat = (x - _per_feature(mean, x)) / _per_feature(xp.sqrt(var + eps), x)
    return _per_feature(gamma, x) * xhat + _per_feature(beta, x), xhat


def batchnorm_forward(x: Any, gamma: Any, beta: Any, eps: float = 1e-5, *,
                      relu: bool = False) -> tuple[Any, Any, Any]:
    """Training-mode batch normalization: returns ``(y, mean, var)`` (var biased).

    ``relu=True`` returns ``max(y, 0)`` instead of y, in the same pass: what a ReLU after the
    batch norm computes, without its own pass over memory (models fuse the two this way).
    """
    xp = namespace(x, gamma, beta, names=("x", "gamma", "beta"))
    check_floating(x, "x")
    axes = _axes(x)
    _check_features(x, {"gamma": gamma, "beta": beta})
    m = _values_per_feature(x)
    if m == 0:  # PyTorch's empty batch: an empty output, and statistics that mean nothing
        y = _per_feature(gamma, x) * x + _per_feature(beta, x)
        return y, xp.full_like(gamma, math.nan), xp.full_like(gamma, math.nan)
    if m == 1:
        raise InputError(f"x: batch normalization needs at least 2 values per feature in "
                         f"training (or an empty batch), got shape {tuple(x.shape)}")
    fast = norm_kernels(xp, x.dtype)
    if fast is not None:  # see _fast
        return fast.batchnorm_forward(x, gamma, beta, eps, bool(relu))
    mean = xp.mean(x, axis=axes)
    centered = x - _per_feature(mean, x)
    var = xp.mean(centered * centered, axis=axes)
    y, _ = _normalize(xp, x, gamma, beta, mean, var, eps)
    return (xp.maximum(y, xp.zeros_like(y)) if relu else y), mean, var


def batchnorm_backward(x: Any, gamma: Any, dy: Any, eps: float = 1e-5, *, mean: Any = None,
                       var: Any = None, beta: Any = None,
                       relu: bool = False) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dgamma, dbeta)`` of training-mode batch normalization.

    ``mean`` and ``var``: the statistics :func:`batchnorm_forward` returned, which saves the
    passes that compute them again from x (pass both or neither). ``relu=True``: the
    gradients of ``batchnorm_forward(..., relu=True)``, dy zeroed where
    ``gamma * xhat + beta <= 0`` (as :func:`relu_backward`); it needs ``beta``.
    """
    xp = namespace(x, gamma, dy, names=("x", "gamma", "dy"))
    check_floating(x, "x")
    axes = _axes(x)
    check_gradient(x, dy, tuple(x.shape))
    if (mean is None) != (var is None):
        raise InputError("batchnorm_backward: expected both mean and var (the forward's "
                         "statistics) or neither")
    if relu and beta is None:
        raise InputError("batchnorm_backward: relu=True needs beta (the ReLU's mask is where "
                         "gamma * xhat + beta <= 0)")
    given = {"gamma": gamma, "beta": beta, "mean": mean, "var": var}
    _check_features(x, {k: v for k, v in given.items() if v is not None})
    m = _values_per_feature(x)
    if m == 0:  # an empty batch contributes nothing
        return xp.zeros_like(x), xp.zeros_like(gamma), xp.zeros_like(gamma)
    if mean is None:
        mean = xp.mean(x, axis=axes)
        centered = x - _per_feature(mean, x)
        var = xp.mean(centered * centered, axis=axes)
    beta = xp.zeros_like(gamma) if beta is None else beta
    fast = norm_kernels(xp, x.dtype)
    if fast is not None:  # see _fast
        return fast.batchnorm_backward(x, gamma, beta, dy, eps, mean, var, bool(relu))
    y, xhat = _normalize(xp, x, gamma, beta, mean, var, eps)
    if relu:  # as relu_backward: 0 where y <= 0 (a NaN y passes dy)
        dy = dy * xp.astype(~(y <= 0), dy.dtype)
    inv_std = 1.0 / xp.sqrt(var + eps)
    dbeta = xp.sum(dy, axis=axes)
    dgamma = xp.sum(dy * xhat, axis=axes)
    scale = _per_feature(gamma * inv_std / m, x)
    dx = scale * (m * dy - _per_feature(dbeta, x) - xhat * _per_feature(dgamma, x))
    return dx, dgamma, dbeta


def batchnorm_inference(x: Any, gamma: Any, beta: Any, running_mean: Any, running_var: Any,
                        eps: float = 1e-5, *, relu: bool = False) -> Any:
    """Evaluation-mode batch normalization with the running statistics (then a ReLU if
    ``relu``)."""
    xp = namespace(x, gamma, beta, running_mean, running_var,
                   names=("x", "gamma", "beta", "running_mean", "running_var"))
    check_floating(x, "x")
    _axes(x)
    _check_features(x, {"gamma": gamma, "beta": beta, "running_mean": running_mean,
                        "running_var": running_var})
    scale = gamma / xp.sqrt(running_var + eps)
    y = _per_feature(scale, x) * x + _per_feature(beta - running_mean * scale, x)
    return xp.maximum(y, xp.zeros_like(y)) if relu else y


def batchnorm_update_running(running_mean: Any, running_var: Any, mean: Any, var: Any,
                             count: int, momentum: float = 0.1) -> tuple[Any, Any]:
    """PyTorch's running-statistics update (unbiased variance); returns the new pair.

    ``count`` is the number of values per feature the batch statistics came from (>= 2;
    after an empty batch the layers skip the update, as PyTorch leaves the statistics as they are).
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


def _standardize(xp: Any, x: Any, axes: tuple[int, ...], eps: float) -> tuple[Any, Any]:
    """``(xhat, inv_std)``: x standardized over ``axes`` with the biased variance (the
    statistics keep their axes, to broadcast)."""
    centered = x - xp.mean(x, axis=axes, keepdims=True)
    inv_std = 1.0 / xp.sqrt(xp.mean(centered * centered, axis=axes, keepdims=True) + eps)
    return centered * inv_std, inv_std


def _standardize_backward(xp: Any, xhat: Any, inv_std: Any, g: Any,
                          axes: tuple[int, ...]) -> Any:
    """The gradient through :func:`_standardize` of ``g`` = dL/dxhat."""
    mean_g = xp.mean(g, axis=axes, keepdims=True)
    mean_gx = xp.mean(g * xhat, axis=axes, keepdims=True)
    return inv_std * (g - mean_g - xhat * mean_gx)


def _normalized_shape(x: Any, normalized_shape: Any) -> tuple[int, ...]:
    """``normalized_shape`` (an int or a sequence of ints) as a tuple that x's last axes match."""
    shape = (normalized_shape,) if as_int(normalized_shape) is not None else normalized_shape
    try:
        shape = tuple(as_int(n) for n in shape)
    except TypeError:
        shape = (None,)
    if not shape or any(n is None or n < 1 for n in shape):
        raise InputError(f"layer_norm: expected normalized_shape to be a positive int or a "
                         f"non-empty sequence of positive ints, got {normalized_shape!r}")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise InputError(f"x: expected a shape ending in {shape} (normalized_shape), got "
                         f"shape {tuple(x.shape)}")
    return shape


def _check_affine(x: Any, shape: tuple[int, ...], vectors: dict[str, Any]) -> None:
    for name, v in vectors.items():
        if v is None:
            continue
        namespace(v, x, names=(name, "x"))
        check_same_dtype(v, x, name, "x")
        if tuple(v.shape) != shape:
            raise InputError(f"{name}: expected shape {shape}, got {tuple(v.shape)}")


def layernorm_forward(x: Any, normalized_shape: Any, gamma: Any = None, beta: Any = None,
                      eps: float = 1e-5) -> Any:
    """Layer normalization as torch.nn.functional.layer_norm: each sample standardized over
    its last ``len(normalized_shape)`` axes, then ``y = gamma * xhat + beta`` (gamma and beta
    of shape ``normalized_shape``, each optional)."""
    xp = namespace(x, gamma, beta, names=("x", "gamma", "beta"))
    check_floating(x, "x")
    shape = _normalized_shape(x, normalized_shape)
    _check_affine(x, shape, {"gamma": gamma, "beta": beta})
    y, _ = _standardize(xp, x, tuple(range(x.ndim - len(shape), x.ndim)), eps)
    y = y if gamma is None else y * gamma
    return y if beta is None else y + beta


def layernorm_backward(x: Any, normalized_shape: Any, dy: Any, gamma: Any = None,
                       eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dgamma, dbeta)`` of :func:`layernorm_forward` (dgamma and dbeta are
    those of the scale and the shift, whether or not the forward had them)."""
    xp = namespace(x, dy, gamma, names=("x", "dy", "gamma"))
    check_floating(x, "x")
    shape = _normalized_shape(x, normalized_shape)
    _check_affine(x, shape, {"gamma": gamma})
    check_gradient(x, dy, tuple(x.shape))
    normalized = tuple(range(x.ndim - len(shape), x.ndim))
    xhat, inv_std = _standardize(xp, x, normalized, eps)
    g = dy if gamma is None else dy * gamma
    dx = _standardize_backward(xp, xhat, inv_std, g, normalized)
    batch = tuple(range(x.ndim - len(shape)))
    return dx, xp.sum(dy * xhat, axis=batch), xp.sum(dy, axis=batch)


def _groups(x: Any, num_groups: Any) -> tuple[int, int, int]:
    """``(N, G, m)``: x of shape ``(N, C, *)`` seen as N samples of G groups of m values each."""
    if x.ndim < 2:
        raise InputError(f"x: expected (N, C, *) (channels in axis 1), got shape "
                         f"{tuple(x.shape)}")
    groups = as_int(num_groups)
    if groups is None or groups < 1 or x.shape[1] % groups:
        raise InputError(f"group_norm: expected num_groups to be a positive int dividing the "
                         f"{x.shape[1]} channels of x, got {num_groups!r}")
    m = math.prod(x.shape[1:]) // groups
    if m == 0:
        raise InputError(f"x: group normalization needs at least one value per group, got "
                         f"shape {tuple(x.shape)}")
    return x.shape[0], groups, m


def groupnorm_forward(x: Any, num_groups: int, gamma: Any = None, beta: Any = None,
                      eps: float = 1e-5) -> Any:
    """Group normalization as torch.nn.functional.group_norm: x of shape ``(N, C, *)``, each
    group of C / num_groups channels of each sample standardized over its channels and the
    other axes, then ``y = gamma * xhat + beta`` per channel (gamma, beta of shape (C,),
    each optional)."""
    xp = namespace(x, gamma, beta, names=("x", "gamma", "beta"))
    check_floating(x, "x")
    n, groups, m = _groups(x, num_groups)
    _check_affine(x, (x.shape[1],), {"gamma": gamma, "beta": beta})
    xhat, _ = _standardize(xp, xp.reshape(x, (n, groups, m)), (2,), eps)
    y = xp.reshape(xhat, tuple(x.shape))
    y = y if gamma is None else y * _per_feature(gamma, x)
    return y if beta is None else y + _per_feature(beta, x)


def groupnorm_backward(x: Any, num_groups: int, dy: Any, gamma: Any = None,
                       eps: float = 1e-5) -> tuple[Any, Any, Any]:
    """Gradients ``(dx, dgamma, dbeta)`` of :func:`groupnorm_forward` (dgamma and dbeta, of
    shape (C,), are those of the scale and the shift, whether or not the forward had them)."""
    xp = namespace(x, dy, gamma, names=("x", "dy", "gamma"))
    check_floating(x, "x")
    n, groups, m = _groups(x, num_groups)
    _check_affine(x, (x.shape[1],), {"gamma": gamma})
    check_gradient(x, dy, tuple(x.shape))
    xhat, inv_std = _standardize(xp, xp.reshape(x, (n, groups, m)), (2,), eps)
    g = dy if gamma is None else dy * _per_feature(gamma, x)
    dx = _standardize_backward(xp, xhat, inv_std, xp.reshape(g, (n, groups, m)), (2,))
    xhat = xp.reshape(xhat, tuple(x.shape))
    axes = (0,) + tuple(range(2, x.ndim))
    return xp.reshape(dx, tuple(x.shape)), xp.sum(dy * xhat, axis=axes), xp.sum(dy, axis=axes)


def dropout_forward(x: Any, mask: Any, p: float) -> Any:
    """Inverted dropout: ``x * mask / (1 - p)`` with a 0/1 ``mask`` of x's shape and dtype
    (``x * mask * 0`` for p = 1, as PyTorch)."""
    namespace(x, mask, names=("x", "mask"))
    check_floating(x, "x")
    _check_mask(x, mask, p)
    return x * mask * _dropout_scale(p)


def dropout_backward(mask: Any, dy: Any, p: float) -> Any:
    """The gradient of :func:`dropout_forward`: ``dy * mask / (1 - p)``."""
    namespace(mask, dy, names=("mask", "dy"))
    check_gradient(mask, dy, tuple(mask.shape))  # the mask has the forward's shape and dtype
    _check_mask(dy, mask, p)
    return dy * mask * _dropout_scale(p)


def _dropout_scale(p: float) -> float:
    # p = 1 drops everything (the mask is all zeros); 0, not 1 / 0, keeps x * 0 as PyTorch.
    return 0.0 if p == 1.0 else 1.0 / (1.0 - p)


def _check_mask(x: Any, mask: Any, p: float) -> None:
    if not (isinstance(p, numbers.Real) and 0.0 <= float(p) <= 1.0):
        raise InputError(f"p: expected a number with 0 <= p <= 1, got {p!r}")
    if tuple(mask.shape) != tuple(x.shape):
        raise InputError(f"mask: expected shape {tuple(x.shape)}, got {tuple(mask.shape)}")
    check_same_dtype(mask, x, "mask", "x")
