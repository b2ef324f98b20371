"""Loss objects: ``forward(prediction, target) -> 0-d loss``, then ``backward() -> dL/dprediction``."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import functional as F
from .backend import asarray_like, backend_name_of, dtype_name, to_host
from .errors import InputError, errors_named


class Loss:
    """Base class: keeps the last forward's inputs so that ``backward()`` needs no arguments."""

    def __init__(self) -> None:
        self._inputs: tuple[Any, Any] | None = None

    def forward(self, prediction: Any, target: Any) -> Any:
        """Return the loss as a 0-d array of the prediction's backend."""
        self._inputs = None  # a failed forward must not leave the last batch for backward
        with errors_named(type(self).__name__):
            loss = self._forward(prediction, target)
        self._inputs = (prediction, target)
        return loss

    def backward(self, dloss: Any = 1.0) -> Any:
        """Return dL/dprediction for the last forward (``dloss`` scales it, 1 by default)."""
        if self._inputs is None:
            raise RuntimeError(f"{type(self).__name__}: backward() needs a preceding forward()")
        with errors_named(type(self).__name__):
            return self._backward(*self._inputs, dloss)

    def __call__(self, prediction: Any, target: Any) -> Any:
        return self.forward(prediction, target)

    def _forward(self, prediction: Any, target: Any) -> Any:
        raise NotImplementedError

    def _backward(self, prediction: Any, target: Any, dloss: Any) -> Any:
        raise NotImplementedError


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, as ``torch.nn.CrossEntropyLoss``.

    ``forward(logits, target)`` takes raw scores of shape (N, C), (N, C, d1, ...) or (C,) and
    integer class indices of shape (N,), (N, d1, ...) or () (or probabilities of the logits'
    shape). The options are those of :func:`anyarray_nn.functional.cross_entropy_forward`:
    ``weight`` (C class weights: any array or sequence of numbers, used in the logits' backend
    and dtype), ``ignore_index``, ``reduction`` ("mean", "sum" or "none") and
    ``label_smoothing``. Fusing softmax and cross-entropy gives the simple gradient
    ``softmax(z) - onehot(t)`` (scaled) and stays finite for logits of any magnitude. NaN or
    infinite logits raise :class:`NonFiniteError`.
    """

    def __init__(self, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        with errors_named(type(self).__name__):
            F.loss._check_options(ignore_index, reduction, label_smoothing)
            self._weight = None if weight is None else _host_weights(weight)
        self.ignore_index, self.reduction = int(ignore_index), reduction
        self.label_smoothing = float(label_smoothing)
        self._weight_cache: tuple[tuple[str, str], Any] | None = None

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-serializable (``weight`` as a list of floats)."""
        return {"weight": None if self._weight is None else self._weight.tolist(),
                "ignore_index": self.ignore_index, "reduction": self.reduction,
                "label_smoothing": self.label_smoothing}

    def _options(self, logits: Any) -> dict[str, Any]:
        return {"weight": self._weight_like(logits), "ignore_index": self.ignore_index,
                "reduction": self.reduction, "label_smoothing": self.label_smoothing}

    def _weight_like(self, logits: Any) -> Any:
        """The class weights in the logits' backend and dtype (converted once per pair)."""
        if self._weight is None:
            return None
        key = (backend_name_of(logits), dtype_name(logits.dtype))
        if self._weight_cache is None or self._weight_cache[0] != key:
            self._weight_cache = (key, asarray_like(self._weight, logits))
        return self._weight_cache[1]

    def _forward(self, logits: Any, labels: Any) -> Any:
        return F.cross_entropy_forward(logits, labels, **self._options(logits))

    def _backward(self, logits: Any, labels: Any, dloss: Any) -> Any:
        # forward() has checked these labels' range: skip that check's device sync here.
        return F.loss._cross_entropy_backward(logits, labels, dloss, check_labels=False,
                                              **self._options(logits))


class MSE(Loss):
    """Squared differences, as ``torch.nn.MSELoss``: their mean over all elements by default,
    ``reduction="sum"`` or ``"none"`` (per element). Shapes must match exactly."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in F.loss.REDUCTIONS:
            raise InputError(f"MSE: expected reduction to be one of "
                             f"{', '.join(map(repr, F.loss.REDUCTIONS))}, got {reduction!r}")
        self.reduction = reduction

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-serializable."""
        return {"reduction": self.reduction}

    def _forward(self, prediction: Any, target: Any) -> Any:
        return F.mse_forward(prediction, target, self.reduction)

    def _backward(self, prediction: Any, target: Any, dloss: Any) -> Any:
        return F.mse_backward(prediction, target, dloss, self.reduction)


def _host_weights(weight: Any) -> np.ndarray:
    """Class weights as a 1-D float64 NumPy copy (from any backend's array or a sequence)."""
    host = np.array(to_host(weight) if hasattr(weight, "shape") else weight, dtype=np.float64)
    if host.ndim != 1:
        raise InputError(f"weight: expected a 1-D sequence of class weights, got shape "
                         f"{host.shape}")
    return host


__all__ = ["Loss", "SoftmaxCrossEntropy", "MSE"]
