"""Benchmark cases: what is timed, how many FLOPs it does, and how to build each side.

A case is one piece of the hot path at one shape: a convolution's forward, dX or dW; a dense
layer's forward or backward; a max-pool's forward or backward; or a whole training step of
one of the course networks. Every case can build

* ours: the anyarray_nn kernel, exactly as the layer runs it, on any backend;
* the reference: the same computation in PyTorch itself (``torch.nn.functional`` and the
  native backward ops autograd would call), on the CPU or a CUDA device.

Inputs are drawn on the host from a fixed seed, so every side computes on the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import numpy as np

from .. import backend as _backend
from .. import functional as F
from .._threads import cpu_count
from ..functional.conv import (
    BLOCK_VALUES,
    _conv2d_forward_with_patches,
    _PER_GROUP_CHANNELS,
    _grouped_dx,
    _input_gradient,
    _lowering,
)
from ..losses import SoftmaxCrossEntropy
from ..networks import NETWORKS
from ..optim import SGD
from ..model import Input, Model, Sequential
from ..parallel import DataParallel
from .. import distributed
from . import ranks

INPUT_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar10_large": (3, 32, 32),
                "cifar10_resnet": (3, 32, 32), "cifar10_fast": (3, 32, 32)}
# The networks whose layers are timed one by one (conv, dense and pool suites); the others
# appear in the train suite only.
LAYER_CASE_NETWORKS = ("mnist", "cifar10", "cifar10_large")
SUITES = ("conv", "dense", "pool", "train")
PIECES = {"conv": ("forward", "dX", "dW"), "dense": ("forward", "backward"),
          "pool": ("forward", "backward")}  # what is timed of each layer
NUM_CLASSES = 10  # every course network ends in 10 logits
PARALLEL_STEPS = ("step-threads",)  # the step through DataParallel's threads
MPI_STEPS = {"step-mpi2": 2}  # piece -> ranks of DistributedDataParallel (bench.ranks)
HOST_ITEMSIZE = 8  # inputs are drawn on the host in float64, then cast and moved
RANK_PROCESS_BYTES = 200 * 10**6  # an MPI rank's interpreter (a helper measured 174 MB RSS)


@dataclasses.dataclass(frozen=True)
class Memory:
    """Estimated bytes one target needs for one case at one batch size (``Case.memory``)."""

    kept: int      # held from building to the end of timing: inputs, weights, saved patches
    working: int   # allocated and freed by one run: padded copies, im2col matrices, outputs
    staging: int   # host memory: the float64 draws alive at once while building


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed piece. ``spec`` holds the layer's sizes; ``piece`` what is timed."""

    suite: str
    layer: str           # e.g. "mnist.conv2"
    piece: str           # forward, dX, dW, backward, step, step-threads, step-mpi2
    spec: tuple          # sizes, see the builders below

    @property
    def name(self) -> str:
        """``suite/layer/piece``, e.g. ``conv/mnist.conv2/dW``: what ``-c GLOB`` matches."""
        return f"{self.suite}/{self.layer}/{self.piece}"

    def shape(self, batch: int) -> str:
        """A short description of the sizes at this batch size."""
        if self.suite == "conv":
            c, o, k, h, w, _, groups = self.spec
            grouped = f", groups {groups}" if groups > 1 else ""
            return f"{batch}x{c}x{h}x{w} * {o}x{c // groups}x{k}x{k}{grouped}"
        if self.suite == "dense":
            fin, fout = self.spec
            return f"{batch}x{fin} * {fout}x{fin}"
        if self.suite == "pool":
            c, h, w, k = self.spec
            return f"{batch}x{c}x{h}x{w} / {k}x{k}"
        return f"{batch}x" + "x".join(map(str, INPUT_SHAPES[self.spec[0]]))

    def flops(self, batch: int) -> int | None:
        """Floating-point operations of one run (None for pooling, which does no arithmetic)."""
        if self.suite == "conv":
            c, o, k, h, w, _, groups = self.spec
            return 2 * batch * o * (c // groups) * k * k * h * w  # "same": Ho, Wo = H, W
        if self.suite == "dense":
            fin, fout = self.spec
            return (2 if self.piece == "forward" else 4) * batch * fin * fout
        if self.suite == "train":
            return training_step_flops(self.spec[0], batch)
        return None

    def memory(self, batch: int, dtype: str, target: str) -> Memory:
        """An upper estimate of the memory ``target`` (as for :meth:`build`) needs to build
        and run this case once, from the shapes of the arrays it makes (see
        :func:`_conv_elements` and its neighbours). PyTorch's reference computes the same
        arrays (measured: it needs no more than our kernels), so it gets the same estimate."""
        piece = self.piece
        if target.startswith("pytorch") and (piece in PARALLEL_STEPS or piece in MPI_STEPS):
            piece = "step"  # the reference runs the plain step
        helpers = MPI_STEPS.get(piece, 0) * RANK_PROCESS_BYTES
        if piece in MPI_STEPS:  # the ranks hold the plain step's arrays between them
            piece = "step"
        gpu = _backend.on_gpu(target)
        kept, working, drawn = _ELEMENTS[self.suite](self.spec, piece, batch, gpu)
        itemsize = np.dtype(dtype).itemsize
        return Memory(kept * itemsize + helpers, working * itemsize, drawn * HOST_ITEMSIZE)

    def runs_on(self, target: str) -> bool:
        """Whether this case runs on ``target`` (a backend name, or "pytorch"/"pytorch:cuda"):
        the DataParallel and MPI steps split a batch over CPU cores, so they are NumPy's
        alone."""
        return (self.piece not in PARALLEL_STEPS and self.piece not in MPI_STEPS
                or target == "numpy" or target.startswith("pytorch"))

    def build(self, target: str, batch: int, dtype: str) -> Callable[[], Any] | None:
        """A no-argument callable running this case once on ``target``.

        ``target`` is a backend name for our kernels, or ``"pytorch"`` / ``"pytorch:cuda"``
        for the reference. None: this case does not run on ``target``.
        """
        builders = REFERENCE if target.startswith("pytorch") else OURS
        return builders[self.suite](self, target, batch, dtype)


@functools.lru_cache(maxsize=None)  # building a network to read its shapes is not free
def _layer_sizes(network: str) -> tuple[tuple[str, str, tuple], ...]:
    """(layer call, suite, spec) of every layer call of a network, in the order it runs:
    convolutions, dense layers and pools with their sizes, everything else (batch norm,
    activations, Add) as ``("other", (elements of one sample's output,))``."""
    model = NETWORKS[network](rng=0)
    if isinstance(model, Sequential):  # shapes through a graph on a declared input
        node = first = Input(INPUT_SHAPES[network])
        for layer in model.layers:
            node = layer(node)
        model = Model(first, node)
    out = []
    for node in model.nodes:
        layer = node.layer
        if layer is None:
            continue
        c, *hw = node.inputs[0].shape
        if layer.type_name == "Conv2D":
            k = layer.kernel_size[0]
            out.append((model.node_names[node], "conv", (c, layer.out_channels, k, *hw,
                                                         layer.padding[0], layer.groups)))
        elif layer.type_name == "MaxPool2D":
            out.append((model.node_names[node], "pool", (c, *hw, layer.kernel_size[0])))
        elif layer.type_name == "Dense":
            out.append((model.node_names[node], "dense", (layer.in_features, layer.out_features)))
        else:
            out.append((model.node_names[node], "other", (math.prod(node.shape),)))
    return tuple(out)


def all_cases() -> list[Case]:
    """Every case of every suite, each distinct layer shape once (first network that has it)."""
    cases, seen = [], set()
    for network in LAYER_CASE_NETWORKS:
        for name, suite, spec in _layer_sizes(network):
            if suite == "other" or (suite, spec) in seen:
                continue
            seen.add((suite, spec))
            cases += [Case(suite, f"{network}.{name}", piece, spec) for piece in PIECES[suite]]
    # The same step through DataParallel, one batch slice per core (NumPy): the other slices
    # on threads ("step-threads").
    cases += [Case("train", network, piece, (network,))
              for network in NETWORKS for piece in ("step", *PARALLEL_STEPS)
              if piece == "step" or _batch_separable(network)]
    # Data parallel over MPI ranks of one core each (bench.ranks), where MPI is installed.
    if distributed.mpiexec() is not None:
        cases += [Case("train", network, piece, (network,))
                  for network in NETWORKS for piece in MPI_STEPS]
    cases += [Case("conv", layer, piece, spec) for layer, spec in GROUPED_CONVOLUTIONS.items()
              for piece in PIECES["conv"]]
    return cases


# Grouped convolutions of the modern small networks (MobileNet's depthwise 3x3, ResNeXt's
# grouped 3x3), at CIFAR-10 size: (C, O, k, H, W, padding, groups).
GROUPED_CONVOLUTIONS = {"depthwise3x3": (64, 64, 3, 32, 32, 1, 64),
                        "grouped3x3-g4": (64, 64, 3, 32, 32, 1, 4)}


@functools.lru_cache(maxsize=None)
def _batch_separable(network: str) -> bool:
    """Whether DataParallel can split the network's batches (no batch norm)."""
    return all(layer.batch_separable for layer in NETWORKS[network](rng=0).layers)


def training_step_flops(network: str, batch: int) -> int:
    """FLOPs of forward + backward of the convolutions and dense layers (dX skipped for the
    first layer, as Sequential.backward does); pooling, activations and the update are not
    counted."""
    total = 0
    for i, (_, suite, spec) in enumerate(_layer_sizes(network)):
        if suite in ("pool", "other"):
            continue
        case = Case(suite, "", "forward", spec)
        forward = case.flops(batch) or 0  # convolutions and dense layers: never None
        total += forward * (2 if i == 0 else 3)
    return total


# --- memory ---------------------------------------------------------------------------------
# Element counts (kept, working, drawn) of the arrays one target makes for a case, for
# Case.memory: kept from building to the end of timing, allocated and freed by one run (or by
# the forward pass that building runs), and the float64 host draws alive at once. Each count
# is the largest over the paths a kernel may take (see _lowered).

def _lowered(channels: int, out_channels: int, spec: tuple, batch: int, gpu: bool
             ) -> tuple[int, int]:
    """Elements of the largest matrix a convolution with ``spec``'s window lowers
    ``channels`` planes to, and of its product for ``out_channels`` outputs: the im2col
    matrix on conv.py's wide grid (H x (W + 2*pad) positions; kernel rows only where
    conv.py's ``_lowering`` unrolls only those, with a product for each kernel column),
    numba's Winograd tiles for 3x3 kernels (16 values per 2x2 outputs) and on a GPU the full
    im2col matrix on the output grid (CuPy's kernel; a bound for cuDNN's workspace too)."""
    _, _, k, h, w, pad, _ = spec
    wide = batch * h * (w + 2 * pad)
    if _lowering(channels, k, (1, 1)) == "rows":
        patches, products = channels * k * wide, k * out_channels * wide
    else:
        patches, products = channels * k * k * wide, out_channels * wide
    if k == 3:  # Winograd's planes: F(4x4, 3x3) from 4x4 outputs on, F(2x2, 3x3) below
        block, planes = (4, 36) if min(h, w) >= 4 else (2, 16)
        tiles = planes * batch * -(-h // block) * -(-w // block)
        patches, products = max(patches, channels * tiles), max(products, out_channels * tiles)
    if gpu:
        patches = max(patches, channels * k * k * batch * h * w)
    return patches, products


def _conv_elements(spec: tuple, piece: str, batch: int, gpu: bool) -> tuple[int, int, int]:
    c, o, k, h, w, pad, groups = spec  # "same" padding: the output is H x W too
    x, dy, weights = batch * c * h * w, batch * o * h * w, o * (c // groups) * k * k + o
    wide = batch * h * (w + 2 * pad)                    # outputs on conv.py's wide grid
    padded = batch * (h + 2 * pad + 1) * (w + 2 * pad)  # one zero-padded plane per image
    if groups > 1 and c // groups >= _PER_GROUP_CHANNELS:  # group by group, ungrouped
        one = (c // groups, o // groups, k, h, w, pad, 1)
        _, working, _ = _conv_elements(one, piece, batch, gpu)
        x_patches, _ = _lowered(c // groups, o // groups, one, batch, gpu)
        # every group's patches kept; one group's work at a time, beside the joined results
        return x + dy + weights + groups * x_patches, working + max(x, dy), max(x, dy)
    if groups > 1:  # conv.py's grouped kernels: outputs on the padded grid, made by blocks
        # forward: the padded copy, the outputs (the bias added in place), one block's
        # products or im2col matrix and its product
        forward = c * padded + o * padded + 2 * BLOCK_VALUES
        working = {"forward": forward,
                   "dX": o * padded + 2 * c * padded,  # dY padded, dX on its grid, blocks
                   "dW": max(forward, o * padded + weights)}[piece]
        return x + dy + weights + c * padded, working, max(x, dy)
    x_patches, y_products = _lowered(c, o, spec, batch, gpu)
    forward = c * padded + x_patches + y_products + dy  # + the bias added to the output
    working = forward  # building runs the forward pass for its patches
    if piece == "dX":  # the transposed convolution lowers dY's padded planes the same way
        dy_patches, x_products = _lowered(o, c, spec, batch, gpu)
        working = max(forward, o * padded + dy_patches + x_products + x)
    elif piece == "dW":  # dY on the wide grid and shifted like the products; patches afresh
        working = max(forward, c * padded + x_patches + o * wide + y_products + k * weights)
    return x + dy + weights + x_patches, working, max(x, dy)


def _dense_elements(spec: tuple, piece: str, batch: int, gpu: bool) -> tuple[int, int, int]:
    fin, fout = spec
    kept = batch * fin + fout * fin + fout + batch * fout  # x, W, b, dY
    working = 2 * batch * fout if piece == "forward" else batch * fin + fout * fin + fout
    return kept, working, max(batch * fin, fout * fin)


def _pool_elements(spec: tuple, piece: str, batch: int, gpu: bool) -> tuple[int, int, int]:
    c, h, w, k = spec
    x, y = batch * c * h * w, batch * c * (h // k) * (w // k)
    drawn = 2 * x  # the draw and its ReLU
    if piece == "forward":  # the running maximum and one slice's copy
        return x, 2 * y, drawn
    return x + 2 * y, x + 5 * y, drawn  # kept: x, y, dY; working: dX and each slice's masks


def _train_elements(spec: tuple, piece: str, batch: int, gpu: bool) -> tuple[int, int, int]:
    """A whole step: what the forward pass saves for the backward one (each layer's output,
    ReLU's after each convolution and dense layer, a convolution's patches) and what each
    parameter needs, while the layer that needs the most runs its forward or backward pass
    (dX or dW, with dY coming in). The DataParallel steps split the same arrays over threads
    or processes (whose interpreters Case.memory adds)."""
    network = spec[0]
    drawn = batch * math.prod(INPUT_SHAPES[network])
    kept, working = drawn + 3 * batch * NUM_CLASSES, 0  # the input; logits, softmax, gradient
    first = True  # Sequential.backward computes no dX for the first layer
    # weights, gradients, momentum and a temporary of the update; DataParallel's workers
    # each write their own gradients
    per_parameter = 4 + (cpu_count() if piece in PARALLEL_STEPS else 0)
    for _, suite, layer in _layer_sizes(network):
        if suite == "conv":
            c, o, k, h, w, _, groups = layer
            out, params = batch * o * h * w, o * (c // groups) * k * k + o
            saved = 2 * out + _lowered(c, o, layer, batch, gpu)[0]
        elif suite == "dense":
            fin, fout = layer
            out, params = batch * fout, fin * fout + fout
            saved = 2 * out
        elif suite == "pool":
            c, h, w, k = layer
            out, params = batch * c * (h // k) * (w // k), 0
            saved = out
        else:  # batch norm, activations, Add: their output and what their caches hold
            out = batch * layer[0]
            kept += 3 * out + per_parameter * 2 * layer[0]  # at most 2 parameters per value
            working = max(working, 3 * out)
            continue
        forward, *backward = [_ELEMENTS[suite](layer, part, batch, gpu)[1]
                              for part in PIECES[suite] if not (first and part == "dX")]
        kept += saved + per_parameter * params
        working = max(working, forward, max(backward) + out)
        first = False
    return kept, working, drawn


_ELEMENTS = {"conv": _conv_elements, "dense": _dense_elements, "pool": _pool_elements,
             "train": _train_elements}


# --- ours ---------------------------------------------------------------------------------

def _host(shape: tuple, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _ours_conv(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    c, o, k, h, w, pad, groups = case.spec
    x, wt, b = (_backend.asarray(_host(s, i), backend=target, dtype=dtype)
                for i, s in enumerate([(batch, c, h, w), (o, c // groups, k, k), (o,)]))
    dy = _backend.asarray(_host((batch, o, h, w), 3), backend=target, dtype=dtype)
    _, patches = _conv2d_forward_with_patches(x, wt, b, 1, pad, 1, groups)
    xp = _backend.namespace(x)

    def dx() -> Any:  # dX alone, by the path training takes (Winograd: with dY's transform)
        if groups > 1:
            return _grouped_dx(xp, dy, wt, (h, w), (pad,) * 4, (1, 1), (1, 1), groups)
        return _input_gradient(xp, dy, wt, (h, w), (pad,) * 4, (1, 1), (1, 1))
    return {
        "forward": lambda: _conv2d_forward_with_patches(x, wt, b, 1, pad, 1, groups),
        "dX": dx,
        "dW": lambda: F.conv2d_backward(x, wt, dy, 1, pad, 1, groups, patches=patches,
                                        input_grad=False),
    }[case.piece]


def _ours_dense(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    fin, fout = case.spec
    x, wt, b, dy = (_backend.asarray(_host(s, i), backend=target, dtype=dtype)
                    for i, s in enumerate([(batch, fin), (fout, fin), (fout,), (batch, fout)]))
    if case.piece == "forward":
        return lambda: F.dense_forward(x, wt, b)
    return lambda: F.dense_backward(x, wt, dy)


def _ours_pool(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    c, h, w, k = case.spec
    x = _backend.asarray(np.maximum(_host((batch, c, h, w), 0), 0.0), backend=target,
                         dtype=dtype)  # ReLU outputs, with the ties they bring
    if case.piece == "forward":
        return lambda: F.maxpool2d_forward(x, k)
    y = F.maxpool2d_forward(x, k)
    dy = _backend.asarray(_host(tuple(y.shape), 1), backend=target, dtype=dtype)
    return lambda: F.maxpool2d_backward(x, dy, k, y=y)


def _ours_train(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any] | None:
    network = case.spec[0]
    split = case.piece in PARALLEL_STEPS
    if not case.runs_on(target):  # torch has its own thread pool; a GPU needs none
        return None
    if case.piece in MPI_STEPS:  # every rank needs an example of the batch
        count = MPI_STEPS[case.piece]
        return ranks.MpiSteps(network, batch, dtype, count) if batch >= count else None
    wrap = (lambda model: DataParallel(model, min_batch=1)) if split else None
    # every batch size split, to show where it pays (DataParallel's min_batch is 32)
    return training_step(network, target, batch, dtype, wrap)


def training_step(network: str, target: str, batch: int, dtype: str,
                  wrap: Callable[[Any], Any] | None = None,
                  part: slice = slice(None)) -> Callable[[], None]:
    """One training step of ``network`` on the benchmark's batch of ``batch`` images (its
    ``part``, for one rank of several), the model wrapped by ``wrap`` if given: softmax
    cross-entropy, backward, SGD with momentum and weight decay."""
    model = NETWORKS[network](rng=0, backend=target, dtype=dtype)
    model = wrap(model) if wrap is not None else model
    x = _backend.asarray(_host((batch, *INPUT_SHAPES[network]), 0)[part], backend=target,
                         dtype=dtype)
    labels = _backend.asarray((np.arange(batch) % NUM_CLASSES)[part], backend=target)
    loss_fn = SoftmaxCrossEntropy()
    opt = SGD(model, lr=1e-3, momentum=0.9, weight_decay=1e-3, form="classic")

    def step() -> None:
        loss_fn.forward(model.forward(x, train=True), labels)
        model.backward(loss_fn.backward())
        opt.step()
    return step


OURS = {"conv": _ours_conv, "dense": _ours_dense, "pool": _ours_pool, "train": _ours_train}


# --- the PyTorch reference ------------------------------------------------------------------

def _torch_inputs(torch: Any, device: str, dtype: str, shapes: list[tuple]) -> list[Any]:
    return [torch.tensor(_host(s, i), dtype=getattr(torch, dtype), device=device)
            for i, s in enumerate(shapes)]


def _device(target: str) -> str:
    return "cuda" if target.endswith("cuda") else "cpu"


def _ref_conv(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    import torch
    c, o, k, h, w, pad, groups = case.spec
    x, wt, b = _torch_inputs(torch, _device(target), dtype,
                             [(batch, c, h, w), (o, c // groups, k, k), (o,)])
    dy = torch.tensor(_host((batch, o, h, w), 3), dtype=getattr(torch, dtype), device=x.device)
    backward = torch.ops.aten.convolution_backward
    args = ([o], [1, 1], [pad, pad], [1, 1], False, [0, 0], groups)
    return {
        "forward": lambda: torch.nn.functional.conv2d(x, wt, b, padding=pad, groups=groups),
        "dX": lambda: backward(dy, x, wt, *args, [True, False, False]),
        "dW": lambda: backward(dy, x, wt, *args, [False, True, True]),
    }[case.piece]


def _ref_dense(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    import torch
    fin, fout = case.spec
    x, wt, b, dy = _torch_inputs(torch, _device(target), dtype,
                                 [(batch, fin), (fout, fin), (fout,), (batch, fout)])
    if case.piece == "forward":
        return lambda: torch.nn.functional.linear(x, wt, b)
    return lambda: (dy @ wt, dy.t() @ x, dy.sum(0))  # what autograd runs for linear


def _ref_pool(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    import torch
    c, h, w, k = case.spec
    x = torch.tensor(np.maximum(_host((batch, c, h, w), 0), 0.0), dtype=getattr(torch, dtype),
                     device=_device(target))
    if case.piece == "forward":
        return lambda: torch.nn.functional.max_pool2d(x, k)
    y, indices = torch.nn.functional.max_pool2d(x, k, return_indices=True)
    dy = torch.tensor(_host(tuple(y.shape), 1), dtype=x.dtype, device=x.device)
    backward = torch.ops.aten.max_pool2d_with_indices_backward
    return lambda: backward(dy, x, [k, k], [k, k], [0, 0], [1, 1], False, indices)


def _ref_train(case: Case, target: str, batch: int, dtype: str) -> Callable[[], Any]:
    import torch
    network = case.spec[0]
    model = torch_network(network, torch).to(device=_device(target), dtype=getattr(torch, dtype))
    x = torch.tensor(_host((batch, *INPUT_SHAPES[network]), 0), dtype=getattr(torch, dtype),
                     device=_device(target))
    labels = torch.tensor(np.arange(batch) % NUM_CLASSES, device=x.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


def torch_network(network: str, torch: Any) -> Any:
    """The network ``network`` as a ``torch.nn.Module`` with the same initial weights as ours."""
    return torch_twin(NETWORKS[network](rng=0, dtype="float64"), torch)


def torch_twin(model: Any, torch: Any) -> Any:
    """A ``torch.nn.Module`` that computes ``model`` (a Sequential or a graph Model with one
    input and one output) call by call, with copies of its weights and buffers: the
    benchmark's PyTorch twin of a network, the same arithmetic in PyTorch's kernels."""
    modules = torch.nn.ModuleDict({layer.name: _torch_module(layer, torch)
                                   for layer in model.layers})
    nodes, output = list(model.nodes), model.outputs[0]

    class Twin(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = modules

        def forward(self, x: Any) -> Any:
            values: dict[int, Any] = {}
            for node in nodes:
                if node.layer is None:
                    values[id(node)] = x
                    continue
                args = [values[id(source)] for source in node.inputs]
                kind = node.layer.type_name
                if kind == "Add":
                    values[id(node)] = torch.stack(args).sum(dim=0) if len(args) > 2 \
                        else args[0] + args[1]
                elif kind == "Concatenate":
                    values[id(node)] = torch.cat(args, dim=node.layer.axis)
                else:
                    values[id(node)] = self.layers[node.layer.name](args[0])
            return values[id(output)]
    return Twin()


def _torch_module(layer: Any, torch: Any) -> Any:
    """The ``torch.nn`` module computing ``layer`` in float64, its weights and buffers
    copied (``.to(dtype)`` casts the twin)."""
    nn, kind, f64 = torch.nn, layer.type_name, torch.float64
    if kind == "Conv2D":
        module = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                           stride=layer.stride, padding=layer.padding[0::2],
                           dilation=layer.dilation, groups=layer.groups, bias=layer.bias,
                           dtype=f64)
    elif kind == "Dense":
        module = nn.Linear(layer.in_features, layer.out_features, bias="b" in layer.params,
                           dtype=f64)
    elif kind == "BatchNorm2D":
        module = nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                                dtype=f64)
    elif kind == "MaxPool2D":
        module = nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
    elif kind == "GlobalAvgPool2D":
        module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    elif kind == "GELU":
        module = nn.GELU(approximate=layer.approximate)
    elif kind == "Scale":
        module = _TorchScale(torch, layer.factor)
    else:
        module = {"ReLU": nn.ReLU, "Flatten": nn.Flatten, "Identity": nn.Identity,
                  "Add": nn.Identity, "Concatenate": nn.Identity}[kind]()
    names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
             "running_mean": "running_mean", "running_var": "running_var"}
    with torch.no_grad():
        for key, value in {**layer.params, **layer.buffers}.items():
            getattr(module, names[key]).copy_(torch.from_numpy(
                np.asarray(_backend.to_host(value), dtype=np.float64)))
    return module


def _TorchScale(torch: Any, factor: float) -> Any:
    """``factor * x`` as a torch module (torch.nn has none)."""
    class Scale(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return factor * x
    return Scale()


REFERENCE = {"conv": _ref_conv, "dense": _ref_dense, "pool": _ref_pool, "train": _ref_train}


def select(cases: list[Case], suites: tuple[str, ...] = (), patterns: tuple[str, ...] = ()
           ) -> list[Case]:
    """The cases in ``suites`` (all if empty) whose names match one of the glob ``patterns``."""
    import fnmatch
    chosen = [c for c in cases if not suites or c.suite in suites]
    if patterns:
        chosen = [c for c in chosen if any(fnmatch.fnmatch(c.name, p) for p in patterns)]
    return chosen

