"""Regularization layers: batch normalization and dropout."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .. import backend as _backend
from .. import functional as F
from ..backend import namespace
from ..functional._checks import check_floating, check_gradient, check_ndim
from .base import Layer, register


class _BatchNorm(Layer):
    """Shared code of BatchNorm1D and BatchNorm2D (they differ in the input rank only)."""

    batch_separable = False  # training statistics come from the whole batch
    ndim: int  # the input rank, set by each subclass

    def __init__(self, num_features: int, *, eps: float = 1e-5, momentum: float = 0.1,
                 name: str | None = None, backend: Any = None, dtype: str | None = None,
                 rng: Any = None) -> None:
        super().__init__(name)
        self._check_sizes(num_features=num_features)
        if momentum is None:
            raise ValueError(f"{type(self).__name__}: momentum=None (PyTorch's cumulative "
                             f"average) is not supported; expected a number in [0, 1]")
        if not (isinstance(momentum, numbers.Real) and isinstance(eps, numbers.Real)
                and 0.0 <= momentum <= 1.0 and eps > 0):
            raise ValueError(f"{type(self).__name__}: expected 0 <= momentum <= 1 and eps > 0, "
                             f"got momentum={momentum}, eps={eps}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        for store, name, init in ((self.params, "gamma", "ones"), (self.params, "beta", "zeros"),
                                  (self.buffers, "running_mean", "zeros"),
                                  (self.buffers, "running_var", "ones")):
            store[name] = self._new_param(init, (num_features,), 1, 1, backend, dtype, rng)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        namespace(x)  # a non-array x: the library's error, before x.ndim is read
        check_ndim(x, self.ndim, "x", "(N, C)" if self.ndim == 2 else "(N, C, H, W)")
        gamma, beta = self.params["gamma"], self.params["beta"]
        if not train:
            return F.batchnorm_inference(x, gamma, beta, self.buffers["running_mean"],
                                         self.buffers["running_var"], self.eps), None
        y, mean, var = F.batchnorm_forward(x, gamma, beta, self.eps)
        count = math.prod(x.shape) // x.shape[1]
        self.buffers["running_mean"], self.buffers["running_var"] = F.batchnorm_update_running(
            self.buffers["running_mean"], self.buffers["running_var"], mean, var, count,
            self.momentum)
        return y, x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        dx, dgamma, dbeta = F.batchnorm_backward(x, self.params["gamma"], dy, self.eps)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def get_config(self) -> dict[str, Any]:
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum,
                "name": self.name}


@register
class BatchNorm1D(_BatchNorm):
    """Batch normalization of (N, C) activations: parameters ``gamma`` (scale, starts at 1)
    and ``beta`` (shift, 0); buffers ``running_mean`` and ``running_var`` used in evaluation
    and saved in checkpoints."""

    ndim = 2


@register
class BatchNorm2D(_BatchNorm):
    """Batch normalization of (N, C, H, W) activations, per channel (statistics over N, H, W);
    otherwise as :class:`BatchNorm1D`."""

    ndim = 4


@register
class Dropout(Layer):
    """Inverted dropout: in training, zero each activation with probability ``p`` and scale
    the rest by 1 / (1 - p); the identity in evaluation.

    Masks are drawn on the host from the layer's own generator (seeded by ``rng``, else from
    the global seed), so runs are reproducible on every backend; checkpoints save its state.
    """

    batch_separable = False  # masks are drawn in call order from one generator

    def __init__(self, p: float = 0.5, *, name: str | None = None, rng: Any = None) -> None:
        super().__init__(name)
        if not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: expected 0 <= p < 1, got {p!r}")
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
