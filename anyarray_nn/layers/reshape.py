"""Shape-only layers."""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace
from ..errors import InputError
from .base import Layer, register


@register
class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...); backward restores the input shape."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        xp = namespace(x)
        if x.ndim < 2:
            raise InputError(f"expected an input with a batch axis and at least one more, "
                             f"got shape {tuple(x.shape)}")
        return xp.reshape(x, (x.shape[0], math.prod(x.shape[1:]))), tuple(x.shape)

    def _backward(self, dy: Any, shape: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        xp = namespace(dy)
        expected = (shape[0], math.prod(shape[1:]))
        if tuple(dy.shape) != expected:
            raise InputError(f"dy: expected shape {expected} (the forward output), got "
                             f"{tuple(dy.shape)}")
        return xp.reshape(dy, shape), {}
