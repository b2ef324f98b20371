"""Softmax and log-softmax along any axis ``dim`` of an array of any rank (a 0-d array is one
element, as in PyTorch; an empty one gives an empty result).

With ``m = max(x, dim)`` subtracted first (both are unchanged by it, and exp never overflows):

    softmax:      y = exp(x - m) / sum(exp(x - m), dim)
                  dx = y * (dy - sum(dy * y, dim))
    log_softmax:  y = (x - m) - log(sum(exp(x - m), dim))
                  dx = dy - exp(y) * sum(dy, dim)

Each backward takes the forward input ``x`` and ``dy`` and accepts the forward output ``y``
to skip recomputing it. ``dim`` is required in torch.nn.functional (its implicit choice is
deprecated); here it defaults to the last axis, which is the class axis of (N, C) logits.
"""

from __future__ import annotations

from typing import Any

from ..backend import namespace
from ..errors import InputError, as_int
from ._checks import check_floating, check_gradient


def softmax_forward(x: Any, dim: int = -1) -> Any:
    """Softmax of ``x`` along ``dim``, stable for inputs of any magnitude."""
    xp, dim = _prepare("softmax", x, dim)
    v = _reducible(xp, x)
    e = xp.exp(v - xp.max(v, axis=dim, keepdims=True))
    return _shaped(xp, e / xp.sum(e, axis=dim, keepdims=True), x)


def softmax_backward(x: Any, dy: Any, dim: int = -1, y: Any | None = None) -> Any:
    """``y * (dy - sum(dy * y, dim))``; pass the forward output ``y`` to skip recomputing it."""
    xp, dim = _prepare("softmax", x, dim, dy, y)
    y = softmax_forward(x, dim) if y is None else y
    y1, dy1 = _reducible(xp, y), _reducible(xp, dy)
    return _shaped(xp, y1 * (dy1 - xp.sum(dy1 * y1, axis=dim, keepdims=True)), x)


def log_softmax_forward(x: Any, dim: int = -1) -> Any:
    """``log(softmax(x, dim))`` computed as ``x - logsumexp(x, dim)``, stable for any magnitude."""
    xp, dim = _prepare("log_softmax", x, dim)
    v = _reducible(xp, x)
    shifted = v - xp.max(v, axis=dim, keepdims=True)
    return _shaped(xp, shifted - xp.log(xp.sum(xp.exp(shifted), axis=dim, keepdims=True)), x)


def log_softmax_backward(x: Any, dy: Any, dim: int = -1, y: Any | None = None) -> Any:
    """``dy - softmax(x) * sum(dy, dim)``; pass the forward output ``y`` (the log-softmax)
    to skip recomputing it."""
    xp, dim = _prepare("log_softmax", x, dim, dy, y)
    y = log_softmax_forward(x, dim) if y is None else y
    y1, dy1 = _reducible(xp, y), _reducible(xp, dy)
    return _shaped(xp, dy1 - xp.exp(y1) * xp.sum(dy1, axis=dim, keepdims=True), x)


def _reducible(xp: Any, x: Any) -> Any:
    """``x`` as an array whose max along any axis exists: a 0-d one as one element of rank 1
    (its softmax is 1, as PyTorch's), an empty one as a single zero (max over an empty axis
    has no value; the caller's reshape to x's shape then gives the empty result)."""
    if x.ndim == 0:
        return xp.reshape(x, (1,))
    if 0 in x.shape:
        return xp.zeros((1,) * x.ndim, dtype=x.dtype)
    return x


def _shaped(xp: Any, result: Any, x: Any) -> Any:
    """``result`` (computed on ``_reducible(x)``) in x's shape."""
    return xp.zeros_like(x) if 0 in x.shape else xp.reshape(result, x.shape)


def _prepare(op: str, x: Any, dim: Any, dy: Any | None = None,
             y: Any | None = None) -> tuple[Any, int]:
    """Check ``x`` (floating, rank >= 1), ``dim`` (an axis of x; returned non-negative) and,
    if given, ``dy`` and ``y`` (both of x's shape and dtype)."""
    xp = namespace(x, dy, y, names=("x", "dy", "y"))
    check_floating(x, "x")
    rank = max(x.ndim, 1)  # a 0-d x takes dim 0 or -1, as in PyTorch
    axis = as_int(dim)
    if axis is None or not -rank <= axis < rank:
        raise InputError(f"{op}: expected dim to be an int in [{-rank}, {rank}) for x of "
                         f"shape {tuple(x.shape)}, got {dim!r}")
    if dy is not None:
        check_gradient(x, dy, tuple(x.shape))
    if y is not None:
        check_gradient(x, y, tuple(x.shape), "y")
    return xp, axis % rank
