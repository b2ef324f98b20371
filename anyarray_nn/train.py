"""The training loop: ``fit`` and ``evaluate``, the History they record, and callbacks.

``fit`` is the loop users write by hand (forward, loss, backward, optimizer step) with the
bookkeeping around it: epochs or a number of iterations, validation every epoch or every N
iterations, the loss and accuracy of every iteration and epoch, a progress bar, and
callbacks (learning-rate schedules, early stopping, periodic hooks such as checkpoints). With
a fixed seed a run is deterministic on one backend.

``fit`` refuses, before the first step, an optimizer built for another model. A step whose
input batch, loss or gradients hold NaN or infinite values is not applied: ``fit`` raises
:class:`NonFiniteError` naming the epoch, the step and what was not finite, with the
parameters, the optimizer's state and (for layers that replace them, as BatchNorm does) the
running statistics of the last good step. The check is folded into the one device-to-host
read a step makes anyway (the loss and the number of correct predictions).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import pathlib
import time
from typing import Any, Callable, Iterable

import numpy as np

from . import backend as _backend
from . import distributed, optim
from .errors import InputError, NonFiniteError, shorten

logger = logging.getLogger("anyarray_nn")


@dataclasses.dataclass
class History:
    """What ``fit`` recorded.

    ``iterations``: one dict per training step (``step``, ``epoch``, ``loss``, ``accuracy``,
    ``lr``). ``epochs``: one dict per finished epoch (``epoch``, ``loss``, ``accuracy``,
    ``seconds``, ``images_per_second`` and, when validation runs after each epoch,
    ``val_loss`` and ``val_accuracy``). ``validations``: one dict per validation (``step``,
    ``epoch``, ``val_loss``, ``val_accuracy``), also when it runs every N iterations
    (``val_every``), which adds nothing to the epoch rows.
    """

    iterations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    epochs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    validations: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def series(self, key: str, per: str = "epoch") -> list[Any]:
        """One recorded quantity as a list, e.g. ``history.series("val_accuracy")``.

        ``per``: ``"epoch"``, ``"iteration"`` or ``"validation"`` (the rows to read).
        """
        if per not in ("epoch", "iteration", "validation"):
            raise ValueError(f"History.series: expected per to be 'epoch', 'iteration' or "
                             f"'validation', got {per!r}")
        rows = {"epoch": self.epochs, "iteration": self.iterations,
                "validation": self.validations}[per]
        return [row[key] for row in rows if key in row]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (checkpoints store it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        """Rebuild from :meth:`to_dict` output; a ValueError names a part that is not a list
        of dicts (fit would count its entries as epochs or steps)."""
        parts = {k: data.get(k, []) for k in ("iterations", "epochs", "validations")}
        for key, rows in parts.items():
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise ValueError(f"History.from_dict: expected {key!r} to be a list of dicts, "
                                 f"got {shorten(rows, 60)}")
        return cls(**{k: list(rows) for k, rows in parts.items()})


@dataclasses.dataclass
class EvalResult:
    """What ``evaluate`` returns: mean loss, accuracy, and host arrays of the predictions and
    the true labels, in the loader's order."""

    loss: float
    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass
class TrainState:
    """Everything a callback may read or change while ``fit`` runs."""

    model: Any
    optimizer: Any
    history: History
    epoch: int = 0             # epochs started so far
    step: int = 0              # optimizer steps so far
    stop: bool = False         # set to True to end training after the current step
    last: dict[str, Any] = dataclasses.field(default_factory=dict)  # latest logged values
    validates: bool = False    # whether fit was given a val_loader


class Callback:
    """Base class: override the hooks you need. Each receives the :class:`TrainState`."""

    def on_train_begin(self, state: TrainState) -> None:
        """Before the first step."""

    def on_epoch_begin(self, state: TrainState) -> None:
        """Before the first step of each epoch."""

    def on_after_backward(self, state: TrainState) -> None:
        """After each backward pass, before the optimizer's step: the model's gradients are
        final here (all-reduced on every rank) and found finite; a callback may change them
        (``GradientClipping`` does)."""

    def on_iteration_end(self, state: TrainState) -> None:
        """After each optimizer step (``state.last`` has its loss and accuracy)."""

    def on_validation_end(self, state: TrainState) -> None:
        """After each validation (``state.last`` has ``val_loss`` and ``val_accuracy``)."""

    def on_epoch_end(self, state: TrainState) -> None:
        """After each epoch (its summary is ``state.history.epochs[-1]``)."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last step."""


class GradientClipping(Callback):
    """Clip the gradients before each optimizer step: by their total norm (``max_norm``,
    ``norm_type``; :func:`anyarray_nn.optim.clip_grad_norm`) and/or element by element
    (``clip_value``; :func:`anyarray_nn.optim.clip_grad_value`), the value clamp first.
    Each step's norm before clipping goes into the history as ``"grad_norm"``."""

    def __init__(self, max_norm: float | None = None, norm_type: float = 2.0,
                 clip_value: float | None = None) -> None:
        if max_norm is None and clip_value is None:
            raise ValueError("GradientClipping: expected max_norm or clip_value (or both), "
                             "got neither")
        name = "GradientClipping"  # the same checks as the functions', at construction
        if max_norm is not None:
            max_norm = optim._clip_number(name, "max_norm", max_norm, 0.0, False)
        norm_type = optim._clip_number(name, "norm_type", norm_type, 0.0, True, allow_inf=True)
        if clip_value is not None:
            clip_value = optim._clip_number(name, "clip_value", clip_value, 0.0, False)
        self.max_norm, self.norm_type, self.clip_value = max_norm, norm_type, clip_value
        self.norm: float | None = None

    def on_after_backward(self, state: TrainState) -> None:
        if self.clip_value is not None:
            optim.clip_grad_value(state.model, self.clip_value)
        if self.max_norm is not None:
            self.norm = optim.clip_grad_norm(state.model, self.max_norm, self.norm_type)

    def on_iteration_end(self, state: TrainState) -> None:
        if self.norm is not None:
            state.last["grad_norm"] = self.norm
            state.history.iterations[-1]["grad_norm"] = self.norm


class LearningRateSchedule(Callback):
    """Set ``optimizer.lr = schedule(t)`` before each epoch (``per="epoch"``, t counts from 0)
    or before each step (``per="iteration"``)."""

    def __init__(self, schedule: Callable[[int], float], per: str = "epoch") -> None:
        if per not in ("epoch", "iteration"):
            raise ValueError(f"LearningRateSchedule: expected per='epoch' or 'iteration', "
                             f"got {per!r}")
        self.schedule, self.per = schedule, per

    def on_train_begin(self, state: TrainState) -> None:
        if self.per == "iteration":
            state.optimizer.lr = float(self.schedule(state.step))

    def on_epoch_begin(self, state: TrainState) -> None:
        if self.per == "epoch":
            state.optimizer.lr = float(self.schedule(state.epoch - 1))

    def on_iteration_end(self, state: TrainState) -> None:
        if self.per == "iteration":
            state.optimizer.lr = float(self.schedule(state.step))


class _Monitor:
    """Tracks the best value of a logged quantity and how many validations since it improved."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: expected mode 'min' or 'max', got {mode!r}")
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, min_delta
        self.best: float | None = None
        self.waited = 0

    def start(self, state: TrainState) -> None:
        """Forget any earlier run (a callback may be reused) and check that this one validates:
        the monitored value is read after each validation, so without one nothing happens."""
        self.best, self.waited = None, 0
        if not state.validates:
            raise ValueError(f"{self.owner}: monitor={self.monitor!r} is checked after each "
                             f"validation, but fit was given no val_loader; pass "
                             f"val_loader=... to fit")

    def improved(self, state: TrainState) -> bool:
        """Read the monitored value from ``state.last``; True if it is a new best."""
        if self.monitor not in state.last:
            raise ValueError(f"{self.owner}: monitor={self.monitor!r} is not logged; available: "
                             f"{', '.join(map(repr, sorted(state.last)))}")
        value = state.last[self.monitor]
        if self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                 else value > self.best + self.min_delta):
            self.best, self.waited = value, 0
            return True
        self.waited += 1
        return False


class ReduceOnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` (default ``"val_loss"``) has
    not improved for ``patience`` validations, down to ``min_lr``."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 3,
                 mode: str = "min", min_lr: float = 0.0, min_delta: float = 0.0) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"ReduceOnPlateau: expected 0 < factor < 1, got {factor}")
        self.tracker = _Monitor("ReduceOnPlateau", monitor, mode, min_delta)
        self.factor, self.patience, self.min_lr = factor, patience, min_lr

    def on_train_begin(self, state: TrainState) -> None:
        self.tracker.start(state)

    def on_validation_end(self, state: TrainState) -> None:
        if not self.tracker.improved(state) and self.tracker.waited >= self.patience:
            if state.optimizer.lr > self.min_lr:  # never up to min_lr from below
                state.optimizer.lr = max(self.min_lr, state.optimizer.lr * self.factor)
            self.tracker.waited = 0


class EarlyStopping(Callback):
    """Stop when ``monitor`` (e.g. ``"val_loss"``) has not improved for ``patience``
    validations; with ``restore_best`` the best parameters and buffers (BatchNorm's running
    statistics) are put back at the end. Each ``fit`` run starts afresh."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0, restore_best: bool = True) -> None:
        self.tracker = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.patience, self.restore_best = patience, restore_best
        self.best_params: dict[str, np.ndarray] | None = None
        self.best_buffers: dict[str, np.ndarray] | None = None

    @property
    def best(self) -> float | None:
        """The best monitored value so far."""
        return self.tracker.best

    def on_train_begin(self, state: TrainState) -> None:
        self.tracker.start(state)
        self.best_params = self.best_buffers = None

    def on_validation_end(self, state: TrainState) -> None:
        if self.tracker.improved(state):
            if self.restore_best:
                self.best_params = _host_copy(state.model.params())
                self.best_buffers = _host_copy(state.model.buffers())
        elif self.tracker.waited >= self.patience:
            state.stop = True

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_params is not None:
            _copy_into(state.model.params(), self.best_params)
            _copy_into(state.model.buffers(), self.best_buffers or {})


class Lookahead(Callback):
    """Lookahead (Zhang et al., 2019) over the parameters and float buffers, with a pull that
    grows over training, as in the fast CIFAR-10 recipes.

    A slow copy starts at the initial weights. Every ``every`` steps it moves toward the
    weights and the weights are set to it: ``slow = d slow + (1 - d) w; w = slow``, with
    ``d = decay * (t / total_steps) ** power`` at step t (no pull early, a strong one late).
    At the end of each epoch, and of training, the weights are set to the slow copy. The
    slow copy lives beside the weights (one more copy of the model) and is not in
    checkpoints: a resumed run starts it afresh from the weights it resumes with.
    """

    def __init__(self, total_steps: int, every: int = 5, decay: float = 0.95 ** 5,
                 power: float = 3.0) -> None:
        if not (isinstance(total_steps, int) and total_steps >= 1 and isinstance(every, int)
                and every >= 1 and 0.0 <= decay <= 1.0 and power >= 0):
            raise ValueError(f"Lookahead: expected total_steps >= 1, every >= 1 (ints), "
                             f"0 <= decay <= 1 and power >= 0, got total_steps={total_steps!r}"
                             f", every={every!r}, decay={decay!r}, power={power!r}")
        self.total_steps, self.every, self.decay, self.power = total_steps, every, decay, power
        self.slow: dict[str, Any] = {}

    def _weights(self, state: TrainState) -> dict[str, Any]:
        arrays = {**state.model.params(), **state.model.buffers()}
        return {k: v for k, v in arrays.items() if _is_floating(_backend.namespace(v), v)}

    def on_train_begin(self, state: TrainState) -> None:
        self.slow = {k: _backend.asarray_like(v, v, copy=True)
                     for k, v in self._weights(state).items()}

    def on_iteration_end(self, state: TrainState) -> None:
        if state.step % self.every == 0:
            self._pull(state, self.decay * min(1.0, state.step / self.total_steps) ** self.power)

    def on_epoch_end(self, state: TrainState) -> None:
        self._pull(state, 1.0)

    def on_train_end(self, state: TrainState) -> None:
        self._pull(state, 1.0)  # also when training stopped within an epoch

    def _pull(self, state: TrainState, d: float) -> None:
        for key, w in self._weights(state).items():
            slow = self.slow[key]
            slow *= d
            slow += (1.0 - d) * w
            w[...] = slow


def _host_copy(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """Host copies of a model's ``params()`` or ``buffers()``."""
    return {key: _backend.to_host(value).copy() for key, value in arrays.items()}


def _copy_into(arrays: dict[str, Any], saved: dict[str, np.ndarray]) -> None:
    """Write ``saved`` host copies back into the model's arrays, in place."""
    for key, value in arrays.items():
        value[...] = _backend.asarray_like(saved[key], value)


class Every(Callback):
    """Call ``fn(state)`` every ``n`` iterations (or epochs, with ``per="epoch"``): the hook
    periodic work such as checkpoints uses."""

    def __init__(self, n: int, fn: Callable[[TrainState], None], per: str = "iteration") -> None:
        if n < 1 or per not in ("iteration", "epoch"):
            raise ValueError(f"Every: expected n >= 1 and per 'iteration' or 'epoch', got "
                             f"n={n!r}, per={per!r}")
        self.n, self.fn, self.per = n, fn, per

    def on_iteration_end(self, state: TrainState) -> None:
        if self.per == "iteration" and state.step % self.n == 0:
            self.fn(state)

    def on_epoch_end(self, state: TrainState) -> None:
        if self.per == "epoch" and state.epoch % self.n == 0:
            self.fn(state)


class HistoryLogger(Callback):
    """Write the history to a file as training goes (Keras's ``CSVLogger``): one row per
    epoch (``per="epoch"``: ``history.epochs``' summaries) or per step (``per="iteration"``),
    as CSV for a ``.csv`` path or as JSON lines (one object per line) for ``.jsonl``. Each
    row is written and flushed at once, so a killed run keeps every finished row. A new file
    replaces an old one unless ``append=True`` (a resumed run continues its log). Only rank 0
    writes on several ranks (every rank sees the same values).

    A CSV file's columns are the first row's keys (in a continued file, the file's header);
    a value a later row adds (a validation that started later) is left out of the CSV,
    logged once on the "anyarray_nn" logger, and kept in JSON lines."""

    def __init__(self, path: Any, per: str = "epoch", append: bool = False) -> None:
        self.path = pathlib.Path(path)
        if self.path.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"HistoryLogger: expected a path ending in .csv or .jsonl, got "
                             f"{str(path)!r}")
        if per not in ("epoch", "iteration"):
            raise ValueError(f"HistoryLogger: expected per='epoch' or 'iteration', got {per!r}")
        if not isinstance(append, bool):
            raise ValueError(f"HistoryLogger: expected append to be True or False, got "
                             f"{append!r}")
        self.per, self.append = per, append
        self.columns: list[str] | None = None
        self._dropped: set[str] = set()

    def on_train_begin(self, state: TrainState) -> None:
        self.columns = None
        if not distributed.is_main():
            return
        if self.append and self.path.suffix == ".csv" and self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self.columns = header or None
        elif not self.append:
            self.path.write_text("")  # a fresh log (an OSError here names the path)

    def on_iteration_end(self, state: TrainState) -> None:
        if self.per == "iteration":
            self._write(state.history.iterations[-1])

    def on_epoch_end(self, state: TrainState) -> None:
        if self.per == "epoch":
            self._write(state.history.epochs[-1])

    def _write(self, row: dict[str, Any]) -> None:
        if not distributed.is_main():
            return
        with open(self.path, "a", newline="") as f:
            if self.path.suffix == ".jsonl":
                f.write(json.dumps(row, default=float) + "\n")
                return
            writer = csv.writer(f)
            if self.columns is None:
                self.columns = list(row)
                writer.writerow(self.columns)
            new = set(row) - set(self.columns) - self._dropped
            if new:
                self._dropped |= new
                logger.info("HistoryLogger: %s: %s not in the CSV's columns; left out",
                            self.path, ", ".join(sorted(new)))
            writer.writerow(["" if row.get(c) is None else row[c] for c in self.columns])


def _hits(xp: Any, logits: Any, targets: Any, ignore_index: Any) -> tuple[Any, Any, Any, Any]:
    """The predicted classes (arg-max over axis 1), the target classes, and the numbers of
    correct and of counted predictions, on the device. Targets are class indices (those equal
    to ``ignore_index`` are not counted) or probabilities of the logits' shape (their arg-max
    is the class)."""
    predicted = xp.argmax(logits, axis=1)
    if tuple(targets.shape) == tuple(logits.shape) and _is_floating(xp, targets):
        targets = xp.argmax(targets, axis=1)
        counted = xp.ones(predicted.shape, dtype=xp.bool)
    else:
        counted = (targets != ignore_index if ignore_index is not None
                   else xp.ones(predicted.shape, dtype=xp.bool))
    correct = xp.sum(xp.astype((predicted == targets) & counted, xp.int64))
    return predicted, targets, correct, xp.sum(xp.astype(counted, xp.int64))


def _accuracy(correct: int, counted: int) -> float:
    """correct / counted; 0.0 when nothing was counted (every label ignored)."""
    return correct / counted if counted else 0.0


def _parts(batch: Any) -> tuple[Any, ...]:
    """A batch's arrays: itself, or the tuple (or list) of one array per model input or
    output."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _batch_length(yb: Any) -> int:
    return int(_parts(yb)[0].shape[0])


def evaluate(model: Any, loss_fn: Any, loader: Iterable[tuple[Any, Any]]) -> EvalResult:
    """Mean loss and accuracy of ``model`` over ``loader`` (evaluation mode), with the
    predictions and labels on the host. Labels equal to the loss's ``ignore_index`` are not
    counted in the accuracy; probability targets count as their most probable class.

    For a model with several inputs or outputs the batches hold a tuple of arrays for each
    (see :func:`fit`); the accuracy and the predictions are those of the first output."""
    total_loss, correct, counted, count = 0.0, 0, 0, 0
    predictions, labels = [], []
    ignore_index = getattr(loss_fn, "ignore_index", None)
    shared = distributed.is_distributed(model)
    if shared:
        _check_sharded(loader, "evaluate", "loader")
    for xb, yb in loader:
        outputs = model.forward(xb, train=False)
        logits, targets = _parts(outputs)[0], _parts(yb)[0]
        xp = _backend.namespace(logits)
        n = _batch_length(yb)
        total_loss += float(loss_fn.forward(outputs, yb)) * n
        predicted, classes, hits, counts = _hits(xp, logits, targets, ignore_index)
        correct, counted = correct + int(hits), counted + int(counts)
        count += n
        predictions.append(_backend.to_host(predicted).astype(np.int64))
        labels.append(_backend.to_host(classes).astype(np.int64))
    if shared:  # every rank reports the whole data set: sums and predictions of all ranks
        total_loss, correct, counted, count = distributed.allreduce_sum(
            np.array([total_loss, correct, counted, count], dtype=np.float64)).tolist()
        predictions, labels = _in_batch_order(predictions), _in_batch_order(labels)
    if count == 0:
        raise ValueError("evaluate: the loader produced no batches")
    return EvalResult(total_loss / count, _accuracy(int(correct), int(counted)),
                      np.concatenate(predictions), np.concatenate(labels))


def _in_batch_order(parts: list[np.ndarray]) -> list[np.ndarray]:
    """The ranks' per-batch arrays ``parts`` gathered, batch by batch in rank order: the
    order one process would have produced."""
    lengths = distributed.allgather(np.array([len(p) for p in parts], dtype=np.int64))
    values = distributed.allgather(np.concatenate(parts) if parts else np.zeros(0, np.int64))
    pieces = [np.split(v, np.cumsum(n)[:-1]) for v, n in zip(values, lengths)]
    return [piece for batch in zip(*pieces) for piece in batch]


def _check_sharded(loader: Any, who: str, what: str) -> None:
    """Refuse a loader that is not sharded over the ranks of a distributed model (each rank
    would go through every example)."""
    size = distributed.world_size()
    if getattr(loader, "world_size", None) != size:
        raise ValueError(f"{who}: the model is trained on {size} ranks, but the {what} is not "
                         f"sharded over them (world_size "
                         f"{getattr(loader, 'world_size', None)!r}); make it with "
                         f"DataLoader(..., shard=anyarray_nn.distributed.shard())")


def fit(model: Any, loss_fn: Any, optimizer: Any, train_loader: Any, *,
        epochs: int | None = None, iterations: int | None = None, val_loader: Any = None,
        val_every: int | None = None, callbacks: Iterable[Callback] = (),
        progress: bool = True, history: History | None = None) -> History:
    """Train ``model`` on ``train_loader`` for ``epochs`` epochs or ``iterations`` steps.

    With ``val_loader``, validation runs after every epoch, or every ``val_every``
    iterations. ``callbacks`` see every step, validation and epoch. ``progress`` shows a
    tqdm bar with the running loss and accuracy. Passing a ``history`` continues it.
    Returns the :class:`History`.

    A model with several inputs takes batches whose ``x`` is a tuple of arrays, one per input;
    one with several outputs takes a tuple of targets and a loss for all of them
    (:class:`~anyarray_nn.losses.Combined`). The accuracy recorded is the first output's.

    Raises ValueError before the first step for an ``optimizer`` built for another model,
    and :class:`NonFiniteError` for a step whose input batch, loss or gradients hold NaN or
    infinite values; that step is not applied (the parameters, the optimizer's state and
    BatchNorm's statistics stay those of the last good step, ready to save).
    """
    if (epochs is None) == (iterations is None):
        raise ValueError("fit: give exactly one of epochs= or iterations=")
    limit = epochs if epochs is not None else iterations
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"fit: expected a positive number of epochs or iterations, got {limit!r}")
    if val_every is not None and (val_loader is None or val_every < 1):
        raise ValueError("fit: val_every needs a val_loader and must be >= 1")
    if hasattr(train_loader, "__len__") and len(train_loader) == 0:
        raise ValueError(_no_batches_message(train_loader))
    if epochs is not None and not hasattr(train_loader, "__len__"):
        raise ValueError(f"fit: epochs= needs a training loader with len() (batches per "
                         f"epoch), and {type(train_loader).__name__} has none; use iterations=")
    _check_optimizer_is_for(model, optimizer)
    if distributed.is_distributed(model):
        _check_sharded(train_loader, "fit", "training loader")
        if val_loader is not None:
            _check_sharded(val_loader, "fit", "validation loader")
        progress = progress and distributed.is_main()
    callbacks = list(callbacks)
    state = TrainState(model, optimizer, history or History(), validates=val_loader is not None)
    state.epoch = len(state.history.epochs)
    state.step = len(state.history.iterations)
    total_steps = epochs * len(train_loader) if epochs is not None else int(iterations or 0)
    for cb in callbacks:
        cb.on_train_begin(state)
    bar = _progress_bar(total_steps, progress)
    try:
        with distributed.abort_on_error():  # one rank's error stops every rank
            _train(state, model, loss_fn, optimizer, train_loader, total_steps, val_loader,
                   val_every, callbacks, bar)
    finally:  # also on an error or Ctrl-C: a bar left open garbles the next one
        if bar is not None:
            bar.close()
    for cb in callbacks:
        cb.on_train_end(state)
    return state.history


def _train(state: TrainState, model: Any, loss_fn: Any, optimizer: Any, train_loader: Any,
           total_steps: int, val_loader: Any, val_every: int | None,
           callbacks: list[Callback], bar: Any) -> None:
    """The loop of :func:`fit`, epoch by epoch, until ``total_steps`` or a callback stops it."""
    steps_done = 0
    shared = distributed.is_distributed(model)  # then each step reports the global batch
    while not state.stop and steps_done < total_steps:
        state.epoch += 1
        for cb in callbacks:
            cb.on_epoch_begin(state)
        start, seen, epoch_loss, epoch_correct = time.perf_counter(), 0, 0.0, 0
        epoch_counted = 0
        validating = 0.0  # seconds of val_every validations, left out of the epoch's time
        for xb, yb in train_loader:
            loss_value, correct, counted = _forward_backward(state, model, loss_fn, xb, yb)
            for cb in callbacks:
                cb.on_after_backward(state)
            optimizer.step()  # only now: every value it reads was found finite
            n = _batch_length(yb)
            if shared:  # the whole global batch's values
                loss_value, n, correct, counted = _global_batch(loss_value, n, correct,
                                                                counted)
            state.step += 1
            steps_done += 1
            seen += n
            epoch_loss += loss_value * n
            epoch_correct += correct
            epoch_counted += counted
            state.last = {"step": state.step, "epoch": state.epoch, "loss": loss_value,
                          "accuracy": _accuracy(correct, counted), "lr": optimizer.lr}
            state.history.iterations.append(dict(state.last))
            for cb in callbacks:
                cb.on_iteration_end(state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=state.epoch, loss=f"{loss_value:.4f}",
                                acc=f"{_accuracy(correct, counted):.3f}", refresh=False)
            if val_every is not None and state.step % val_every == 0:
                began = time.perf_counter()
                _validate(state, model, loss_fn, val_loader, callbacks)
                validating += time.perf_counter() - began
            if state.stop or steps_done >= total_steps:
                break
        if seen == 0:  # a loader without __len__ that yields nothing would loop forever
            raise ValueError(_no_batches_message(train_loader))
        seconds = time.perf_counter() - start - validating
        summary = {"epoch": state.epoch, "loss": epoch_loss / seen,
                   "accuracy": _accuracy(epoch_correct, epoch_counted), "seconds": seconds,
                   "images_per_second": seen / seconds if seconds > 0 else None,
                   "steps": state.step}
        if val_loader is not None and val_every is None:
            summary.update(_validate(state, model, loss_fn, val_loader, callbacks))
        state.history.epochs.append(summary)
        for cb in callbacks:
            cb.on_epoch_end(state)


def _global_batch(loss: float, n: int, correct: int,
                  counted: int) -> tuple[float, int, int, int]:
    """This rank's loss and counts summed with every rank's: the global batch's mean loss,
    its size and its numbers of correct and of counted predictions."""
    total, n, correct, counted = distributed.allreduce_sum(
        np.array([loss * n, n, correct, counted], dtype=np.float64)).tolist()
    return total / n, int(n), int(correct), int(counted)


def _check_optimizer_is_for(model: Any, optimizer: Any) -> None:
    """Refuse an optimizer that updates other arrays than ``model``'s parameters: ``fit``
    would run and the model would never change. The same arrays pass, so an optimizer of the
    model trains its :class:`~anyarray_nn.DataParallel` wrapper and the other way round."""
    theirs = getattr(optimizer, "model", None)  # None: an optimizer class of the user's own
    if theirs is None or theirs is model:
        return
    ours, their_params = model.params(), theirs.params()
    differ = [key for key, value in ours.items() if their_params.get(key) is not value]
    extra = [key for key in their_params if key not in ours]
    if not differ and not extra:  # the same arrays: a model and its DataParallel wrapper
        return
    problems = []
    if differ:
        problems.append(f"its arrays for {_some(differ)} are not the model's")
    if extra:
        problems.append(f"it also updates {_some(extra)}, which the model lacks")
    name = type(optimizer).__name__
    raise ValueError(f"fit: the optimizer {name} was built for another model ({_describe(theirs)})"
                     f" than the one to train ({_describe(model)}): {'; '.join(problems)}; its "
                     f"steps would not train this model. Build it from the model you train: "
                     f"{name}(model, ...)")


def _describe(model: Any) -> str:
    return f"{type(model).__name__} at {id(model):#x}"


def _some(keys: list[str], limit: int = 4) -> str:
    """``keys`` for a message: the first ``limit`` and how many more."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _forward_backward(state: TrainState, model: Any, loss_fn: Any, xb: Any,
                      yb: Any) -> tuple[float, int, int]:
    """Forward, loss and backward of one batch: the step up to the optimizer's update.

    Returns the loss and the numbers of correct and of counted predictions, read from the
    device in one read together with a screen for non-finite values (see :func:`_step_values`). Only if the
    screen is not finite does the slow diagnosis run; if it finds a NaN or infinity (not
    merely a sum of large values that overflowed), the step raises :class:`NonFiniteError`.
    An :class:`InputError` of the step (the loss's check of the logits) is raised again
    with the epoch and the step, as a NonFiniteError where values were not finite. On any
    error the layers' buffers go back to their values before the step (for layers that
    replace them rather than write into them, as BatchNorm does: nothing is copied).
    """
    stores = [layer.buffers for layer in getattr(model, "layers", ()) if layer.buffers]
    saved = [dict(store) for store in stores]  # references only: no array is copied
    logits = None
    try:
        logits = model.forward(xb, train=True)
        loss = loss_fn.forward(logits, yb)
        model.backward(loss_fn.backward())
        grads = model.grads()
        loss_value, correct, counted, screen = _step_values(
            xb, logits, yb, loss, grads, getattr(loss_fn, "ignore_index", None))
    except InputError as exc:
        _restore(stores, saved)
        problems = _non_finite(model, xb, logits)
        if isinstance(exc, NonFiniteError) or problems:
            raise NonFiniteError(_not_applied(state, [*problems, f"the loss: {exc}"])) from exc
        raise type(exc)(f"fit: epoch {state.epoch}, step {state.step + 1}: {exc}") from exc
    except BaseException:
        _restore(stores, saved)
        raise
    if math.isfinite(screen):
        return loss_value, correct, counted
    problems = _non_finite(model, xb, logits, loss_value, grads)
    if not problems:  # finite values whose sum overflowed: a good step
        return loss_value, correct, counted
    _restore(stores, saved)
    raise NonFiniteError(_not_applied(state, problems))


def _step_values(xb: Any, logits: Any, yb: Any, loss: Any, grads: dict[str, Any],
                 ignore_index: Any) -> tuple[float, int, int, float]:
    """The loss, the numbers of correct and of counted predictions (see :func:`_hits`), and a
    screen: the loss plus the sums of the input batch and of every gradient, NaN or infinite
    if any of them holds a NaN or an infinity. One device-to-host read for all four, the read
    a step makes anyway."""
    first = _parts(logits)[0]
    xp = _backend.namespace(first)
    _, _, correct, counted = _hits(xp, first, _parts(yb)[0], ignore_index)
    sums = [xp.sum(g) for g in grads.values()]
    sums += [xp.sum(x) for x in _parts(xb) if _is_floating(xp, x)]
    screen = sum(sums, loss)
    # In the loss's dtype: float32 counts exactly up to 2**24 predictions per batch.
    values = xp.stack([loss, xp.astype(correct, loss.dtype), xp.astype(counted, loss.dtype),
                       xp.astype(screen, loss.dtype)])
    loss_value, hits, counts, screen_value = _backend.to_host(values).tolist()
    return loss_value, int(hits), int(counts), screen_value


def _non_finite(model: Any, xb: Any, logits: Any, loss_value: float | None = None,
                grads: dict[str, Any] | None = None) -> list[str]:
    """What in the step is NaN or infinite, one phrase each (the slow path: one read per
    array); empty if nothing is."""
    problems = []
    inputs = _parts(xb)
    for i, x in enumerate(inputs):
        if not hasattr(x, "dtype"):  # a non-array that failed the forward
            continue
        xp = _backend.namespace(x)
        if _is_floating(xp, x):
            nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int64)))
            inf = int(xp.sum(xp.astype(xp.isinf(x), xp.int64)))
            if nan or inf:
                what = "the input batch" if len(inputs) == 1 else f"input {i} of the batch"
                problems.append(f"{what} (shape {tuple(x.shape)}) has {nan} NaN and {inf} "
                                f"infinite values")
    broken = _non_finite_keys(model.params())
    if broken:  # set by hand, loaded, or an update that overflowed
        problems.append(f"parameters already not finite before this step: {_some(broken)}")
    outputs = () if logits is None else _parts(logits)
    for i, out in enumerate(outputs):
        if _non_finite_keys({"output": out}):
            xp = _backend.namespace(out)
            bad = int(xp.sum(xp.astype(~xp.isfinite(out), xp.int64)))
            what = "the model's output" if len(outputs) == 1 else f"the model's output {i}"
            problems.append(f"{what} has {bad} NaN or infinite values")
    if loss_value is not None and not math.isfinite(loss_value):
        problems.append(f"the loss is {loss_value}")
    bad_grads = _non_finite_keys(grads or {})
    if bad_grads:
        problems.append(f"gradients with NaN or infinite values: {_some(bad_grads)}")
    return problems


def _non_finite_keys(arrays: dict[str, Any]) -> list[str]:
    """The keys of the arrays holding a NaN or an infinity."""
    bad = []
    for key, a in arrays.items():
        xp = _backend.namespace(a)
        if not bool(xp.all(xp.isfinite(a))):
            bad.append(key)
    return bad


def _is_floating(xp: Any, x: Any) -> bool:
    return xp.isdtype(x.dtype, "real floating")


def _not_applied(state: TrainState, problems: list[str]) -> str:
    """The message of a step refused for NaN or infinite values."""
    return (f"fit: epoch {state.epoch}, step {state.step + 1}: NaN or infinite values, so this "
            f"step was not applied (the parameters, the optimizer's state and the BatchNorm "
            f"statistics are those after step {state.step}): {'; '.join(problems)}")


def _restore(stores: list[dict[str, Any]], saved: list[dict[str, Any]]) -> None:
    """Put the layers' buffers back as they were before the step."""
    for store, before in zip(stores, saved):
        store.clear()
        store.update(before)


def _no_batches_message(loader: Any) -> str:
    """Why ``fit`` cannot train on ``loader``: it yields no batches (with the sizes a
    DataLoader exposes)."""
    message = "fit: the training loader yields no batches"
    if all(hasattr(loader, name) for name in ("num_examples", "batch_size", "drop_last")):
        n = loader.num_examples
        message += f" ({n} examples, batch_size {loader.batch_size}, drop_last={loader.drop_last})"
        if n > 0 and loader.drop_last:
            message += (f": drop_last drops the one partial batch; use a batch_size <= {n} "
                        f"or drop_last=False")
    return message


def _validate(state: TrainState, model: Any, loss_fn: Any, loader: Any,
              callbacks: list[Callback]) -> dict[str, float]:
    result = evaluate(model, loss_fn, loader)
    values = {"val_loss": result.loss, "val_accuracy": result.accuracy}
    state.last = {**state.last, **values}
    state.history.validations.append({"step": state.step, "epoch": state.epoch, **values})
    for cb in callbacks:
        cb.on_validation_end(state)
    return values


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)
