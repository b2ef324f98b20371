"""Loss kernels: each forward returns the loss (0-d, or per element for ``reduction="none"``),
each backward the gradient with respect to the prediction. Options and their names follow
torch.nn.functional.cross_entropy and mse_loss.

Cross-entropy of logits z (N, C, d1, ...) or unbatched (C,). Every position i (a sample, or a
sample and a spatial place) has a row z_i of C logits, log-probabilities
lp_i = log_softmax(z_i) and a target distribution a_i, so that

    l_i   = -sum_c a_ic lp_ic
    dl_i  = softmax(z_i) * sum_c a_ic - a_i                (the gradient of l_i with respect to z_i)

For class indices t_i, with class weights w (ones by default) and label smoothing e:
a_ic = (1 - e) w[t_i] [c = t_i] + (e / C) w_c, and a_i = 0 where t_i == ignore_index.
For probability targets q_i (a float target of the logits' shape):
a_ic = w_c ((1 - e) q_ic + e / C).
``reduction``: "none" returns l (shape (N, d1, ...), or 0-d when unbatched), "sum" sum_i l_i,
"mean" sum_i l_i / D with D = sum_i w[t_i] over the counted (not ignored) positions for class
indices, and D = the number of positions for probability targets (as PyTorch). Where D = 0
(every label ignored, or every counted class weighted 0) the mean is NaN, as in PyTorch.

Subtracting each row's maximum before exp makes both stable for logits of any magnitude, and
the unsmoothed class-index loss picks the target's log-probability instead of summing a
one-hot product (0 * -inf would make NaN where a row's range overflows).

Mean squared error of prediction p and target t, elementwise l = (p - t)^2:

    none: l       dp = 2 (p - t) dl
    sum:  sum l   dp = 2 (p - t) dloss
    mean: mean l  dp = 2 (p - t) dloss / size
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..backend import dtype_name, namespace, to_host
from ..errors import InputError, NonFiniteError, as_int
from ._checks import check_floating, check_same_dtype, check_same_shape
from ._fast import cuda_kernels
from .softmax import log_softmax_forward, softmax_forward

REDUCTIONS = ("none", "sum", "mean")


# --- cross-entropy --------------------------------------------------------------------------

def cross_entropy_forward(logits: Any, target: Any, weight: Any = None, ignore_index: int = -100,
                          reduction: str = "mean", label_smoothing: float = 0.0) -> Any:
    """Softmax cross-entropy of ``logits`` against ``target``, as
    ``torch.nn.functional.cross_entropy``.

    ``logits``: (N, C), (N, C, d1, ...) or unbatched (C,). ``target``: integer class indices
    of shape (N,), (N, d1, ...) or 0-d, or probabilities (a float array of the logits' shape
    and dtype). ``weight``: optional (C,) class weights of the logits' dtype. Rows whose label
    is ``ignore_index`` count for nothing (class indices only; with probabilities it must
    keep its default, as PyTorch). ``reduction``: "none", "sum"
    or "mean". ``label_smoothing`` in [0, 1] mixes the target with the uniform distribution.

    Raises :class:`InputError` for labels outside [0, C) (other than ``ignore_index``) and
    :class:`NonFiniteError` for a loss that is not finite (NaN or infinite logits); this check
    reads one scalar back from the device. A mean over no counted targets is NaN, as in
    PyTorch, and raises nothing: the logits are not to blame.
    """
    xp, rows = _cross_entropy_rows(logits, target, weight, ignore_index, reduction,
                                   label_smoothing)
    if rows.default and rows.soft is None and logits.ndim == 2:
        fast = cuda_kernels(xp, logits.dtype)
        if fast is not None:  # one CUDA kernel for the rows on CuPy (see _fast)
            loss = xp.sum(fast.softmax_rows(logits, rows.labels)[2]) / logits.shape[0]
            if bool(xp.isfinite(loss)):
                return loss
            # A NaN row: an ignored or bad label, or bad logits. The portable code says which.
    losses = _row_losses(xp, rows)
    _check_values(xp, rows.z, rows.labels, losses, rows.ignore_index)
    if reduction == "none":
        return xp.reshape(losses, rows.loss_shape)
    total = xp.sum(losses)
    return total if reduction == "sum" else total / _mean_divisor(xp, rows)


def cross_entropy_backward(logits: Any, target: Any, dloss: Any = 1.0, weight: Any = None,
                           ignore_index: int = -100, reduction: str = "mean",
                           label_smoothing: float = 0.0) -> Any:
    """Gradient of :func:`cross_entropy_forward` with respect to ``logits``.

    ``dloss`` is the upstream gradient of the loss: a Python number or a 0-d array of the
    logits' dtype for "sum" and "mean"; for "none" an array of the per-element loss shape (a
    Python number stands for that value at every element). Raises :class:`InputError` for
    labels outside [0, C), as the forward does (one scalar read back from the device).
    """
    return _cross_entropy_backward(logits, target, dloss, weight, ignore_index, reduction,
                                   label_smoothing, check_labels=True)


def softmax_cross_entropy_forward(logits: Any, labels: Any, weight: Any = None,
                                  ignore_index: int = -100, reduction: str = "mean",
                                  label_smoothing: float = 0.0) -> Any:
    """The name this library gave :func:`cross_entropy_forward` first; the same function."""
    return cross_entropy_forward(logits, labels, weight, ignore_index, reduction,
                                 label_smoothing)


def softmax_cross_entropy_backward(logits: Any, labels: Any, dloss: Any = 1.0, weight: Any = None,
                                   ignore_index: int = -100, reduction: str = "mean",
                                   label_smoothing: float = 0.0) -> Any:
    """The name this library gave :func:`cross_entropy_backward` first; the same function."""
    return cross_entropy_backward(logits, labels, dloss, weight, ignore_index, reduction,
                                  label_smoothing)


def _cross_entropy_backward(logits: Any, target: Any, dloss: Any, weight: Any,
                            ignore_index: int, reduction: str, label_smoothing: float, *,
                            check_labels: bool) -> Any:
    """The backward; ``check_labels=False`` skips the label range check (and its device
    sync) for a caller whose forward has just checked the same labels (the loss class)."""
    xp, rows = _cross_entropy_rows(logits, target, weight, ignore_index, reduction,
                                   label_smoothing, dloss)
    _check_dloss(dloss, logits, "the logits", rows.loss_shape if reduction == "none" else ())
    if check_labels and rows.labels is not None:
        _check_values(xp, rows.z, rows.labels, None, rows.ignore_index)
    # The upstream gradient of each row's loss l_i: 0-d, or (M,) for reduction "none".
    if type(dloss) in (int, float):
        dloss = xp.asarray(float(dloss), dtype=logits.dtype, device=logits.device)
    upstream = xp.reshape(dloss, (-1,)) if reduction == "none" else dloss
    if reduction == "mean":
        upstream = upstream / _mean_divisor(xp, rows)
    if rows.labels is not None:  # ignored rows get no gradient (not NaN where D = 0, as PyTorch)
        counted = rows.labels != rows.ignore_index
        upstream = xp.where(counted, upstream, xp.zeros((), dtype=logits.dtype))
    upstream = upstream[:, None] if upstream.ndim == 1 else upstream
    fast = cuda_kernels(xp, logits.dtype)
    if fast is not None and rows.default and rows.soft is None and logits.ndim == 2:
        # Two CUDA kernels on CuPy (see _fast), then the row scale that holds the mask.
        row_max, row_lse, _ = fast.softmax_rows(logits, rows.labels)
        grad = fast.softmax_cross_entropy_gradient(logits, rows.labels, row_max, row_lse, 1.0)
        return grad * upstream
    grad = _row_gradients(xp, rows) * upstream
    return _to_logits_layout(xp, grad, tuple(logits.shape))


class _Rows:
    """One cross-entropy call in row form: ``z`` (M, C) logits, one row per position, and
    either ``labels`` (M,) int64 or ``soft`` (M, C) probabilities; ``loss_shape`` is the
    shape of the per-element loss, ``default`` whether every option has its default value."""

    def __init__(self, z: Any, labels: Any, soft: Any, weight: Any, ignore_index: int,
                 label_smoothing: float, loss_shape: tuple[int, ...], default: bool) -> None:
        self.z, self.labels, self.soft, self.weight = z, labels, soft, weight
        # Python numbers: a NumPy scalar would not mix with array-api-strict arrays.
        self.ignore_index, self.label_smoothing = int(ignore_index), float(label_smoothing)
        self.loss_shape, self.default = loss_shape, default


def _cross_entropy_rows(logits: Any, target: Any, weight: Any, ignore_index: Any,
                        reduction: Any, label_smoothing: Any,
                        dloss: Any = None) -> tuple[Any, _Rows]:
    """Check the inputs and options; return the namespace and the call in row form."""
    xp = namespace(logits, target, weight, _scalar_or_array(dloss),
                   names=("logits", "labels", "weight", "dloss"))
    _check_options(ignore_index, reduction, label_smoothing)
    check_floating(logits, "logits")
    if logits.ndim == 0:
        raise InputError("logits: expected an array (C,), (N, C) or (N, C, d1, ...), "
                         "got a 0-d array")
    c = logits.shape[0] if logits.ndim == 1 else logits.shape[1]
    if c == 0:
        raise InputError(f"logits: expected at least one class, got shape {tuple(logits.shape)}")
    soft = xp.isdtype(target.dtype, "real floating")
    loss_shape = () if logits.ndim == 1 else (logits.shape[0], *logits.shape[2:])
    if soft and tuple(target.shape) != tuple(logits.shape):  # float labels, most likely
        raise InputError(f"labels: expected an integer dtype (class indices) or probabilities "
                         f"of the logits' shape {tuple(logits.shape)}, got "
                         f"{dtype_name(target.dtype)} of shape {tuple(target.shape)}; cast "
                         f"class indices with xp.astype(labels, xp.int64)")
    if soft:
        check_same_dtype(target, logits, "target", "the logits (probability targets)")
        if ignore_index != -100:  # as PyTorch: no label to compare, so no silent no-op
            raise InputError(f"cross_entropy: ignore_index applies to class indices, not to "
                             f"probability targets: expected the default -100, got "
                             f"{ignore_index}")
    else:
        _check_labels(xp, target, loss_shape, tuple(logits.shape))
    if weight is not None:
        check_same_dtype(weight, logits, "weight", "the logits")
        if tuple(weight.shape) != (c,):
            raise InputError(f"weight: expected shape ({c},) (one weight per class), got "
                             f"{tuple(weight.shape)}")
    z = _rows_of(xp, logits)
    default = weight is None and label_smoothing == 0
    if soft:
        return xp, _Rows(z, None, _rows_of(xp, target), weight, ignore_index, label_smoothing,
                         loss_shape, default)
    labels = xp.reshape(_class_indices(xp, target), (-1,))
    return xp, _Rows(z, labels, None, weight, ignore_index, label_smoothing, loss_shape, default)


def _check_options(ignore_index: Any, reduction: Any, label_smoothing: Any) -> None:
    if as_int(ignore_index) is None:
        raise InputError(f"cross_entropy: expected ignore_index to be an int, got "
                         f"{ignore_index!r}")
    if reduction not in REDUCTIONS:
        raise InputError(f"cross_entropy: expected reduction to be one of "
                         f"{', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
            or not 0.0 <= float(label_smoothing) <= 1.0):
        raise InputError(f"cross_entropy: expected label_smoothing to be a number in [0, 1], "
                         f"got {label_smoothing!r}")


def _check_labels(xp: Any, labels: Any, expected: tuple[int, ...],
                  logits_shape: tuple[int, ...]) -> None:
    if not xp.isdtype(labels.dtype, "integral"):
        raise InputError(f"labels: expected an integer dtype (class indices) or the logits' "
                         f"floating dtype (probabilities), got {dtype_name(labels.dtype)}; "
                         f"cast with xp.astype(labels, xp.int64)")
    if labels.ndim != len(expected):  # the ranks disagree: say what logits the labels need
        layout = "(C,)" if labels.ndim == 0 else \
            "(" + ", ".join(["N", "C"] + [f"d{i}" for i in range(1, labels.ndim)]) + ")"
        raise InputError(f"logits: expected a {labels.ndim + 1}-D array {layout} for labels "
                         f"of shape {tuple(labels.shape)}, got shape {logits_shape}")
    if tuple(labels.shape) != expected:
        if len(logits_shape) == 2 and labels.ndim == 1:  # the common case, said plainly
            raise InputError(f"labels: expected {logits_shape[0]} labels (one per row of "
                             f"logits {logits_shape}), got {labels.shape[0]}")
        raise InputError(f"labels: expected shape {expected} (the logits' shape "
                         f"{logits_shape} without the class axis), got {tuple(labels.shape)}")


def _rows_of(xp: Any, x: Any) -> Any:
    """(C,), (N, C) or (N, C, d1, ...) -> (M, C): the class axis last, one row per position."""
    if x.ndim == 1:
        return x[None, :]
    if x.ndim == 2:
        return x
    moved = xp.permute_dims(x, (0, *range(2, x.ndim), 1))
    return xp.reshape(moved, (-1, x.shape[1]))


def _to_logits_layout(xp: Any, grad: Any, shape: tuple[int, ...]) -> Any:
    """The inverse of :func:`_rows_of`: (M, C) rows back to the logits' ``shape``."""
    if len(shape) <= 2:
        return xp.reshape(grad, shape)
    moved = xp.reshape(grad, (shape[0], *shape[2:], shape[1]))
    return xp.permute_dims(moved, (0, len(shape) - 1, *range(1, len(shape) - 1)))


def _class_weights(xp: Any, rows: _Rows) -> Any:
    """The (1, C) class weights (ones when none were given)."""
    if rows.weight is not None:
        return rows.weight[None, :]
    return xp.ones((1, rows.z.shape[1]), dtype=rows.z.dtype, device=rows.z.device)


def _label_weights(xp: Any, rows: _Rows) -> Any:
    """w[t_i] for each row (ones without class weights); an ignored label reads class 0."""
    index = rows.labels % rows.z.shape[1]
    if rows.weight is None:
        return xp.ones(index.shape, dtype=rows.z.dtype, device=rows.z.device)
    return xp.take(rows.weight, index)


def _row_losses(xp: Any, rows: _Rows) -> Any:
    """Each row's loss l_i (M,); 0 for ignored rows."""
    lp = log_softmax_forward(rows.z, 1)
    eps, c = rows.label_smoothing, rows.z.shape[1]
    if rows.soft is not None:
        target = rows.soft if eps == 0 else rows.soft * (1.0 - eps) + eps / c
        return -xp.sum(lp * target * _class_weights(xp, rows), axis=1)
    # The remainder keeps the gather in bounds (out of range is an error on a GPU) until
    # the range check; ignored labels may be anything.
    index = rows.labels % c
    losses = -xp.take_along_axis(lp, index[:, None], axis=1)[:, 0] * _label_weights(xp, rows)
    if eps > 0:
        smooth = -xp.sum(lp * _class_weights(xp, rows), axis=1)
        losses = losses * (1.0 - eps) + smooth * (eps / c)
    # where, not a product: an ignored row's loss may be infinite (its logits are still checked).
    return xp.where(rows.labels != rows.ignore_index, losses, xp.zeros((), dtype=losses.dtype))


def _row_gradients(xp: Any, rows: _Rows) -> Any:
    """dl_i/dz_i = softmax(z_i) * sum_c a_ic - a_i for each row (M, C), before the upstream
    gradient and the ignore mask."""
    probs = xp.exp(log_softmax_forward(rows.z, 1))
    eps, c = rows.label_smoothing, rows.z.shape[1]
    if rows.soft is not None:
        target = rows.soft if eps == 0 else rows.soft * (1.0 - eps) + eps / c
        a = target * _class_weights(xp, rows)
        return probs * xp.sum(a, axis=1, keepdims=True) - a
    if rows.default:
        return probs - _one_hot(xp, rows.labels % c, c, rows.z.dtype)
    label_weights = _label_weights(xp, rows)[:, None] * (1.0 - eps)
    a = _one_hot(xp, rows.labels % c, c, rows.z.dtype) * label_weights
    if eps > 0:
        class_weights = _class_weights(xp, rows)
        a = a + class_weights * (eps / c)
        return probs * (label_weights + xp.sum(class_weights) * (eps / c)) - a
    return probs * label_weights - a


def _mean_divisor(xp: Any, rows: _Rows) -> Any:
    """D of the mean: the summed weight of the counted labels, or the number of rows."""
    if rows.soft is not None:  # a float: an empty batch's mean is then 0 / 0 = NaN, as PyTorch
        return float(rows.z.shape[0])
    counted = xp.astype(rows.labels != rows.ignore_index, rows.z.dtype)
    if rows.weight is None:
        return xp.sum(counted)
    return xp.sum(counted * _label_weights(xp, rows))


def _check_values(xp: Any, logits: Any, labels: Any, losses: Any = None,
                  ignore_index: int = -100) -> None:
    """Raise for int64 ``labels`` outside [0, C) other than ``ignore_index`` (None: no labels)
    and, given the per-row ``losses``, for a loss that is not finite. Both checks together
    read one scalar back from the device."""
    c = logits.shape[1]
    ok = xp.all(xp.isfinite(losses)) if losses is not None else None
    if labels is not None:
        labels_ok = xp.all((labels == ignore_index) | ((labels >= 0) & (labels < c)))
        ok = labels_ok if ok is None else labels_ok & ok
    if ok is None or bool(ok):
        return
    if labels is not None and not bool(labels_ok):
        kept = labels[labels != ignore_index]
        raise InputError(f"labels: expected class indices in [0, {c}) or ignore_index "
                         f"{ignore_index}, got values from {int(xp.min(kept))} to "
                         f"{int(xp.max(kept))}")
    loss = float(xp.sum(losses))
    bad = int(xp.sum(xp.astype(~xp.isfinite(logits), xp.int64)))
    if bad == 0:
        raise NonFiniteError(f"logits: expected a finite loss, got {loss} from finite "
                             f"logits (differences between them overflow "
                             f"{dtype_name(logits.dtype)}, or the targets are not finite)")
    raise NonFiniteError(f"logits: expected finite values, got {bad} NaN or infinite "
                         f"entries (loss is {loss})")


# --- one-hot --------------------------------------------------------------------------------

def one_hot(labels: Any, num_classes: int = -1, dtype: Any = None) -> Any:
    """Integer ``labels`` of any shape -> an array of that shape plus a last axis of
    ``num_classes``, 1 at each label and 0 elsewhere, as ``torch.nn.functional.one_hot``.

    ``num_classes=-1`` infers the count as the largest label + 1. ``dtype`` (a dtype object,
    e.g. ``logits.dtype``) defaults to int64, as PyTorch. Raises :class:`InputError` for
    labels that are not integers, negative, or not below ``num_classes`` (reading the labels'
    smallest and largest value back from the device).
    """
    xp = namespace(labels)
    if not xp.isdtype(labels.dtype, "integral"):
        raise InputError(f"one_hot: labels: expected an integer dtype (class indices), got "
                         f"{dtype_name(labels.dtype)}")
    count = as_int(num_classes)
    if count is None or count < -1:
        raise InputError(f"one_hot: expected num_classes to be -1 (infer) or an int >= 0, got "
                         f"{num_classes!r}")
    labels = _class_indices(xp, labels)
    size = math.prod(labels.shape)
    if size == 0 and count == -1:
        raise InputError("one_hot: cannot infer num_classes (-1) from empty labels; pass "
                         "num_classes")
    if size:
        low, high = to_host(xp.stack([xp.min(labels), xp.max(labels)])).tolist()
        if low < 0:
            raise InputError(f"one_hot: labels: expected values >= 0, got the smallest {low}")
        if count == -1:
            count = high + 1
        elif high >= count:
            raise InputError(f"one_hot: labels: expected values below num_classes={count}, "
                             f"got the largest {high}")
    return _one_hot(xp, labels, count, xp.int64 if dtype is None else dtype)


def _one_hot(xp: Any, labels: Any, num_classes: int, dtype: Any) -> Any:
    """int64 ``labels`` in [0, num_classes), not checked -> one-hot array in ``dtype``."""
    classes = xp.arange(num_classes, dtype=labels.dtype, device=labels.device)
    return xp.astype(labels[..., None] == classes, dtype)


def _class_indices(xp: Any, labels: Any) -> Any:
    """Labels as int64 (no copy if they are already): in a narrow dtype such as uint8 the
    class range and comparisons against it would wrap for more classes than the dtype holds."""
    return xp.astype(labels, xp.int64, copy=False)


def _scalar_or_array(value: Any) -> Any:
    """``value`` for the backend check: None for a Python number, which mixes with any backend."""
    return None if type(value) in (int, float) else value


def _check_dloss(dloss: Any, like: Any, what: str, shape: tuple[int, ...] = ()) -> None:
    """``dloss``, the upstream gradient of the loss, is a Python number or an array of
    ``shape`` (0-d for a reduced loss) and ``like``'s dtype (a float64 one would silently make
    a float32 gradient float64)."""
    if type(dloss) in (int, float):
        return
    if tuple(dloss.shape) != tuple(shape):
        kind = "a 0-d array (the gradient of the scalar loss)" if shape == () else \
            f"shape {tuple(shape)} (the per-element loss, reduction='none')"
        raise InputError(f"dloss: expected {kind}, got shape {tuple(dloss.shape)}")
    check_same_dtype(dloss, like, "dloss", what)


# --- mean squared error ---------------------------------------------------------------------

def mse_forward(pred: Any, target: Any, reduction: str = "mean") -> Any:
    """Squared differences of ``pred`` and ``target`` (shapes must match exactly), as
    ``torch.nn.functional.mse_loss``: per element ("none"), summed ("sum") or their mean."""
    xp = namespace(pred, target, names=("prediction", "target"))
    _check_regression(pred, target, reduction)
    diff = pred - target
    if reduction == "none":
        return diff * diff
    total = xp.sum(diff * diff)
    return total if reduction == "sum" else total / _size(pred)


def mse_backward(pred: Any, target: Any, dloss: Any = 1.0, reduction: str = "mean") -> Any:
    """Gradient of :func:`mse_forward` with respect to ``pred``. ``dloss`` is a Python number
    or a 0-d array; for "none" an array of the prediction's shape (or a number for every
    element)."""
    namespace(pred, target, _scalar_or_array(dloss), names=("prediction", "target", "dloss"))
    _check_regression(pred, target, reduction)
    _check_dloss(dloss, pred, "the prediction", tuple(pred.shape) if reduction == "none" else ())
    scale = 2.0 if reduction != "mean" else 2.0 / _size(pred)
    return (pred - target) * (dloss * scale)


def _check_regression(pred: Any, target: Any, reduction: Any) -> None:
    if reduction not in REDUCTIONS:
        raise InputError(f"mse_loss: expected reduction to be one of "
                         f"{', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    check_floating(pred, "prediction")
    check_same_shape(target, pred, "target", "the prediction")
    check_same_dtype(target, pred, "target", "the prediction")


def _size(x: Any) -> int:
    return math.prod(x.shape)


__all__ = ["cross_entropy_forward", "cross_entropy_backward", "softmax_cross_entropy_forward",
           "softmax_cross_entropy_backward", "one_hot", "mse_forward", "mse_backward",
           "softmax_forward", "REDUCTIONS"]
