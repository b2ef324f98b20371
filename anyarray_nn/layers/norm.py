"""Normalization layers (batch, layer, group) and dropout."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .. import backend as _backend
from .. import functional as F
from ..backend import namespace
from ..errors import InputError
from ..functional._checks import check_floating, check_gradient
from .base import Layer, register


class _BatchNorm(Layer):
    """Shared code of BatchNorm1D and BatchNorm2D (they differ in the input rank only)."""

    batch_separable = False  # training statistics come from the whole batch
    fuses_relu = True
    ndims: tuple[int, ...]  # the input ranks accepted, set by each subclass
    layouts: str  # how the error message names them
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *,
                 name: str | None = None, backend: Any = None, dtype: str | None = None,
                 rng: Any = None) -> None:
        super().__init__(name)
        self._check_sizes(num_features=num_features)
        if not ((momentum is None or (isinstance(momentum, numbers.Real)
                                      and 0.0 <= float(momentum) <= 1.0))
                and isinstance(eps, numbers.Real) and float(eps) > 0):
            raise ValueError(f"{type(self).__name__}: expected 0 <= momentum <= 1 and eps > 0 "
                             f"(or momentum=None, the cumulative average), got "
                             f"momentum={momentum}, eps={eps}")
        self.num_features, self.eps = num_features, float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        stores = ([(self.params, "gamma", "ones"), (self.params, "beta", "zeros")] * self.affine
                  + [(self.buffers, "running_mean", "zeros"),
                     (self.buffers, "running_var", "ones")] * self.track_running_stats)
        for store, key, init in stores:
            store[key] = self._new_param(init, (num_features,), 1, 1, backend, dtype, rng)
        if self.momentum is None and self.track_running_stats:  # the cumulative average's count
            self.buffers["num_batches_tracked"] = self._new_param("zeros", (), 1, 1, backend,
                                                                  dtype, rng)

    def _gamma_and_beta(self, x: Any) -> tuple[Any, Any]:
        """The parameters, or with affine=False the fixed scale 1 and shift 0 on x's device."""
        if self.affine:
            return self.params["gamma"], self.params["beta"]
        return (_backend.asarray_like(np.ones(self.num_features), x),
                _backend.asarray_like(np.zeros(self.num_features), x))

    def _forward(self, x: Any, train: bool, relu: bool = False) -> tuple[Any, Any]:
        namespace(x)  # a non-array x: the library's error, before x.ndim is read
        if x.ndim not in self.ndims:
            raise InputError(f"x: expected {self.layouts}, got shape {tuple(x.shape)}")
        gamma, beta = self._gamma_and_beta(x)
        if not train and self.track_running_stats:
            return F.batchnorm_inference(x, gamma, beta, self.buffers["running_mean"],
                                         self.buffers["running_var"], self.eps,
                                         relu=relu), None
        # Batch statistics: in training, and always without running statistics (as PyTorch).
        y, mean, var, count = self._normalize_batch(x, gamma, beta, relu)
        cache = (x, mean, var, relu)
        if not train or not self.track_running_stats:
            return y, cache
        momentum = self.momentum
        if momentum is None:  # PyTorch's cumulative average: batch k weighs 1 / k
            tracked = self.buffers["num_batches_tracked"] + 1
            self.buffers["num_batches_tracked"] = tracked
            momentum = 1.0 / float(tracked)
        if count == 0:  # an empty batch leaves the running statistics as they are (PyTorch)
            return y, cache
        self.buffers["running_mean"], self.buffers["running_var"] = F.batchnorm_update_running(
            self.buffers["running_mean"], self.buffers["running_var"], mean, var, count,
            momentum)
        return y, cache

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, mean, var, relu = cache
        gamma, beta = self._gamma_and_beta(x)
        dx, dgamma, dbeta = self._batch_gradients(x, gamma, beta, dy, mean, var, relu)
        return dx, ({"gamma": dgamma, "beta": dbeta} if self.affine else {})

    # The batch statistics and their gradients: the whole batch here; over every rank's part
    # of it in anyarray_nn.distributed's synchronized batch norm.

    def _normalize_batch(self, x: Any, gamma: Any, beta: Any,
                         relu: bool) -> tuple[Any, Any, Any, int]:
        """``(y, mean, var, count)``: training-mode batch norm of x, count the values per
        feature the statistics come from."""
        y, mean, var = F.batchnorm_forward(x, gamma, beta, self.eps, relu=relu)
        return y, mean, var, math.prod(x.shape) // x.shape[1]  # x.shape[1] >= 1

    def _batch_gradients(self, x: Any, gamma: Any, beta: Any, dy: Any, mean: Any, var: Any,
                         relu: bool) -> tuple[Any, Any, Any]:
        """``(dx, dgamma, dbeta)`` of :meth:`_normalize_batch`."""
        return F.batchnorm_backward(x, gamma, dy, self.eps, mean=mean, var=var, beta=beta,
                                    relu=relu)

    def get_config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "affine": self.affine, "track_running_stats": self.track_running_stats,
                "name": self.name}


@register
class BatchNorm1D(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) activations, per feature (statistics over N,
    and L), as torch.nn.BatchNorm1d: parameters ``gamma`` (scale, starts at 1) and ``beta``
    (shift, 0); buffers ``running_mean`` and ``running_var`` used in evaluation and saved in
    checkpoints. An empty batch (N = 0) passes through and leaves the statistics unchanged.
    As in PyTorch, ``affine=False`` fixes gamma at 1 and beta at 0 (no parameters) and
    ``track_running_stats=False`` keeps no buffers and uses the batch statistics in evaluation
    too; ``momentum=None`` is the cumulative average (the k-th batch weighs 1 / k), counted by
    the buffer ``num_batches_tracked``."""

    ndims, layouts = (2, 3), "a 2-D array (N, C) or a 3-D array (N, C, L)"


@register
class BatchNorm2D(_BatchNorm):
    """Batch normalization of (N, C, H, W) activations, per channel (statistics over N, H, W);
    otherwise as :class:`BatchNorm1D`."""

    ndims, layouts = (4,), "a 4-D array (N, C, H, W)"


@register
class Dropout(Layer):
    """Inverted dropout: in training, zero each activation with probability ``p`` and scale
    the rest by 1 / (1 - p) (p = 1 zeros everything, p = 0 is the identity, as PyTorch); the
    identity in evaluation.

    Masks are drawn on the host from the layer's own generator (seeded by ``rng``, else from
    the global seed), so runs are reproducible on every backend; checkpoints save its state.
    """

    batch_separable = False  # masks are drawn in call order from one generator
    p: float
    rng: np.random.Generator

    def __init__(self, p: float = 0.5, *, name: str | None = None, rng: Any = None) -> None:
        super().__init__(name)
        if not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"Dropout: expected 0 <= p <= 1, got {p!r}")
        self.p = float(p)
        self.rng = np.random.default_rng(_backend.host_rng(rng).integers(2**63))

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        if not train:
            return x, None
        check_floating(x, "x")  # before the mask is drawn, or cast to x's dtype
        if self.p == 0.0:
            return x, x  # the identity; x only serves to check dy
        keep = self.rng.random(tuple(x.shape)) >= self.p
        mask = _backend.asarray_like(keep, x)
        return F.dropout_forward(x, mask, self.p), mask

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        if self.p == 0.0:  # cache is x: check dy as dropout_backward does, then pass it on
            namespace(cache, dy, names=("x", "dy"))
            check_gradient(cache, dy, tuple(cache.shape))
            return dy, {}
        return F.dropout_backward(cache, dy, self.p), {}

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p, "name": self.name}


def _check_eps(layer: Layer, eps: Any) -> float:
    if not (isinstance(eps, numbers.Real) and float(eps) > 0):
        raise ValueError(f"{layer.type_name}: expected eps > 0, got {eps!r}")
    return float(eps)


@register
class LayerNorm(Layer):
    """Layer normalization as torch.nn.LayerNorm: each sample standardized over its last axes
    (``normalized_shape``, an int or a tuple), then scaled by ``gamma`` (starts at 1) and
    shifted by ``beta`` (0), both of shape ``normalized_shape``; ``elementwise_affine=False``
    drops both, ``bias=False`` drops beta. The same statistics in training and evaluation."""

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, name: str | None = None, backend: Any = None,
                 dtype: str | None = None, rng: Any = None) -> None:
        super().__init__(name)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
        if isinstance(shape, (list, tuple)):
            shape = tuple(shape)
        if not isinstance(shape, tuple) or not shape:
            raise ValueError(f"LayerNorm: expected normalized_shape to be a positive int or a "
                             f"non-empty tuple of them, got {normalized_shape!r}")
        self._check_sizes(**{f"normalized_shape[{i}]": n for i, n in enumerate(shape)})
        self.normalized_shape, self.eps = shape, _check_eps(self, eps)
        self.elementwise_affine, self.bias = bool(elementwise_affine), bool(bias)
        if self.elementwise_affine:
            self.params["gamma"] = self._new_param("ones", shape, 1, 1, backend, dtype, rng)
            if self.bias:
                self.params["beta"] = self._new_param("zeros", shape, 1, 1, backend, dtype, rng)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.layernorm_forward(x, self.normalized_shape, self.params.get("gamma"),
                                   self.params.get("beta"), self.eps), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        dx, dgamma, dbeta = F.layernorm_backward(x, self.normalized_shape, dy,
                                                 self.params.get("gamma"), self.eps)
        grads = {"gamma": dgamma, "beta": dbeta}
        return dx, {key: grads[key] for key in self.params}

    def get_config(self) -> dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.bias,
                "name": self.name}


@register
class GroupNorm(Layer):
    """Group normalization as torch.nn.GroupNorm: the ``num_channels`` channels of ``(N, C, *)``
    activations split into ``num_groups`` groups, each standardized per sample over its
    channels and the other axes, then a per-channel ``gamma`` (starts at 1) and ``beta`` (0);
    ``affine=False`` drops both. The same statistics in training and evaluation."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, *, name: str | None = None, backend: Any = None,
                 dtype: str | None = None, rng: Any = None) -> None:
        super().__init__(name)
        self._check_sizes(num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: expected num_groups to divide num_channels="
                             f"{num_channels}, got num_groups={num_groups}")
        self.num_groups, self.num_channels = num_groups, num_channels
        self.eps, self.affine = _check_eps(self, eps), bool(affine)
        if self.affine:
            for key, init in (("gamma", "ones"), ("beta", "zeros")):
                self.params[key] = self._new_param(init, (num_channels,), 1, 1, backend, dtype,
                                                   rng)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        namespace(x)  # a non-array x: the library's error, before x.ndim is read
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise InputError(f"x: expected (N, {self.num_channels}, *), got shape "
                             f"{tuple(x.shape)}")
        return F.groupnorm_forward(x, self.num_groups, self.params.get("gamma"),
                                   self.params.get("beta"), self.eps), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        dx, dgamma, dbeta = F.groupnorm_backward(x, self.num_groups, dy,
                                                 self.params.get("gamma"), self.eps)
        return dx, ({"gamma": dgamma, "beta": dbeta} if self.affine else {})

    def get_config(self) -> dict[str, Any]:
        return {"num_groups": self.num_groups, "num_channels": self.num_channels,
                "eps": self.eps, "affine": self.affine, "name": self.name}
