"""The fully connected layer."""

from __future__ import annotations

from typing import Any

from .. import functional as F
from ..backend import namespace
from ..errors import InputError
from .base import Layer, register


@register
class Dense(Layer):
    """Fully connected layer ``y = x @ W.T + b`` with ``W`` of shape (out_features,
    in_features), on inputs (batch, in_features), ``(batch, *, in_features)`` or
    (in_features,) as torch.nn.Linear.

    Parameters ``W`` and ``b``; ``init`` names the weight initializer (see
    :mod:`anyarray_nn.init`; a callable works too, ``None`` means ``"he"``), biases start at
    zero. ``backend`` and ``dtype`` default to the
    active backend and float32; ``rng`` (a seed or NumPy Generator) overrides the global seed.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: Any = "he", name: str | None = None, backend: Any = None,
                 dtype: str | None = None, rng: Any = None) -> None:
        super().__init__(name)
        self._check_sizes(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features, self.bias = in_features, out_features, bias
        self.init = self._init_name(init)
        self.params["W"] = self._new_param(init, (out_features, in_features), in_features,
                                           out_features, backend, dtype, rng)
        if bias:
            self.params["b"] = self._new_param("zeros", (out_features,), in_features,
                                               out_features, backend, dtype, rng)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        namespace(x)  # a non-array x: the library's error, before x.ndim is read
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise InputError(f"expected input of shape (batch, {self.in_features}), got "
                             f"{tuple(x.shape)}" + (" (add a Flatten layer before Dense?)"
                                                    if x.ndim > 2 else ""))
        return F.dense_forward(x, self.params["W"], self.params.get("b")), x

    def _backward(self, dy: Any, x: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        dx, dw, db = F.dense_backward(x, self.params["W"], dy, input_grad=input_grad)
        return dx, ({"W": dw, "b": db} if self.bias else {"W": dw})

    def get_config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "init": self.init, "name": self.name}
