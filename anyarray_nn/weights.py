"""Weights in safetensors files: the format PyTorch, Hugging Face and most tools read, so that
trained weights travel to and from other libraries. PyTorch is never needed: the
``safetensors`` library reads and writes the files from NumPy arrays.

* :func:`save_weights` writes a model's parameters and buffers (its ``state_dict``), keyed
  ``"layer.name"``, with the layers' names and types in the file's metadata.
* :func:`read_weights` reads a file back as NumPy arrays: one of ours as it is, or a PyTorch
  ``state_dict`` saved with ``safetensors.torch.save_file`` translated to this library's
  names (``weight``/``bias`` of a convolution or linear layer -> ``W``/``b``, of a batch norm
  -> ``gamma``/``beta``; ``running_mean``/``running_var`` as they are;
  ``num_batches_tracked``, which no layer here keeps, left out).
* ``load_checkpoint``, ``warm_start`` and :func:`load_weights` take such files: matched by
  name, or with ``warm_start(..., by_position=True)`` layer by layer in order and by shape.

A file is read whole by the ``safetensors`` library, which checks its header (sizes,
offsets, dtypes) before it returns anything; what it refuses becomes a
:class:`~anyarray_nn.checkpoint.CheckpointError` naming the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any

import numpy as np

from . import _atomic
from . import backend as _backend
from .checkpoint import CheckpointError

SUFFIX = ".safetensors"
FORMAT = "anyarray_nn"  # the metadata's "format" in files this library writes
_TEMPORARY = ".safetensors-tmp"  # temporaries of an interrupted save (see _atomic)
_TORCH_NAMES = {"weight": ("W", "gamma"), "bias": ("b", "beta")}  # (conv/linear, batch norm)
_DROPPED = ("num_batches_tracked",)


def save_weights(model: Any, path: str | os.PathLike, *, names: str = "anyarray_nn"
                 ) -> pathlib.Path:
    """Write ``model``'s parameters and buffers to the safetensors file ``path`` (whole or
    not at all, as checkpoints); returns the path. The metadata holds the layers' names and
    types (``"layers"``, JSON) and the ``"format"``.

    ``names="pytorch"`` writes PyTorch's names instead (``W``/``b`` -> ``weight``/``bias``,
    a batch norm's ``gamma``/``beta`` -> ``weight``/``bias``, and its ``num_batches_tracked``
    as 0, which PyTorch's strict loading expects and no layer here counts), so that
    ``torch_model.load_state_dict(safetensors.torch.load_file(path))`` takes the file as it
    is into a PyTorch network whose modules have this model's layer names."""
    from safetensors.numpy import save
    target = pathlib.Path(path)
    if target.suffix != SUFFIX:
        raise ValueError(f"save_weights: {str(path)!r}: expected a file name ending in "
                         f"{SUFFIX}")
    if names not in ("anyarray_nn", "pytorch"):
        raise ValueError(f"save_weights: expected names='anyarray_nn' or 'pytorch', got "
                         f"{names!r}")
    arrays = {key: np.ascontiguousarray(_backend.to_host(value))
              for key, value in model.state_dict().items()}
    if names == "pytorch":
        arrays = _to_pytorch(arrays, model)
    layers = [[layer.name, layer.type_name] for layer in model.layers]
    data = save(arrays, metadata={"format": FORMAT if names == "anyarray_nn" else
                                  f"{FORMAT}:pytorch-names", "layers": json.dumps(layers)})
    # magic b"": a safetensors file begins with its header's length, so no fixed bytes mark
    # it; the temporaries' own suffix is what marks them
    _atomic.write_atomically(target, [data], suffix=_TEMPORARY, magic=b"")
    return target


def _to_pytorch(arrays: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
    theirs = {ours: torch for torch, pair in _TORCH_NAMES.items() for ours in pair}
    out = {}
    for key, value in arrays.items():
        layer, _, name = key.rpartition(".")
        out[f"{layer}.{theirs.get(name, name)}"] = value
    for layer in model.layers:
        if "running_mean" in layer.buffers:
            out[f"{layer.name}.num_batches_tracked"] = np.zeros((), dtype=np.int64)
    return out


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix)."""
    return pathlib.Path(path).suffix == SUFFIX


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray],
                                                    list[tuple[str, str]], str]:
    """The arrays of the safetensors file ``path``, keyed ``"layer.name"``; the layers as
    ``(name, type)`` in order; and where the file came from, ``"anyarray_nn"`` or
    ``"pytorch"`` (any other file, translated as a PyTorch ``state_dict``; its layer types
    are guessed from the arrays: ``Conv2D`` for 4-D weights, ``Dense`` for 2-D ones,
    ``BatchNorm`` for layers with running statistics or 1-D weights)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load
    try:
        data = pathlib.Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such weights file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        arrays = load(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    if metadata.get("format") == FORMAT:
        try:
            layers = [(str(name), str(kind)) for name, kind in json.loads(metadata["layers"])]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: metadata 'layers' cannot be read: {exc}") from None
        return arrays, layers, FORMAT
    return _from_pytorch(arrays, path)


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (the library checked the header
    already; this reads its JSON again, which ``safetensors.numpy.load`` does not return)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    metadata = header.get("__metadata__") or {}
    return metadata if isinstance(metadata, dict) else {}


def _from_pytorch(arrays: dict[str, np.ndarray], path: Any) -> tuple[
        dict[str, np.ndarray], list[tuple[str, str]], str]:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        prefix, _, name = key.rpartition(".")
        if not prefix:
            raise CheckpointError(f"{path}: key {key!r}: expected 'module.parameter' names "
                                  f"(a PyTorch state_dict)")
        groups.setdefault(prefix, {})[name] = value
    translated: dict[str, np.ndarray] = {}
    layers = []
    for prefix in sorted(groups, key=_natural):
        group = groups[prefix]
        weight = group.get("weight")
        norm = "running_mean" in group or (weight is not None and weight.ndim == 1)
        kind = ("BatchNorm" if norm else "Conv2D" if weight is not None and weight.ndim == 4
                else "Dense" if weight is not None and weight.ndim == 2 else "Unknown")
        layers.append((prefix, kind))
        for name, value in group.items():
            if name in _DROPPED:
                continue
            ours = _TORCH_NAMES[name][norm] if name in _TORCH_NAMES else name
            translated[f"{prefix}.{ours}"] = value
    return translated, layers, "pytorch"


def _natural(text: str) -> list[Any]:
    """Sort key putting "layer.2" before "layer.10" (a PyTorch Sequential's module order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load_weights(model: Any, path: str | os.PathLike, *, strict: bool = True) -> Any:
    """Put the arrays of the safetensors file ``path`` into ``model`` by name, as
    ``model.load_state_dict`` (ours, or a PyTorch ``state_dict`` translated as
    :func:`read_weights` says); returns its report. A file that does not match is a
    :class:`~anyarray_nn.checkpoint.CheckpointError` naming the file, and the model is left
    as it was."""
    arrays, _, _ = read_weights(path)
    try:
        return model.load_state_dict(arrays, strict=strict)
    except (KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"{path}: does not match the model: {message}. If the "
                              f"architecture differs on purpose, use warm_start().") from None
