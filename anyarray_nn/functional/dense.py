"""Fully connected (dense) kernels.

The course writes one example as a column, Z = W X + b with X of shape (in, N). We keep the
batch in the first axis, as every array library does, so the same equations read

    forward:   y  = x @ W.T + b          x: (N, in), W: (out, in), b: (out,), y: (N, out)
    backward:  dx = dy @ W               (dL/dX = W^T dL/dZ)
               dW = dy.T @ x             (dL/dW = dL/dZ X^T, summed over the batch)
               db = sum(dy, axis=0)      (dL/db = dL/dZ 1)

W has the PyTorch layout (out, in), so state dicts map one to one.
"""

from __future__ import annotations

from typing import Any

from ..backend import namespace
from ._checks import check_gradient, check_ndim, check_weights


def _check(x: Any, w: Any, b: Any | None) -> None:
    check_ndim(x, 2, "x", "(batch, in_features)")
    check_ndim(w, 2, "W", "(out_features, in_features)")
    check_weights(x, w, b, "input features")


def dense_forward(x: Any, w: Any, b: Any | None = None) -> Any:
    """``y = x @ W.T + b`` for a batch ``x`` of shape (N, in) and weights ``W`` of shape (out, in)."""
    xp = namespace(x, w, b, names=("x", "W", "b"))
    _check(x, w, b)
    y = x @ xp.matrix_transpose(w)
    return y if b is None else y + b


def dense_backward(x: Any, w: Any, dy: Any, *, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """Gradients of a dense layer: ``(dx, dW, db)`` for upstream gradient ``dy`` of shape (N, out).

    ``input_grad=False`` skips dx (returned as None).
    """
    xp = namespace(x, w, dy, names=("x", "W", "dy"))
    _check(x, w, None)
    check_gradient(x, dy, (x.shape[0], w.shape[0]))
    dx = dy @ w if input_grad else None
    dw = xp.matrix_transpose(dy) @ x
    db = xp.sum(dy, axis=0)
    return dx, dw, db
