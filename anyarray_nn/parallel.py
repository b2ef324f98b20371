"""Data parallelism on the CPU: every core runs the same network on its own slice of the batch.

NumPy runs each element-wise pass (pooling, ReLU, the im2col copies) on one core; only the
matrix products use them all. :class:`DataParallel` splits a batch into one slice per
worker, runs the forward and backward pass of each slice at the same time with one BLAS
thread each, and adds the slices' gradients. Because the loss is computed on the joined
output, the result is the full batch's gradient; only the order of the floating-point
additions differs from one worker.

The calling thread always computes the first slice. The others run either

* in helper **processes** (NumPy models on Linux and macOS; the default there). Each holds
  a copy of the model whose parameters and buffers are views of memory shared with this
  process: before every forward pass the current values are copied in, so whatever changed
  them (an optimizer, a checkpoint load) reaches the workers; a layer replaced in the model
  restarts them. Each worker writes its gradients to its
  own shared region. Only the slices of x and dy and the slices' outputs travel through a
  socket. The helpers start at the first split batch (about 0.2 s) and stop with the
  wrapper, with :meth:`DataParallel.close`, or when this process ends. A helper is a fresh
  interpreter with this process's import path (``sys.path``): it imports the classes of the
  model's layers from their modules, so a layer class defined in the main script
  (``__main__``) or inside a function, which it cannot import, makes the default use threads.
  A helper that cannot load the model sends its error back: the default then warns and uses
  threads, ``processes=True`` raises it.
* or on **threads**, each through a shallow copy of the model that shares its parameters
  (any CPU backend). Threads of one interpreter take turns at the GIL between NumPy calls,
  which made the MNIST network's layers 33-38% slower in all than in a process of its own
  (docs/benchmarks.md).

On the project's 2-core machine (docs/benchmarks.md) helper processes made the course
networks' training step at batch 64 1.46-1.51x faster than unsplit, threads 1.21-1.43x; at
batch 16 processes still gained up to 1.33x where threads were up to 1.44x slower, hence
the default ``min_batch`` of 16 with processes and 32 with threads.

Layers whose output for one sample depends on the others (BatchNorm's batch statistics) or
that draw random numbers in call order (Dropout) would compute something else on slices,
so a model with them is refused.
"""

from __future__ import annotations

import contextlib
import copy
import mmap
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Callable

from . import backend as _backend
from ._threads import cpu_count, one_blas_thread
from .errors import InputError
from .functional._fast import portable_kernels, portable_only
from .layers.base import _NO_CACHE
from .model import Model, ModelWrapper

#: Whether helper processes can be started here (they inherit a socket and shared memory).
PROCESSES_SUPPORTED = os.name == "posix"


class DataParallel(ModelWrapper):
    """Wraps a model (a :class:`Sequential` or a graph :class:`Model` with one input) so that
    forward and backward split the batch over workers.

    ``workers`` (default: the number of cores) is the number of slices; the calling thread
    computes one. ``processes``: run the other slices in helper processes (True), on threads
    (False), or in processes where possible (None: NumPy models on POSIX systems whose layer
    classes a helper process can import, i.e. none is defined in the main script or inside a
    function; ``processes=True`` refuses such a model with a ValueError). Batches smaller than
    ``min_batch`` (default: 16 with processes, 32 with threads) and models on a GPU run on the
    calling thread as usual.
    Everything else (``params()``, ``grads()``, ``summary()``, checkpoints) is the wrapped
    model's, and ``to()`` moves it: optimizers, :func:`anyarray_nn.fit` and
    :func:`anyarray_nn.evaluate` take the wrapper in its place.
    """

    def __init__(self, model: Model, workers: int | None = None, *,
                 processes: bool | None = None, min_batch: int | None = None) -> None:
        if not isinstance(model, Model):
            raise TypeError(f"DataParallel: expected a Sequential or Model, got "
                            f"{type(model).__name__}")
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(f"DataParallel: expected a model with one input and one output, "
                             f"got {len(model.inputs)} and {len(model.outputs)}")
        for layer in model.layers:
            if not layer.batch_separable:
                raise ValueError(
                    f"DataParallel: {layer.describe()} does not treat samples independently "
                    f"(batch statistics or random masks drawn in order), so slices of a batch "
                    f"would train differently; train this model without DataParallel")
        workers = cpu_count() if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"DataParallel: expected workers >= 1, got {workers!r}")
        if processes and not PROCESSES_SUPPORTED:
            raise ValueError(f"DataParallel: processes=True needs a POSIX system, this is "
                             f"{os.name!r}; use processes=False (threads)")
        self.model, self.workers, self.min_batch = model, workers, min_batch
        self.processes = processes
        self._helpers: _Threads | _Processes | None = None
        self._stop_helpers: Callable[[], Any] | None = None
        self._bounds: list[tuple[int, int]] | None = None
        self._threads_only = False  # the default's fallback once processes could not load it
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
            self._start_helpers(self._use_processes(name))
            return xp.concat(self._run("forward", x, train), axis=0)

    def smallest_split_batch(self, backend: str | None = None) -> int | None:
        """The smallest batch that is split on ``backend`` (default: the model's); None where
        nothing is split (one worker, or a GPU)."""
        name = backend or self.model.backend or _backend.current().name
        if self.workers == 1 or _backend.on_gpu(name):
            return None
        min_batch = self.min_batch
        if min_batch is None:
            min_batch = 16 if self._use_processes(name) else 32
        return max(min_batch, self.workers)

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
            helpers = self._helpers
            for i, layer in enumerate(self.model.layers):
                if layer.params:
                    layer.grads = {key: sum((helpers.grad(k, i, key)
                                             for k in range(self.workers - 1)), layer.grads[key])
                                   for key in layer.params}
            return xp.concat(dxs, axis=0) if input_grad else None

    def to(self, backend: str | None = None, dtype: str | None = None) -> "DataParallel":
        """Move and/or cast the wrapped model (:meth:`Model.to`); returns this wrapper.

        The helpers follow: processes restart with the new layout at the next split batch.
        """
        self.model.to(backend, dtype)
        self._bounds = None  # to() dropped the caches: nothing to go back through
        return self

    def close(self) -> None:
        """Stop the helper processes or threads (they start again if the wrapper is used)."""
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
        parts = [array[lo:hi, ...] for lo, hi in self._bounds]
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

    def _start_helpers(self, use_processes: bool) -> None:
        """Start the helpers for a split forward pass, or restart them if the model changed."""
        kind = _Processes if use_processes else _Threads
        if isinstance(self._helpers, kind) and self._helpers.fits(self.model):
            return
        self.close()
        try:
            helpers = kind(self.model, self.workers - 1)
        except _CannotShip as exc:
            if self.processes:
                raise RuntimeError(f"{exc}; use processes=False (threads)") from None
            warnings.warn(f"{exc}; DataParallel trains this model on threads instead",
                          RuntimeWarning, stacklevel=4)
            self._threads_only = True
            helpers = _Threads(self.model, self.workers - 1)
        self._helpers = helpers
        self._stop_helpers = weakref.finalize(self, helpers.close)

    def _use_processes(self, backend_name: str) -> bool:
        """Whether the other slices of arrays of ``backend_name`` go to helper processes."""
        on_numpy = backend_name == "numpy"
        if self.processes and not on_numpy:
            raise ValueError(f"DataParallel: processes=True needs a NumPy model, got "
                             f"{backend_name} arrays; use processes=False")
        if self.processes is False or self._threads_only or not (on_numpy and PROCESSES_SUPPORTED):
            return False
        for layer in self.model.layers:
            where = _unimportable(type(layer))
            if where is None:
                continue
            if self.processes is None:
                return False  # the default: threads, which need no import
            raise ValueError(
                f"DataParallel: {layer.describe()} is of class {type(layer).__qualname__}, "
                f"defined {where}, which helper processes cannot import; use "
                f"processes=False (threads) or move the class into a module")
        return True

    def __repr__(self) -> str:
        return (f"DataParallel({self.model!r}, workers={self.workers}, "
                f"processes={self.processes}, min_batch={self.min_batch})")

    def __reduce__(self) -> tuple:
        # A copy (copy.deepcopy, pickle) wraps a copy of the model; helpers are not copied.
        return _rebuild, (self.model, self.workers, self.processes, self.min_batch)


def _rebuild(model: Model, workers: int, processes: bool | None,
             min_batch: int | None) -> DataParallel:
    return DataParallel(model, workers, processes=processes, min_batch=min_batch)


def _check_batch(array: Any, what: str) -> None:
    if len(array.shape) == 0:
        raise InputError(f"DataParallel: {what}: expected a batch (N, ...), got shape ()")


def _unimportable(cls: type) -> str | None:
    """Where ``cls`` is defined, if a fresh interpreter cannot import it from there, else None.

    A helper process unpickles each layer by importing its class from the class's module:
    impossible for the main script (``__main__`` is a different script there) and for a class
    defined inside a function.
    """
    if cls.__module__ == "__main__":
        return "in the main script (__main__)"
    if "<locals>" in cls.__qualname__:
        return f"inside a function ({cls.__module__}.{cls.__qualname__})"
    return None


def _apply(model: Model, op: str, array: Any, flag: bool, portable: bool = False) -> Any:
    # ``portable``: the caller is in a portable_kernels() block, which a helper thread's or
    # process's own context does not see.
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


# --- helper processes --------------------------------------------------------------------

_ALIGN = 64  # bytes: each parameter starts on a cache line

# Each helper is a fresh interpreter (not a fork of this possibly multi-threaded process),
# with this process's import path. It imports anyarray_nn and the modules of the model's layer
# classes, never the user's script.
_HELPER_CODE = ("import sys; from anyarray_nn.parallel import serve_slices; "
                "serve_slices(int(sys.argv[1]), int(sys.argv[2]))")


def _param_layout(model: Model) -> tuple[list[tuple], int]:
    """``[(layer index, "params" or "buffers", key, byte offset, shape, dtype)]`` and the
    size of one region."""
    entries, offset = [], 0
    for i, layer in enumerate(model.layers):
        for store in ("params", "buffers"):
            for key, value in getattr(layer, store).items():
                entries.append((i, store, key, offset, tuple(value.shape),
                                _backend.dtype_name(value.dtype)))
                offset += -(-value.nbytes // _ALIGN) * _ALIGN
    return entries, offset


def _views(memory: Any, layout: list[tuple], base: int, stores: tuple[str, ...] = (
        "params", "buffers")) -> dict[tuple[int, str, str], Any]:
    return {(i, store, key): _backend.host_view(memory, shape, dtype, base + offset)
            for i, store, key, offset, shape, dtype in layout if store in stores}


class _CannotShip(Exception):
    """The model cannot go to helper processes (it does not pickle, or they cannot load it)."""


class _Processes:
    """Slices 2.. in helper processes. Shared memory holds one region of parameters, written
    here before every forward pass, and one region of gradients per helper, written there."""

    def __init__(self, model: Model, count: int) -> None:
        self.model, self.replies = model, 0  # replies: requests sent and not yet answered
        self.layers = list(model.layers)
        self.layout, region = _param_layout(model)
        try:
            setup = pickle.dumps(_bare_copy(model))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise _CannotShip(f"DataParallel: the model cannot be sent to helper processes "
                              f"({type(exc).__name__}: {exc})") from None
        size = max(region * (count + 1), 1)
        with _shared_file(size) as fd:
            self.memory = mmap.mmap(fd, size)
            self.values = _views(self.memory, self.layout, 0)
            self.grads = [_views(self.memory, self.layout, region * (k + 1), ("params",))
                          for k in range(count)]
            self.procs, self.conns = [], []
            _live_process_helpers.add(self)
            try:
                for k in range(count):
                    self._spawn(fd, (setup, self.layout, region * (k + 1), size))
                for k in range(count):  # wait until each is ready, so a failure shows here
                    error = self._receive(k)  # None, or why the helper could not load the model
                    if error is not None:
                        proc = self.procs[k]
                        raise _CannotShip(f"DataParallel: helper process {k + 1} (pid "
                                          f"{proc.pid}) could not load the model: {error}")
            except BaseException:
                self.close()
                raise

    def _spawn(self, fd: int, setup: tuple) -> None:
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        # Where the layer classes' modules were found, then this process's import path ("" is
        # the working directory now, which may no longer be where a module was imported from).
        import_path = [package_root, *_module_roots(self.model),
                       *(os.path.abspath(entry) for entry in sys.path),
                       os.environ.get("PYTHONPATH")]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, import_path)))
        with theirs:
            proc = subprocess.Popen([sys.executable, "-c", _HELPER_CODE, str(theirs.fileno()),
                                     str(fd)], pass_fds=(theirs.fileno(), fd), env=env)
        self.procs.append(proc)
        self.conns.append(Connection(ours.detach()))
        self.conns[-1].send(setup)

    def fits(self, model: Model) -> bool:
        # Helpers of this process (not forgotten in a fork), the same layer objects, and the
        # shared memory laid out for their arrays.
        return (bool(self.conns) and _same_layers(self.layers, model)
                and _param_layout(model)[0] == self.layout)

    def start(self, op: str, parts: list[Any], flag: bool) -> None:
        if op == "forward":  # the helpers compute with the parameters and buffers as they are now
            for (i, store, key), view in self.values.items():
                view[...] = getattr(self.model.layers[i], store)[key]
        self.replies = 0
        for k, part in enumerate(parts):
            try:
                self.conns[k].send((op, part, flag, portable_only()))
            except OSError:
                raise self._stopped(k) from None
            self.replies += 1

    def finish(self) -> list[Any]:
        results = [self._receive(k) for k in range(self.replies)]
        self.replies = 0
        return results

    def _receive(self, k: int) -> Any:
        """Helper ``k``'s reply: its result, or the exception it raised (raised by the caller
        once every helper has answered)."""
        try:
            return self.conns[k].recv()
        except (EOFError, OSError):
            raise self._stopped(k) from None

    def _stopped(self, k: int) -> RuntimeError:
        proc = self.procs[k]
        try:
            code = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"DataParallel: helper process {k + 1} (pid {proc.pid}) stopped "
                            f"(exit code {code}); its error, if any, is printed above. The "
                            f"helpers start again at the next call.")

    def grad(self, k: int, i: int, key: str) -> Any:
        return self.grads[k][(i, "params", key)]

    def forget(self) -> None:
        """In a forked child: drop this process's ends of the sockets without stopping the
        helpers, which are the parent's (they exit once the parent closes its ends)."""
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []

    def close(self) -> None:
        for conn in self.conns:
            conn.close()  # the helper sees the end of its input and exits
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.conns, self.procs = [], []


_live_process_helpers: "weakref.WeakSet[_Processes]" = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    # A fork (e.g. a multiprocessing child) inherits the socket ends: left open, they would
    # keep the helpers waiting for the child too.
    os.register_at_fork(after_in_child=lambda: [p.forget() for p in list(_live_process_helpers)])


def _module_roots(model: Model) -> list[str]:
    """The folders from which the modules of the model's layer classes were imported."""
    roots = []
    for cls in {type(layer) for layer in model.layers}:
        path = getattr(sys.modules.get(cls.__module__), "__file__", None)
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            for _ in range(cls.__module__.count(".") + (os.path.basename(path) == "__init__.py")):
                folder = os.path.dirname(folder)
            roots.append(folder)
    return sorted(set(roots))


class _shared_file:
    """A file descriptor of ``size`` bytes of memory with no name to clean up (memfd on Linux,
    an already deleted temporary file elsewhere), closed on exit."""

    def __init__(self, size: int) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("anyarray_nn-data-parallel")
        else:
            self.fd = os.dup(tempfile.TemporaryFile().fileno())
        os.ftruncate(self.fd, size)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


def serve_slices(sock_fd: int, memory_fd: int) -> None:
    """The main loop of a helper process of :class:`DataParallel` (not for direct use).

    Receives the model copy and the shared-memory layout, then answers ``forward`` and
    ``backward`` requests on its slice until the socket closes. Data come only from the
    process that started this one, over an inherited socket pair. If loading the model
    fails (a layer class it cannot import), it sends the error's text back and exits.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = Connection(sock_fd)
    try:
        try:
            setup, layout, grads_at, size = conn.recv()
            model = pickle.loads(setup)
            memory = mmap.mmap(memory_fd, size)
            os.close(memory_fd)
            for (i, store, key), view in _views(memory, layout, 0).items():
                getattr(model.layers[i], store)[key] = view
            grads = _views(memory, layout, grads_at, ("params",))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - the caller raises it with its own message
            conn.send(f"{type(exc).__name__}: {exc}")
            return
        conn.send(None)  # ready
        while True:
            op, part, flag, portable = conn.recv()
            try:  # the reply is the result, or the exception the caller will raise
                reply = _apply(model, op, part, flag, portable)
                if op == "backward":
                    for (i, _, key), view in grads.items():
                        view[...] = model.layers[i].grads[key]
            except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
                reply = _portable(exc)
            conn.send(reply)
    except (EOFError, OSError):  # the parent closed its end (close(), or it stopped): done
        return


def _portable(exc: Exception) -> Exception:
    """``exc`` if the parent can rebuild it from a pickle, else a RuntimeError with its text
    (an exception whose constructor takes other arguments than it keeps would fail there)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any failure means: send the text instead
        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"DataParallel helper process: {text}")
