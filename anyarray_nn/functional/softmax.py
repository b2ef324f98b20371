"""Softmax and log-softmax along any axis ``dim`` of an array of any rank >= 1.

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
    e = xp.exp(x - xp.max(x, axis=dim, keepdims=True))
    return e / xp.sum(e, axis=dim, keepdims=True)


def softmax_backward(x: Any, dy: Any, dim: int = -1, y: Any | None = None) -> Any:
    """``y * (dy - sum(dy * y, dim))``; pass the forward output ``y`` to skip recomputing it."""
    xp, dim = _prepare("softmax", x, dim, dy, y)
    y = softmax_forward(x, dim) if y is None else y
    return y * (dy - xp.sum(dy * y, axis=dim, keepdims=True))


def log_softmax_forward(x: Any, dim: int = -1) -> Any:
    """``log(softmax(x, dim))`` computed as ``x - logsumexp(x, dim)``, stable for any magnitude."""
    xp, dim = _prepare("log_softmax", x, dim)
    shifted = x - xp.max(x, axis=dim, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=dim, keepdims=True))


def log_softmax_backward(x: Any, dy: Any, dim: int = -1, y: Any | None = None) -> Any:
    """``dy - softmax(x) * sum(dy, dim)``; pass the forward output ``y`` (the log-softmax)
    to skip recomputing it."""
    xp, dim = _prepare("log_softmax", x, dim, dy, y)
    y = log_softmax_forward(x, dim) if y is None else y
    return dy - xp.exp(y) * xp.sum(dy, axis=dim, keepdims=True)


def _prepare(op: str, x: Any, dim: Any, dy: Any | None = None,
             y: Any | None = None) -> tuple[Any, int]:
    """Check ``x`` (floating, rank >= 1), ``dim`` (an axis of x; returned non-negative) and,
    if given, ``dy`` and ``y`` (both of x's shape and dtype)."""
    xp = namespace(x, dy, y, names=("x", "dy", "y"))
    check_floating(x, "x")
    if x.ndim == 0:
        raise InputError(f"{op}: x: expected an array of rank >= 1, got a 0-d array")
    axis = as_int(dim)
    if axis is None or not -x.ndim <= axis < x.ndim:
        raise InputError(f"{op}: expected dim to be an int in [{-x.ndim}, {x.ndim}) for x of "
                         f"shape {tuple(x.shape)}, got {dim!r}")
    if dy is not None:
        check_gradient(x, dy, tuple(x.shape))
    if y is not None:
        check_gradient(x, y, tuple(x.shape), "y")
    return xp, axis % x.ndim
