"""Symbolic values for building graph models: ``Input(shape)`` and what calling a layer on
inputs returns.

    image = ann.Input((3, 32, 32), name="image")
    h = ann.layers.Conv2D(3, 16, 3, padding=1)(image)     # a Node: Conv2D called on image
    y = ann.layers.Add()([h, ann.layers.Identity()(h)])    # several inputs: a list
    model = ann.Model(image, y)

A node knows the layer call that makes it, that call's input nodes and the shape of one
sample of its value (no batch axis). The shape is found when the layer is called, by running
the layer's forward pass on a batch of one zero sample, so a layer that cannot take its
inputs (a Dense of the wrong size, an Add of different shapes) fails there, with the input
nodes named, not at the first step of training.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .. import backend as _backend
from ..errors import InputError
from .base import _PROBE_LIMIT, _SHAPES_ONLY, check_layer_name

if TYPE_CHECKING:
    from .base import Layer

_serials = itertools.count()  # creation order: a stable order for nodes and their names


class Node:
    """One value of a graph being built: a model input (``layer`` None) or the output of
    ``layer`` called on ``inputs``. ``shape`` is one sample's shape (no batch axis)."""

    __slots__ = ("layer", "inputs", "shape", "name", "several", "serial")

    def __init__(self, layer: "Layer | None", inputs: Sequence["Node"],
                 shape: tuple[int, ...] | None, name: str | None = None,
                 several: bool = False) -> None:
        self.layer, self.inputs = layer, tuple(inputs)
        self.shape = None if shape is None else tuple(shape)  # None: not known (Sequential)
        self.name = name  # inputs only; a layer call's node is named by its model
        self.several = several  # the layer was called on a list (Add, Concatenate)
        self.serial = next(_serials)

    def describe(self) -> str:
        """``input 'image'`` or ``Conv2D 'conv1'``: how errors name this node."""
        if self.layer is None:
            return f"input {self.name!r}" if self.name else "an unnamed input"
        return self.layer.describe()

    def __repr__(self) -> str:
        return f"<Node: {self.describe()}, shape {self.shape}>"


def Input(shape: Sequence[int], name: str | None = None) -> Node:  # noqa: N802 - as Keras
    """A model input whose samples have ``shape`` (no batch axis): (3, 32, 32) for CIFAR-10
    images. Call layers on it, then build ``ann.Model(inputs, outputs)``."""
    try:
        dims = tuple(int(d) for d in shape)
        valid = all(d >= 0 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"Input: expected shape to be a sequence of non-negative ints (one "
                         f"sample, no batch axis), got {shape!r}")
    try:
        check_layer_name(name)  # input names share the layers' namespace and rules
    except ValueError:
        raise ValueError(f"Input: expected name to be a non-empty string without '.' or "
                         f"'/', got {name!r}") from None
    return Node(None, (), dims, name)


def call_on_nodes(layer: "Layer", inputs: Sequence[Node], several: bool) -> Node:
    """The node of ``layer`` called on ``inputs`` (``several``: as a list, for layers such as
    Add), its shape found by a forward pass on one zero sample of each input."""
    if any(node.shape is None for node in inputs) or _SHAPES_ONLY.get():
        # shapes not known, or parameters that cannot compute (a checkpoint's size check)
        return Node(layer, inputs, None, several=several)
    _check_probe_size(layer, inputs)
    probe_backend, probe_dtype = _probe_kind(layer)
    probes = [_backend.asarray(np.zeros((1, *(node.shape or ())), dtype=np.float32),
                               backend=probe_backend, dtype=probe_dtype) for node in inputs]
    try:
        out = layer.forward(tuple(probes) if several else probes[0], train=False)
    except (InputError, ValueError, TypeError) as exc:
        sources = ", ".join(f"{node.describe()} of shape {node.shape}" for node in inputs)
        raise type(exc)(f"building a graph: {exc} (called on {sources})") from None
    if not hasattr(out, "shape") or len(out.shape) == 0 or out.shape[0] != 1:
        raise TypeError(f"building a graph: {layer.describe()} must return one array with "
                        f"the batch axis first, got {type(out).__name__}")
    return Node(layer, inputs, tuple(out.shape[1:]), several=several)


def _check_probe_size(layer: "Layer", inputs: Sequence[Node]) -> None:
    """Within ``bounded_probes`` (a model built from a file), refuse a probe whose arrays
    could exceed the limit, before anything is allocated."""
    limit = _PROBE_LIMIT.get()
    if limit is None:
        return
    shapes = [node.shape or () for node in inputs]  # known: build() checked
    needed = sum(math.prod(shape) for shape in shapes)
    try:
        needed = max(needed, layer.probe_elements(shapes))
    except (InputError, ValueError, TypeError):
        pass  # a shape the layer cannot take: its forward says so
    if needed > limit:
        sources = ", ".join(f"{node.describe()} of shape {node.shape}" for node in inputs)
        raise ValueError(f"building a graph: {layer.describe()} called on {sources} would "
                         f"need arrays of {needed:,} elements for one sample; a model built "
                         f"from a file may need at most {limit:,}")


def _probe_kind(layer: "Layer") -> tuple[str, str]:
    """The backend and dtype of ``layer``'s parameters (the probe must match them), else
    NumPy float32."""
    for store in (layer.params, layer.buffers):
        for value in store.values():
            return _backend.backend_name_of(value), _backend.dtype_name(value.dtype)
    return "numpy", "float32"
