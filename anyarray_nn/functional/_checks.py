"""Input checks shared by the kernels. They read only shapes and dtypes (no device sync)."""

from __future__ import annotations

from typing import Any

from ..backend import DTYPES, dtype_name
from ..errors import InputError


def check_ndim(x: Any, ndim: int, what: str, layout: str) -> None:
    """Raise unless ``x`` has ``ndim`` dimensions; ``layout`` describes them, e.g. "(N, C)"."""
    if x.ndim != ndim:
        raise InputError(f"{what}: expected a {ndim}-D array {layout}, got shape {tuple(x.shape)}")


def check_floating(x: Any, what: str) -> None:
    """Raise unless ``x`` is float32 or float64 (the dtypes every kernel is checked in)."""
    if not _is_real_floating(x):
        raise InputError(f"{what}: expected a floating dtype (float32 or float64), "
                         f"got {dtype_name(x.dtype)}")


def check_same_dtype(x: Any, ref: Any, what: str, ref_what: str) -> None:
    """Raise unless ``x`` and ``ref`` share a dtype: the standard forbids silent mixing here."""
    if x.dtype != ref.dtype:
        raise InputError(f"{what}: expected dtype {dtype_name(ref.dtype)} (the dtype of "
                         f"{ref_what}), got {dtype_name(x.dtype)}")


def check_same_shape(x: Any, ref: Any, what: str, ref_what: str) -> None:
    """Raise unless ``x`` has exactly the shape of ``ref`` (no silent broadcasting)."""
    if tuple(x.shape) != tuple(ref.shape):
        raise InputError(f"{what}: expected shape {tuple(ref.shape)} (the shape of {ref_what}), "
                         f"got {tuple(x.shape)}")


def check_weights(x: Any, w: Any, b: Any | None, *, got: int, expected: int, unit: str,
                  note: str = "") -> None:
    """Checks shared by the layers with weights (out, in, ...): W's dtype and x's, x's size
    ``got`` along its feature axis against ``expected`` (``unit`` names it: "input channels";
    ``note`` adds to W's shape in the message), and b's dtype and shape (out,)."""
    check_floating(w, "W")
    check_same_dtype(x, w, "x", "W")
    if got != expected:
        raise InputError(f"x: expected {expected} {unit} (W has shape {tuple(w.shape)}{note}), "
                         f"got shape {tuple(x.shape)}")
    if b is not None:
        check_same_dtype(b, w, "b", "W")
        if tuple(b.shape) != (w.shape[0],):
            raise InputError(f"b: expected shape ({w.shape[0]},), got {tuple(b.shape)}")


def check_gradient(x: Any, dy: Any, y_shape: tuple[int, ...], what: str = "dy") -> None:
    """Raise unless the upstream gradient has the forward output's shape and the input's dtype."""
    if tuple(dy.shape) != tuple(y_shape):
        raise InputError(f"{what}: expected shape {tuple(y_shape)} (the forward output), "
                         f"got {tuple(dy.shape)}")
    check_same_dtype(dy, x, what, "the forward input")


def _is_real_floating(x: Any) -> bool:
    return dtype_name(x.dtype) in DTYPES
