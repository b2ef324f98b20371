"""Data parallelism on threads: every core runs the same network on its own slice of the batch.

NumPy runs each element-wise pass (pooling, ReLU, the im2col copies) on one core; only the
matrix products use them all. :class:`DataParallel` splits a batch into one slice per
worker, runs the forward and backward pass of each slice at the same time with one BLAS
thread each, and adds the slices' gradients. Because the loss is computed on the joined
output, the result is the full batch's gradient; only the order of the floating-point
additions differs from one worker.

The calling thread computes the first slice; the others run on threads, each through a
shallow copy of the model that shares its parameters (any CPU backend). It needs nothing but
the process it runs in (no launcher, a notebook will do). Training over MPI ranks
(:mod:`anyarray_nn.distributed`) is the way to scale out, and handles batch norm and dropout;
these threads stay because they still beat two MPI ranks somewhere on the project's 2-core
machine: the MNIST network's step at batch 64 (8.3 against 8.7 ms) and 256, the larger
CIFAR-10 network's at 16 (11.8 against 12.8 ms), and in one run at 64; elsewhere the ranks
are ahead or level (docs/benchmarks.md). The helper processes this module
once started itself (their sockets and shared memory) were removed for MPI.

Layers whose output for one sample depends on the others (BatchNorm's batch statistics) or
that draw random numbers in call order (Dropout) would compute something else on slices,
so a model with them is refused.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, cast

from . import backend as _backend
from ._threads import cpu_count, one_blas_thread
from .errors import InputError
from .functional._fast import portable_kernels, portable_only
from .layers.base import _NO_CACHE
from .model import Model, ModelWrapper

logger = logging.getLogger("anyarray_nn")


class DataParallel(ModelWrapper):
    """Wraps a model (a :class:`Sequential` or a graph :class:`Model` with one input) so that
    forward and backward split the batch over threads.

    ``workers`` (default: the number of cores) is the number of slices; the calling thread
    computes one. Batches smaller than ``min_batch`` (default 32: at batch 16 two threads
    were up to 1.44x slower than one) and models on a GPU run on the calling thread as usual.
    Everything else (``params()``, ``grads()``, ``summary()``, checkpoints) is the wrapped
    model's, and ``to()`` moves it: optimizers, :func:`anyarray_nn.fit` and
    :func:`anyarray_nn.evaluate` take the wrapper in its place. (``processes=True``, the
    helper processes of earlier versions, is refused: train over MPI ranks instead.)
    """

    def __init__(self, model: Model, workers: int | None = None, *,
                 processes: bool | None = None, min_batch: int | None = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"DataParallel: expected a Sequential or Model, got "
                            f"{type(model).__name__}")
        if processes:
            raise ValueError("DataParallel: helper processes (processes=True) were removed; "
                             "train over MPI ranks instead (anyarray_nn.distributed, "
                             "mpiexec -n N python train.py), or leave processes out (threads)")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"DataParallel: expected a model with one input and one output, "
                             f"got {len(model.inputs)} and {len(model.outputs)}")
        for layer in model.layers:
            if not layer.batch_separable:
                raise ValueError(
                    f"DataParallel: {layer.describe()} does not treat samples independently "
                    f"(batch statistics or random masks drawn in order), so slices of a batch "
                    f"would train differently; train it over MPI ranks "
                    f"(anyarray_nn.distributed), or without DataParallel")
        workers = cpu_count() if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"DataParallel: expected workers >= 1, got {workers!r}")
        self.model, self.workers, self.min_batch = model, workers, min_batch
        self._helpers: _Threads | None = None
        self._stop_helpers: Callable[[], Any] | None = None
        self._bounds: list[tuple[int, int]] | None = None
        self._lock = threading.RLock()  # one split batch at a time, whichever thread calls

    # --- running -------------------------------------------------------------------------

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """The model's output for ``x``, the slices of the batch computed at the same time."""
        xp = _backend.namespace(x)
        _check_batch(x, "x")
        n, name = x.shape[0], _backend.backend_name_of(x)
        with self._lock:
            smallest = self.smallest_split_batch(name)
            if smallest is None or n < smallest:
                self._bounds = None
                return self.model.forward(x, train=train)
            self._bounds = [(n * i // self.workers, n * (i + 1) // self.workers)
                            for i in range(self.workers)]
            self._start_helpers()
            return xp.concat(self._run("forward", x, train), axis=0)

    def smallest_split_batch(self, backend: str | None = None) -> int | None:
        """The smallest batch that is split on ``backend`` (default: the model's); None where
        nothing is split (one worker, or a GPU)."""
        name = backend or self.model.backend or _backend.current().name
        if self.workers == 1 or _backend.on_gpu(name):
            return None
        return max(32 if self.min_batch is None else self.min_batch, self.workers)

    def backward(self, dy: Any, *, input_grad: bool = False) -> Any:
        """Back-propagate each slice on its worker, then add the slices' gradients."""
        xp = _backend.namespace(dy)
        _check_batch(dy, "dy")
        with self._lock:
            if self._bounds is None:
                return self.model.backward(dy, input_grad=input_grad)
            batch = self._bounds[-1][1]
            if dy.shape[0] != batch:  # checked here, before any slice names its own size
                raise InputError(f"DataParallel: dy: expected a batch of {batch} (the forward "
                                 f"input's), got shape {tuple(dy.shape)}")
            dxs = self._run("backward", dy, input_grad)
            helpers = cast(_Threads, self._helpers)  # _run checked they are running
            for i, layer in enumerate(self.model.layers):
                if layer.params:
                    layer.grads = {key: sum((helpers.grad(k, i, key)
                                             for k in range(self.workers - 1)), layer.grads[key])
                                   for key in layer.params}
            return xp.concat(dxs, axis=0) if input_grad else None

    def to(self, backend: str | None = None, dtype: str | None = None) -> "DataParallel":
        """Move and/or cast the wrapped model (:meth:`Model.to`); returns this wrapper."""
        self.model.to(backend, dtype)
        self._bounds = None  # to() dropped the caches: nothing to go back through
        return self

    def close(self) -> None:
        """Stop the helper threads (they start again if the wrapper is used)."""
        if self._stop_helpers is not None:
            self._stop_helpers()
        self._helpers = self._stop_helpers = None

    def _run(self, op: str, array: Any, flag: bool) -> list[Any]:
        """``op`` ("forward" or "backward") on every slice of ``array``: the first on this
        thread, the others on the helpers, each with one BLAS thread. Waits for all before
        raising any error."""
        helpers = self._helpers
        if helpers is None:  # close() (or a failure) came between forward and backward
            raise RuntimeError("DataParallel: the helpers holding the other slices' forward "
                               "pass were stopped; run forward(x, train=True) again")
        parts = [array[lo:hi, ...] for lo, hi in self._bounds or ()]
        with one_blas_thread:
            try:
                helpers.start(op, parts[1:], flag)
            except BaseException:  # a helper died: start afresh next time
                self.close()
                raise
            try:
                first = _apply(self.model, op, parts[0], flag)
            finally:
                try:
                    results = helpers.finish()
                except BaseException:  # interrupted or a helper died: start afresh next time
                    self.close()
                    raise
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [first] + results

    def _start_helpers(self) -> None:
        """Start the helpers for a split forward pass, or restart them if the model changed."""
        if self._helpers is not None and self._helpers.fits(self.model):
            return
        self.close()
        self._helpers = _Threads(self.model, self.workers - 1)
        self._stop_helpers = weakref.finalize(self, self._helpers.close)
        logger.info("DataParallel: %d helper thread(s) started, each with a copy of the "
                    "model's layers sharing its parameters", self.workers - 1)

    def __repr__(self) -> str:
        return f"DataParallel({self.model!r}, workers={self.workers}, min_batch={self.min_batch})"

    def __reduce__(self) -> tuple:
        # A copy (copy.deepcopy, pickle) wraps a copy of the model; helpers are not copied.
        return _rebuild, (self.model, self.workers, self.min_batch)


def _rebuild(model: Model, workers: int, min_batch: int | None) -> DataParallel:
    return DataParallel(model, workers, min_batch=min_batch)


def _check_batch(array: Any, what: str) -> None:
    if len(array.shape) == 0:
        raise InputError(f"DataParallel: {what}: expected a batch (N, ...), got shape ()")


def _apply(model: Model, op: str, array: Any, flag: bool, portable: bool = False) -> Any:
    # ``portable``: the caller is in a portable_kernels() block, which a helper thread's own
    # context does not see.
    with portable_kernels() if portable else contextlib.nullcontext():
        if op == "forward":
            return model.forward(array, train=flag)
        return model.backward(array, input_grad=flag)


def _same_layers(layers: list[Any], model: Model) -> bool:
    return len(layers) == len(model.layers) and all(a is b for a, b in zip(layers, model.layers))


def _bare_copy(model: Model) -> Model:
    """A copy sharing the layers' params dicts, with its own caches and gradients."""
    copies = [copy.copy(layer) for layer in model.layers]
    for layer in copies:
        layer.grads, layer._cache = {}, _NO_CACHE
    return model.with_layers(copies)


class _Threads:
    """Slices 2.. on a thread pool, each through a copy of the model sharing its parameters."""

    def __init__(self, model: Model, count: int) -> None:
        self.layers = list(model.layers)
        self.copies = [_bare_copy(model) for _ in range(count)]
        self.pool = ThreadPoolExecutor(count, thread_name_prefix="anyarray_nn")
        self.futures: list[Any] = []

    def fits(self, model: Model) -> bool:
        # The copies share the layers' params and buffers dicts, so they follow every change
        # of values; a layer replaced in the model needs new copies.
        return _same_layers(self.layers, model)

    def start(self, op: str, parts: list[Any], flag: bool) -> None:
        self.futures = [self.pool.submit(_apply, net, op, part, flag, portable_only())
                        for net, part in zip(self.copies, parts)]

    def finish(self) -> list[Any]:
        return [f.exception() or f.result() for f in self.futures]

    def grad(self, k: int, i: int, key: str) -> Any:
        return self.copies[k].layers[i].grads[key]

    def close(self) -> None:
        self.pool.shutdown(wait=True)
