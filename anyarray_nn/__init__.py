"""anyarray_nn: neural-network layers written once against the Python array API standard.

The same forward and backward code trains on NumPy, CuPy, PyTorch tensors and
array-api-strict. Start with :func:`set_backend`, build a :class:`Sequential` of
:mod:`layers`, pick a loss from :mod:`losses` and an optimizer from :mod:`optim`.
"""

__version__ = "0.1.0"

from . import data, distributed, functional, gradcheck, init, layers, losses, metrics, networks, optim, schedules, train
from .backend import (
    Backend,
    available_backends,
    asarray,
    current as current_backend,
    get_backend,
    seed,
    set_backend,
    synchronize,
    to_host,
    using,
)
from .errors import BackendError, BackendMismatchError, InputError, NonFiniteError
from .gradcheck import GradCheckReport, check_gradients
from .checkpoint import load_checkpoint, load_model, save_checkpoint, warm_start
from .weights import load_weights, save_weights
from ._allocator import tune as tune_malloc
from .model import Input, Model, Sequential
from .parallel import DataParallel
from .train import History, evaluate, fit

__all__ = [
    "Backend", "available_backends", "asarray", "current_backend", "get_backend", "seed",
    "set_backend", "synchronize", "to_host", "using",
    "BackendError", "BackendMismatchError", "InputError", "NonFiniteError",
    "GradCheckReport", "check_gradients", "Sequential", "Model", "Input", "DataParallel",
    "save_checkpoint", "load_checkpoint", "warm_start", "load_model", "checkpoint",
    "save_weights", "load_weights", "weights", "tune_malloc",
    "data", "distributed", "functional", "gradcheck", "init", "layers", "losses", "metrics", "networks", "optim",
    "schedules", "train", "fit", "evaluate", "History",
]
