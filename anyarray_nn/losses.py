"""Loss objects: ``forward(prediction, target) -> 0-d loss``, then ``backward() -> dL/dprediction``."""

from __future__ import annotations

from typing import Any

from . import functional as F
from .errors import errors_named
from .functional.loss import _softmax_cross_entropy_backward


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
    """Softmax followed by cross-entropy, averaged over the batch.

    ``forward(logits, labels)`` takes raw scores of shape (N, C) and integer class indices of
    shape (N,). Fusing the two gives the simple gradient ``(softmax(z) - onehot(t)) / N`` and
    stays finite for logits of any magnitude. NaN or infinite logits raise :class:`InputError`.
    """

    def _forward(self, logits: Any, labels: Any) -> Any:
        return F.softmax_cross_entropy_forward(logits, labels)

    def _backward(self, logits: Any, labels: Any, dloss: Any) -> Any:
        # forward() has checked these labels' range: skip that check's device sync here.
        return _softmax_cross_entropy_backward(logits, labels, dloss, check_labels=False)


class MSE(Loss):
    """Mean squared error over all elements; prediction and target shapes must match exactly."""

    def _forward(self, prediction: Any, target: Any) -> Any:
        return F.mse_forward(prediction, target)

    def _backward(self, prediction: Any, target: Any, dloss: Any) -> Any:
        return F.mse_backward(prediction, target, dloss)


__all__ = ["Loss", "SoftmaxCrossEntropy", "MSE"]
