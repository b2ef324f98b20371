"""Finite-difference gradient checks for layers, models and raw functions.

The analytic gradient from ``backward`` is compared with central differences

    dL/dw_i ~ (L(w + eps e_i) - L(w - eps e_i)) / (2 eps)

in float64, for the input and every parameter. Without a loss, the scalar checked is
``L = sum(y * r)`` for a fixed random ``r``, so every output element contributes with its own
weight (and backward receives ``dy = r``).

An entry passes when ``|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)``
element by element; the report also shows the largest relative error.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import numpy as np

from . import backend as _backend
from .errors import InputError, as_int


@dataclasses.dataclass
class GradCheckEntry:
    """The comparison for one tensor (``"x"`` or a parameter key like ``"fc.W"``)."""

    name: str
    checked: int
    max_abs_error: float
    max_rel_error: float
    passed: bool


@dataclasses.dataclass
class GradCheckReport:
    """All entries of one check; ``passed`` is True when every entry passed."""

    entries: list[GradCheckEntry]
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        """True when every entry passed (and so when there are no entries)."""
        return all(e.passed for e in self.entries)

    def __getitem__(self, name: str) -> GradCheckEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def __str__(self) -> str:
        width = max([len(e.name) for e in self.entries] + [6])
        lines = [f"{'tensor':<{width}}  checked  max abs err  max rel err  ok",
                 "-" * (width + 40)]
        for e in self.entries:
            lines.append(f"{e.name:<{width}}  {e.checked:7d}  {e.max_abs_error:11.2e}  "
                         f"{e.max_rel_error:11.2e}  {'yes' if e.passed else 'NO'}")
        lines.append(f"rtol={self.rtol:g} atol={self.atol:g}: "
                     f"{'passed' if self.passed else 'FAILED'}")
        return "\n".join(lines)

    def raise_if_failed(self) -> "GradCheckReport":
        """Raise AssertionError with the table when an entry failed; return self otherwise."""
        if not self.passed:
            raise AssertionError("gradient check failed\n" + str(self))
        return self


def check_gradients(net: Any, x: Any, *, loss: Any = None, target: Any = None,
                    eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-8,
                    max_checks: int = 200, seed: int = 0, check_input: bool = True
                    ) -> GradCheckReport:
    """Check ``net.backward`` (a Layer, a Sequential or a graph Model) against central
    differences.

    For a model with several inputs ``x`` is a tuple or list of arrays (checked as ``"x0"``,
    ``"x1"``, ...); with several outputs, ``loss`` takes them all
    (:class:`~anyarray_nn.losses.Combined`) or, without a loss, each output gets its own
    random ``r``.

    ``net`` and ``x`` must be float64 (call ``net.to(dtype="float64")``). With ``loss``
    (e.g. ``SoftmaxCrossEntropy()``) and ``target`` the scalar is the loss of the output;
    otherwise ``sum(y * r)`` for a seeded random ``r``. At most ``max_checks`` randomly chosen
    elements of each tensor are perturbed. The parameters and the buffers (BatchNorm's running
    statistics, which every ``forward(x, train=True)`` updates) are restored afterwards; the
    layers' caches and gradients are overwritten.

    Raises ValueError unless ``eps > 0``, ``rtol >= 0``, ``atol >= 0`` and ``max_checks`` is
    an int >= 1.
    """
    _check_settings("check_gradients", eps=eps, rtol=rtol, atol=atol, max_checks=max_checks)
    params = _named_params(net)
    several = isinstance(x, (tuple, list))  # one array per input, as Model.forward takes them
    names = [f"x{i}" for i in range(len(x))] if several else ["x"]
    xs = tuple(x) if several else (x,)
    _require_float64({**dict(zip(names, xs)), **params}, "check_gradients",
                     "call net.to(dtype='float64') and pass float64 inputs")
    xp = _backend.namespace(xs[0])
    rng = np.random.default_rng(seed)
    xs = tuple(xp.asarray(a, copy=True) for a in xs)  # perturbed in place below
    probe: dict[str, Any] = {}

    def objective() -> Any:
        """The scalar L of the current parameters and inputs."""
        y = net.forward(xs if several else xs[0], train=True)
        if loss is not None:
            return loss.forward(y, target)
        ys = y if isinstance(y, tuple) else (y,)
        if "r" not in probe:
            probe["r"] = tuple(_random_like(a, rng) for a in ys)
            probe["dy"] = probe["r"] if isinstance(y, tuple) else probe["r"][0]
        return sum(xp.sum(a * r) for a, r in zip(ys, probe["r"]))

    buffers = _saved_buffers(net)
    try:
        objective()
        dx = net.backward(loss.backward() if loss is not None else probe["dy"], input_grad=True)
        analytic = {**dict(zip(names, dx if several else (dx,))), **_named_grads(net)}
        tensors = {**dict(zip(names, xs)), **params}
        if not check_input:
            for name in names:
                del analytic[name], tensors[name]
        return _compare_all(lambda: float(objective()), tensors, analytic, eps, rtol, atol,
                            max_checks, rng)
    finally:
        for store, saved in buffers:
            store.clear()
            store.update(saved)


def check_function(forward: Callable[..., Any], backward: Callable[..., dict[str, Any]],
                   inputs: dict[str, Any], *, eps: float = 1e-6, rtol: float = 1e-5,
                   atol: float = 1e-8, max_checks: int = 200, seed: int = 0
                   ) -> GradCheckReport:
    """Check a forward/backward pair of plain functions, e.g. a kernel of ``functional``.

    ``forward(**inputs) -> y``; ``backward(dy, **inputs) -> {name: gradient}`` for the
    inputs to check (a subset of ``inputs``). The scalar is ``sum(y * r)`` for a seeded
    random ``r``, so ``dy = r``. All inputs to check must be float64. The options are
    checked as in :func:`check_gradients`.
    """
    _check_settings("check_function", eps=eps, rtol=rtol, atol=atol, max_checks=max_checks)
    rng = np.random.default_rng(seed)
    xp = _backend.namespace(*inputs.values())
    inputs = {k: xp.asarray(v, copy=True) for k, v in inputs.items()}
    r = _random_like(forward(**inputs), rng)
    analytic = backward(r, **inputs)
    tensors = {k: inputs[k] for k in analytic}
    _require_float64(tensors, "check_function", "pass float64 inputs")
    return _compare_all(lambda: float(xp.sum(forward(**inputs) * r)), tensors, analytic,
                        eps, rtol, atol, max_checks, rng)


def _compare_all(scalar: Callable[[], float], tensors: dict[str, Any],
                 analytic: dict[str, Any], eps: float, rtol: float, atol: float,
                 max_checks: int, rng: np.random.Generator) -> GradCheckReport:
    entries = []
    for name, tensor in tensors.items():
        exact_full = _backend.to_host(analytic[name])
        if exact_full.shape != tuple(tensor.shape):
            raise InputError(f"gradient of {name}: expected shape {tuple(tensor.shape)}, "
                             f"got {exact_full.shape}")
        indices = _sample_indices(tuple(tensor.shape), max_checks, rng)
        numeric = numerical_gradient(scalar, tensor, indices, eps)
        exact = np.array([exact_full[i] for i in indices])
        entries.append(_compare(name, exact, numeric, rtol, atol))
    return GradCheckReport(entries, rtol, atol)


def _check_settings(where: str, **settings: Any) -> None:
    """Raise ValueError naming ``where`` and the setting unless ``max_checks`` is an int >= 1,
    ``eps`` a finite number > 0, and ``rtol`` and ``atol`` finite numbers >= 0."""
    for name, value in settings.items():
        if name == "max_checks":
            ok = as_int(value) is not None and value >= 1
            expected = "an int >= 1"
        else:
            bound = "> 0" if name == "eps" else ">= 0"
            ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
                  and math.isfinite(value) and (float(value) > 0 if name == "eps"
                                                else float(value) >= 0))
            expected = f"a finite number {bound}"
        if not ok:
            raise ValueError(f"{where}: expected {name} to be {expected}, got {value!r}")


def _saved_buffers(net: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each layer's buffer dict with a copy of its contents, to put back afterwards."""
    layers = getattr(net, "layers", [net])  # a Sequential, or a single Layer
    stores = [getattr(layer, "buffers", None) for layer in layers]
    return [(store, {key: _backend.namespace(value).asarray(value, copy=True)
                     for key, value in store.items()})
            for store in stores if isinstance(store, dict)]


def _require_float64(tensors: dict[str, Any], where: str, fix: str) -> None:
    for name, value in tensors.items():
        if _backend.dtype_name(value.dtype) != "float64":
            raise InputError(f"{where}: {name} must be float64 for finite differences to be "
                             f"accurate, got {_backend.dtype_name(value.dtype)}; {fix}")


def _random_like(y: Any, rng: np.random.Generator) -> Any:
    return _backend.asarray(rng.standard_normal(tuple(y.shape)),
                            backend=_backend.backend_name_of(y), dtype="float64")


def numerical_gradient(f: Callable[[], float], tensor: Any, indices: list[tuple[int, ...]],
                       eps: float = 1e-6) -> np.ndarray:
    """Central differences of ``f()`` with respect to ``tensor[i]`` for each index ``i``.

    ``tensor`` is perturbed in place and restored (also when ``f`` raises); ``f`` must read
    it. Raises ValueError unless ``eps`` is a finite number > 0.
    """
    _check_settings("numerical_gradient", eps=eps)
    out = np.empty(len(indices))
    for k, index in enumerate(indices):
        original = float(tensor[index])
        try:
            tensor[index] = original + eps
            plus = f()
            tensor[index] = original - eps
            minus = f()
        finally:
            tensor[index] = original
        out[k] = (plus - minus) / (2.0 * eps)
    return out


def _compare(name: str, exact: np.ndarray, numeric: np.ndarray, rtol: float,
             atol: float) -> GradCheckEntry:
    err = np.abs(exact - numeric)
    scale = np.maximum(np.abs(exact), np.abs(numeric))
    rel = err / np.maximum(scale, np.finfo(np.float64).tiny)
    ok = bool(np.all(err <= atol + rtol * scale))
    return GradCheckEntry(name, len(exact), float(err.max(initial=0.0)),
                          float(rel.max(initial=0.0)), ok)


def _sample_indices(shape: tuple[int, ...], max_checks: int,
                    rng: np.random.Generator) -> list[tuple[int, ...]]:
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= max_checks else rng.choice(size, max_checks, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in np.sort(flat)]


def _named_params(net: Any) -> dict[str, Any]:
    return net.params() if callable(net.params) else dict(net.params)


def _named_grads(net: Any) -> dict[str, Any]:
    return net.grads() if callable(net.grads) else dict(net.grads)
