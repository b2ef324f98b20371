"""Fully connected (dense) kernels.

The course writes one example as a column, Z = W X + b with X of shape (in, N). We keep the
batch in the first axis, as every array library does, so the same equations read

    forward:   y  = x @ W.T + b          x: (N, in), W: (out, in), b: (out,), y: (N, out)
    backward:  dx = dy @ W               (dL/dX = W^T dL/dZ)
               dW = dy.T @ x             (dL/dW = dL/dZ X^T, summed over the batch)
               db = sum(dy, axis=0)      (dL/db = dL/dZ 1)

W has the PyTorch layout (out, in), so state dicts map one to one. As
torch.nn.functional.linear, x may have any leading axes, ``(N, *, in)``, or none, (in,): y then
has shape ``(N, *, out)`` or (out,), and dW, db sum over every leading axis.
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import namespace
from ..errors import InputError
from ._checks import check_gradient, check_ndim, check_weights


def _check(x: Any, w: Any, b: Any | None) -> None:
    if x.ndim < 1:
        raise InputError("x: expected an array (in_features,) or (batch, *, in_features), "
                         "got a 0-D array")
    check_ndim(w, 2, "W", "(out_features, in_features)")
    check_weights(x, w, b, got=x.shape[-1], expected=w.shape[1],
                  unit="input features in the last axis")


def dense_forward(x: Any, w: Any, b: Any | None = None) -> Any:
    """``y = x @ W.T + b`` for ``x`` of shape ``(N, *, in)`` or (in,) and weights ``W`` of shape
    (out, in): ``y`` has shape ``(N, *, out)`` or (out,)."""
    xp = namespace(x, w, b, names=("x", "W", "b"))
    _check(x, w, b)
    y = x @ xp.matrix_transpose(w)
    return y if b is None else y + b


def dense_backward(x: Any, w: Any, dy: Any, *, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients of a dense layer: ``(dx, dW, db)`` for upstream gradient ``dy`` of shape
    ``(N, *, out)`` (or (out,) for x of shape (in,)); dW and db sum over every leading axis.

    ``input_grad=False`` skips dx (returned as None).
    """
    xp = namespace(x, w, dy, names=("x", "W", "dy"))
    _check(x, w, None)
    check_gradient(x, dy, tuple(x.shape[:-1]) + (w.shape[0],))
    dx = dy @ w if input_grad else None
    rows = math.prod(x.shape[:-1])  # every leading axis is a batch axis for dW and db
    dy_rows = xp.reshape(dy, (rows, w.shape[0]))
    dw = xp.matrix_transpose(dy_rows) @ xp.reshape(x, (rows, w.shape[1]))
    db = xp.sum(dy_rows, axis=0)
    return dx, dw, db
