"""Loss kernels: each forward returns a 0-d array, each backward the gradient of that scalar.

Softmax cross-entropy, mean over the batch, for logits z of shape (N, C) and labels t in [0, C):

    L  = 1/N sum_i ( logsumexp(z_i) - z_i[t_i] )
    dz = 1/N ( softmax(z) - onehot(t) )

Subtracting each row's maximum before exp makes both stable for logits of any magnitude.

Mean squared error over all elements of prediction p and target t:

    L  = mean( (p - t)^2 )        dp = 2 (p - t) / size
"""

from __future__ import annotations

import math
from typing import Any

from ..backend import dtype_name, namespace
from ..errors import InputError, NonFiniteError
from ._checks import check_floating, check_ndim, check_same_dtype, check_same_shape
from ._fast import cuda_kernels


def _check_classification(xp: Any, logits: Any, labels: Any) -> None:
    check_ndim(logits, 2, "logits", "(batch, classes)")
    check_floating(logits, "logits")
    check_ndim(labels, 1, "labels", "(batch,) of class indices")
    if not xp.isdtype(labels.dtype, "integral"):
        raise InputError(f"labels: expected an integer dtype (class indices), got "
                         f"{dtype_name(labels.dtype)}; cast with xp.astype(labels, xp.int64)")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise InputError(f"logits: expected at least one row and one class, got shape "
                         f"{tuple(logits.shape)}")
    if labels.shape[0] != logits.shape[0]:
        raise InputError(f"labels: expected {logits.shape[0]} labels (one per row of logits "
                         f"{tuple(logits.shape)}), got {labels.shape[0]}")


def _log_softmax_parts(xp: Any, logits: Any) -> tuple[Any, Any]:
    """Shifted logits ``z - max(z)`` and their log-sum-exp per row, both stable."""
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted, xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(labels: Any, num_classes: int, dtype: Any) -> Any:
    """(N,) integer labels -> (N, C) array of 0 and 1 in ``dtype``."""
    xp = namespace(labels)
    labels = _class_indices(xp, labels)
    classes = xp.arange(num_classes, dtype=labels.dtype, device=labels.device)
    return xp.astype(labels[:, None] == classes[None, :], dtype)


def _class_indices(xp: Any, labels: Any) -> Any:
    """Labels as int64 (no copy if they are already): in a narrow dtype such as uint8 the
    class range and comparisons against it would wrap for more classes than the dtype holds."""
    return xp.astype(labels, xp.int64, copy=False)


def _check_values(xp: Any, logits: Any, labels: Any, loss: Any = None) -> None:
    """Raise for int64 ``labels`` outside [0, C) and, given the ``loss``, for a loss that is not
    finite. Both checks together read one scalar back from the device."""
    c = logits.shape[1]
    labels_ok = xp.all((labels >= 0) & (labels < c))
    if bool(labels_ok if loss is None else labels_ok & xp.isfinite(loss)):
        return
    if not bool(labels_ok):
        raise InputError(f"labels: expected class indices in [0, {c}), got values from "
                         f"{int(xp.min(labels))} to {int(xp.max(labels))}")
    bad = int(xp.sum(xp.astype(~xp.isfinite(logits), xp.int64)))
    if bad == 0:
        raise NonFiniteError(f"logits: expected a finite loss, got {float(loss)} from finite "
                         f"logits (differences between them overflow {dtype_name(logits.dtype)})")
    raise NonFiniteError(f"logits: expected finite values, got {bad} NaN or infinite "
                     f"entries (loss is {float(loss)})")


def _scalar_or_array(value: Any) -> Any:
    """``value`` for the backend check: None for a Python number, which mixes with any backend."""
    return None if type(value) in (int, float) else value


def _check_dloss(dloss: Any, like: Any, what: str) -> None:
    """``dloss``, the gradient of a scalar loss, is a Python number or a 0-d array of
    ``like``'s dtype (a float64 one would silently make a float32 gradient float64)."""
    if type(dloss) in (int, float):
        return
    if tuple(dloss.shape) != ():
        raise InputError(f"dloss: expected a 0-d array (the gradient of the scalar loss), got "
                         f"shape {tuple(dloss.shape)}")
    check_same_dtype(dloss, like, "dloss", what)


def softmax_forward(logits: Any) -> Any:
    """Row-wise softmax of (N, C) logits, stable for any magnitude."""
    xp = namespace(logits)
    check_ndim(logits, 2, "logits", "(batch, classes)")
    check_floating(logits, "logits")
    e = xp.exp(logits - xp.max(logits, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def softmax_cross_entropy_forward(logits: Any, labels: Any) -> Any:
    """Mean softmax cross-entropy of (N, C) ``logits`` against (N,) integer ``labels``.

    Raises :class:`InputError` for labels outside [0, C) and for a loss that is not finite
    (NaN or infinite logits); this check reads one scalar back from the device.
    """
    xp = namespace(logits, labels, names=("logits", "labels"))
    _check_classification(xp, logits, labels)
    labels = _class_indices(xp, labels)
    fast = cuda_kernels(xp, logits.dtype)
    if fast is not None:  # one CUDA kernel for the rows on CuPy (see _fast)
        loss = xp.sum(fast.softmax_rows(logits, labels)[2]) / logits.shape[0]
        if not bool(xp.isfinite(loss)):  # a bad label makes its row NaN: say which it was
            _check_values(xp, logits, labels, loss)
        return loss
    shifted, lse = _log_softmax_parts(xp, logits)
    # Pick each row's target logit: multiplying by a one-hot matrix would give -inf * 0 = NaN
    # where a row's range overflows (logits 1e308 and -1e308), and costs N*C, not N. The
    # remainder keeps the gather in bounds (out of range is an error on a GPU) until the check.
    index = labels % logits.shape[1]
    picked = xp.take_along_axis(shifted, index[:, None], axis=1)
    loss = xp.sum(lse[:, 0] - picked[:, 0]) / logits.shape[0]
    _check_values(xp, logits, labels, loss)
    return loss


def softmax_cross_entropy_backward(logits: Any, labels: Any, dloss: Any = 1.0) -> Any:
    """Gradient of the mean softmax cross-entropy with respect to ``logits``.

    ``dloss`` is the upstream gradient of the scalar loss (1 when the loss is the objective).
    Raises :class:`InputError` for labels outside [0, C), as the forward does (one scalar
    read back from the device).
    """
    return _softmax_cross_entropy_backward(logits, labels, dloss, check_labels=True)


def _softmax_cross_entropy_backward(logits: Any, labels: Any, dloss: Any, *,
                                    check_labels: bool) -> Any:
    """The backward; ``check_labels=False`` skips the label range check (and its device
    sync) for a caller whose forward has just checked the same labels (the loss class)."""
    xp = namespace(logits, labels, _scalar_or_array(dloss), names=("logits", "labels", "dloss"))
    _check_classification(xp, logits, labels)
    _check_dloss(dloss, logits, "the logits")
    labels = _class_indices(xp, labels)
    if check_labels:
        _check_values(xp, logits, labels)
    n, c = logits.shape
    fast = cuda_kernels(xp, logits.dtype)
    if fast is not None:  # two CUDA kernels on CuPy (see _fast)
        row_max, row_lse, _ = fast.softmax_rows(logits, labels)
        if type(dloss) in (int, float):
            return fast.softmax_cross_entropy_gradient(logits, labels, row_max, row_lse,
                                                       dloss / n)
        return fast.softmax_cross_entropy_gradient(logits, labels, row_max, row_lse,
                                                   1.0) * (dloss / n)
    shifted, lse = _log_softmax_parts(xp, logits)
    probs = xp.exp(shifted - lse)
    return (probs - one_hot(labels, c, logits.dtype)) * (dloss / n)


def mse_forward(pred: Any, target: Any) -> Any:
    """Mean of the squared differences over all elements (shapes must match exactly)."""
    xp = namespace(pred, target, names=("prediction", "target"))
    _check_regression(pred, target)
    diff = pred - target
    return xp.sum(diff * diff) / _size(pred)


def mse_backward(pred: Any, target: Any, dloss: Any = 1.0) -> Any:
    """Gradient of :func:`mse_forward` with respect to ``pred``."""
    namespace(pred, target, _scalar_or_array(dloss), names=("prediction", "target", "dloss"))
    _check_regression(pred, target)
    _check_dloss(dloss, pred, "the prediction")
    return (pred - target) * (2.0 * dloss / _size(pred))


def _check_regression(pred: Any, target: Any) -> None:
    check_floating(pred, "prediction")
    check_same_shape(target, pred, "target", "the prediction")
    check_same_dtype(target, pred, "target", "the prediction")


def _size(x: Any) -> int:
    return math.prod(x.shape)
