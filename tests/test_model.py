"""Sequential: naming, params and grads, summary, moving, a whole-network gradient check."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, ReLU, Tanh
from helpers import host


def mlp(**kw):
    return ann.Sequential([Dense(4, 8, name="d1", rng=0, **kw), ReLU(), Dense(8, 8, rng=1, **kw),
                           ReLU(), Dense(8, 3, rng=2, **kw)])


def test_unnamed_layers_get_stable_names():
    model = mlp()
    assert [layer.name for layer in model] == ["d1", "relu1", "dense1", "relu2", "dense2"]
    assert list(model.params()) == ["d1.W", "d1.b", "dense1.W", "dense1.b", "dense2.W", "dense2.b"]
    assert [layer.name for layer in mlp()] == [layer.name for layer in model]


def test_automatic_names_skip_names_the_user_took():
    model = ann.Sequential([ReLU(), ReLU(name="relu2"), ReLU()])
    assert [layer.name for layer in model] == ["relu1", "relu2", "relu3"]


def test_duplicate_names_and_reused_layers_are_rejected():
    with pytest.raises(ValueError, match=r"unique.*\['fc'\]"):
        ann.Sequential([Dense(2, 2, name="fc"), Dense(2, 2, name="fc")])
    act = ReLU()
    with pytest.raises(ValueError, match="same layer object"):
        ann.Sequential([act, act])
    with pytest.raises(TypeError, match="layer 1 must be an anyarray_nn Layer, got str"):
        ann.Sequential([ReLU(), "relu"])


def test_whole_network_gradient_check(xp, rng):
    """dense, relu, dense, softmax cross-entropy, checked end to end in float64."""
    model = ann.Sequential([Dense(5, 7, dtype="float64", rng=0), ReLU(),
                            Dense(7, 4, dtype="float64", rng=1)])
    x = ann.asarray(rng.standard_normal((6, 5)))
    labels = ann.asarray(rng.integers(0, 4, 6))
    report = ann.check_gradients(model, x, loss=ann.losses.SoftmaxCrossEntropy(), target=labels)
    assert report.passed, str(report)
    assert {e.name for e in report.entries} == {"x", *model.params()}


def test_grads_have_the_params_keys_and_shapes(xp, rng):
    model = mlp()
    with pytest.raises(RuntimeError, match="no gradient for 'W' yet"):
        model.grads()
    x = ann.asarray(rng.standard_normal((2, 4)), dtype="float32")
    model.backward(model.forward(x, train=True))
    grads, params = model.grads(), model.params()
    assert list(grads) == list(params)
    assert all(tuple(grads[k].shape) == tuple(params[k].shape) for k in params)


def test_summary_counts_weights_and_biases():
    model = ann.Sequential([Flatten(), Dense(784, 10, name="fc")])
    text = model.summary(print_fn=None)
    assert "7,840" in text and "7,850" in text
    last = text.splitlines()[-1].split()
    assert last == ["total", "7,840", "10", "7,850"]
    assert model.num_params() == 7850


def test_summary_prints(capsys):
    mlp().summary()
    assert "dense2" in capsys.readouterr().out


def test_float32_default_and_float64_on_request():
    assert mlp().dtype == "float32"
    assert mlp(dtype="float64").dtype == "float64"
    assert mlp().to(dtype="float64").dtype == "float64"


def test_same_seed_same_weights_on_every_backend(xp, backend_name):
    ann.seed(7)
    here = ann.Sequential([Dense(3, 4), Tanh(), Dense(4, 2)])
    with ann.using("numpy"):
        ann.seed(7)
        reference = ann.Sequential([Dense(3, 4), Tanh(), Dense(4, 2)])
    assert here.backend == backend_name
    for key, value in reference.params().items():
        np.testing.assert_array_equal(host(here.params()[key]), value)


def test_to_moves_the_model_and_it_still_computes_the_same(xp, backend_name, rng):
    model = mlp(backend="numpy")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    expected = model.forward(x)
    model.to(backend_name)
    assert model.backend == backend_name
    np.testing.assert_allclose(host(model.forward(ann.asarray(x))), expected, rtol=1e-5, atol=1e-6)


def test_getitem_and_predict():
    model = mlp()
    assert model["d1"] is model[0]
    with pytest.raises(KeyError, match="no layer named 'nope'"):
        model["nope"]
    predicted = model.predict(np.ones((5, 4), dtype=np.float32))
    assert predicted.shape == (5,)


def test_config_round_trip_rebuilds_the_architecture():
    model = mlp()
    rebuilt = ann.Sequential.from_config(model.get_config(), dtype="float64")
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.dtype == "float64"


def test_input_gradient_only_on_request(rng):
    model = mlp(dtype="float64")
    x = rng.standard_normal((3, 4))
    assert model.backward(model.forward(x, train=True)) is None
    grads = {k: v.copy() for k, v in model.grads().items()}
    dx = model.backward(model.forward(x, train=True), input_grad=True)
    assert dx.shape == x.shape
    for key, value in model.grads().items():  # skipping dx changes no parameter gradient
        np.testing.assert_array_equal(value, grads[key])


# --- ReLU before MaxPool2D runs after it -----------------------------------------------------

def test_a_relu_directly_before_a_max_pool_runs_after_it():
    layers = [Conv2D(1, 2, 3, rng=0), ReLU(), MaxPool2D(2), ReLU(), AvgPool2D(2), ReLU(),
              ReLU(), MaxPool2D(2), MaxPool2D(2), Tanh(), MaxPool2D(2)]
    model = ann.Sequential(layers)
    names = [layer.name for layer in layers]
    assert model.execution_order() == [names[i] for i in [0, 2, 1, 3, 4, 5, 7, 6, 8, 9, 10]]
    assert ann.Sequential([]).execution_order() == []
    assert ann.Sequential([ReLU()]).execution_order() == ["relu1"]


@pytest.mark.parametrize("window", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)],
                         ids=["2x2", "3x3-stride2-pad1"])
def test_swapping_relu_and_max_pool_changes_neither_output_nor_gradients(xp, rng, window):
    """Against the layers run one by one in the listed order, exactly, with many ties: small
    integers make whole windows of zeros and of equal negative and positive maxima."""
    def build():
        return ann.Sequential([Conv2D(2, 3, 3, padding=1, dtype="float64", rng=0), ReLU(),
                               MaxPool2D(**window), Flatten(),
                               Dense(3 * 3 * 3, 2, dtype="float64", rng=1)])
    model, listed = build(), build()
    x_host = rng.integers(-2, 3, (4, 2, 6, 6)).astype(np.float64)
    model.params()["conv1.W"][...] = ann.asarray(np.round(host(model.params()["conv1.W"]) * 2),
                                                 dtype="float64")
    listed.params()["conv1.W"][...] = model.params()["conv1.W"]
    x = ann.asarray(x_host, dtype="float64")
    y = model.forward(x, train=True)
    out = x
    for layer in listed:
        out = layer.forward(out, train=True)
    np.testing.assert_array_equal(host(y), host(out))
    dy = ann.asarray(rng.standard_normal(tuple(y.shape)), dtype="float64")
    dx = model.backward(dy, input_grad=True)
    for layer in reversed(listed.layers):
        dy = layer.backward(dy)
    np.testing.assert_array_equal(host(dx), host(dy))
    for key, grad in listed.grads().items():
        np.testing.assert_array_equal(host(model.grads()[key]), host(grad), err_msg=key)
    relu_cache = model._caches[model.execution_order().index("relu1")]  # ReLU's cache: x
    assert relu_cache.shape == model["maxpool1"].forward(
        model["conv1"].forward(x)).shape  # the ReLU really ran on the pooled array


def test_predict_runs_in_batches_and_equals_one_forward_pass(rng):
    """30 rows in batches of 7: five forward passes of at most 7 rows, the same classes as
    one pass over all 30; batch norm in evaluation mode treats each row alone."""
    kw = dict(dtype="float64")
    model = ann.Sequential([ann.layers.Dense(6, 8, rng=0, **kw), ann.layers.BatchNorm1D(8, **kw),
                            ann.layers.ReLU(), ann.layers.Dense(8, 4, rng=1, **kw)])
    model.layers[1].buffers["running_mean"] = rng.standard_normal(8)
    x = rng.standard_normal((30, 6))
    expected = np.argmax(np.asarray(model.forward(x)), axis=1)
    seen = []
    real = model.forward
    model.forward = lambda xb, train=False: (seen.append(xb.shape[0]), real(xb, train=train))[1]
    np.testing.assert_array_equal(model.predict(x, batch_size=7), expected)
    assert seen == [7, 7, 7, 7, 2]
    seen.clear()
    np.testing.assert_array_equal(model.predict(x), expected)  # the default: 256 rows a pass
    assert seen == [30]


def test_predict_splits_every_input_of_a_graph_alike(rng):
    a, b = ann.Input((3,), name="a"), ann.Input((3,), name="b")
    out = ann.layers.Dense(3, 5, rng=0, dtype="float64")(ann.layers.Add()([a, b]))
    model = ann.Model([a, b], out)
    xa, xb = rng.standard_normal((11, 3)), rng.standard_normal((11, 3))
    expected = np.argmax(np.asarray(model.forward((xa, xb))), axis=1)
    np.testing.assert_array_equal(model.predict((xa, xb), batch_size=4), expected)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "8", None])
def test_predict_refuses_a_batch_size_that_is_not_a_positive_integer(rng, size):
    model = ann.Sequential([ann.layers.Dense(2, 3, rng=0, dtype="float64")])
    with pytest.raises(ValueError, match=r"Sequential.predict: batch_size: expected an "
                                         r"integer >= 1, got"):
        model.predict(rng.standard_normal((4, 2)), batch_size=size)


def _bn_net(seed, **kw):
    return ann.Sequential([Conv2D(2, 3, 3, padding=1, rng=seed, **kw),
                           ann.layers.BatchNorm2D(3, **kw), ReLU(), Flatten(),
                           Dense(3 * 4 * 4, 4, rng=seed + 1, **kw)])


def test_state_dict_round_trips_on_every_backend(xp, rng):
    """state_dict holds the parameters and the buffers; loading it into a model built with
    other weights gives the same outputs, on every backend, also from NumPy arrays."""
    kw = dict(dtype="float64")
    source, target = _bn_net(0, **kw), _bn_net(7, **kw)
    source.to(ann.current_backend().name), target.to(ann.current_backend().name)
    source.layers[1].buffers["running_mean"] = ann.asarray(rng.standard_normal(3))
    state = source.state_dict()
    assert set(state) == set(source.params()) | set(source.buffers())
    report = target.load_state_dict({k: host(v) for k, v in state.items()})  # NumPy arrays
    assert report.missing_keys == [] and report.unexpected_keys == []
    x = ann.asarray(rng.standard_normal((5, 2, 4, 4)))
    np.testing.assert_array_equal(host(target.forward(x)), host(source.forward(x)))
    for key, value in target.state_dict().items():
        assert ann.backend.backend_name_of(value) == ann.current_backend().name, key


def test_load_state_dict_moves_and_casts_to_each_parameter(rng):
    """A float64 state loads into a float32 model as float32 (PyTorch copies into the
    parameter's dtype); lists of numbers are taken too."""
    model = ann.Sequential([Dense(2, 3, rng=0)])
    model.load_state_dict({"dense1.W": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                           "dense1.b": np.zeros(3, dtype=np.float64)})
    assert model.params()["dense1.W"].dtype == np.float32
    np.testing.assert_array_equal(model.params()["dense1.W"], [[1, 2], [3, 4], [5, 6]])


def test_strict_loading_refuses_missing_and_unexpected_keys_and_non_strict_reports_them(rng):
    model = _bn_net(0, dtype="float64")
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    state = {k: np.ones(tuple(v.shape)) for k, v in model.state_dict().items()}
    del state["dense1.b"]
    state["extra.W"] = np.ones(2)
    with pytest.raises(KeyError, match=r"Sequential.load_state_dict: missing keys: dense1.b; "
                                       r"unexpected keys: extra.W \(strict=True"):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(value, before[key])
    report = model.load_state_dict(state, strict=False)
    assert report.missing_keys == ["dense1.b"] and report.unexpected_keys == ["extra.W"]
    np.testing.assert_array_equal(model.params()["dense1.W"], 1.0)
    np.testing.assert_array_equal(model.params()["dense1.b"], before["dense1.b"])


@pytest.mark.parametrize("value, message", [
    (np.ones((3, 3)), r"dense1.W: the model has shape \(3, 2\), the state \(3, 3\)"),
    (np.full((3, 2), np.nan), r"dense1.W: holds NaN or infinite values"),
    (np.array([["a", "b"]] * 3), r"dense1.W: expected an array of numbers, got dtype <U1"),
    (object(), r"dense1.W: expected an array of numbers"),
])
def test_a_bad_value_is_refused_naming_its_key_and_nothing_changes(value, message):
    model = ann.Sequential([Dense(2, 3, rng=0, dtype="float64")])
    model.params()["dense1.b"][:] = 0.5
    before = {k: np.array(v) for k, v in model.params().items()}
    with pytest.raises(ValueError, match=message):
        model.load_state_dict({"dense1.W": value, "dense1.b": np.zeros(3)})  # b checks out
    for key, value in model.params().items():
        np.testing.assert_array_equal(value, before[key])


def test_load_state_dict_refuses_what_is_not_a_dict_or_a_flag():
    model = ann.Sequential([Dense(2, 3, rng=0)])
    with pytest.raises(TypeError, match="expected a dict of arrays keyed 'layer.name', got list"):
        model.load_state_dict([np.ones(2)])
    with pytest.raises(ValueError, match="strict to be True or False"):
        model.load_state_dict(model.state_dict(), strict="no")


def test_parameters_and_named_parameters_follow_the_layers():
    model = _bn_net(0)
    assert [name for name, _ in model.named_parameters()] == list(model.params())
    assert all(a is b for a, b in zip(model.parameters(), model.params().values()))


def test_predict_in_batches_on_every_backend(xp, rng):
    """The last batch's slice stops at the end (array-api-strict refuses a stop past it)."""
    model = ann.Sequential([Dense(3, 4, rng=0, dtype="float64")])
    model.to(ann.current_backend().name)
    x = ann.asarray(rng.standard_normal((10, 3)))
    expected = host(model.predict(x, batch_size=10))
    np.testing.assert_array_equal(host(model.predict(x, batch_size=4)), expected)


def test_predict_without_a_batch_axis_gets_the_layer_s_error(rng):
    model = ann.Sequential([Dense(2, 3, rng=0, dtype="float64")])
    with pytest.raises(ann.InputError, match=r"Dense 'dense1': expected input of shape "
                                             r"\(batch, 2\), got \(\)"):
        model.predict(np.asarray(1.0))
    assert model.predict(np.zeros((0, 2))).shape == (0,)
