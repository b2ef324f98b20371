"""Sequential: a list of layers run forward in order and backward in reverse.

One reordering is made, because it is exact and saves a pass over the largest arrays: a ReLU
directly followed by a MaxPool2D runs after the pooling. Max-pooling commutes with ReLU
(relu(max(a, b)) = max(relu(a), relu(b))), so the output is the same, and the ReLU then
works on the pooled array, a quarter of the size for 2x2 pooling. The gradients are the same
too: where the window's maximum m is positive, the first arg-max of x is the first arg-max of
relu(x) and both paths pass dy; where m <= 0, ReLU's gradient is 0 on both paths.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterator

from . import backend as _backend
from .layers.activation import ReLU
from .layers.base import Layer, layer_class
from .layers.pool import MaxPool2D


class Sequential:
    """A stack of layers. Unnamed layers are named by type and position: "dense1", "relu2".

    ``params()`` and ``grads()`` return flat dicts keyed ``"<layer name>.<param>"``
    (``"fc.W"``), the names checkpoints store.
    """

    def __init__(self, layers: list[Layer]) -> None:
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} must be an anyarray_nn Layer, got "
                                f"{type(layer).__name__}")
        _assign_names(layers)
        self.layers = layers

    # --- running -------------------------------------------------------------------------

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """Run every layer in order. ``train=True`` keeps the caches that backward needs.

        A ReLU directly followed by a MaxPool2D runs after it (same result, see the module
        docstring).
        """
        for i in execution_order(self.layers):
            x = self.layers[i].forward(x, train=train)
        return x

    def backward(self, dy: Any, *, input_grad: bool = False) -> Any:
        """Back-propagate dL/d(output) through every layer, filling each layer's ``grads``.

        Gradients are overwritten, not accumulated. The gradient with respect to the input
        data is skipped unless ``input_grad=True`` (then it is returned; otherwise None):
        for a first convolution it costs as much as the rest of the backward pass.
        """
        order = execution_order(self.layers)
        for position in range(len(order) - 1, -1, -1):
            dy = self.layers[order[position]].backward(dy, input_grad=input_grad or position > 0)
        return dy

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        return self.forward(x, train=train)

    def predict(self, x: Any) -> Any:
        """Class indices of the largest output per row (evaluation mode)."""
        xp = _backend.namespace(x)
        return xp.argmax(self.forward(x, train=False), axis=1)

    # --- parameters ----------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """All parameters as ``{"layer.param": array}`` (the arrays themselves, not copies)."""
        return {f"{layer.name}.{key}": value
                for layer in self.layers for key, value in layer.params.items()}

    def buffers(self) -> dict[str, Any]:
        """Non-trained state (BatchNorm running statistics) as ``{"layer.name": array}``."""
        return {f"{layer.name}.{key}": value
                for layer in self.layers for key, value in layer.buffers.items()}

    def grads(self) -> dict[str, Any]:
        """The gradients of the last ``backward``, keyed like :meth:`params`."""
        out = {}
        for layer in self.layers:
            for key in layer.params:
                if key not in layer.grads:
                    raise RuntimeError(f"{layer.describe()}: no gradient for {key!r} yet; call "
                                       f"model.backward() after forward(x, train=True)")
                out[f"{layer.name}.{key}"] = layer.grads[key]
        return out

    def num_params(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(v.shape) for v in self.params().values())

    def to(self, backend: str | None = None, dtype: str | None = None) -> "Sequential":
        """Move every parameter to ``backend`` and/or cast to ``dtype`` (in place); returns self."""
        for layer in self.layers:
            layer.to(backend, dtype)
        return self

    @property
    def backend(self) -> str | None:
        """Backend name of the parameters (None for a model without parameters)."""
        values = list(self.params().values())
        return _backend.backend_name_of(values[0]) if values else None

    @property
    def dtype(self) -> str | None:
        """dtype name of the parameters (None for a model without parameters)."""
        values = list(self.params().values())
        return _backend.dtype_name(values[0].dtype) if values else None

    # --- access and description ----------------------------------------------------------

    def __getitem__(self, key: int | str) -> Layer:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(f"no layer named {key!r}; layers: "
                           f"{', '.join(layer.name for layer in self.layers)}")
        return self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"Sequential([\n{inner}\n])"

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """The parameter table: per layer its weights, biases and total; returns the text.

        "weights" counts every parameter except biases (``b``). Pass ``print_fn=None`` to only
        get the string.
        """
        rows = []
        for layer in self.layers:
            sizes = {k: math.prod(v.shape) for k, v in layer.params.items()}
            biases = sizes.get("b", 0)
            rows.append((layer.name, layer.type_name, _shapes(layer),
                         sum(sizes.values()) - biases, biases))
        header = ("layer", "type", "parameter shapes", "weights", "biases", "total")
        body = [(n, t, s, f"{w:,}", f"{b:,}", f"{w + b:,}") for n, t, s, w, b in rows]
        totals = [sum(r[3] for r in rows), sum(r[4] for r in rows)]
        foot = ("total", "", "", f"{totals[0]:,}", f"{totals[1]:,}", f"{sum(totals):,}")
        text = _table(header, body, foot)
        if print_fn is not None:
            print_fn(text)
        return text

    # --- architecture as data ------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The architecture as JSON-ready data: ``{"layers": [{"type": ..., "config": ...}]}``."""
        return {"layers": [{"type": layer.type_name, "config": layer.get_config()}
                           for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> "Sequential":
        """Rebuild from :meth:`get_config`, using only registered layer types.

        ``kwargs`` (``backend``, ``dtype``, ``rng``) go to each layer whose constructor takes
        them: ``rng`` also seeds layers that draw random numbers without parameters (Dropout).
        """
        layers = []
        for entry in config["layers"]:
            layer_cls = layer_class(entry["type"])
            accepted = inspect.signature(layer_cls.__init__).parameters
            extra = {k: v for k, v in kwargs.items() if k in accepted}
            layers.append(layer_cls.from_config(entry["config"], **extra))
        return cls(layers)


def execution_order(layers: list[Layer]) -> list[int]:
    """Indices of ``layers`` in the order Sequential runs them: as listed, except that a ReLU
    directly followed by a MaxPool2D swaps places with it (see the module docstring)."""
    order = list(range(len(layers)))
    i = 0
    while i < len(layers) - 1:
        if type(layers[i]) is ReLU and type(layers[i + 1]) is MaxPool2D:
            order[i], order[i + 1] = i + 1, i
            i += 2
        else:
            i += 1
    return order


def _assign_names(layers: list[Layer]) -> None:
    """Give unnamed layers "<type><k>" names ("relu1", "maxpool2"); reject duplicates."""
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError("Sequential: the same layer object appears more than once; create "
                         "one layer per position")
    taken = [layer.name for layer in layers if layer.name is not None]
    duplicates = sorted({n for n in taken if taken.count(n) > 1})
    if duplicates:
        raise ValueError(f"Sequential: layer names must be unique, got {duplicates} more "
                         f"than once")
    used = set(taken)
    counters: dict[str, int] = {}
    for layer in layers:
        if layer.name is not None:
            continue
        base = layer.type_name.lower()
        if base[-2:] in ("1d", "2d"):  # "conv1", "maxpool1", as users name them
            base = base[:-2]
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}{counters[base]}"
            if candidate not in used:
                break
        layer.name = candidate
        used.add(candidate)


def _shapes(layer: Layer) -> str:
    return " ".join(f"{k}{tuple(v.shape)}" for k, v in layer.params.items()) or "-"


def _table(header: tuple, body: list[tuple], foot: tuple) -> str:
    rows = [header, *body, foot]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    right = {3, 4, 5}

    def fmt(row: tuple) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(foot)])
