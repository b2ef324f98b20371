"""Layers: gradients through the layer objects, configs, the registry, errors naming the layer."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.layers import (AvgPool2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D,
                                LeakyReLU, MaxPool2D, ReLU, Scale, Sigmoid, Tanh)
from helpers import away_from_zero, host

LAYERS = {
    "Dense": (lambda: Dense(5, 3, dtype="float64", rng=0), (4, 5)),
    "Dense-nobias": (lambda: Dense(5, 3, bias=False, dtype="float64", rng=0), (4, 5)),
    "ReLU": (ReLU, (3, 4, 2)),
    "LeakyReLU": (lambda: LeakyReLU(0.2), (3, 4)),
    "Tanh": (Tanh, (2, 6)),
    "Sigmoid": (Sigmoid, (2, 6)),
    "Flatten": (Flatten, (2, 3, 2, 2)),
    "Conv2D": (lambda: Conv2D(2, 3, 3, padding=1, dtype="float64", rng=0), (2, 2, 5, 4)),
    "Conv2D-strided-nobias": (lambda: Conv2D(2, 2, (2, 3), stride=2, bias=False,
                                             dtype="float64", rng=0), (1, 2, 6, 7)),
    "MaxPool2D": (lambda: MaxPool2D(2), (2, 2, 4, 6)),
    "AvgPool2D": (lambda: AvgPool2D(3, stride=2, padding=1), (1, 2, 5, 5)),
    "GlobalAvgPool2D": (GlobalAvgPool2D, (2, 3, 2, 3)),
    "Scale": (lambda: Scale(-1 / 9), (3, 4)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_gradients_float64(xp, rng, name):
    make, shape = LAYERS[name]
    layer = make()
    report = ann.check_gradients(layer, ann.asarray(away_from_zero(rng, shape)))
    assert report.passed, str(report)
    assert set(layer.grads) == set(layer.params)


def test_failed_forward_leaves_no_stale_cache():
    layer = Dense(2, 2)
    layer.forward(np.zeros((1, 2), np.float32), train=True)
    with pytest.raises(ann.InputError):
        layer.forward(np.zeros((1, 3), np.float32), train=True)
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward(np.zeros((1, 2), np.float32))


def test_backward_before_forward_is_an_error():
    layer = Dense(2, 2, name="fc")
    with pytest.raises(RuntimeError, match="Dense 'fc': backward.*forward\\(x, train=True\\)"):
        layer.backward(np.zeros((1, 2), dtype=np.float32))
    layer.forward(np.zeros((1, 2), dtype=np.float32), train=False)
    with pytest.raises(RuntimeError, match="preceding forward"):
        layer.backward(np.zeros((1, 2), dtype=np.float32))



class Double(ann.layers.Layer):
    """y = 2 x: backward needs nothing from forward, so the cache is None. Refuses 1-D x."""

    def _forward(self, x, train):
        if x.ndim != 2:
            raise ann.InputError(f"x: expected a 2-D array, got shape {tuple(x.shape)}")
        return 2 * x, None

    def _backward(self, dy, cache, input_grad):
        return 2 * dy, {}


@pytest.mark.parametrize("make, factor", [(lambda: Dropout(0.0, name="drop"), 1.0),
                                          (lambda: Double(name="drop"), 2.0)],
                         ids=["Dropout-p0", "cache-None"])
def test_a_layer_whose_cache_is_none_runs_backward(make, factor):
    layer = make()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    layer.forward(x, train=True)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.full((2, 3), factor))
    model = ann.Sequential([Dense(3, 3, rng=0, name="fc"), make(), Dense(3, 2, rng=1)])
    y = model.forward(x, train=True)
    assert model.backward(np.ones_like(y), input_grad=True).shape == (2, 3)
    # The errors for a backward with nothing to go back through stay: no forward yet, an
    # evaluation forward after the training one, a failed forward after the training one.
    fresh = make()
    with pytest.raises(RuntimeError, match=r"'drop': backward\(\) needs a preceding forward"):
        fresh.backward(np.ones_like(x))
    fresh.forward(x, train=True)
    fresh.forward(x, train=False)
    with pytest.raises(RuntimeError, match=r"'drop': backward\(\) needs a preceding forward"):
        fresh.backward(np.ones_like(x))
    fresh.forward(x, train=True)
    with pytest.raises(ann.InputError, match="'drop': x: expected"):
        fresh.forward(np.ones(3, np.int64), train=True)  # leaves nothing to go back through
    with pytest.raises(RuntimeError, match=r"'drop': backward\(\) needs a preceding forward"):
        fresh.backward(np.ones_like(x))


def test_dense_errors_name_the_layer(xp):
    layer = Dense(4, 3, name="fc")
    with pytest.raises(ann.InputError, match=r"Dense 'fc': expected input of shape \(batch, 4\), got \(2, 5\)"):
        layer.forward(ann.asarray(np.zeros((2, 5)), dtype="float32"))
    with pytest.raises(ann.InputError, match=r"Dense 'fc'.*\(2, 4, 1\).*Flatten"):
        layer.forward(ann.asarray(np.zeros((2, 4, 1)), dtype="float32"))
    with pytest.raises(ann.InputError, match="Dense 'fc': x: expected dtype float32.*got float64"):
        layer.forward(ann.asarray(np.zeros((2, 4)), dtype="float64"))
    layer.forward(ann.asarray(np.zeros((2, 4)), dtype="float32"), train=True)
    with pytest.raises(ann.InputError, match=r"Dense 'fc': dy: expected shape \(2, 3\)"):
        layer.backward(ann.asarray(np.zeros((2, 4)), dtype="float32"))


def test_layer_on_other_backend_names_layer_and_both_backends():
    layer = Dense(3, 2, name="fc", backend="array_api_strict")
    with pytest.raises(ann.BackendMismatchError, match="Dense 'fc': .*x is numpy, W is array_api_strict"):
        layer.forward(np.zeros((1, 3), dtype=np.float32))


def test_flatten_errors(xp):
    with pytest.raises(ann.InputError, match=r"Flatten: expected an input with a batch axis.*\(3,\)"):
        Flatten().forward(ann.asarray(np.zeros(3)))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_dense_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="Dense: expected in_features to be a positive int"):
        Dense(bad, 3)


@pytest.mark.parametrize("bad", ["", "a.b", "a/b", 3])
def test_layer_names_are_validated(bad):
    with pytest.raises(ValueError, match="layer name"):
        ReLU(name=bad)


def test_unknown_initializer():
    with pytest.raises(ValueError, match="unknown initializer 'kaiming'.*he"):
        Dense(2, 2, init="kaiming")


@pytest.mark.parametrize("init,expected_std", [("he", np.sqrt(2 / 400)),
                                               ("glorot", np.sqrt(2 / 600)),
                                               ("normal", 0.01),
                                               ("uniform", np.sqrt(1 / (3 * 400)))])
def test_initializer_statistics(init, expected_std):
    w = host(Dense(400, 200, init=init, dtype="float64", rng=0).params["W"])
    assert abs(w.mean()) < 0.05 * expected_std * 10
    assert w.std() == pytest.approx(expected_std, rel=0.02)
    assert np.all(host(Dense(400, 200, init=init, rng=0).params["b"]) == 0)


def test_identity_initializer_passes_the_first_channels_through(rng):
    conv = Conv2D(3, 5, 3, padding=1, bias=False, init="identity", dtype="float64", rng=0)
    x = rng.standard_normal((2, 3, 6, 6))
    y = host(conv.forward(ann.asarray(x)))
    np.testing.assert_array_equal(y[:, :3], x)  # outputs 0-2 copy inputs 0-2 exactly
    w = host(conv.params["W"])[3:]  # the others are drawn as "uniform" draws them
    assert np.abs(w).max() <= 1 / np.sqrt(27) and w.std() > 0.05
    narrowing = Conv2D(4, 2, 3, padding=1, bias=False, init="identity", dtype="float64", rng=0)
    x4 = rng.standard_normal((1, 4, 5, 5))
    np.testing.assert_array_equal(host(narrowing.forward(ann.asarray(x4))), x4[:, :2])
    dense = Dense(3, 3, bias=False, init="identity", dtype="float64", rng=0)
    np.testing.assert_array_equal(host(dense.params["W"]), np.eye(3))
    for shape in [(4, 3, 2, 2), (4, 3, 3)]:
        with pytest.raises(ValueError, match=r"identity initializer: expected a dense weight "
                                             rf"\(out, in\) or a convolution .*got shape "
                                             rf"{re.escape(str(shape))}"):
            ann.init.identity(shape, 12, 16, np.random.default_rng(0))


def test_patch_whitening_decorrelates_the_patches(rng):
    """Through a conv layer, the first half of the filters turns correlated 2x2 patches into
    outputs with second moment diag(lambda / (lambda + eps)); the second half negates them."""
    x = rng.standard_normal((40, 3, 9, 8))
    x[:, 1] += 0.8 * x[:, 0]
    x[:, :, 1:] += 0.5 * x[:, :, :-1]  # neighbouring rows correlated too
    eps = 1e-2
    w = ann.init.patch_whitening(x, 2, eps=eps)
    assert w.shape == (24, 3, 2, 2)
    np.testing.assert_array_equal(w[12:], -w[:12])
    conv = Conv2D(3, 24, 2, bias=False, dtype="float64")
    conv.params["W"] = ann.asarray(w, dtype="float64")
    y = np.moveaxis(host(conv.forward(ann.asarray(x))), 1, 0).reshape(24, -1)
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2), axis=(2, 3))
    flat = np.moveaxis(patches, 1, 3).reshape(-1, 12)  # (positions, c kh kw)
    values = np.linalg.eigvalsh(flat.T @ flat / len(flat))[::-1]
    moment = y[:12] @ y[:12].T / y.shape[1]
    np.testing.assert_allclose(moment, np.diag(values / (values + eps)), atol=1e-10)
    for bad, message in [(x[0], r"expected images \(N >= 1, C, H, W\)"),
                         (x[:, :, :1], "H and W >= 2"), (x[:0], "N >= 1"),
                         (np.where(x > 2, np.nan, x), "NaN or infinite")]:
        with pytest.raises(ValueError, match=message):
            ann.init.patch_whitening(bad, 2)


def test_scale_layer_config_and_bad_factors():
    layer = Scale(0.25, name="s")
    again = ann.layers.layer_class("Scale").from_config(layer.get_config())
    assert again.factor == 0.25 and again.name == "s"
    np.testing.assert_array_equal(again.forward(np.ones((2, 2), np.float32)), np.full((2, 2), 0.25))
    for bad in [float("nan"), float("inf"), True, "2", None]:
        with pytest.raises(ValueError, match=rf"Scale: expected factor to be a finite number, "
                                             rf"got {re.escape(repr(bad))}"):
            Scale(bad)


def test_custom_initializer_callable():
    layer = Dense(3, 2, init=lambda shape, fan_in, fan_out, rng: np.full(shape, 0.5))
    np.testing.assert_array_equal(host(layer.params["W"]), np.full((2, 3), 0.5, np.float32))
    # a callable is recorded as None, so the config still rebuilds the architecture
    assert layer.get_config()["init"] is None
    assert Dense.from_config(layer.get_config()).params["W"].shape == (2, 3)
    assert Dense.from_config(Dense(3, 2, init=ann.init.normal(0.1)).get_config()).init is None


def test_registry_and_config_round_trip():
    layer = LeakyReLU(0.3, name="act")
    rebuilt = ann.layers.layer_class("LeakyReLU").from_config(layer.get_config())
    assert rebuilt.negative_slope == 0.3 and rebuilt.name == "act"
    with pytest.raises(ValueError, match="unknown layer type 'os.system'.*Dense"):
        ann.layers.layer_class("os.system")


def test_layer_to_moves_and_casts(xp, backend_name):
    layer = Dense(3, 2, backend="numpy", rng=0)
    before = host(layer.params["W"])
    layer.to(backend_name, dtype="float64")
    assert ann.backend.backend_name_of(layer.params["W"]) == backend_name
    assert ann.backend.dtype_name(layer.params["W"].dtype) == "float64"
    np.testing.assert_array_equal(host(layer.params["W"]), before.astype(np.float64))


def test_conv_layer_errors_name_the_layer(xp):
    layer = Conv2D(3, 4, 5, name="conv1")
    with pytest.raises(ann.InputError, match=r"Conv2D 'conv1': x: expected 3 input channels.*got shape \(2, 1, 8, 8\)"):
        layer.forward(ann.asarray(np.zeros((2, 1, 8, 8)), dtype="float32"))
    with pytest.raises(ann.InputError, match=r"Conv2D 'conv1': x: the kernel \(5, 5\).*larger than the padded input \(4, 4\)"):
        layer.forward(ann.asarray(np.zeros((2, 3, 4, 4)), dtype="float32"))
    with pytest.raises(ann.InputError, match="MaxPool2D 'pool': x: expected a 4-D array"):
        MaxPool2D(2, name="pool").forward(ann.asarray(np.zeros((2, 8)), dtype="float32"))


def test_conv_layer_config_round_trip():
    layer = Conv2D(3, 8, (3, 5), padding="same", dilation=(1, 2), name="c")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        Conv2D(3, 8, 3, stride=2, padding="same")
    rebuilt = ann.layers.layer_class("Conv2D").from_config(layer.get_config())
    assert rebuilt.get_config() == layer.get_config()
    assert tuple(rebuilt.params["W"].shape) == (8, 3, 3, 5)


@pytest.mark.parametrize("make", [
    lambda: Dense(2, 2, name="l"), lambda: ann.layers.BatchNorm1D(2, name="l"),
    lambda: ann.layers.BatchNorm2D(1, name="l"), lambda: Flatten(name="l"),
    lambda: ReLU(name="l"), lambda: Conv2D(1, 1, 1, name="l"), lambda: MaxPool2D(1, name="l"),
], ids=["Dense", "BatchNorm1D", "BatchNorm2D", "Flatten", "ReLU", "Conv2D", "MaxPool2D"])
def test_non_array_input_is_refused_by_every_layer_alike(make):
    layer = make()
    with pytest.raises(ann.BackendMismatchError, match=rf"{layer.type_name} 'l': expected an "
                                                       rf"array of one of the backends .*got "
                                                       rf"builtins.list"):
        layer.forward([[1.0, 2.0], [3.0, 4.0]], train=True)


@pytest.mark.parametrize("make, message", [
    (lambda: Conv2D(1, 1, 3, stride=0), r"Conv2D: stride and dilation: expected ints >= 1, got stride \(0, 0\)"),
    (lambda: Conv2D(1, 1, 3, dilation=(1, 0)), r"Conv2D: stride and dilation: .*dilation \(1, 0\)"),
    (lambda: Conv2D(1, 1, 3, stride=(1, 2, 3)), r"Conv2D: stride: expected an int or a pair of ints, got \(1, 2, 3\)"),
    (lambda: Conv2D(1, 1, 3, padding=-1), "Conv2D: padding: expected non-negative ints, got -1"),
    (lambda: Conv2D(1, 1, 3, stride=2, padding="same"), "Conv2D: padding='same' needs stride 1"),
    (lambda: MaxPool2D(0), r"MaxPool2D: expected kernel_size and stride >= 1.*kernel_size \(0, 0\)"),
    (lambda: MaxPool2D(2, stride=-1), r"MaxPool2D: expected kernel_size and stride >= 1.*stride \(-1, -1\)"),
    (lambda: AvgPool2D(2, padding=2), r"AvgPool2D: padding: expected at most half the kernel \(2, 2\), got \(2, 2\)"),
    (lambda: AvgPool2D(2.0), "AvgPool2D: kernel_size: expected an int or a pair of ints, got 2.0"),
], ids=["conv-stride0", "conv-dilation0", "conv-stride3", "conv-padding", "conv-same-stride",
        "maxpool-kernel0", "maxpool-stride-negative", "avgpool-padding", "avgpool-float"])
def test_conv_and_pool_arguments_are_checked_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_pool_layer_resolves_its_window():
    layer = MaxPool2D(np.int64(3), padding=1)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((3, 3), (3, 3), (1, 1))
    assert MaxPool2D.from_config(layer.get_config()).get_config() == layer.get_config()
