"""Host-side data sets and helpers (NumPy arrays; move them with ``anyarray_nn.asarray``)."""

from .toy import make_circles, make_moons, make_spirals

__all__ = ["make_circles", "make_moons", "make_spirals"]

# Real data sets (the download helpers stay in the module anyarray_nn.data.download).
from ._files import DataFormatError
from .cifar10 import CIFAR10_CLASSES, load_cifar10
from .mnist import load_mnist

__all__ += ["DataFormatError", "load_mnist", "load_cifar10", "CIFAR10_CLASSES"]
