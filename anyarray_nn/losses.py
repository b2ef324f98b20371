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


class Combined(Loss):
    """The weighted sum of one loss per output, for a model with several outputs (Keras'
    ``loss=[...]`` with ``loss_weights``): ``forward((out_1, ..., out_k), (t_1, ..., t_k))``
    is ``sum_i weights[i] * losses[i](out_i, t_i)``, and ``backward()`` gives the tuple of
    ``weights[i] * dL_i/dout_i`` that ``Model.backward`` takes.

    ``weights``: one finite number per loss, 1 by default. :func:`anyarray_nn.fit` reports
    the accuracy of the first output (with the first loss's ``ignore_index``).
    """

    def __init__(self, losses: Any, weights: Any = None) -> None:
        super().__init__()
        losses = list(losses) if isinstance(losses, (list, tuple)) else None
        if not losses or not all(isinstance(loss, Loss) for loss in losses):
            raise InputError("Combined: expected a non-empty list of losses (one per output), "
                             "each a Loss")
        weights = [1.0] * len(losses) if weights is None else weights
        if (not isinstance(weights, (list, tuple)) or len(weights) != len(losses)
                or not all(_finite_number(w) for w in weights)):
            raise InputError(f"Combined: expected {len(losses)} finite weights (one per "
                             f"loss), got {weights!r}")
        self.losses, self.weights = losses, [float(w) for w in weights]
        self.ignore_index = getattr(losses[0], "ignore_index", None)

    def _forward(self, predictions: Any, targets: Any) -> Any:
        count = len(self.losses)
        for what, value in (("predictions", predictions), ("targets", targets)):
            if not isinstance(value, (list, tuple)) or len(value) != count:
                got = (f"{len(value)}" if isinstance(value, (list, tuple)) else
                       f"one {type(value).__name__}")
                raise InputError(f"{what}: expected a tuple of {count} (one per loss), got "
                                 f"{got}")
        total = None
        for i, (loss, w, out, target) in enumerate(zip(self.losses, self.weights,
                                                      predictions, targets)):
            with errors_named(f"output {i}"):
                term = w * loss.forward(out, target)
            total = term if total is None else total + term
        return total

    def _backward(self, predictions: Any, targets: Any, dloss: Any) -> Any:
        # From this loss's own record of each output, not from each loss's last forward: one
        # loss object may serve several outputs.
        grads = []
        for i, (loss, w, out, target) in enumerate(zip(self.losses, self.weights,
                                                      predictions, targets)):
            with errors_named(f"output {i}"), errors_named(type(loss).__name__):
                grads.append(loss._backward(out, target, dloss * w))
        return tuple(grads)


def _finite_number(value: Any) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            and bool(np.isfinite(value)))


def _host_weights(weight: Any) -> np.ndarray:
    """Class weights as a 1-D float64 NumPy copy (from any backend's array or a sequence)."""
    host = np.array(to_host(weight) if hasattr(weight, "shape") else weight, dtype=np.float64)
    if host.ndim != 1:
        raise InputError(f"weight: expected a 1-D sequence of class weights, got shape "
                         f"{host.shape}")
    return host


__all__ = ["Loss", "SoftmaxCrossEntropy", "MSE", "Combined"]
