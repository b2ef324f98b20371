"""Host-side data sets and helpers (NumPy arrays; move them with ``anyarray_nn.asarray``)."""

from .toy import make_circles

__all__ = ["make_circles"]
