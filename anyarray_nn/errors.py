"""The exceptions anyarray_nn raises for bad input; all name what was expected and what came."""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator

from .backend import BackendError, BackendMismatchError


class InputError(ValueError):
    """An array of the wrong rank, shape or dtype, or values a kernel cannot accept (NaN)."""


class NonFiniteError(InputError):
    """A training step met NaN or infinite values (in the input batch, the loss or the
    gradients) and was not applied: the parameters and the optimizer's state are those of
    the last good step. An :class:`InputError`, since bad values are bad input."""


@contextlib.contextmanager
def errors_named(owner: str) -> Iterator[None]:
    """Prefix bad-input errors raised inside the block with ``owner`` (e.g. ``Dense 'fc'``).

    Kernels know the argument ("x", "W") but not the layer; layers and losses add their name
    here, so every message says where, what was expected and what came.
    """
    try:
        yield
    except (InputError, BackendMismatchError) as exc:
        raise type(exc)(f"{owner}: {exc}").with_traceback(exc.__traceback__) from None


def as_int(value: Any) -> int | None:
    """``value`` as a Python int if it is an integer (NumPy integers too, not bool), else None:
    the one test of "an integer" behind every size, count and index check."""
    if type(value) is int:  # the common case, first: layers call this on every step
        return value
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # refuses floats and NumPy bools too
    except TypeError:
        return None


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters (the last three
    "...") when longer: a file or argument may hold something huge."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["InputError", "NonFiniteError", "BackendError", "BackendMismatchError", "errors_named"]
