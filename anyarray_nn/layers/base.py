"""The Layer base class and the registry of layer types.

A layer owns its parameters (``params``), the gradients its last backward computed
(``grads``, same keys) and what backward needs from forward (the cache). Subclasses implement
``_forward(x, train)`` and ``_backward(dy, cache, input_grad)`` with the kernels of ``anyarray_nn.functional``;
this class adds what every layer needs: errors that name the layer, the forward/backward
order, and moving parameters between backends.

The registry maps a type name to its class. Checkpoints rebuild models through it, so a name
read from a file can only ever select one of these classes: nothing is imported by name.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Sequence

import numpy as np

from .. import backend as _backend
from ..errors import errors_named
from ..init import get_initializer

_REGISTRY: dict[str, type["Layer"]] = {}
_SHAPES_ONLY = contextvars.ContextVar("anyarray_nn_shapes_only", default=False)
_PROBE_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "anyarray_nn_probe_limit", default=None)


class _NoCache:
    """The type of ``_NO_CACHE``: a layer's cache when no training forward is there to go back
    through. None cannot mean that: ``_forward`` may return None as its cache (a layer that
    needs nothing from the forward pass). Pickles as the one instance, so a layer copied into
    a DataParallel helper process keeps the meaning."""

    def __repr__(self) -> str:
        return "_NO_CACHE"

    def __reduce__(self) -> str:
        return "_NO_CACHE"


_NO_CACHE = _NoCache()


@contextlib.contextmanager
def bounded_probes(limit: int) -> Iterator[None]:
    """Inside this block, a layer called on graph nodes refuses, before computing anything,
    a shape probe whose arrays could exceed ``limit`` elements (see
    :meth:`Layer.probe_elements`): building a model from a file's config cannot then take
    the machine's memory or hang in a huge loop, whatever sizes the config declares."""
    token = _PROBE_LIMIT.set(limit)
    try:
        yield
    finally:
        _PROBE_LIMIT.reset(token)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Build layers without memory: inside this block every parameter and buffer a layer
    creates is a read-only stand-in of its shape and dtype that holds no data.

    Checkpoints build a stored architecture this way to compare its shapes with the stored
    arrays before allocating anything: a config declaring a huge layer costs nothing.
    Such layers cannot compute.
    """
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def register(cls: type["Layer"]) -> type["Layer"]:
    """Class decorator: make a layer type known to ``load_model`` and checkpoints."""
    if cls.__name__ in _REGISTRY and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"a layer type named {cls.__name__!r} is already registered")
    _REGISTRY[cls.__name__] = cls
    return cls


def layer_class(type_name: str) -> type["Layer"]:
    """The registered layer class called ``type_name``; a clear error lists the known ones."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise ValueError(f"unknown layer type {type_name!r}; registered types: "
                         f"{', '.join(sorted(_REGISTRY))}") from None


def check_layer_name(name: str | None) -> None:
    """Names become parameter keys ("fc.W") and HDF5 groups, so '.' and '/' are reserved."""
    if name is None:
        return
    if not isinstance(name, str) or not name or "." in name or "/" in name:
        raise ValueError(f"layer name: expected a non-empty string without '.' or '/', "
                         f"got {name!r}")


class Layer:
    """Base class of every layer: ``forward(x, *, train)`` then ``backward(dy) -> dx``."""

    #: Whether each sample's output and gradients depend only on that sample, so that slices
    #: of a batch can run separately (:class:`anyarray_nn.parallel.DataParallel`).
    batch_separable = True
    #: Whether the layer joins several inputs, given as one tuple (Add, Concatenate).
    takes_several = False
    #: Whether ``_forward`` takes ``relu=True`` and then applies a ReLU to its output in the
    #: same pass (BatchNorm): models run a ReLU that follows such a layer this way.
    fuses_relu = False

    def __init__(self, name: str | None = None) -> None:
        check_layer_name(name)
        self.name = name
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self.buffers: dict[str, Any] = {}  # state that is not trained (running statistics)
        self._cache: Any = _NO_CACHE  # what backward needs; _NO_CACHE: no training forward

    # --- the public protocol -------------------------------------------------------------

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """Compute the layer's output. With ``train=True`` keep what ``backward`` needs."""
        self._cache = _NO_CACHE  # a failed forward must not leave an old cache for backward
        out, cache = self.forward_pass(x, train)
        self._cache = cache
        return out

    def backward(self, dy: Any, *, input_grad: bool = True) -> Any:
        """Given dL/dy, fill ``self.grads`` (same keys as ``params``) and return dL/dx.

        With ``input_grad=False`` the layer may skip computing dL/dx (a network's first
        layer: nobody needs the gradient of the data) and returns None.
        """
        dx, self.grads = self.backward_pass(dy, self._cache, input_grad)
        return dx

    def __call__(self, *inputs: Any) -> Any:
        """On graph nodes (``ann.Input`` and what layers called on it return): the node of
        this layer's output, for building a model; a layer with several inputs (Add,
        Concatenate) takes them as a list. On arrays: ``forward(x)`` in evaluation mode."""
        from .node import Node, call_on_nodes  # node imports this module's siblings
        several = len(inputs) == 1 and isinstance(inputs[0], (list, tuple))
        items = list(inputs[0]) if several else list(inputs)
        nodes = [item for item in items if isinstance(item, Node)]
        if not nodes:
            if len(inputs) != 1:
                raise TypeError(f"{self.describe()}: called on {len(inputs)} arrays; pass "
                                f"several inputs as one list")
            return self.forward(inputs[0])
        if len(nodes) != len(items) or not items or several != self.takes_several:
            wanted = "a list of graph nodes" if self.takes_several else "one graph node"
            raise TypeError(f"{self.describe()}: expected {wanted}, got "
                            f"{'a list of ' if several else ''}"
                            f"{', '.join(type(i).__name__ for i in items) or 'none'}")
        return call_on_nodes(self, items, several)

    # --- the engine's protocol: no state kept ---------------------------------------------

    def forward_pass(self, x: Any, train: bool, relu: bool = False) -> tuple[Any, Any]:
        """``(y, cache)``: the forward pass with errors naming the layer, keeping nothing on
        the layer (the cache is ``_NO_CACHE`` unless ``train``). Models call this, so a layer
        used twice keeps one cache per call. ``relu=True`` (layers whose ``fuses_relu`` is
        true) returns ``relu(y)``, and the backward pass goes back through both."""
        with errors_named(self.describe()):
            # relu=True only for layers whose _forward takes it (fuses_relu)
            out, cache = (self._forward(x, train, relu=True)  # type: ignore[call-arg]
                          if relu else self._forward(x, train))
        return out, (cache if train else _NO_CACHE)

    def backward_pass(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        """``(dx, grads)`` from a :meth:`forward_pass` cache (dx None unless ``input_grad``),
        keeping nothing on the layer."""
        if cache is _NO_CACHE:
            raise RuntimeError(f"{self.describe()}: backward() needs a preceding "
                               f"forward(x, train=True)")
        with errors_named(self.describe()):
            dx, grads = self._backward(dy, cache, input_grad)
        return (dx if input_grad else None), grads

    # --- what subclasses implement -------------------------------------------------------

    def _forward(self, x: Any, train: bool) -> tuple[Any, Any]:
        """Return ``(y, cache)``; the cache is handed back to ``_backward``."""
        raise NotImplementedError

    def _backward(self, dy: Any, cache: Any, input_grad: bool) -> tuple[Any, dict[str, Any]]:
        """Return ``(dx, grads)`` with ``grads`` keyed like ``self.params``."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (JSON types only) that rebuild this layer's architecture."""
        return {"name": self.name}

    # --- helpers -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> "Layer":
        """Rebuild a layer from :meth:`get_config` output (``kwargs`` add e.g. ``backend``)."""
        return cls(**config, **kwargs)

    @property
    def type_name(self) -> str:
        """The registered type name, e.g. ``"Dense"``."""
        return type(self).__name__

    def probe_elements(self, shapes: Sequence[tuple[int, ...]]) -> int:
        """An upper bound on the elements of the arrays (or the loop steps) one forward pass
        on one sample of each input shape in ``shapes`` (no batch axis) creates.

        The default, the inputs' elements or the parameters' count, whichever is larger,
        holds for layers whose output is no larger than their inputs (activations,
        normalization, joining) or than their parameters (Dense). Layers that can grow a
        sample beyond both (padding, adaptive sizes, windows) compute their own.
        """
        inputs = sum(math.prod(shape) for shape in shapes)
        return max(inputs, sum(math.prod(v.shape) for v in self.params.values()))

    def describe(self) -> str:
        """``Dense 'fc'``: how errors name this layer."""
        return self.type_name if self.name is None else f"{self.type_name} {self.name!r}"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.type_name}({args})"

    def to(self, backend: str | None = None, dtype: str | None = None) -> "Layer":
        """Move parameters and buffers to ``backend`` and/or cast them to ``dtype``."""
        target = _backend.get_backend(backend) if backend is not None else None
        for store in (self.params, self.buffers):
            for key, value in store.items():
                store[key] = _backend.asarray(
                    value, backend=target or _backend.backend_name_of(value), dtype=dtype)
        self.grads = {}
        self._cache = _NO_CACHE
        return self

    def _check_sizes(self, **sizes: Any) -> None:
        """Raise ValueError naming the layer type unless every size is a positive int."""
        for label, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.type_name}: expected {label} to be a positive int, "
                                 f"got {value!r}")

    @staticmethod
    def _init_name(init: Any) -> str | None:
        """How a config records an initializer: its name, or None for a callable.

        A callable cannot be stored safely; the weights themselves are what checkpoints keep,
        and a layer rebuilt from a config with ``init=None`` starts from the default.
        """
        return init if isinstance(init, str) else None

    def _new_param(self, init: Any, shape: tuple, fan_in: int, fan_out: int,
                   backend: Any, dtype: str | None, rng: Any) -> Any:
        """Draw a parameter on the host, then cast and move it (same seed, same bits anywhere)."""
        if _SHAPES_ONLY.get():  # one element broadcast to the shape: no memory is taken
            try:
                return np.broadcast_to(np.zeros((), dtype or _backend.DEFAULT_DTYPE), shape)
            except ValueError:
                raise ValueError(f"{self.describe()}: a parameter of shape {tuple(shape)} has "
                                 f"more elements than any array can hold") from None
        host = get_initializer("he" if init is None else init)(
            tuple(shape), fan_in, fan_out, _backend.host_rng(rng))
        return _backend.asarray(host, backend=backend, dtype=dtype or _backend.DEFAULT_DTYPE)
