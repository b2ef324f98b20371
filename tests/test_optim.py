"""Optimizers against hand-computed steps and torch.optim; state dicts; bad hyper-parameters."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.layers import Dense
from helpers import assert_close, host


class FixedGrad:
    """A one-parameter 'model' whose gradient the test sets: isolates the optimizer."""

    def __init__(self, w):
        self.w, self.g = w, None

    def params(self):
        return {"p.w": self.w}

    def grads(self):
        return {"p.w": self.g}


def run(opt_cls, w0, grads, **kw):
    model = FixedGrad(ann.asarray(np.array(w0, dtype=np.float64)))
    opt = opt_cls(model, **kw)
    for g in grads:
        model.g = ann.asarray(np.array(g, dtype=np.float64))
        opt.step()
    return host(model.w)


def test_sgd_course_form_by_hand(xp):
    # m = mu m + (1 - mu) g; w = w - lr (m + wd w)
    lr, mu, wd = 0.1, 0.9, 0.01
    w, m = 1.0, 0.0
    for g in [2.0, -1.0, 0.5]:
        m = mu * m + (1 - mu) * g
        w = w - lr * (m + wd * w)
    assert run(ann.optim.SGD, [1.0], [[2.0], [-1.0], [0.5]], lr=lr, momentum=mu,
               weight_decay=wd)[0] == pytest.approx(w, rel=1e-14)


def test_plain_sgd_step_by_hand(xp):
    assert run(ann.optim.SGD, [1.0, 2.0], [[0.5, -1.0]], lr=0.1).tolist() == \
        pytest.approx([0.95, 2.1], rel=1e-14)


def test_adam_first_step_is_lr_times_sign(xp):
    # After bias correction, m/sqrt(v) = g/|g| on the first step (eps 1e-300 vanishes next to
    # |g| in float64; 0 is refused).
    w = run(ann.optim.Adam, [1.0, 1.0], [[3.0, -0.2]], lr=0.01, eps=1e-300)
    np.testing.assert_allclose(w, [0.99, 1.01], rtol=1e-14)


def test_adamw_decays_before_the_step_by_hand(xp):
    w = run(ann.optim.AdamW, [2.0], [[1.0]], lr=0.1, weight_decay=0.5, eps=1e-300)
    assert w[0] == pytest.approx(2.0 * (1 - 0.1 * 0.5) - 0.1, rel=1e-14)


def mse_step(model, opt, x, target):
    """One optimizer step of ``model`` on the mean squared error to ``target``."""
    loss_fn = ann.losses.MSE()
    loss_fn.forward(model.forward(x, train=True), target)
    model.backward(loss_fn.backward())
    opt.step()


TORCH_CASES = [
    ("SGD-classic", lambda m: ann.optim.SGD(m, lr=0.05, momentum=0.9, weight_decay=1e-2, form="classic"),
     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("SGD-nesterov", lambda m: ann.optim.SGD(m, lr=0.05, momentum=0.9, weight_decay=1e-2, form="nesterov"),
     lambda t, p: t.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    ("SGD-plain", lambda m: ann.optim.SGD(m, lr=0.05, form="classic"),
     lambda t, p: t.optim.SGD(p, lr=0.05)),
    ("Adam", lambda m: ann.optim.Adam(m, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-2),
     lambda t, p: t.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-2)),
    ("AdamW", lambda m: ann.optim.AdamW(m, lr=1e-2, weight_decay=0.1),
     lambda t, p: t.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
    ("RMSProp", lambda m: ann.optim.RMSProp(m, lr=1e-2, rho=0.9, eps=1e-8, weight_decay=1e-2),
     lambda t, p: t.optim.RMSprop(p, lr=1e-2, alpha=0.9, eps=1e-8, weight_decay=1e-2)),
]


@pytest.mark.parametrize("name,ours,theirs", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_torch_optim_on_a_real_model(torch, rng, name, ours, theirs):
    """Five steps of a Dense layer on a quadratic loss, same gradients, same weights."""
    model = ann.Sequential([Dense(4, 3, dtype="float64", rng=0)])
    w0, b0 = (host(v).copy() for v in model.params().values())
    tw, tb = (torch.tensor(a, requires_grad=True) for a in (w0, b0))
    opt, topt = ours(model), theirs(torch, [tw, tb])
    for _ in range(5):
        x, target = rng.standard_normal((8, 4)), rng.standard_normal((8, 3))
        mse_step(model, opt, x, target)
        topt.zero_grad()
        torch.nn.functional.mse_loss(torch.nn.functional.linear(torch.tensor(x), tw, tb),
                                     torch.tensor(target)).backward()
        topt.step()
    assert_close(model.params()["dense1.W"], tw, rtol=1e-12, atol=1e-14)
    assert_close(model.params()["dense1.b"], tb, rtol=1e-12, atol=1e-14)


def test_ema_form_equals_classic_form_with_scaled_lr_without_decay(xp):
    grads = [[1.0], [0.3], [-2.0]]
    ema = run(ann.optim.SGD, [0.0], grads, lr=0.1, momentum=0.8)
    classic = run(ann.optim.SGD, [0.0], grads, lr=0.1 * 0.2, momentum=0.8, form="classic")
    np.testing.assert_allclose(ema, classic, rtol=1e-13)


@pytest.mark.parametrize("opt_cls", [ann.optim.SGD, ann.optim.Adam, ann.optim.AdamW, ann.optim.RMSProp])
def test_state_dict_round_trip_continues_identically(xp, opt_cls):
    grads = [[1.0, -2.0], [0.5, 0.1], [-0.3, 0.7], [0.2, 0.2]]
    kw = {"lr": 0.1, "momentum": 0.9} if opt_cls is ann.optim.SGD else {"lr": 0.1}
    straight = run(opt_cls, [1.0, 1.0], grads, **kw)

    model = FixedGrad(ann.asarray(np.array([1.0, 1.0])))
    first = opt_cls(model, **kw)
    for g in grads[:2]:
        model.g = ann.asarray(np.array(g))
        first.step()
    saved = {**first.state_dict(),
             "state": {k: {s: ann.to_host(v) for s, v in slots.items()}
                       for k, slots in first.state_dict()["state"].items()}}
    second = opt_cls(model, lr=999.0)  # hyper-parameters come back from the state dict
    second.load_state_dict(saved)
    assert second.lr == 0.1 and second.step_count == 2
    for g in grads[2:]:
        model.g = ann.asarray(np.array(g))
        second.step()
    np.testing.assert_array_equal(host(model.w), straight)


def test_load_state_dict_is_strict():
    model = FixedGrad(np.zeros(2))
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="expected the state of an SGD optimizer, got 'Adam'"):
        opt.load_state_dict({"type": "Adam", "state": {}})
    with pytest.raises(KeyError, match="state for 'q.w', which the model does not have"):
        opt.load_state_dict({"type": "SGD", "state": {"q.w": {"momentum": np.zeros(2)}}})
    with pytest.raises(ValueError, match=r"p.w/momentum has shape \(3,\), expected \(2,\)"):
        opt.load_state_dict({"type": "SGD", "state": {"p.w": {"momentum": np.zeros(3)}}})
    with pytest.raises(ValueError, match=r"unknown hyper-parameters \['nesterov'\]"):
        opt.load_state_dict({"type": "SGD", "config": {"nesterov": True}, "state": {}})


@pytest.mark.parametrize("make,match", [
    (lambda m: ann.optim.SGD(m, lr=-0.1), r"lr to be a finite number >= 0.0, got -0.1"),
    (lambda m: ann.optim.SGD(m, lr=0.1, momentum=1.0), r"momentum in \[0.0, 1.0\), got 1.0"),
    (lambda m: ann.optim.SGD(m, lr=0.1, form="heavy-ball"), "form in .*got 'heavy-ball'"),
    (lambda m: ann.optim.Adam(m, betas=(0.9, 1.5)), r"betas\[1\] in \[0.0, 1.0\), got 1.5"),
    (lambda m: ann.optim.RMSProp(m, weight_decay=-1.0), r"weight_decay to be a finite number >= 0.0, got -1.0"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make(FixedGrad(np.zeros(1)))


def test_step_before_backward_is_an_error():
    model = ann.Sequential([Dense(2, 2)])
    with pytest.raises(RuntimeError, match="no gradient for 'W' yet"):
        ann.optim.SGD(model, lr=0.1).step()


def test_state_left_on_another_backend_is_reported():
    model = ann.Sequential([Dense(2, 2, dtype="float64")])
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    model.backward(model.forward(np.ones((1, 2)), train=True))
    opt.step()
    model.to("array_api_strict")
    model.backward(model.forward(ann.asarray(np.ones((1, 2)), backend="array_api_strict"), train=True))
    before = ann.to_host(model.params()["dense1.b"]).copy()
    with pytest.raises(ann.BackendMismatchError, match=r"the 'momentum' state of 'dense1.W' is numpy float64 but the parameter is array_api_strict float64.*load_state_dict"):
        opt.step()
    # nothing moved, and the suggested fix works
    np.testing.assert_array_equal(ann.to_host(model.params()["dense1.b"]), before)
    assert opt.step_count == 1
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert opt.step_count == 2


def test_dtype_change_is_caught_before_any_update():
    model = ann.Sequential([Dense(2, 2)])
    opt = ann.optim.Adam(model)
    model.backward(model.forward(np.ones((1, 2), np.float32), train=True))
    opt.step()
    model.to(dtype="float64")
    model.backward(model.forward(np.ones((1, 2)), train=True))
    with pytest.raises(ann.BackendMismatchError, match="'m' state of 'dense1.W' is numpy float32"):
        opt.step()


def test_load_state_dict_copies_and_validates():
    model = FixedGrad(np.zeros(2))
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    model.g = np.ones(2)
    opt.step()
    other = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    other.load_state_dict(opt.state_dict())
    assert other.state["p.w"]["momentum"] is not opt.state["p.w"]["momentum"]
    bad = {**opt.state_dict(), "config": {"momentum": 2.0}}
    with pytest.raises(ValueError, match=r"momentum in \[0.0, 1.0\), got 2.0"):
        other.load_state_dict(bad)
    assert other.momentum == 0.9


def test_updates_are_in_place_so_held_references_stay_current():
    model = ann.Sequential([Dense(2, 2, dtype="float64")])
    held = model.params()["dense1.W"]
    before = held.copy()
    model.backward(model.forward(np.ones((1, 2)), train=True))
    ann.optim.SGD(model, lr=0.1).step()
    assert model.params()["dense1.W"] is held and not np.array_equal(held, before)


@pytest.mark.parametrize("make", [
    lambda m: ann.optim.SGD(m, lr=0.1, weight_decay=0.5, no_decay=("b",)),
    lambda m: ann.optim.Adam(m, lr=0.1, weight_decay=0.5, no_decay=("b",)),
    lambda m: ann.optim.AdamW(m, lr=0.1, weight_decay=0.5, no_decay=("b",)),
    lambda m: ann.optim.RMSProp(m, lr=0.1, weight_decay=0.5, no_decay=("b",)),
])
def test_no_decay_leaves_the_named_parameters_without_weight_decay(make):
    """With zero gradients, only weight decay moves a parameter."""
    model = ann.Sequential([Dense(3, 2, dtype="float64", rng=0)])
    model.layers[0].params["b"][...] = 1.0
    opt = make(model)
    model.backward(model.forward(np.zeros((1, 3)), train=True) * 0.0)
    w_before = model.params()["dense1.W"].copy()
    opt.step()
    assert np.all(model.params()["dense1.b"] == 1.0)
    assert not np.allclose(model.params()["dense1.W"], w_before)
    assert opt.state_dict()["config"]["no_decay"] == ["b"]


def test_a_learning_rate_decayed_to_zero_round_trips(tmp_path):
    # a cosine schedule ends at lr 0: that state must load back, as in PyTorch
    model = ann.Sequential([ann.layers.Dense(2, 2, name="d", rng=0)])
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    opt.lr = ann.schedules.cosine(0.1, 10)(10)
    assert opt.lr == 0.0
    again = ann.optim.SGD(model, lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert again.lr == 0.0
    path = tmp_path / "end.h5"
    ann.save_checkpoint(path, model, opt)
    loaded = ann.optim.SGD(model, lr=0.1)
    ann.load_checkpoint(path, model, loaded)
    assert loaded.lr == 0.0


@pytest.mark.parametrize("make", [
    lambda m: ann.optim.SGD(m, lr=np.float64(0.1), momentum=np.float32(0.9), form="classic"),
    lambda m: ann.optim.Adam(m, lr=np.float32(0.01), eps=np.float64(1e-8)),
    lambda m: ann.optim.RMSProp(m, lr=0.01, rho=np.float64(0.9)),
])
def test_numpy_scalar_hyper_parameters_work_on_every_backend(make):
    # kept as NumPy scalars they made array-api-strict updates fail half-way through a step
    model = ann.Sequential([Dense(2, 2, dtype="float64", backend="array_api_strict", rng=0)])
    opt = make(model)
    assert all(type(v) is float for v in (opt.lr, opt.weight_decay))
    model.backward(model.forward(ann.asarray(np.ones((1, 2)), backend="array_api_strict"),
                                 train=True))
    opt.step()
    opt.lr = np.float64(0.05)  # as a schedule might set it
    opt.step()
    assert opt.step_count == 2 and type(opt.lr) is float


class _HalfTrained(ann.layers.Layer):
    """A custom layer whose backward left one gradient out."""

    def __init__(self, name=None):
        super().__init__(name)
        self.params = {"a": ann.asarray(np.ones(2)), "b": ann.asarray(np.ones(3))}
        self.grads = {"a": ann.asarray(np.ones(2)), "b": None}


def test_a_missing_or_misshapen_gradient_fails_before_anything_changes():
    model = ann.Sequential([_HalfTrained(name="half")])
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(3,\) for 'half.b', "
                                         r"got none"):
        opt.step()
    assert opt.step_count == 0 and opt.state == {}
    assert host(model.params()["half.a"]).tolist() == [1.0, 1.0]
    model["half"].grads["b"] = ann.asarray(np.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(4,\)"):
        opt.step()


def test_a_parameter_that_changed_shape_says_to_create_the_optimizer_afresh():
    model = ann.Sequential([Dense(2, 2, dtype="float64", name="fc")])
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    model.backward(model.forward(np.ones((1, 2)), train=True))
    opt.step()
    model["fc"].params["W"] = ann.asarray(np.ones((2, 3)))
    model["fc"].grads["W"] = ann.asarray(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"'fc.W' has shape \(2, 2\) but the parameter now has "
                                         r"shape \(2, 3\).*create the optimizer afresh"):
        opt.step()


# --- what the optimizers refuse --------------------------------------------------------

NAN, INF = float("nan"), float("inf")
# (class, arguments, option as named in the message, what was expected, value as printed)
BAD_HYPER_PARAMETERS = [
    *[(cls, {"lr": v}, "lr", "to be a finite number >= 0.0", shown) for cls in
      (ann.optim.SGD, ann.optim.Adam, ann.optim.AdamW, ann.optim.RMSProp)
      for v, shown in ((INF, "inf"), (NAN, "nan"), (-1e-3, "-0.001"), (10 ** 400, "inf"))],
    *[(cls, {"weight_decay": v}, "weight_decay", "to be a finite number >= 0.0", shown) for cls in
      (ann.optim.SGD, ann.optim.Adam, ann.optim.AdamW, ann.optim.RMSProp)
      for v, shown in ((INF, "inf"), (NAN, "nan"))],
    *[(ann.optim.SGD, {"momentum": v, "form": form}, "momentum", r"in \[0.0, 1.0\)", shown)
      for form in ann.optim.SGD.FORMS for v, shown in ((NAN, "nan"), (INF, "inf"), (-0.5, "-0.5"))],
    *[(cls, {"betas": b}, rf"betas\[{i}\]", r"in \[0.0, 1.0\)", shown)
      for cls in (ann.optim.Adam, ann.optim.AdamW)
      for b, i, shown in (((NAN, 0.9), 0, "nan"), ((0.9, INF), 1, "inf"), ((1.0, 0.9), 0, "1.0"))],
    *[(cls, {"eps": v}, "eps", "to be a finite number > 0.0", shown)
      for cls in (ann.optim.Adam, ann.optim.AdamW, ann.optim.RMSProp)
      for v, shown in ((INF, "inf"), (NAN, "nan"), (0.0, "0.0"), (-1e-8, "-1e-08"))],
    *[(ann.optim.RMSProp, {"rho": v}, "rho", r"in \[0.0, 1.0\)", shown)
      for v, shown in ((NAN, "nan"), (1.0, "1.0"), (-INF, "-inf"))],
]


@pytest.mark.parametrize("cls,kwargs,option,wanted,shown", BAD_HYPER_PARAMETERS,
                         ids=[f"{c.__name__}-{kw}" for c, kw, *_ in BAD_HYPER_PARAMETERS])
def test_non_finite_or_out_of_range_hyper_parameters_are_refused_everywhere(
        cls, kwargs, option, wanted, shown):
    message = rf"^{cls.__name__}: expected {option} {wanted}, got {shown}"
    with pytest.raises(ValueError, match=message):  # at construction
        cls(FixedGrad(np.zeros(2)), **kwargs)

    model = FixedGrad(np.array([1.0, -1.0]))
    opt = cls(model)
    model.g = np.array([0.5, 0.25])
    opt.step()
    good = opt.state_dict()
    kept = ({k: v.copy() for k, v in opt.state["p.w"].items()}, model.w.copy(), opt.get_config())
    bad = {**good, "config": {**good["config"], **kwargs}}  # loaded: refused, nothing changes
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    assert opt.get_config() == kept[2]

    for key, value in kwargs.items():  # set by hand or a schedule: the next step refuses it
        setattr(opt, key, value)
    with pytest.raises(ValueError, match=message + r"; it was set after the optimizer was "
                                                   r"built .*, so step 2 was not applied"):
        opt.step()
    assert opt.step_count == 1
    np.testing.assert_array_equal(model.w, kept[1])
    for slot, value in kept[0].items():
        np.testing.assert_array_equal(opt.state["p.w"][slot], value)


def test_a_model_without_trainable_parameters_is_refused():
    for cls in (ann.optim.SGD, ann.optim.Adam, ann.optim.AdamW, ann.optim.RMSProp):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: expected a model with trainable "
                                             r"parameters, got Sequential with none \(layers: "
                                             r"relu1, flatten1\): there is nothing to optimize"):
            cls(ann.Sequential([ann.layers.ReLU(), ann.layers.Flatten()]))
        with pytest.raises(ValueError, match=r"got DataParallel with none \(layers: relu1\)"):
            cls(ann.DataParallel(ann.Sequential([ann.layers.ReLU()]), 2))
        with pytest.raises(TypeError, match=rf"{cls.__name__}: expected a model with params\(\) "
                                            r"and grads\(\).*got list"):
            cls([np.zeros(3)])  # the parameters themselves, as torch.optim takes them


@pytest.mark.parametrize("step", [-1, 2.5, "3", True, None])
def test_load_state_dict_refuses_a_step_count_that_is_not_a_count(step):
    model = FixedGrad(np.zeros(2))
    opt = ann.optim.Adam(model, lr=0.1)
    model.g = np.ones(2)
    opt.step()
    with pytest.raises(ValueError, match=rf"Adam.load_state_dict: expected step to be an integer"
                                         rf" >= 0 .*got {re.escape(repr(step))}"):
        opt.load_state_dict({**opt.state_dict(), "step": step})
    assert opt.step_count == 1
    opt.load_state_dict({**opt.state_dict(), "step": np.int64(7)})  # NumPy integers are counts
    assert opt.step_count == 7 and type(opt.step_count) is int


@pytest.mark.parametrize("cls,slot,values,match", [
    (ann.optim.SGD, "momentum", [NAN, 0.0], r"expected finite values in p.w/momentum, got 1 NaN "
                                            r"or infinite of 2"),
    (ann.optim.Adam, "m", [INF, -INF], r"expected finite values in p.w/m, got 2 NaN"),
    (ann.optim.Adam, "v", [0.5, -1e-3], r"expected values >= 0 in p.w/v \(a running mean of "
                                        r"squared gradients\), got a minimum of -0.001"),
    (ann.optim.RMSProp, "v", [-2.0, 1.0], r"expected values >= 0 in p.w/v .*got a minimum of -2.0"),
])
def test_load_state_dict_refuses_slots_that_would_spoil_the_parameters(xp, cls, slot, values,
                                                                       match):
    model = FixedGrad(ann.asarray(np.array([1.0, 2.0])))
    opt = cls(model, lr=0.1)
    model.g = ann.asarray(np.array([0.5, 0.5]))
    opt.step()
    saved = opt.state_dict()
    bad = {**saved, "state": {"p.w": {**saved["state"]["p.w"], slot: np.array(values)}}}
    before = host(opt.state["p.w"][slot]).copy()
    with pytest.raises(ValueError, match=rf"{cls.__name__}.load_state_dict: {match}"):
        opt.load_state_dict(bad)
    np.testing.assert_array_equal(host(opt.state["p.w"][slot]), before)


SCALED_CASES = [
    ("SGD-nesterov", lambda m, s: ann.optim.SGD(m, lr=0.05, momentum=0.85, weight_decay=1e-2,
                                                form="nesterov", lr_scale=s),
     lambda t, groups: t.optim.SGD(groups, lr=0.05, momentum=0.85, weight_decay=1e-2,
                                   nesterov=True)),
    ("Adam", lambda m, s: ann.optim.Adam(m, lr=1e-2, weight_decay=1e-2, lr_scale=s),
     lambda t, groups: t.optim.Adam(groups, lr=1e-2, weight_decay=1e-2)),
    ("AdamW", lambda m, s: ann.optim.AdamW(m, lr=1e-2, weight_decay=0.1, lr_scale=s),
     lambda t, groups: t.optim.AdamW(groups, lr=1e-2, weight_decay=0.1)),
    ("RMSProp", lambda m, s: ann.optim.RMSProp(m, lr=1e-2, weight_decay=1e-2, lr_scale=s),
     lambda t, groups: t.optim.RMSprop(groups, lr=1e-2, weight_decay=1e-2)),
]


@pytest.mark.parametrize("name,ours,theirs", SCALED_CASES, ids=[c[0] for c in SCALED_CASES])
def test_lr_scale_matches_torch_parameter_groups(torch, rng, name, ours, theirs):
    """lr_scale is a parameter group with its own lr: by key (W frozen at 0 in the first
    layer) and by name (every bias at 3x), over five steps with a schedule changing lr."""
    model = ann.Sequential([Dense(4, 3, dtype="float64", rng=0, name="d1"), ann.layers.Tanh(),
                            Dense(3, 2, dtype="float64", rng=1, name="d2")])
    start = {k: host(v).copy() for k, v in model.params().items()}
    tp = {k: torch.tensor(a, requires_grad=True) for k, a in start.items()}
    opt = ours(model, {"d1.W": 0.0, "b": 3.0})
    factors = {"d1.W": 0.0, "d1.b": 3.0, "d2.W": 1.0, "d2.b": 3.0}
    topt = theirs(torch, [{"params": [tp[k]], "lr": 0.0} for k in factors])
    for step in range(5):
        opt.lr = 0.01 * (step + 1)
        for group, factor in zip(topt.param_groups, factors.values()):
            group["lr"] = opt.lr * factor
        x, target = rng.standard_normal((8, 4)), rng.standard_normal((8, 2))
        mse_step(model, opt, x, target)
        topt.zero_grad()
        F = torch.nn.functional
        hidden = torch.tanh(F.linear(torch.tensor(x), tp["d1.W"], tp["d1.b"]))
        F.mse_loss(F.linear(hidden, tp["d2.W"], tp["d2.b"]), torch.tensor(target)).backward()
        topt.step()
    for key in factors:
        assert_close(model.params()[key], tp[key], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(host(model.params()["d1.W"]), start["d1.W"])  # frozen
    assert not np.array_equal(host(model.params()["d1.b"]), start["d1.b"])


def test_lr_scale_full_key_wins_over_name_and_round_trips():
    model = ann.Sequential([Dense(2, 2, dtype="float64", rng=0, name="a"),
                            Dense(2, 2, dtype="float64", rng=1, name="c")])
    opt = ann.optim.SGD(model, lr=0.1, lr_scale={"b": 0.0, "c.b": 2.0})
    before = {k: v.copy() for k, v in model.params().items()}
    model.backward(model.forward(np.ones((1, 2)), train=True))
    grads = {k: v.copy() for k, v in model.grads().items()}
    opt.step()
    np.testing.assert_array_equal(model.params()["a.b"], before["a.b"])
    np.testing.assert_allclose(model.params()["c.b"], before["c.b"] - 0.2 * grads["c.b"],
                               rtol=1e-15)
    again = ann.optim.SGD(model, lr=0.5)
    again.load_state_dict(opt.state_dict())
    assert again.lr_scale == {"b": 0.0, "c.b": 2.0} and again.lr == 0.1


@pytest.mark.parametrize("lr_scale, message", [
    ({"a.w": 0.0}, r"lr_scale names 'a.w', which is neither a parameter key nor a parameter "
                   r"name of the model \(keys: a.W, a.b\)"),
    ({"b": -1.0}, r"expected lr_scale\['b'\] to be a finite number >= 0.0, got -1.0"),
    ({"b": float("nan")}, r"expected lr_scale\['b'\] to be a finite number >= 0.0, got nan"),
    ({"b": float("inf")}, r"expected lr_scale\['b'\] to be a finite number >= 0.0, got inf"),
    ({"b": "2"}, r"expected lr_scale\['b'\] to be a number, got '2'"),
    ({1: 2.0}, r"expected lr_scale to be a dict of parameter keys or names to factors"),
    ([("b", 2.0)], r"expected lr_scale to be a dict of parameter keys or names to factors"),
])
def test_bad_lr_scale_is_refused_when_built_and_when_loaded(lr_scale, message):
    model = ann.Sequential([Dense(2, 2, rng=0, name="a")])
    with pytest.raises(ValueError, match=r"^SGD: " + message):
        ann.optim.SGD(model, lr=0.1, lr_scale=lr_scale)
    opt = ann.optim.SGD(model, lr=0.1, lr_scale={"W": 0.5})
    state = opt.state_dict()
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(dict(state, config=dict(state["config"], lr_scale=lr_scale)))
    assert opt.lr_scale == {"W": 0.5}
