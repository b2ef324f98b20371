"""Data parallelism on the CPU: every core runs the same network on its own slice of the batch.

NumPy runs each element-wise pass (pooling, ReLU, the im2col copies) on one core; only the
matrix products use them all. :class:`DataParallel` splits a batch into one slice per
thread, runs the forward and backward pass of each slice on its own thread (NumPy and
PyTorch release the GIL while they compute) with one BLAS thread each, and adds the slices'
gradients. Because the loss is computed on the joined output, the result is the full batch's
gradient; only the order of the floating-point additions differs from one thread.

On the project's 2-core machine this made a course network's training step at batch 64
1.4-1.55x faster and small batches slower (docs/benchmarks.md), hence ``min_batch``.

Layers whose output for one sample depends on the others (BatchNorm's batch statistics) or
that draw random numbers in call order (Dropout) would compute something else on slices,
so a model with them is refused.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from threadpoolctl import ThreadpoolController

from . import backend as _backend
from .model import Sequential

_blas = ThreadpoolController()


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class DataParallel:
    """Wraps a :class:`Sequential` so that forward and backward split the batch over threads.

    ``threads`` defaults to the number of cores; batches smaller than ``min_batch`` (and
    models on a GPU) run on the calling thread as usual. Everything else (``params()``,
    ``grads()``, ``summary()``, ``to()``, checkpoints) is the wrapped model's: optimizers,
    :func:`anyarray_nn.fit` and :func:`anyarray_nn.evaluate` take the wrapper in its place.
    """

    def __init__(self, model: Sequential, threads: int | None = None, min_batch: int = 32) -> None:
        if not isinstance(model, Sequential):
            raise TypeError(f"DataParallel: expected a Sequential model, got {type(model).__name__}")
        for layer in model.layers:
            if not layer.batch_separable:
                raise ValueError(
                    f"DataParallel: {layer.describe()} does not treat samples independently "
                    f"(batch statistics or random masks drawn in order), so slices of a batch "
                    f"would train differently; train this model without DataParallel")
        threads = cpu_count() if threads is None else threads
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"DataParallel: expected threads >= 1, got {threads!r}")
        self.model, self.threads, self.min_batch = model, threads, min_batch
        # Shallow copies share each layer's params dict (so updates, loads and moves apply to
        # all); each keeps its own cache and gradients.
        self._copies = [Sequential([copy.copy(layer) for layer in model.layers])
                        for _ in range(threads - 1)]
        self._pool = (ThreadPoolExecutor(threads - 1, thread_name_prefix="anyarray_nn")
                      if threads > 1 else None)
        self._bounds: list[tuple[int, int]] | None = None

    # --- running -------------------------------------------------------------------------

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """The model's output for ``x``, each slice of the batch computed on its own thread."""
        n = x.shape[0]
        if (self.threads == 1 or n < max(self.min_batch, self.threads)
                or _backend.on_gpu(_backend.backend_name_of(x))):
            self._bounds = None
            return self.model.forward(x, train=train)
        self._bounds = [(n * i // self.threads, n * (i + 1) // self.threads)
                        for i in range(self.threads)]
        outs = self._run(lambda net, lo, hi: net.forward(x[lo:hi, ...], train=train))
        return _backend.namespace(x).concat(outs, axis=0)

    def backward(self, dy: Any, *, input_grad: bool = False) -> Any:
        """Back-propagate each slice on its thread, then add the slices' gradients."""
        if self._bounds is None:
            return self.model.backward(dy, input_grad=input_grad)
        dxs = self._run(lambda net, lo, hi: net.backward(dy[lo:hi, ...], input_grad=input_grad))
        for i, layer in enumerate(self.model.layers):
            if layer.params:
                layer.grads = {key: sum((c.layers[i].grads[key] for c in self._copies),
                                        layer.grads[key])
                               for key in layer.params}
        return _backend.namespace(dy).concat(dxs, axis=0) if input_grad else None

    def _run(self, work: Any) -> list[Any]:
        """``work(network, lo, hi)`` for every slice: the first on this thread, the others on
        the pool, each with one BLAS thread. Waits for all before raising any error."""
        nets = [self.model] + self._copies
        with _blas.limit(limits=1, user_api="blas"):
            futures = [self._pool.submit(work, net, lo, hi)
                       for net, (lo, hi) in zip(nets[1:], self._bounds[1:])]
            try:
                first = work(nets[0], *self._bounds[0])
            finally:
                results = [f.exception() or f.result() for f in futures]
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [first] + results

    # Sequential's own, running through this class's forward.
    __call__ = Sequential.__call__
    predict = Sequential.predict

    # --- everything else is the wrapped model's ------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (a half-built object): avoid endless recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __len__(self) -> int:
        return len(self.model)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.model)

    def __getitem__(self, key: int | str) -> Any:
        return self.model[key]

    def __repr__(self) -> str:
        return f"DataParallel({self.model!r}, threads={self.threads}, min_batch={self.min_batch})"
