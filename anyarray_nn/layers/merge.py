"""Layers that join or pass on values in graph models: Add, Concatenate, Identity, Scale.

Add and Concatenate take a tuple of arrays (a graph node's several inputs) and give one;
their backward returns one gradient per input:

    Add:          y = x1 + x2 + ...               dx_i = dy
    Concatenate:  y = concat(x1, x2, ..., axis)   dx_i = dy's slice of x_i along axis
    Identity:     y = x                           dx = dy
    Scale:        y = c x                         dx = c dy

Inputs must agree exactly (no broadcasting): the same shape for Add, the same shape apart
from the axis for Concatenate, one dtype and backend for both.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..backend import namespace
from ..errors import InputError, as_int
from .base import Layer, register


def _several(x: Any) -> tuple[Any, ...]:
    """The inputs of a layer that joins two or more arrays."""
    if not isinstance(x, (tuple, list)) or len(x) < 2:
        raise InputError(f"expected a list of two or more arrays, got "
                         f"{type(x).__name__}" + (f" of {len(x)}" if isinstance(x, (tuple, list))
                                                   else ""))
    namespace(*x, names=tuple(f"input {i + 1}" for i in range(len(x))))  # one backend
    for i, value in enumerate(x[1:], start=2):
        if value.dtype != x[0].dtype:
            raise InputError(f"input {i} has dtype {value.dtype}, input 1 {x[0].dtype}; "
                             f"cast one explicitly")
    return tuple(x)


@register
class Add(Layer):
    """The sum of two or more inputs of one shape (a residual connection); each input's
    gradient is the upstream gradient itself."""

    takes_several = True

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        xs = _several(x)
        for i, value in enumerate(xs[1:], start=2):
            if tuple(value.shape) != tuple(xs[0].shape):
                raise InputError(f"expected inputs of one shape, got input {i} of shape "
                                 f"{tuple(value.shape)} and input 1 of shape "
                                 f"{tuple(xs[0].shape)}")
        y = xs[0]
        for value in xs[1:]:
            y = y + value
        return y, len(xs)

    def _backward(self, dy: Any, count: int, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return (tuple(dy for _ in range(count)) if input_grad else None), {}


@register
class Concatenate(Layer):
    """Two or more inputs joined along ``axis`` (default 1: the channels of NCHW or the
    features of (N, F)); the gradient is split back along it. The batch axis 0 is refused:
    each sample's output must come from that sample alone."""

    takes_several = True

    def __init__(self, axis: int = 1, name: str | None = None) -> None:
        super().__init__(name)
        if as_int(axis) is None or as_int(axis) == 0:
            raise ValueError(f"Concatenate: expected axis to be a non-zero int (0 is the batch "
                             f"axis), got {axis!r}")
        self.axis = as_int(axis)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        xs = _several(x)
        xp = namespace(xs[0])
        rank = xs[0].ndim
        if not -rank < self.axis < rank or self.axis % rank == 0:
            raise InputError(f"axis {self.axis} is not a non-batch axis of inputs of shape "
                             f"{tuple(xs[0].shape)}")
        axis = self.axis % rank
        first = tuple(xs[0].shape)
        for i, value in enumerate(xs[1:], start=2):
            shape = tuple(value.shape)
            if len(shape) != rank or any(a != b for k, (a, b) in enumerate(zip(shape, first))
                                         if k != axis):
                raise InputError(f"expected inputs whose shapes differ only along axis "
                                 f"{self.axis}, got input {i} of shape {shape} and input 1 of "
                                 f"shape {first}")
        return xp.concat(xs, axis=axis), (axis, [value.shape[axis] for value in xs])

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        if not input_grad:
            return None, {}
        axis, sizes = cache
        parts, start = [], 0
        for size in sizes:
            index = [slice(None)] * dy.ndim
            index[axis] = slice(start, start + size)
            parts.append(dy[tuple(index)])
            start += size
        return tuple(parts), {}

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis, "name": self.name}


@register
class Identity(Layer):
    """``y = x``, ``dx = dy``: a named pass-through (a shortcut with nothing on it)."""

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        return x, None

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return dy, {}


@register
class Scale(Layer):
    """``y = factor * x``, ``dx = factor * dy``: a fixed factor, e.g. on the logits of a network
    whose last layer would otherwise learn too fast (the fast CIFAR-10 recipes use 1/9)."""

    factor: float

    def __init__(self, factor: float, name: str | None = None) -> None:
        super().__init__(name)
        if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
                or not math.isfinite(factor)):
            raise ValueError(f"Scale: expected factor to be a finite number, got {factor!r}")
        self.factor = float(factor)

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        namespace(x)  # a non-array x: the library's error
        return self.factor * x, None

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        return self.factor * dy, {}

    def get_config(self) -> dict[str, Any]:
        return {"factor": self.factor, "name": self.name}
