"""Optimizers. Each updates the model's parameters in place from ``model.grads()``.

With w a parameter, g its gradient, alpha the learning rate and lambda the weight decay:

SGD, ``form="ema"`` (the course framework; momentum is a moving average of gradients)
    m = mu m + (1 - mu) g
    w = w - alpha (m + lambda w)
SGD, ``form="classic"`` (PyTorch's ``torch.optim.SGD``)
    g = g + lambda w;   m = mu m + g;   w = w - alpha m
SGD, ``form="nesterov"`` (PyTorch's ``SGD(nesterov=True)``)
    g = g + lambda w;   m = mu m + g;   w = w - alpha (g + mu m)
Adam (L2 weight decay added to the gradient, as ``torch.optim.Adam``)
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    w = w - alpha / (1 - b1^t) * m / (sqrt(v / (1 - b2^t)) + eps)
AdamW (decoupled weight decay, as ``torch.optim.AdamW``)
    w = w (1 - alpha lambda), then the Adam step without decay
RMSProp (as ``torch.optim.RMSprop``)
    g = g + lambda w;   v = rho v + (1 - rho) g^2;   w = w - alpha g / (sqrt(v) + eps)

Every optimizer takes ``no_decay``: parameter names (the part after the layer name) that get
no weight decay, e.g. ``no_decay=("b", "gamma", "beta")`` for biases and normalization.

Every optimizer takes ``lr_scale``: a factor on the learning rate of some parameters, keyed by
a full parameter key (``"conv1.W"``) or a parameter name (``"beta"``: every batch norm shift);
a full key wins over a name. The factor scales the whole update, weight decay included, as a
PyTorch parameter group with its own ``lr`` does. A factor of 0 freezes the parameter, e.g. a
fixed whitening layer: ``lr_scale={"whiten.W": 0.0, "gamma": 0.0, "beta": 64.0}``. Schedules
set ``lr`` and the factors follow it. A key that matches no parameter is refused (a typo would
otherwise change nothing, silently).

``state_dict()`` / ``load_state_dict()`` save and restore hyper-parameters, the step count and
every per-parameter slot (``momentum``, ``m``, ``v``).

What is refused, with a ValueError naming the optimizer, the option, the range and the value:
a model without trainable parameters (at construction); a hyper-parameter that is not a finite
number in its range (at construction, in ``load_state_dict``, and at every ``step()``, which
sees a value set since by a schedule or by hand before any parameter changes); a loaded state
whose step count is not an integer >= 0 or whose slots hold NaN or infinite values (or
negative ones in ``v``, the running mean of squared gradients).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import backend as _backend
from .errors import as_int, shorten
from .functional._fast import cuda_kernels


class Optimizer:
    """Base class. Subclasses name their per-parameter ``slots`` and implement ``_update``."""

    slots: tuple[str, ...] = ()
    nonnegative_slots: tuple[str, ...] = ()  # running means of squares: a negative one is NaN

    def __init__(self, model: Any, lr: float, weight_decay: float = 0.0,
                 no_decay: tuple[str, ...] = (), lr_scale: dict[str, float] | None = None
                 ) -> None:
        _check_model(type(self).__name__, model)
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.no_decay = no_decay  # parameter names without decay, e.g. ("b", "gamma")
        self.lr_scale = {} if lr_scale is None else lr_scale  # key or name -> factor on lr
        self.step_count = 0
        self.state: dict[str, dict[str, Any]] = {}

    def _validate(self) -> None:
        """Check the hyper-parameters (at construction and after ``load_state_dict``)."""
        # lr 0 is allowed, as in PyTorch: a schedule decaying to 0 ends there, and the
        # optimizer must load back from a checkpoint written at that point.
        self.lr = self._check_hyper("lr", self.lr, low=0.0)
        self.weight_decay = self._check_hyper("weight_decay", self.weight_decay, low=0.0)
        if isinstance(self.no_decay, str) or not all(isinstance(n, str) for n in self.no_decay):
            raise ValueError(f"{type(self).__name__}: expected no_decay to be a sequence of "
                             f"parameter names, e.g. ('b',), got {self.no_decay!r}")
        self.no_decay = tuple(self.no_decay)
        self._validate_lr_scale()

    def _validate_lr_scale(self) -> None:
        """``lr_scale`` maps keys or names of this model's parameters to finite factors >= 0."""
        name = type(self).__name__
        if not isinstance(self.lr_scale, dict) or not all(isinstance(k, str)
                                                          for k in self.lr_scale):
            raise ValueError(f"{name}: expected lr_scale to be a dict of parameter keys or "
                             f"names to factors, e.g. {{'beta': 64.0}}, got "
                             f"{shorten(self.lr_scale, 60)}")
        keys = list(self.model.params())
        listed = ", ".join(keys)
        listed = listed if len(listed) <= 200 else listed[:197] + "..."
        known = set(keys) | {key.rsplit(".", 1)[-1] for key in keys}
        scales = {}
        for key, factor in self.lr_scale.items():
            if key not in known:
                raise ValueError(f"{name}: lr_scale names {key!r}, which is neither a "
                                 f"parameter key nor a parameter name of the model (keys: "
                                 f"{listed})")
            scales[key] = self._check_hyper(f"lr_scale[{key!r}]", factor, low=0.0)
        self.lr_scale = scales

    def _lr_of(self, key: str) -> float:
        """The learning rate of parameter ``key``: ``lr`` times its ``lr_scale`` factor."""
        scale = self.lr_scale.get(key, self.lr_scale.get(key.rsplit(".", 1)[-1], 1.0))
        return self.lr * scale

    def step(self) -> None:
        """Apply one update to every parameter from the gradients of the last backward.

        Everything is checked before the first parameter changes, so a failed step leaves
        the model and the optimizer as they were.
        """
        params, grads = self.model.params(), self.model.grads()
        try:  # a schedule or a hand may have set a hyper-parameter since: check them again
            self._validate()
        except ValueError as exc:
            raise ValueError(f"{exc}; it was set after the optimizer was built (by a "
                             f"learning-rate schedule or by hand), so step "
                             f"{self.step_count + 1} was not applied") from None
        for key, w in params.items():
            g = grads.get(key)
            if g is None or not hasattr(g, "shape") or tuple(g.shape) != tuple(w.shape):
                found = "none" if g is None else f"shape {tuple(getattr(g, 'shape', ()))}"
                raise ValueError(f"{type(self).__name__}: expected a gradient of shape "
                                 f"{tuple(w.shape)} for {key!r}, got {found}")
            if key in self.state:
                self._check_state(key, w)
        self.step_count += 1
        for key, w in params.items():
            state = self.state.get(key)
            if state is None:
                xp = _backend.namespace(w)
                state = self.state[key] = {s: xp.zeros_like(w) for s in self.slots}
            decay = 0.0 if key.rsplit(".", 1)[-1] in self.no_decay else self.weight_decay
            self._update(w, grads[key], state, decay, self._lr_of(key))

    def _check_state(self, key: str, w: Any) -> None:
        for slot, value in self.state[key].items():
            here = (_backend.backend_name_of(value), _backend.dtype_name(value.dtype))
            there = (_backend.backend_name_of(w), _backend.dtype_name(w.dtype))
            if tuple(value.shape) != tuple(w.shape):
                raise ValueError(
                    f"{type(self).__name__}: the {slot!r} state of {key!r} has shape "
                    f"{tuple(value.shape)} but the parameter now has shape {tuple(w.shape)}: "
                    f"the model changed; create the optimizer afresh")
            if here != there:
                raise _backend.BackendMismatchError(
                    f"{type(self).__name__}: the {slot!r} state of {key!r} is {here[0]} "
                    f"{here[1]} but the parameter is {there[0]} {there[1]}. After "
                    f"model.to(...), move the state with "
                    f"opt.load_state_dict(opt.state_dict()), or create the optimizer afterwards")

    def _update(self, w: Any, g: Any, state: dict[str, Any], wd: float, lr: float) -> None:
        """Update ``w`` in place; ``wd`` and ``lr`` are this parameter's weight decay and
        learning rate."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        """Hyper-parameters as JSON-ready data (what ``state_dict()["config"]`` holds)."""
        return {"lr": self.lr, "weight_decay": self.weight_decay, "no_decay": list(self.no_decay),
                "lr_scale": dict(self.lr_scale)}

    def state_dict(self) -> dict[str, Any]:
        """``{"type", "config", "step", "state": {param key: {slot: array}}}``.

        The slot arrays are the live arrays on the model's backend; checkpoints copy them.
        """
        return {"type": type(self).__name__, "config": self.get_config(),
                "step": self.step_count,
                "state": {k: dict(slots) for k, slots in self.state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output, strictly.

        The optimizer type must match; every slot must belong to a parameter of the model with
        the parameter's shape. Arrays are moved to the parameter's backend and dtype.
        """
        name = type(self).__name__
        if state_dict.get("type") != name:
            raise ValueError(f"{name}.load_state_dict: expected the state of an {name} "
                             f"optimizer, got {state_dict.get('type')!r}")
        previous = dict(vars(self))
        try:
            self._load_state(name, state_dict)
        except Exception:
            vars(self).clear()  # leave the optimizer exactly as it was
            vars(self).update(previous)
            raise

    def _load_state(self, name: str, state_dict: dict[str, Any]) -> None:
        params = self.model.params()
        new_state: dict[str, dict[str, Any]] = {}
        for key, slots in state_dict["state"].items():
            if key not in params:
                raise KeyError(f"{name}.load_state_dict: state for {key!r}, which the model "
                               f"does not have (model keys: {', '.join(params)})")
            if set(slots) != set(self.slots):
                raise KeyError(f"{name}.load_state_dict: {key!r} has slots {sorted(slots)}, "
                               f"expected {sorted(self.slots)}")
            w = params[key]
            new_state[key] = {}
            for slot, value in slots.items():
                if tuple(value.shape) != tuple(w.shape):
                    raise ValueError(f"{name}.load_state_dict: {key}/{slot} has shape "
                                     f"{tuple(value.shape)}, expected {tuple(w.shape)}")
                new_state[key][slot] = _backend.asarray_like(value, w, copy=True)
                self._check_slot_values(f"{key}/{slot}", slot, new_state[key][slot])
        config = state_dict.get("config", {})
        unknown = sorted(set(config) - set(self.get_config()))
        if unknown:
            raise ValueError(f"{name}.load_state_dict: unknown hyper-parameters {unknown}")
        for attr, value in config.items():
            setattr(self, attr, value)
        self._validate()
        step = as_int(state_dict.get("step", 0))
        if step is None or step < 0:
            raise ValueError(f"{name}.load_state_dict: expected step to be an integer >= 0 "
                             f"(the number of steps taken), got "
                             f"{shorten(state_dict.get('step'), 60)}")
        self.step_count = step
        self.state = new_state

    def _check_slot_values(self, where: str, slot: str, value: Any) -> None:
        """Refuse a loaded slot with NaN or infinite values (or negative ones in a running mean
        of squares): the first step would carry them into every parameter it touches."""
        xp = _backend.namespace(value)
        if not bool(xp.all(xp.isfinite(value))):
            bad = int(xp.sum(xp.astype(~xp.isfinite(value), xp.int64)))
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected finite values "
                             f"in {where}, got {bad} NaN or infinite of {math.prod(value.shape)}"
                             f" (saved from a run that had diverged?)")
        if slot in self.nonnegative_slots and not bool(xp.all(value >= 0)):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected values >= 0 in "
                             f"{where} (a running mean of squared gradients), got a minimum of "
                             f"{float(xp.min(value))}")

    def _check_hyper(self, label: str, value: float, low: float, high: float | None = None,
                     low_open: bool = False, high_open: bool = True) -> float:
        """``value`` as a Python float after checking its range (NumPy scalars too: kept as
        they are, they would turn the updates into arrays of another library on some backends).

        ``high=None`` means no upper bound but a finite value: NaN and infinity fail every
        range (an infinite rate or decay makes every weight infinite or NaN at the first step).
        """
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{type(self).__name__}: expected {label} to be a number, got "
                             f"{shorten(value, 60)} ({type(value).__name__})")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            value = math.inf if value > 0 else -math.inf
        top = math.inf if high is None else high
        ok = (value > low if low_open else value >= low) and (
            value < top if high_open or high is None else value <= top)
        if not ok:
            if high is None:  # "in [0.0, inf), got inf" would read oddly
                wanted = f"to be a finite number {'>' if low_open else '>='} {low}"
            else:
                lo, hi = "(" if low_open else "[", ")" if high_open else "]"
                wanted = f"in {lo}{low}, {top}{hi}"
            raise ValueError(f"{type(self).__name__}: expected {label} {wanted}, got {value!r}")
        return value


def _check_model(name: str, model: Any) -> None:
    """An optimizer needs a model with ``params()`` and ``grads()`` and at least one parameter:
    one with nothing to update would make every step, and a whole ``fit``, silently do nothing."""
    if not all(callable(getattr(model, method, None)) for method in ("params", "grads")):
        raise TypeError(f"{name}: expected a model with params() and grads() (a Sequential or "
                        f"DataParallel), got {type(model).__name__}")
    if not model.params():
        layers = ", ".join(layer.name for layer in getattr(model, "layers", ()))
        raise ValueError(f"{name}: expected a model with trainable parameters, got "
                         f"{type(model).__name__} with none" + (f" (layers: {layers})" if layers
                                                                  else "")
                         + ": there is nothing to optimize")


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay.

    ``form`` selects the momentum formula (see the module docstring): ``"ema"`` (default, the
    course framework), ``"classic"`` or ``"nesterov"`` (both as PyTorch). ``momentum=0``
    gives plain SGD in every form.
    """

    slots = ("momentum",)
    FORMS = ("ema", "classic", "nesterov")

    def __init__(self, model: Any, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, form: str = "ema",
                 no_decay: tuple[str, ...] = (), lr_scale: dict[str, float] | None = None
                 ) -> None:
        super().__init__(model, lr, weight_decay, no_decay, lr_scale)
        self.momentum, self.form = momentum, form
        self._validate()

    def _validate(self) -> None:
        super()._validate()
        self.momentum = self._check_hyper("momentum", self.momentum, low=0.0, high=1.0)
        if self.form not in self.FORMS:
            raise ValueError(f"SGD: expected form in {self.FORMS}, got {self.form!r}")

    def _update(self, w: Any, g: Any, state: dict[str, Any], wd: float, lr: float) -> None:
        m, mu = state["momentum"], self.momentum
        fast = cuda_kernels(_backend.namespace(w), w.dtype) if g.dtype == w.dtype else None
        if fast is not None:  # one CUDA kernel on CuPy, rounding as the lines below
            fast.sgd_update(w, g, m, lr, mu, wd, self.form)
            return
        if self.form == "ema":
            m *= mu
            m += (1.0 - mu) * g
            w -= lr * (m + wd * w) if wd else lr * m
            return
        if wd:
            g = g + wd * w
        m *= mu
        m += g
        w -= lr * (g + mu * m if self.form == "nesterov" else m)

    def get_config(self) -> dict[str, Any]:
        return dict(super().get_config(), momentum=self.momentum, form=self.form)


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; ``weight_decay`` is L2, added to the gradient."""

    slots = ("m", "v")
    nonnegative_slots = ("v",)
    decoupled = False

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0,
                 no_decay: tuple[str, ...] = (), lr_scale: dict[str, float] | None = None
                 ) -> None:
        super().__init__(model, lr, weight_decay, no_decay, lr_scale)
        self.betas, self.eps = betas, eps
        self._validate()

    def _validate(self) -> None:
        super()._validate()
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise ValueError(f"{type(self).__name__}: expected betas to be a pair, got "
                             f"{self.betas!r}")
        self.betas = (self._check_hyper("betas[0]", self.betas[0], low=0.0, high=1.0),
                      self._check_hyper("betas[1]", self.betas[1], low=0.0, high=1.0))
        # eps > 0: with 0, a parameter whose gradient is exactly 0 (a dead unit) gets 0 / 0
        self.eps = self._check_hyper("eps", self.eps, low=0.0, low_open=True)

    def _update(self, w: Any, g: Any, state: dict[str, Any], wd: float, lr: float) -> None:
        xp = _backend.namespace(w)
        b1, b2 = self.betas
        if wd:
            if self.decoupled:
                w *= 1.0 - lr * wd
            else:
                g = g + wd * w
        m, v, t = state["m"], state["v"], self.step_count
        m *= b1
        m += (1.0 - b1) * g
        v *= b2
        v += (1.0 - b2) * (g * g)
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
        w -= (lr / (1.0 - b1 ** t)) * (m / denom)

    def get_config(self) -> dict[str, Any]:
        return dict(super().get_config(), betas=list(self.betas), eps=self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): ``w *= 1 - lr * weight_decay``."""

    decoupled = True

    def __init__(self, model: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01,
                 no_decay: tuple[str, ...] = (), lr_scale: dict[str, float] | None = None
                 ) -> None:
        super().__init__(model, lr, betas, eps, weight_decay, no_decay, lr_scale)


class RMSProp(Optimizer):
    """RMSProp: divide the step by a running root-mean-square of recent gradients."""

    slots = ("v",)
    nonnegative_slots = ("v",)

    def __init__(self, model: Any, lr: float = 0.01, rho: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, no_decay: tuple[str, ...] = (),
                 lr_scale: dict[str, float] | None = None) -> None:
        super().__init__(model, lr, weight_decay, no_decay, lr_scale)
        self.rho, self.eps = rho, eps
        self._validate()

    def _validate(self) -> None:
        super()._validate()
        self.rho = self._check_hyper("rho", self.rho, low=0.0, high=1.0)
        # eps > 0: with 0, a parameter whose gradient is exactly 0 (a dead unit) gets 0 / 0
        self.eps = self._check_hyper("eps", self.eps, low=0.0, low_open=True)

    def _update(self, w: Any, g: Any, state: dict[str, Any], wd: float, lr: float) -> None:
        xp = _backend.namespace(w)
        if wd:
            g = g + wd * w
        v = state["v"]
        v *= self.rho
        v += (1.0 - self.rho) * (g * g)
        w -= lr * (g / (xp.sqrt(v) + self.eps))

    def get_config(self) -> dict[str, Any]:
        return dict(super().get_config(), rho=self.rho, eps=self.eps)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSProp"]


# --- gradient clipping -------------------------------------------------------------------------
# Between backward and the optimizer's step, as torch.nn.utils.clip_grad_norm_ and
# clip_grad_value_ (in fit: the GradientClipping callback, at on_after_backward). The
# gradients are replaced in each layer's ``grads``, which the optimizer reads.

def clip_grad_norm(model: Any, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale every gradient of ``model`` by ``min(1, max_norm / (total + 1e-6))``, where
    ``total`` is the ``norm_type``-norm of all gradients together (``float("inf")``: the
    largest magnitude); returns ``total`` as a Python float, the norm before clipping.
    ``torch.nn.utils.clip_grad_norm_``'s rule and result. A NaN or infinite total makes the
    gradients NaN or zero, as there, unless ``error_if_nonfinite`` raises a ValueError."""
    max_norm = _clip_number("clip_grad_norm", "max_norm", max_norm, 0.0, False)
    norm_type = _clip_number("clip_grad_norm", "norm_type", norm_type, 0.0, True,
                             allow_inf=True)
    error_if_nonfinite = _flag("clip_grad_norm", "error_if_nonfinite", error_if_nonfinite)
    grads = _grad_entries("clip_grad_norm", model)
    if not grads:
        return 0.0
    norms = []
    for store, key in grads:
        g = store[key]
        xp = _backend.namespace(g)
        magnitude = xp.abs(g)
        if math.isinf(norm_type):
            norms.append(float(xp.max(magnitude)) if math.prod(g.shape) else 0.0)
        else:
            norms.append(float(xp.sum(magnitude ** norm_type)) ** (1.0 / norm_type))
    total = max(norms) if math.isinf(norm_type) else \
        math.fsum(n ** norm_type for n in norms) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise ValueError(f"clip_grad_norm: the total {norm_type}-norm of the gradients is "
                         f"{total}, not finite (error_if_nonfinite=True)")
    factor = min(1.0, max_norm / (total + 1e-6)) if not math.isnan(total) else math.nan
    for store, key in grads:
        store[key] = store[key] * factor
    return total


def clip_grad_value(model: Any, clip_value: float) -> None:
    """Clamp every gradient of ``model`` to ``[-clip_value, clip_value]``, element by element
    (``torch.nn.utils.clip_grad_value_``); NaN stays NaN."""
    clip_value = _clip_number("clip_grad_value", "clip_value", clip_value, 0.0, False)
    for store, key in _grad_entries("clip_grad_value", model):
        g = store[key]
        xp = _backend.namespace(g)
        store[key] = xp.clip(g, -clip_value, clip_value)


def _grad_entries(name: str, model: Any) -> list[tuple[dict[str, Any], str]]:
    layers = getattr(model, "layers", None)
    if layers is None or not callable(getattr(model, "grads", None)):
        raise TypeError(f"{name}: expected a model (a Sequential, Model or a wrapper of one), "
                        f"got {type(model).__name__}")
    return [(layer.grads, key) for layer in layers for key in layer.grads]


def _clip_number(name: str, label: str, value: Any, low: float, low_open: bool,
                 allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected {label} to be a number, got {value!r}")
    value = float(value)
    ok = (value > low if low_open else value >= low) and (
        math.isfinite(value) or (allow_inf and value == math.inf))
    if not ok:
        wanted = f"{'>' if low_open else '>='} {low}" + (" or inf" if allow_inf else "")
        raise ValueError(f"{name}: expected {label} to be a finite number {wanted}, got "
                         f"{value!r}")
    return value


def _flag(name: str, label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected {label} to be True or False, got {value!r}")
    return value
