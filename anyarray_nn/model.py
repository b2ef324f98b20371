"""The model engine: a directed acyclic graph of layer calls, run forward in topological
order and backward in reverse. ``Model(inputs, outputs)`` builds any such graph from
``ann.Input`` nodes and layers called on them (residual connections, concatenation, several
inputs or outputs, a layer used twice); ``Sequential`` is its linear case, built from a list.

Backward sums the gradients that reach a value from each of its consumers (a fan-out, such as
a residual block's input), and sums a shared layer's parameter gradients over its calls. A
model input's gradient is skipped unless ``input_grad=True``: a layer that reads only model
inputs (a network's first convolution) is asked for no input gradient, which for a first
convolution costs as much as the rest of the backward pass.

One reordering is made, because it is exact and saves a pass over the largest arrays: a ReLU
whose only consumer is a MaxPool2D runs after the pooling. Max-pooling commutes with ReLU
(relu(max(a, b)) = max(relu(a), relu(b))), so the output is the same, and the ReLU then
works on the pooled array, a quarter of the size for 2x2 pooling. The gradients are the same
too: where the window's maximum m is positive, the first arg-max of x is the first arg-max of
relu(x) and both paths pass dy; where m <= 0, ReLU's gradient is 0 on both paths.

One fusion is made for the same reason: a ReLU that is the only consumer of a layer that can
apply it in its own pass (``fuses_relu``: batch normalization) runs inside that layer's
step, forward and backward, computing the same values without a pass of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Iterator, Sequence, cast

import numpy as np

from . import _allocator
from . import backend as _backend
from .errors import as_int
from .layers.activation import ReLU
from .layers.base import Layer, layer_class
from .layers.node import Input, Node
from .layers.pool import MaxPool2D

#: Rows per forward pass in :meth:`Model.predict` (Keras's default is 32; larger batches
#: run faster, and 256 MNIST images in float32 take about 50 MB of activations).
PREDICT_BATCH = 256

__all__ = ["Model", "Sequential", "Input", "ModelWrapper", "model_from_config"]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Steps in the order they run, the slots whose value each step reads last (freed after
    it unless kept), and how many value slots there are."""
    steps: list["_Step"]
    frees: list[list[int]]
    slots: int


@dataclasses.dataclass(frozen=True)
class _Step:
    """One layer call of the execution plan: ``layer`` reads the values in slots ``inputs``
    (as a tuple when ``several``) and writes slot ``output``."""
    layer: Layer
    inputs: tuple[int, ...]
    output: int
    several: bool
    name: str  # the node's
    relu: str | None = None  # the name of a ReLU node fused into this step (fuses_relu)


class Model:
    """A network whose layers form a directed acyclic graph, built from graph nodes::

        image = ann.Input((3, 32, 32), name="image")
        h = ann.layers.ReLU()(ann.layers.Conv2D(3, 16, 3, padding=1, name="conv")(image))
        out = ann.layers.Add()([h, ann.layers.Conv2D(16, 16, 3, padding=1)(h)])
        model = ann.Model(image, out)

    ``inputs`` and ``outputs``: one node or a list. ``forward`` then takes one array per
    input (a tuple for several) and returns one per output (a tuple for several); backward
    takes one gradient per output. Unnamed layers are named by type ("conv1", "add1"); a
    layer called twice shares its parameters, and its node for the k-th call is
    ``"<name>:<k>"``. ``params()`` and ``grads()`` are keyed ``"<layer>.<param>"``.

    Bad graphs are refused here: an input that no output reaches, an output computed from an
    input not in ``inputs``, two layers or inputs of one name.
    """

    def __init__(self, inputs: Node | Sequence[Node], outputs: Node | Sequence[Node]) -> None:
        self.inputs = _node_list(inputs, "inputs")
        self.outputs = _node_list(outputs, "outputs")
        self._single_input = len(self.inputs) == 1
        self._single_output = len(self.outputs) == 1
        _check_inputs(self.inputs)
        self.nodes = _topological(self.inputs, self.outputs)
        self.layers = _unique_layers(self.nodes)
        _assign_names(self.layers, "Model",
                      taken=[node.name for node in self.inputs if node.name is not None])
        self.node_names = _node_names(self.nodes)
        self._plan()

    # --- the plan ------------------------------------------------------------------------

    def _plan(self) -> None:
        """The execution plans: the one forward and backward run, with each ReLU whose only
        consumer is a MaxPool2D moved after it, and (made when first needed) the plain one,
        in which every node's value exists (:meth:`node_outputs`)."""
        consumers: dict[Node, list[Node]] = {node: [] for node in self.nodes}
        for node in self.nodes:
            for source in node.inputs:
                consumers[source].append(node)
        outputs = set(self.outputs)
        swapped: dict[Node, Node] = {}  # MaxPool2D node -> the ReLU node it runs before
        for node in self.nodes:
            users = consumers[node]
            if (type(node.layer) is ReLU and node not in outputs and len(users) == 1
                    and type(users[0].layer) is MaxPool2D):
                swapped[users[0]] = node
        fused: dict[Node, Node] = {}  # a fuses_relu layer's node -> the ReLU node it applies
        for node in self.nodes:
            users = consumers[node]
            if (node.layer is not None and node.layer.fuses_relu and node not in outputs
                    and len(users) == 1 and type(users[0].layer) is ReLU
                    and users[0] not in swapped.values()):
                fused[node] = users[0]
        self._slot = {node: i for i, node in enumerate(self.nodes)}
        self._input_slots = tuple(self._slot[node] for node in self.inputs)
        self._output_slots = tuple(self._slot[node] for node in self.outputs)
        self._node_slots = {self.node_names[node]: self._slot[node] for node in self.nodes}
        self._fast_plan = self._make_plan(swapped, fused)
        self._plain_plan: _Plan | None = None
        self._caches: list[Any] | None = None

    def _make_plan(self, swapped: dict[Node, Node], fused: dict[Node, Node]) -> "_Plan":
        slot, names = self._slot, self.node_names
        steps, extra = [], len(self.nodes)
        for node in self.nodes:
            if node.layer is None or node in swapped.values() or node in fused.values():
                continue
            if node in fused:  # the layer and its ReLU in one step, writing the ReLU's slot
                relu = fused[node]
                steps.append(_Step(node.layer, (slot[node.inputs[0]],), slot[relu], False,
                                   names[node], names[relu]))
                continue
            if node in swapped:  # pool first, into a slot of its own, then the ReLU
                relu = swapped[node]
                steps.append(_Step(node.layer, (slot[relu.inputs[0]],), extra, False,
                                   names[node]))
                steps.append(_Step(cast(Layer, relu.layer), (extra,), slot[node], False,
                                   names[relu]))
                extra += 1
            else:
                steps.append(_Step(node.layer, tuple(slot[i] for i in node.inputs), slot[node],
                                   node.several, names[node]))
        last_use = {}
        for k, step in enumerate(steps):
            for i in step.inputs:
                last_use[i] = k
        frees = [[i for i in step.inputs if last_use[i] == k and i not in self._output_slots]
                 for k, step in enumerate(steps)]
        return _Plan(steps, frees, extra)

    @property
    def _steps(self) -> list[_Step]:
        return self._fast_plan.steps

    # --- running -------------------------------------------------------------------------

    def forward(self, x: Any, *, train: bool = False) -> Any:
        """Run every layer call in topological order; ``x`` is one array per input (a tuple
        or list for several). ``train=True`` keeps the caches that backward needs."""
        values = self._run(x, train)
        outs = tuple(values[i] for i in self._output_slots)
        return outs[0] if self._single_output else outs

    def _sync(self) -> None:
        """Bring the plan up to date with the model's layers (a Sequential's list may be
        edited); a graph's plan never changes."""

    def _run(self, x: Any, train: bool, keep: Sequence[int] = ()) -> list[Any]:
        """The values of the slots after running the plan (the plain one where ``keep``
        asks for nodes' values, which are then not freed)."""
        self._sync()
        if train:
            _allocator.tune_if_asked()  # ANYARRAY_NN_TUNE_MALLOC=1: keep the temporaries' pages
        xs = self._arrays(x, len(self.inputs), "x", "input")
        if keep and self._plain_plan is None:
            self._plain_plan = self._make_plan({}, {})
        plan = cast(_Plan, self._plain_plan if keep else self._fast_plan)  # made above
        values: list[Any] = [None] * plan.slots
        for i, array in zip(self._input_slots, xs):
            values[i] = array
        self._caches = None  # a failed forward must not leave old caches for backward
        caches = []
        for step, frees in zip(plan.steps, plan.frees):
            arg = tuple(values[i] for i in step.inputs) if step.several else values[step.inputs[0]]
            values[step.output], cache = step.layer.forward_pass(arg, train,
                                                                 step.relu is not None)
            caches.append(cache)
            for i in frees:  # nothing else reads it: let its memory go
                if i not in keep:
                    values[i] = None
        self._caches = caches if train and not keep else None
        return values

    def backward(self, dy: Any, *, input_grad: bool = False) -> Any:
        """Back-propagate dL/d(output) (a tuple for several outputs) through every layer
        call, filling each layer's ``grads`` (summed over a shared layer's calls).

        Gradients are overwritten, not accumulated over backward calls. The gradient of the
        model's inputs is skipped unless ``input_grad=True`` (then it is returned, a tuple
        for several inputs; otherwise None).
        """
        if self._caches is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs a preceding "
                               f"forward(x, train=True)")
        dys = self._arrays(dy, len(self.outputs), "dy", "output")
        pending: dict[int, Any] = {}
        for i, g in zip(self._output_slots, dys):
            pending[i] = g if i not in pending else pending[i] + g
        inputs = set(self._input_slots)
        grads: dict[int, dict[str, Any]] = {}
        for step, cache in zip(reversed(self._steps), reversed(self._caches)):
            g = pending.pop(step.output)
            wanted = input_grad or any(i not in inputs for i in step.inputs)
            dx, layer_grads = step.layer.backward_pass(g, cache, wanted)
            total = grads.setdefault(id(step.layer), {})
            for key, value in layer_grads.items():
                total[key] = value if key not in total else total[key] + value
            if not wanted:
                continue
            for i, d in zip(step.inputs, dx if step.several else (dx,)):
                if i in inputs and not input_grad:
                    continue
                pending[i] = d if i not in pending else pending[i] + d
        for layer in self.layers:
            layer.grads = grads.get(id(layer), {})
        if not input_grad:
            return None
        dxs = tuple(pending.get(i) for i in self._input_slots)
        return dxs[0] if self._single_input else dxs

    def _arrays(self, value: Any, count: int, what: str, per: str) -> tuple[Any, ...]:
        """``value`` as ``count`` arrays: itself for one, a tuple or list of ``count`` for
        several."""
        if count == 1 and not isinstance(value, (tuple, list)):
            return (value,)  # (a list of one array is taken too)
        if not isinstance(value, (tuple, list)) or len(value) != count:
            got = f"{len(value)} arrays" if isinstance(value, (tuple, list)) else "one array"
            raise ValueError(f"{type(self).__name__}: {what}: expected one array per {per} "
                             f"({count}), got {got}")
        return tuple(value)

    def __call__(self, x: Any, *, train: bool = False) -> Any:
        if any(isinstance(item, Node) for item in (x if isinstance(x, (tuple, list)) else [x])):
            raise TypeError(f"{type(self).__name__}: calling a model on graph nodes (as a "
                            f"layer inside another model) is not supported; call its layers")
        return self.forward(x, train=train)

    def predict(self, x: Any, batch_size: int = PREDICT_BATCH) -> Any:
        """Class indices of the largest output per row (evaluation mode), computed
        ``batch_size`` rows at a time (as Keras's ``predict``), so that a whole data set
        never has its activations in memory at once; the same indices as one forward pass
        (evaluation mode treats each row alone)."""
        size = as_int(batch_size)
        if size is None or size < 1:
            raise ValueError(f"{type(self).__name__}.predict: batch_size: expected an integer "
                             f">= 1, got {batch_size!r}")
        xs = self._arrays(x, len(self.inputs), "x", "input")
        xp = _backend.namespace(xs[0])
        if any(a.ndim == 0 for a in xs):  # no batch axis: the first layer says what it wants
            chunks = [list(xs)]
        else:
            rows = int(xs[0].shape[0])  # stops within range: the standard leaves others open
            chunks = [[a[start:min(start + size, rows), ...] for a in xs]
                      for start in range(0, max(rows, 1), size)]
        parts = []
        for chunk in chunks:
            out = self.forward(chunk[0] if self._single_input else tuple(chunk), train=False)
            parts.append(xp.argmax(out if self._single_output else out[0], axis=1))
        return parts[0] if len(parts) == 1 else xp.concat(parts)

    def execution_order(self) -> list[str]:
        """The names of the layer calls in the order forward runs them (backward runs them
        in reverse): topological, with a ReLU whose only consumer is a MaxPool2D after it.
        A ReLU fused into the layer before it follows that layer's name."""
        self._sync()
        return [name for step in self._steps for name in (step.name, step.relu) if name]

    def node_outputs(self, x: Any, names: Sequence[str]) -> dict[str, Any]:
        """The values of the nodes ``names`` (see :attr:`node_names`) for input ``x``, in
        evaluation mode: a network's feature maps anywhere in the graph."""
        self._sync()
        names = list(names)
        unknown = [n for n in names if n not in self._node_slots]
        if unknown:
            raise KeyError(f"no node named {unknown[0]!r}; nodes: "
                           f"{', '.join(self._node_slots)}")
        keep = [self._node_slots[n] for n in names]
        values = self._run(x, False, keep)
        return {n: values[self._node_slots[n]] for n in names}

    def with_layers(self, layers: Sequence[Layer]) -> "Model":
        """The same graph with ``layers`` in place of :attr:`layers` (position by position):
        how DataParallel gives each worker copies of the layers that share their parameters."""
        if len(layers) != len(self.layers):
            raise ValueError(f"{type(self).__name__}.with_layers: expected {len(self.layers)} "
                             f"layers, got {len(layers)}")
        swap = {id(old): new for old, new in zip(self.layers, layers)}
        made: dict[int, Node] = {}
        for node in self.nodes:
            made[id(node)] = Node(None if node.layer is None else swap[id(node.layer)],
                                  [made[id(i)] for i in node.inputs], node.shape, node.name,
                                  node.several)
        return Model([made[id(n)] for n in self.inputs], [made[id(n)] for n in self.outputs])

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

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        """``("layer.param", array)`` for every parameter, in layer order (PyTorch's
        ``named_parameters``; the arrays themselves, as :meth:`params`)."""
        return iter(self.params().items())

    def parameters(self) -> Iterator[Any]:
        """Every parameter array, in layer order (PyTorch's ``parameters``)."""
        return iter(self.params().values())

    def state_dict(self) -> dict[str, Any]:
        """The parameters and buffers (batch norm's running statistics), keyed
        ``"layer.name"`` (PyTorch's ``state_dict``: the arrays themselves, not copies; a
        checkpoint or :func:`anyarray_nn.save_weights` writes them)."""
        return {**self.params(), **self.buffers()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> "LoadReport":
        """Put the arrays of ``state`` (keyed as :meth:`state_dict`; any backend's arrays,
        NumPy arrays or nested lists of numbers) into the parameters and buffers, moved to
        each one's backend and cast to its dtype, as PyTorch's ``load_state_dict``. With
        ``strict`` (the default) a key missing from ``state`` or not in the model is an
        error; otherwise they are reported. A shape that differs, or a value that is not a
        finite number, is always an error. Everything is checked before anything changes.
        Returns the :class:`LoadReport` (``missing_keys``, ``unexpected_keys``)."""
        name = type(self).__name__
        if not isinstance(state, dict):
            raise TypeError(f"{name}.load_state_dict: expected a dict of arrays keyed "
                            f"'layer.name', got {type(state).__name__}")
        if not isinstance(strict, bool):
            raise ValueError(f"{name}.load_state_dict: expected strict to be True or False, "
                             f"got {strict!r}")
        own = self.state_dict()
        report = LoadReport(sorted(set(own) - set(state)),
                            sorted(str(k) for k in set(state) - set(own)))
        if strict and (report.missing_keys or report.unexpected_keys):
            raise KeyError(f"{name}.load_state_dict: {report} (strict=True; pass "
                           f"strict=False to load the keys that match)")
        values = {key: _loaded_array(name, key, state[key], own[key])
                  for key in own if key in state}
        self._put_arrays(values)
        return report

    def _put_arrays(self, values: dict[str, Any]) -> None:
        """Put arrays keyed "layer.name" into the layers' parameters and buffers; the
        gradients of the old values are dropped."""
        for layer in self.layers:
            for store in (layer.params, layer.buffers):
                for key in store:
                    full = f"{layer.name}.{key}"
                    if full in values:
                        store[key] = values[full]
            layer.grads = {}

    def to(self, backend: str | None = None, dtype: str | None = None) -> "Model":
        """Move every parameter to ``backend`` and/or cast to ``dtype`` (in place); returns self."""
        for layer in self.layers:
            layer.to(backend, dtype)
        self._caches = None
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
                           f"{', '.join(str(layer.name) for layer in self.layers)}")
        return self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inputs = ", ".join(f"{n.name!r}: {n.shape}" for n in self.inputs)
        return (f"Model(inputs {{{inputs}}}, {len(self.nodes) - len(self.inputs)} layer calls, "
                f"outputs {[self.node_names[n] for n in self.outputs]})")

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """The graph as a table: each node with its type, its inputs, its output shape (one
        sample) and its parameters (counted at a layer's first call; later calls say
        "shared"); returns the text. ``print_fn=None`` only returns it."""
        rows, seen = [], set()
        for node in self.nodes:
            name = self.node_names[node]
            sources = ", ".join(self.node_names[i] for i in node.inputs) or "-"
            shape = "x".join(map(str, node.shape)) if node.shape is not None else "?"
            if node.layer is None:
                rows.append((name, "Input", sources, shape, "-", 0, 0))
                continue
            if id(node.layer) in seen:
                rows.append((name, node.layer.type_name, sources, shape, "shared", 0, 0))
                continue
            seen.add(id(node.layer))
            weights, biases = _counts(node.layer)
            rows.append((name, node.layer.type_name, sources, shape, _shapes(node.layer),
                         weights, biases))
        header = ("node", "type", "inputs", "output", "parameter shapes", "weights", "biases",
                  "total")
        return _print_table(header, rows, print_fn)

    # --- architecture as data ------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The graph as JSON-ready data: its inputs (name, shape), its layers (type and
        config, each once, in order of first call), its calls (layer and input node names,
        in topological order) and its output node names."""
        return {
            "inputs": [{"name": n.name, "shape": list(n.shape or ())} for n in self.inputs],
            "layers": [{"type": layer.type_name, "config": layer.get_config()}
                       for layer in self.layers],
            "calls": [{"layer": node.layer.name,
                       "inputs": [self.node_names[i] for i in node.inputs]}
                      for node in self.nodes if node.layer is not None],
            "outputs": [self.node_names[n] for n in self.outputs],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], **kwargs: Any) -> "Model":
        """Rebuild from :meth:`get_config`, using only registered layer types; ``kwargs``
        (``backend``, ``dtype``, ``rng``) go to each layer whose constructor takes them. A
        call that names an unknown node, or calls that form a cycle, are clear errors."""
        return _graph_from_config(config, kwargs)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :meth:`Model.load_state_dict` found: the model's keys that the state lacks, and
    the state's keys that the model lacks (PyTorch's ``_IncompatibleKeys``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __str__(self) -> str:
        parts = [f"missing keys: {', '.join(self.missing_keys)}"] if self.missing_keys else []
        if self.unexpected_keys:
            parts.append(f"unexpected keys: {', '.join(self.unexpected_keys)}")
        return "; ".join(parts) or "every key matched"


def _loaded_array(name: str, key: str, value: Any, like: Any) -> Any:
    """``value`` as an array where ``like`` lives (backend, device, dtype), or a ValueError
    naming the key: a shape other than ``like``'s, values that are not finite numbers."""
    try:
        host = np.asarray(_backend.to_host(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}.load_state_dict: {key}: expected an array of numbers, got "
                         f"{type(value).__name__} ({exc})") from None
    if host.dtype.kind not in "biuf":
        raise ValueError(f"{name}.load_state_dict: {key}: expected an array of numbers, got "
                         f"dtype {host.dtype}")
    if tuple(host.shape) != tuple(like.shape):
        raise ValueError(f"{name}.load_state_dict: {key}: the model has shape "
                         f"{tuple(like.shape)}, the state {tuple(host.shape)}")
    if host.dtype.kind == "f" and not np.isfinite(host).all():
        raise ValueError(f"{name}.load_state_dict: {key}: holds NaN or infinite values")
    return _backend.asarray_like(host, like, copy=True)


class ModelWrapper:
    """The base of the wrappers that run a model another way (``DataParallel``,
    ``DistributedDataParallel``): they define ``forward`` and ``backward`` over the wrapped
    :attr:`model`; calling and ``predict`` run through their ``forward``, and everything else
    (``layers``, ``params()``, ``summary()``, ``to()``, ...) is the wrapped model's."""

    model: Model

    __call__ = Model.__call__
    predict = Model.predict

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


class Sequential(Model):
    """A stack of layers: the linear case of :class:`Model`, each layer called on the one
    before. Unnamed layers are named by type and position: "dense1", "relu2".

    ``params()`` and ``grads()`` return flat dicts keyed ``"<layer name>.<param>"``
    (``"fc.W"``), the names checkpoints store. The input's shape is not declared, so
    any input the layers accept runs.
    """

    def __init__(self, layers: list[Layer]) -> None:
        self._build(list(layers))

    def _build(self, layers: list[Layer]) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} must be an anyarray_nn Layer, got "
                                f"{type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears more than once; create "
                             "one layer per position (a graph Model can share a layer)")
        _assign_names(layers, "Sequential")
        node = first = Node(None, (), None, "input")  # any input shape
        for layer in layers:
            node = Node(layer, (node,), None)
        super().__init__(first, node)
        self.layers = layers  # the list itself: editing it edits the model
        self._planned = list(layers)

    def with_layers(self, layers: Sequence[Layer]) -> "Sequential":
        """A Sequential of ``layers`` (see :meth:`Model.with_layers`)."""
        return Sequential(list(layers))

    def _sync(self) -> None:
        """Plan again if ``layers`` was edited (a layer replaced, added or removed)."""
        if len(self.layers) != len(self._planned) or any(
                a is not b for a, b in zip(self.layers, self._planned)):
            self._build(self.layers)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {layer!r}" for layer in self.layers)
        return f"Sequential([\n{inner}\n])"

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """The parameter table: per layer its weights, biases and total; returns the text.

        "weights" counts every parameter except biases (``b``). Pass ``print_fn=None`` to only
        get the string.
        """
        rows = [(layer.name, layer.type_name, _shapes(layer), *_counts(layer))
                for layer in self.layers]
        return _print_table(("layer", "type", "parameter shapes", "weights", "biases", "total"),
                            rows, print_fn)

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
        return cls([_layer_from_config(entry, kwargs) for entry in config["layers"]])


def model_from_config(config: dict[str, Any], **kwargs: Any) -> Model:
    """A :class:`Sequential` or a graph :class:`Model` from its ``get_config()`` (a graph's
    has "calls"), with only registered layer types."""
    if not isinstance(config, dict):
        raise ValueError(f"model config: expected a JSON object, got {type(config).__name__}")
    if "calls" in config:
        return Model.from_config(config, **kwargs)
    return Sequential.from_config(config, **kwargs)


def _layer_from_config(entry: Any, kwargs: dict[str, Any]) -> Layer:
    layer_cls = layer_class(entry["type"])
    accepted = inspect.signature(layer_cls.__init__).parameters
    extra = {k: v for k, v in kwargs.items() if k in accepted}
    return layer_cls.from_config(entry["config"], **extra)


def _graph_from_config(config: dict[str, Any], kwargs: dict[str, Any]) -> Model:
    """A graph Model from ``config``; every name checked, the calls sorted so that a
    cycle is found and named rather than followed."""
    for key, kind in (("inputs", list), ("layers", list), ("calls", list), ("outputs", list)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"model config: expected {key!r} to be a list, got "
                             f"{type(config.get(key)).__name__}")
    layers: dict[str, Layer] = {}
    for entry in config["layers"]:
        layer = _layer_from_config(entry, kwargs)
        if layer.name is None or layer.name in layers:
            raise ValueError(f"model config: every layer needs a name of its own, got "
                             f"{layer.name!r} " + ("twice" if layer.name else ""))
        layers[layer.name] = layer
    values: dict[str, Node] = {}
    for entry in config["inputs"]:
        node = Input(entry["shape"], name=entry["name"])
        if node.name in values:
            raise ValueError(f"model config: input name {node.name!r} used twice")
        values[cast(str, node.name)] = node  # Input() names every input
    calls = {}  # node name -> (layer, input names), named as Model names them
    counts: dict[str, int] = {}
    for entry in config["calls"]:
        name = entry["layer"]
        if name not in layers:
            raise ValueError(f"model config: a call names layer {name!r}, which the config "
                             f"does not define")
        counts[name] = counts.get(name, 0) + 1
        node_name = name if counts[name] == 1 else f"{name}:{counts[name]}"
        if node_name in values or node_name in calls:
            raise ValueError(f"model config: node name {node_name!r} used twice")
        sources = entry["inputs"]
        if not isinstance(sources, list) or not sources:
            raise ValueError(f"model config: the call of {name!r} needs a list of input node "
                             f"names, got {sources!r}")
        calls[node_name] = (layers[name], [str(s) for s in sources])
    known = set(values) | set(calls)
    for node_name, (_, sources) in calls.items():
        for source in sources:
            if source not in known:
                raise ValueError(f"model config: node {node_name!r} reads {source!r}, which is "
                                 f"no input or call of the config")
    remaining = dict(calls)
    while remaining:  # Kahn: the calls whose inputs all exist, until none is left or stuck
        ready = [n for n, (_, sources) in remaining.items() if all(s in values for s in sources)]
        if not ready:
            raise ValueError(f"model config: the calls {sorted(remaining)} read each other in "
                             f"a cycle (or read a node of that cycle)")
        for node_name in ready:
            layer, sources = remaining.pop(node_name)
            nodes = [values[s] for s in sources]
            several = len(nodes) > 1 or layer.takes_several
            values[node_name] = (layer(nodes) if several else layer(nodes[0]))
    missing = [n for n in config["outputs"] if n not in values]
    if missing or not config["outputs"]:
        raise ValueError(f"model config: outputs {missing or '[]'} are not nodes of the config")
    inputs = [values[entry["name"]] for entry in config["inputs"]]
    outputs = [values[n] for n in config["outputs"]]
    return Model(inputs if len(inputs) != 1 else inputs[0],
                 outputs if len(outputs) != 1 else outputs[0])

def _node_list(value: Any, what: str) -> list[Node]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(item, Node) for item in items):
        got = ", ".join(type(item).__name__ for item in items) or "nothing"
        raise TypeError(f"Model: expected {what} to be a graph node (ann.Input(...) or a layer "
                        f"called on one) or a list of them, got {got}")
    return items


def _check_inputs(inputs: list[Node]) -> None:
    for node in inputs:
        if node.layer is not None:
            raise ValueError(f"Model: inputs must be ann.Input nodes, got the output of "
                             f"{node.describe()}")
    if len(set(map(id, inputs))) != len(inputs):
        raise ValueError("Model: the same input node is listed twice in inputs")
    counters = 0
    names = [node.name for node in inputs if node.name is not None]
    for node in inputs:  # unnamed inputs: "input", "input2", ...
        while node.name is None:
            counters += 1
            candidate = "input" if counters == 1 else f"input{counters}"
            if candidate not in names:
                node.name = candidate
                names.append(candidate)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"Model: input names must be unique, got {repeated} more than once")


def _topological(inputs: list[Node], outputs: list[Node]) -> list[Node]:
    """Every node the outputs are computed from, each after its inputs (depth-first from
    the outputs, in the order of their inputs). Refuses a graph that reads an input not in
    ``inputs``, and an input that no output reaches."""
    order: list[Node] = []
    placed: set[int] = set()
    allowed = {id(node) for node in inputs}
    for output in outputs:
        stack = [(output, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in placed:
                continue
            if expanded:
                placed.add(id(node))
                order.append(node)
                continue
            if node.layer is None and id(node) not in allowed:
                raise ValueError(f"Model: the outputs are computed from {node.describe()} "
                                 f"(shape {node.shape}), which is not among the model's "
                                 f"inputs; list it in inputs")
            stack.append((node, True))
            stack.extend((source, False) for source in reversed(node.inputs)
                         if id(source) not in placed)
    unused = [node.describe() for node in inputs if id(node) not in placed]
    if unused:
        raise ValueError(f"Model: {', '.join(unused)} reaches no output; remove it from "
                         f"inputs or compute an output from it")
    return order


def _unique_layers(nodes: list[Node]) -> list[Layer]:
    """The layers of ``nodes``, each once, in order of first call."""
    layers, seen = [], set()
    for node in nodes:
        if node.layer is not None and id(node.layer) not in seen:
            seen.add(id(node.layer))
            layers.append(node.layer)
    return layers


def _node_names(nodes: list[Node]) -> dict[Node, str]:
    """Input nodes by their names, the k-th call of a layer "<layer>" (k = 1) or
    "<layer>:<k>"; refuses a name that two nodes would share."""
    names: dict[Node, str] = {}
    calls: dict[int, int] = {}
    for node in nodes:
        if node.layer is None:
            names[node] = cast(str, node.name)  # inputs are named
            continue
        calls[id(node.layer)] = calls.get(id(node.layer), 0) + 1
        k = calls[id(node.layer)]
        names[node] = str(node.layer.name) if k == 1 else f"{node.layer.name}:{k}"
    taken = list(names.values())
    repeated = sorted({n for n in taken if taken.count(n) > 1})
    if repeated:
        raise ValueError(f"Model: names must be unique across inputs and layers, got "
                         f"{repeated} more than once")
    return names


def _assign_names(layers: list[Layer], owner: str, taken: Sequence[str] = ()) -> None:
    """Give unnamed layers "<type><k>" names ("relu1", "maxpool2"); reject two layers of one
    name."""
    named = [layer.name for layer in layers if layer.name is not None]
    duplicates = sorted({n for n in named if named.count(n) > 1})
    if duplicates:
        raise ValueError(f"{owner}: layer names must be unique, got {duplicates} more "
                         f"than once")
    used = set(named) | set(taken)
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


def _counts(layer: Layer) -> tuple[int, int]:
    """(weights, biases) of a layer: "weights" counts every parameter except ``b``."""
    sizes = {k: math.prod(v.shape) for k, v in layer.params.items()}
    biases = sizes.get("b", 0)
    return sum(sizes.values()) - biases, biases


def _shapes(layer: Layer) -> str:
    return " ".join(f"{k}{tuple(v.shape)}" for k, v in layer.params.items()) or "-"


def _print_table(header: tuple, rows: list[tuple], print_fn: Any) -> str:
    """The table of ``rows`` whose last two entries are weight and bias counts, with a total
    column and row; printed with ``print_fn`` unless None; returns the text."""
    body = [(*r[:-2], f"{r[-2]:,}", f"{r[-1]:,}", f"{r[-2] + r[-1]:,}") for r in rows]
    totals = [sum(r[-2] for r in rows), sum(r[-1] for r in rows)]
    foot = ("total", *[""] * (len(header) - 4), f"{totals[0]:,}", f"{totals[1]:,}",
            f"{sum(totals):,}")
    text = _table(header, body, foot)
    if print_fn is not None:
        print_fn(text)
    return text


def _table(header: tuple, body: list[tuple], foot: tuple) -> str:
    rows = [header, *body, foot]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    right = set(range(len(header) - 3, len(header)))

    def fmt(row: tuple) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, body), rule, fmt(foot)])
