"""Issue 22 options: batch norm on every rank and on empty batches, LayerNorm, GroupNorm, GELU,
SiLU, the Softmax and LogSoftmax layers, activations at NaN, dropout for p in [0, 1], linear on (N, *, in) and (in,).

Each kernel: float64 finite differences on every backend (array_api_strict included) and
agreement with PyTorch (forward and every gradient) over a small grid of configurations."""

from __future__ import annotations

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from anyarray_nn.layers import (
    GELU,
    BatchNorm1D,
    BatchNorm2D,
    Dense,
    Dropout,
    GroupNorm,
    LayerNorm,
    LogSoftmax,
    SiLU,
    Softmax,
)
from helpers import assert_close, fast_and_portable, host
from test_functional_activation import KERNELS

NAN = float("nan")


def _torch_grads(torch, reference, arrays, dy):
    """Forward ``reference`` on float64 leaves made from ``arrays`` (None stays None), then
    backward ``dy``: returns the output and each leaf's gradient (None where no leaf)."""
    leaves = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    y = reference(*leaves)
    y.backward(torch.tensor(dy))
    return y, [None if t is None else t.grad for t in leaves]


# --- activations -----------------------------------------------------------------------------

NEW_ACTIVATIONS = {
    "gelu": (F.gelu_forward, F.gelu_backward, lambda t, x: t.nn.functional.gelu(x)),
    "gelu_tanh": (lambda x: F.gelu_forward(x, approximate="tanh"),
                  lambda x, dy: F.gelu_backward(x, dy, approximate="tanh"),
                  lambda t, x: t.nn.functional.gelu(x, approximate="tanh")),
    "silu": (F.silu_forward, F.silu_backward, lambda t, x: t.nn.functional.silu(x)),
}
ALL_ACTIVATIONS = {**NEW_ACTIVATIONS, **KERNELS}  # KERNELS: the older activations


# Softmax and LogSoftmax as layers: (layer class, torch.nn class); dims of inputs of rank 1-4
SOFTMAX_LAYERS = {"Softmax": (Softmax, "Softmax"), "LogSoftmax": (LogSoftmax, "LogSoftmax")}
SOFTMAX_SHAPES_AND_DIMS = [((5,), 0), ((3, 4), -1), ((3, 4), 0), ((2, 3, 4, 5), 1),
                           ((2, 3, 4, 5), -2), ((1, 1), 1), ((0, 4), 1)]


@pytest.mark.parametrize("kind", SOFTMAX_LAYERS)
@pytest.mark.parametrize("shape, dim", SOFTMAX_SHAPES_AND_DIMS)
def test_softmax_layers_match_torch_forward_and_gradient(xp, torch, rng, kind, shape, dim):
    ours, theirs = SOFTMAX_LAYERS[kind]
    x, dy = rng.standard_normal(shape) * 4, rng.standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    ty = getattr(torch.nn, theirs)(dim=dim)(tx)
    if ty.numel():
        ty.backward(torch.tensor(dy))
    layer = ours(dim=dim).to(ann.current_backend().name, dtype="float64")
    assert_close(layer.forward(ann.asarray(x), train=True), ty.detach().numpy())
    dx = layer.backward(ann.asarray(dy))
    assert_close(dx, tx.grad.numpy() if ty.numel() else np.zeros(shape))


@pytest.mark.parametrize("kind", SOFTMAX_LAYERS)
def test_softmax_layers_pass_float64_gradient_checks(xp, rng, kind):
    layer = SOFTMAX_LAYERS[kind][0](dim=1)
    x = ann.asarray(rng.standard_normal((2, 3, 4)))

    def backward(dy, x):
        layer.forward(x, train=True)
        return {"x": layer.backward(dy)}

    report = check_function(lambda x: layer.forward(x, train=True), backward, {"x": x})
    assert report.passed, str(report)


def test_softmax_layers_refuse_a_bad_dim_naming_the_layer():
    with pytest.raises(ValueError, match="Softmax: expected dim to be an int, got 1.5"):
        Softmax(dim=1.5)
    with pytest.raises(ValueError, match="LogSoftmax: expected dim to be an int, got True"):
        LogSoftmax(dim=True)
    with pytest.raises(ann.InputError, match=r"LogSoftmax 'ls'.*dim to be an int in \[-2, 2\) "
                                             r"for x of shape \(3, 4\), got 2"):
        LogSoftmax(dim=2, name="ls").forward(np.zeros((3, 4)))


@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
def test_new_activation_gradients_float64(xp, rng, name):
    forward, backward, _ = NEW_ACTIVATIONS[name]
    x = ann.asarray(rng.standard_normal((3, 4, 5)) * 3)
    report = check_function(forward, lambda dy, x: {"x": backward(x, dy)}, {"x": x})
    assert report.passed, str(report)


@pytest.mark.parametrize("name", NEW_ACTIVATIONS)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_new_activation_matches_torch(torch, rng, name, dtype, tol):
    forward, backward, reference = NEW_ACTIVATIONS[name]
    # Both tails (Phi's series and continued-fraction ranges) and the values near 0.
    x = np.concatenate([rng.standard_normal(40) * 4, [-40.0, -9.0, -3.6, -3.5, 0.0, 3.5, 9.0]])
    dy = rng.standard_normal(x.shape)
    tx = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    ty = reference(torch, tx)
    ty.backward(torch.tensor(dy, dtype=getattr(torch, dtype)))
    xc, dyc = x.astype(dtype), dy.astype(dtype)
    assert_close(forward(xc), ty, rtol=tol, atol=tol)
    assert_close(backward(xc, dyc), tx.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_activation_at_nan_follows_torch(xp, torch, name):
    """relu passes dy at NaN (NaN <= 0 is false), leaky_relu scales it, the rest give NaN."""
    forward, backward, reference = ALL_ACTIVATIONS[name]
    x = np.array([NAN, -2.0, 0.0, 2.0])
    dy = np.array([3.0, 3.0, 3.0, 3.0])
    ty, (tdx,) = _torch_grads(torch, lambda t: reference(torch, t), [x], dy)
    ours_y = host(forward(ann.asarray(x)))
    ours_dx = host(backward(ann.asarray(x), ann.asarray(dy)))
    np.testing.assert_allclose(ours_y, host(ty), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ours_dx, host(tdx), rtol=1e-12, equal_nan=True)


def test_relu_at_nan_passes_the_gradient(xp):
    dx = host(F.relu_backward(ann.asarray(np.array([NAN, -1.0])), ann.asarray(np.ones(2))))
    assert dx.tolist() == [1.0, 0.0]


def test_relu_cuda_kernel_equals_portable_at_nan(rng):
    try:
        ann.get_backend("cupy")
    except ann.BackendError as exc:
        pytest.skip(str(exc).split(". ")[0])
    with ann.using("cupy"):
        x = ann.asarray(np.array([NAN, -1.0, 0.0, -0.0, 2.0]), dtype="float32")
        dy = ann.asarray(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), dtype="float32")
        dx, dx_portable = fast_and_portable(lambda: F.relu_backward(x, dy))
        np.testing.assert_array_equal(host(dx), host(dx_portable))
        assert host(dx).tolist() == [1.0, 0.0, 0.0, 0.0, 5.0]


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ann.InputError, match="gelu: expected approximate to be 'none' or "
                                             "'tanh', got 'erf'"):
        F.gelu_forward(np.zeros(2), approximate="erf")
    with pytest.raises(ValueError, match="GELU: expected approximate.*got 'fast'"):
        GELU("fast")


# --- batch normalization ---------------------------------------------------------------------

# (layer class, torch class name, input shape); odd sizes, batch 1 (eval only), 1x1 spatial.
BATCHNORM_CASES = [
    (BatchNorm1D, "BatchNorm1d", (5, 3)),
    (BatchNorm1D, "BatchNorm1d", (3, 3, 7)),
    (BatchNorm1D, "BatchNorm1d", (1, 3, 2)),
    (BatchNorm2D, "BatchNorm2d", (3, 3, 2, 5)),
    (BatchNorm2D, "BatchNorm2d", (2, 3, 1, 1)),
]


@pytest.mark.parametrize("layer_class,torch_name,shape", BATCHNORM_CASES)
def test_batchnorm_layer_matches_torch_train_and_eval(torch, rng, layer_class, torch_name,
                                                      shape):
    ours = layer_class(3, momentum=0.3, dtype="float64", backend="numpy")
    ours.params["gamma"] = rng.standard_normal(3)
    ours.params["beta"] = rng.standard_normal(3)
    ref = getattr(torch.nn, torch_name)(3, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(ours.params["gamma"]))
        ref.bias.copy_(torch.tensor(ours.params["beta"]))
    for _ in range(2):  # two steps: the running statistics compound
        x, dy = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
        tx = torch.tensor(x, requires_grad=True)
        ref.zero_grad()
        ty = ref(tx)
        ty.backward(torch.tensor(dy))
        assert_close(ours.forward(x, train=True), ty)
        assert_close(ours.backward(dy), tx.grad, rtol=1e-9, atol=1e-11)
        assert_close(ours.grads["gamma"], ref.weight.grad)
        assert_close(ours.grads["beta"], ref.bias.grad)
        assert_close(ours.buffers["running_mean"], ref.running_mean)
        assert_close(ours.buffers["running_var"], ref.running_var)  # unbiased
    ref.eval()
    x = rng.standard_normal((1,) + shape[1:])  # batch 1 is fine in evaluation
    assert_close(ours.forward(x, train=False), ref(torch.tensor(x)))


@pytest.mark.parametrize("affine,track", [(False, True), (True, False), (False, False)])
def test_batchnorm_affine_and_track_running_stats_as_torch(xp, torch, rng, affine, track):
    layer = BatchNorm1D(3, 1e-5, 0.2, affine, track, dtype="float64")
    ref = torch.nn.BatchNorm1d(3, 1e-5, 0.2, affine, track, dtype=torch.float64)
    assert sorted(layer.params) == (["beta", "gamma"] if affine else [])
    assert sorted(layer.buffers) == (["running_mean", "running_var"] if track else [])
    for train in (True, True, False):
        ref.train(train)
        x, dy = rng.standard_normal((4, 3, 5)) + 2, rng.standard_normal((4, 3, 5))
        ty, (tdx,) = _torch_grads(torch, ref, [x], dy)
        assert_close(layer.forward(ann.asarray(x), train=train), ty)
        if train:
            assert_close(layer.backward(ann.asarray(dy)), tdx, rtol=1e-9, atol=1e-11)
            assert sorted(layer.grads) == sorted(layer.params)
        if track:
            assert_close(layer.buffers["running_var"], ref.running_var)
    assert BatchNorm1D.from_config(layer.get_config()).get_config() == layer.get_config()


def test_batchnorm_momentum_none_is_the_cumulative_average_as_torch(xp, torch, rng, tmp_path):
    model = ann.Sequential([BatchNorm2D(3, momentum=None, dtype="float64", name="bn")])
    ref = torch.nn.BatchNorm2d(3, momentum=None, dtype=torch.float64)
    for n in (4, 0, 3, 2):  # an empty batch counts, as in PyTorch
        x = rng.standard_normal((n, 3, 2, 2)) * 3 + 1
        model.forward(ann.asarray(x), train=True)
        ref(torch.tensor(x))
        assert_close(model.layers[0].buffers["running_mean"], ref.running_mean)
        assert_close(model.layers[0].buffers["running_var"], ref.running_var)
    assert float(model.layers[0].buffers["num_batches_tracked"]) == 4.0
    rebuilt = ann.load_model(ann.save_checkpoint(tmp_path / "bn.h5", model))
    assert rebuilt.get_config() == model.get_config()
    assert float(rebuilt.layers[0].buffers["num_batches_tracked"]) == 4.0


@pytest.mark.parametrize("shape", [(4, 3), (3, 3, 5), (2, 3, 2, 3)])
def test_batchnorm_kernel_gradients_float64(xp, rng, shape):
    x = ann.asarray(rng.standard_normal(shape))
    gamma, beta = ann.asarray(rng.standard_normal(3)), ann.asarray(rng.standard_normal(3))

    def backward(dy, x, gamma, beta):
        dx, dgamma, dbeta = F.batchnorm_backward(x, gamma, dy)
        return {"x": dx, "gamma": dgamma, "beta": dbeta}

    report = check_function(lambda x, gamma, beta: F.batchnorm_forward(x, gamma, beta)[0],
                            backward, {"x": x, "gamma": gamma, "beta": beta})
    assert report.passed, str(report)


@pytest.mark.parametrize("layer_class,torch_name,shape", [
    (BatchNorm1D, "BatchNorm1d", (0, 3)), (BatchNorm1D, "BatchNorm1d", (0, 3, 4)),
    (BatchNorm1D, "BatchNorm1d", (2, 3, 0)), (BatchNorm2D, "BatchNorm2d", (0, 3, 2, 2))])
def test_batchnorm_empty_batch_as_torch(xp, torch, layer_class, torch_name, shape):
    """Train and eval: an empty output, zero parameter gradients, statistics unchanged."""
    layer = layer_class(3, dtype="float64")
    ref = getattr(torch.nn, torch_name)(3, dtype=torch.float64)
    x = ann.asarray(np.zeros(shape))
    for train in (True, False):
        ref.train(train)
        ty, _ = _torch_grads(torch, ref, [np.zeros(shape)], np.zeros(shape))
        y = layer.forward(x, train=train)
        assert tuple(y.shape) == tuple(ty.shape) == shape
        assert_close(layer.buffers["running_mean"], ref.running_mean)
        assert_close(layer.buffers["running_var"], ref.running_var)
        if train:
            assert tuple(layer.backward(ann.asarray(np.zeros(shape))).shape) == shape
            assert_close(layer.grads["gamma"], ref.weight.grad)
            assert_close(layer.grads["beta"], ref.bias.grad)


def test_batchnorm_refusals_name_what_was_expected(xp):
    with pytest.raises(ann.InputError, match=r"BatchNorm1D.*at least 2 values per feature.*"
                                             r"\(1, 3, 1\)"):
        BatchNorm1D(3, dtype="float64").forward(ann.asarray(np.zeros((1, 3, 1))), train=True)
    with pytest.raises(ann.InputError, match=r"BatchNorm1D.*expected a 2-D array \(N, C\) or "
                                             r"a 3-D array \(N, C, L\), got shape \(2, 3, 1, 1\)"):
        BatchNorm1D(3).forward(ann.asarray(np.zeros((2, 3, 1, 1)), dtype="float32"))
    with pytest.raises(ann.InputError, match=r"BatchNorm2D.*expected a 4-D array \(N, C, H, W\)"
                                             r", got shape \(2, 3, 4\)"):
        BatchNorm2D(3).forward(ann.asarray(np.zeros((2, 3, 4)), dtype="float32"))


# --- layer and group normalization -----------------------------------------------------------

# (input shape, normalized_shape, affine, bias); unbatched, empty batch and a size-1 axis too.
LAYERNORM_CASES = [
    ((4, 5), 5, True, True),
    ((2, 3, 4), (3, 4), True, True),
    ((2, 3, 4), [4], False, True),
    ((3, 6), (6,), True, False),
    ((5,), 5, True, True),
    ((0, 3), 3, True, True),
    ((2, 1), 1, True, True),
]


def _layernorm_reference(torch, normalized_shape):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    return lambda x, g, b: torch.nn.functional.layer_norm(x, shape, g, b, eps=1e-5)


@pytest.mark.parametrize("shape,normalized_shape,affine,bias", LAYERNORM_CASES)
def test_layernorm_matches_torch(torch, rng, shape, normalized_shape, affine, bias):
    norm = shape[len(shape) - (1 if isinstance(normalized_shape, int)
                               else len(normalized_shape)):]
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    gamma = rng.standard_normal(norm) if affine else None
    beta = rng.standard_normal(norm) if affine and bias else None
    ty, (tdx, tdg, tdb) = _torch_grads(torch, _layernorm_reference(torch, normalized_shape),
                                       [x, gamma, beta], dy)
    assert_close(F.layernorm_forward(x, normalized_shape, gamma, beta), ty)
    dx, dgamma, dbeta = F.layernorm_backward(x, normalized_shape, dy, gamma)
    assert_close(dx, tdx, rtol=1e-9, atol=1e-11)
    if tdg is not None:
        assert_close(dgamma, tdg, rtol=1e-9, atol=1e-11)
    if tdb is not None:
        assert_close(dbeta, tdb, rtol=1e-9, atol=1e-11)
    layer = LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype="float64",
                      backend="numpy")
    assert sorted(layer.params) == sorted(k for k, v in (("gamma", gamma), ("beta", beta))
                                          if v is not None)
    layer.params.update({k: v for k, v in (("gamma", gamma), ("beta", beta)) if v is not None})
    assert_close(layer.forward(x, train=True), ty)
    assert_close(layer.backward(dy), tdx, rtol=1e-9, atol=1e-11)
    assert sorted(layer.grads) == sorted(layer.params)


# (input shape, num_groups, affine): one group, one channel per group (instance norm), between;
# (N, C), (N, C, L), (N, C, H, W), an empty batch and 1x1 spatial.
GROUPNORM_CASES = [
    ((2, 6, 3, 2), 3, True),
    ((3, 6, 5), 1, True),
    ((2, 6), 6, True),
    ((2, 6, 1, 1), 2, False),
    ((0, 6, 3), 2, True),
    ((1, 4), 2, True),
]


@pytest.mark.parametrize("shape,groups,affine", GROUPNORM_CASES)
def test_groupnorm_matches_torch(torch, rng, shape, groups, affine):
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    gamma = rng.standard_normal(shape[1]) if affine else None
    beta = rng.standard_normal(shape[1]) if affine else None
    ty, (tdx, tdg, tdb) = _torch_grads(
        torch, lambda t, g, b: torch.nn.functional.group_norm(t, groups, g, b), [x, gamma, beta],
        dy)
    assert_close(F.groupnorm_forward(x, groups, gamma, beta), ty)
    dx, dgamma, dbeta = F.groupnorm_backward(x, groups, dy, gamma)
    assert_close(dx, tdx, rtol=1e-9, atol=1e-11)
    if affine:
        assert_close(dgamma, tdg, rtol=1e-9, atol=1e-11)
        assert_close(dbeta, tdb, rtol=1e-9, atol=1e-11)
    layer = GroupNorm(groups, shape[1], affine=affine, dtype="float64", backend="numpy")
    if affine:
        layer.params.update(gamma=gamma, beta=beta)
    assert_close(layer.forward(x, train=True), ty)
    assert_close(layer.backward(dy), tdx, rtol=1e-9, atol=1e-11)
    assert sorted(layer.grads) == (["beta", "gamma"] if affine else [])


@pytest.mark.parametrize("kernel", ["layernorm", "groupnorm"])
def test_layer_and_group_norm_gradients_float64(xp, rng, kernel):
    x = ann.asarray(rng.standard_normal((2, 4, 3)))
    if kernel == "layernorm":
        option, affine_shape = (4, 3), (4, 3)
        forward, backward = F.layernorm_forward, F.layernorm_backward
    else:
        option, affine_shape = 2, (4,)
        forward, backward = F.groupnorm_forward, F.groupnorm_backward
    gamma = ann.asarray(rng.standard_normal(affine_shape))
    beta = ann.asarray(rng.standard_normal(affine_shape))

    def grads(dy, x, gamma, beta):
        dx, dgamma, dbeta = backward(x, option, dy, gamma)
        return {"x": dx, "gamma": dgamma, "beta": dbeta}

    report = check_function(lambda x, gamma, beta: forward(x, option, gamma, beta), grads,
                            {"x": x, "gamma": gamma, "beta": beta})
    assert report.passed, str(report)


def test_norm_refusals_name_the_option():
    x = np.zeros((2, 6, 3))
    with pytest.raises(ann.InputError, match=r"x: expected a shape ending in \(4,\) "
                                             r"\(normalized_shape\), got shape \(2, 6, 3\)"):
        F.layernorm_forward(x, 4)
    with pytest.raises(ann.InputError, match="layer_norm: expected normalized_shape.*got 0"):
        F.layernorm_forward(x, 0)
    with pytest.raises(ann.InputError, match="group_norm: expected num_groups to be a positive "
                                             "int dividing the 6 channels of x, got 4"):
        F.groupnorm_forward(x, 4)
    with pytest.raises(ann.InputError, match=r"gamma: expected shape \(6,\), got \(3,\)"):
        F.groupnorm_forward(x, 3, np.ones(3))
    with pytest.raises(ValueError, match="GroupNorm: expected num_groups to divide "
                                         "num_channels=6, got num_groups=4"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"LayerNorm: expected normalized_shape\[1\] to be a "
                                         r"positive int, got 0"):
        LayerNorm((3, 0))
    with pytest.raises(ann.InputError, match=r"GroupNorm.*expected \(N, 6, \*\), got shape "
                                             r"\(2, 4\)"):
        GroupNorm(2, 6).forward(ann.asarray(np.zeros((2, 4)), dtype="float32"))


# --- dropout -----------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value encountered in multiply:RuntimeWarning")
def test_dropout_p_one_zeros_everything_and_p_zero_is_the_identity(xp, torch):
    values = np.array([[NAN, 1.0, -2.0], [3.0, np.inf, 0.5]])
    x, dy = ann.asarray(values), ann.asarray(np.ones((2, 3)))
    ty, (tdx,) = _torch_grads(torch, lambda t: torch.nn.functional.dropout(t, p=1.0), [values],
                              np.ones((2, 3)))
    layer = Dropout(1.0)
    np.testing.assert_array_equal(host(layer.forward(x, train=True)), host(ty))  # NaN * 0
    np.testing.assert_array_equal(host(layer.backward(dy)), host(tdx))
    zeros = ann.asarray(np.zeros((2, 3)))
    np.testing.assert_array_equal(host(F.dropout_forward(x, zeros, 1.0)), host(ty))
    np.testing.assert_array_equal(host(F.dropout_backward(zeros, dy, 1.0)), np.zeros((2, 3)))
    identity = Dropout(0.0)
    np.testing.assert_array_equal(host(identity.forward(x, train=True)), values)
    np.testing.assert_array_equal(host(identity.backward(dy)), np.ones((2, 3)))
    assert Dropout.from_config(layer.get_config()).p == 1.0


def test_dropout_refuses_p_outside_0_1():
    with pytest.raises(ValueError, match=r"Dropout: expected 0 <= p <= 1, got 1.5"):
        Dropout(1.5)
    with pytest.raises(ann.InputError, match=r"p: expected a number with 0 <= p <= 1, got -0.1"):
        F.dropout_forward(np.ones(2), np.ones(2), -0.1)


# --- linear on (N, *, in) and (in,) ----------------------------------------------------------

@pytest.mark.parametrize("shape", [(4,), (1, 4), (3, 4), (2, 3, 4), (2, 1, 3, 4), (0, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_any_leading_axes_matches_torch(torch, rng, shape, bias):
    x, w = rng.standard_normal(shape), rng.standard_normal((5, 4))
    b = rng.standard_normal(5) if bias else None
    dy = rng.standard_normal(shape[:-1] + (5,))
    ty, (tdx, tdw, tdb) = _torch_grads(torch, torch.nn.functional.linear, [x, w, b], dy)
    assert_close(F.dense_forward(x, w, b), ty)
    dx, dw, db = F.dense_backward(x, w, dy)
    assert tuple(dx.shape) == shape and dw.shape == (5, 4) and db.shape == (5,)
    assert_close(dx, tdx)
    assert_close(dw, tdw)
    if bias:
        assert_close(db, tdb)
    layer = Dense(4, 5, bias=bias, dtype="float64", backend="numpy")
    layer.params["W"] = w
    if bias:
        layer.params["b"] = b
    assert_close(layer.forward(x, train=True), ty)
    assert_close(layer.backward(dy), tdx)
    assert_close(layer.grads["W"], tdw)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_dense_leading_axes_gradients_float64(xp, rng, shape):
    x, w = ann.asarray(rng.standard_normal(shape)), ann.asarray(rng.standard_normal((5, 4)))
    b = ann.asarray(rng.standard_normal(5))

    def grads(dy, x, w, b):
        dx, dw, db = F.dense_backward(x, w, dy)
        return {"x": dx, "w": dw, "b": db}

    report = check_function(F.dense_forward, grads, {"x": x, "w": w, "b": b})
    assert report.passed, str(report)


def test_dense_refusals_name_the_last_axis():
    w = np.zeros((5, 4))
    with pytest.raises(ann.InputError, match=r"x: expected 4 input features in the last axis "
                                             r"\(W has shape \(5, 4\)\), got shape \(2, 3\)"):
        F.dense_forward(np.zeros((2, 3)), w)
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(2, 3, 5\)"):
        F.dense_backward(np.zeros((2, 3, 4)), w, np.zeros((6, 5)))


# --- layers: configs, registry and checkpoints -----------------------------------------------

def test_new_layers_round_trip_through_load_model(tmp_path, rng):
    model = ann.Sequential([
        Dense(6, 8, name="fc"),
        LayerNorm(8, eps=1e-3, bias=False),
        GELU(approximate="tanh"),
        GroupNorm(2, 8, eps=1e-4),
        SiLU(),
        GELU(),
        LayerNorm([8], elementwise_affine=False),
        BatchNorm1D(8),
        BatchNorm1D(8, affine=False, track_running_stats=False),
        Softmax(dim=1),
        LogSoftmax(dim=-1),
    ])
    x = ann.asarray(rng.standard_normal((4, 6)), dtype="float32")
    model.forward(x, train=True)  # moves the running statistics
    for layer in model.layers:  # parameters away from their initial values
        for key, value in layer.params.items():
            layer.params[key] = value + ann.asarray(rng.standard_normal(value.shape),
                                                    dtype="float32")
    path = ann.save_checkpoint(tmp_path / "norms.h5", model)
    rebuilt = ann.load_model(path)
    assert rebuilt.get_config() == model.get_config()
    assert [type(layer).__name__ for layer in rebuilt.layers] == [
        "Dense", "LayerNorm", "GELU", "GroupNorm", "SiLU", "GELU", "LayerNorm", "BatchNorm1D",
        "BatchNorm1D", "Softmax", "LogSoftmax"]
    assert_close(rebuilt.forward(x), model.forward(x), rtol=1e-6, atol=1e-6)
    for name in ("LayerNorm", "GroupNorm", "GELU", "SiLU", "Softmax", "LogSoftmax"):
        assert ann.layers.layer_class(name).__name__ == name


def test_new_layers_run_on_every_backend(xp, rng):
    """The layers (not only the kernels) use nothing beyond the standard: each backend gives
    NumPy's output and input gradient."""
    x, dy = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    for make in (lambda: LayerNorm((4, 3)), lambda: GroupNorm(2, 4), lambda: GELU(),
                 lambda: GELU("tanh"), SiLU, lambda: BatchNorm1D(4, momentum=None),
                 lambda: Dense(3, 3, rng=0), lambda: Dropout(1.0)):
        results = []
        for backend in ("numpy", ann.current_backend().name):
            layer = make().to(backend, dtype="float64")
            y = layer.forward(ann.asarray(x, backend=backend), train=True)
            results.append((host(y), host(layer.backward(ann.asarray(dy, backend=backend)))))
        assert_close(results[1][0], results[0][0])
        assert_close(results[1][1], results[0][1])
