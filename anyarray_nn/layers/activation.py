"""Activation layers: no parameters, one kernel pair each."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..errors import as_int
from .base import Layer, register


@register
class ReLU(Layer):
    """``max(x, 0)``; the gradient passes where the input was positive."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.relu_forward(x), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.relu_backward(x, dy), {}


@register
class LeakyReLU(Layer):
    """``x`` for positive inputs, ``negative_slope * x`` otherwise."""

    def __init__(self, negative_slope: float = 0.01, name: str | None = None) -> None:
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.leaky_relu_forward(x, self.negative_slope), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.leaky_relu_backward(x, dy, self.negative_slope), {}

    def get_config(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope, "name": self.name}


@register
class Tanh(Layer):
    """Hyperbolic tangent; backward reuses the forward output: ``dy * (1 - y^2)``."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.tanh_forward(x)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.tanh_backward(x, dy, y=y), {}


@register
class Sigmoid(Layer):
    """Logistic sigmoid; backward reuses the forward output: ``dy * y * (1 - y)``."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.sigmoid_forward(x)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.sigmoid_backward(x, dy, y=y), {}


@register
class GELU(Layer):
    """``x * Phi(x)`` (Phi the standard normal distribution), or its tanh approximation with
    ``approximate="tanh"``, as torch.nn.GELU."""

    def __init__(self, approximate: str = "none", name: str | None = None) -> None:
        super().__init__(name)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: expected approximate to be 'none' or 'tanh', got "
                             f"{approximate!r}")
        self.approximate = approximate

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.gelu_forward(x, self.approximate), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.gelu_backward(x, dy, self.approximate), {}

    def get_config(self) -> dict[str, Any]:
        return {"approximate": self.approximate, "name": self.name}


@register
class SiLU(Layer):
    """``x * sigmoid(x)`` (swish), as torch.nn.SiLU."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return F.silu_forward(x), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return F.silu_backward(x, dy), {}


class _AlongDim(Layer):
    """A layer whose kernel pair works along one axis ``dim`` (any rank: the batch axis is
    the caller's, so ``dim=1`` of NCHW input is the channel axis)."""

    def __init__(self, dim: int = -1, name: str | None = None) -> None:
        super().__init__(name)
        axis = as_int(dim)
        if axis is None:
            raise ValueError(f"{type(self).__name__}: expected dim to be an int, got {dim!r}")
        self.dim: int = axis

    def get_config(self) -> dict[str, Any]:
        return {"dim": self.dim, "name": self.name}


@register
class Softmax(_AlongDim):
    """``exp(x) / sum(exp(x), dim)``, as torch.nn.Softmax(dim); backward reuses the output:
    ``y * (dy - sum(dy * y, dim))``. For class scores trained with cross-entropy use
    SoftmaxCrossEntropy on the logits instead: one fused, better-conditioned gradient."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.softmax_forward(x, self.dim)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.softmax_backward(x, dy, self.dim, y=y), {}


@register
class LogSoftmax(_AlongDim):
    """``x - logsumexp(x, dim)``, as torch.nn.LogSoftmax(dim); backward reuses the output:
    ``dy - exp(y) * sum(dy, dim)``."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        y = F.log_softmax_forward(x, self.dim)
        return y, (x, y)

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        x, y = cache
        return F.log_softmax_backward(x, dy, self.dim, y=y), {}
