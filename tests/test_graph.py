"""Graph models (issue 23): ann.Input, layers called on nodes, ann.Model, Add, Concatenate,
Identity. Gradients of residual, concatenating and shared-layer graphs against PyTorch
autograd on the same weights and by float64 finite differences; a graph and its Sequential
equivalent give identical results; checkpoints, load_model, exact resume and warm starts
between Sequential and graph; every bad graph is refused when built, naming what is wrong."""

from __future__ import annotations

import json
import tracemalloc

import h5py
import numpy as np
import pytest
from helpers import assert_close, host

import anyarray_nn as ann
from anyarray_nn.layers import (
    AdaptiveAvgPool2D,
    Add,
    BatchNorm2D,
    Concatenate,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    Identity,
    MaxPool2D,
    ReLU,
)


def residual_net(dtype="float64", rng=0):
    """conv-relu, then a residual block (conv + shortcut), pooled to a dense layer."""
    image = ann.Input((3, 6, 6), name="image")
    h = ReLU(name="r1")(Conv2D(3, 4, 3, padding=1, name="c1", dtype=dtype, rng=rng)(image))
    block = Conv2D(4, 4, 3, padding=1, name="c2", dtype=dtype, rng=rng + 1)(h)
    h = ReLU(name="r2")(Add(name="add")([block, h]))
    out = Dense(4, 3, name="fc", dtype=dtype, rng=rng + 2)(GlobalAvgPool2D(name="gap")(h))
    return ann.Model(image, out)


def two_input_net(dtype="float64"):
    """Two inputs joined by Concatenate; two outputs, one of them reading a shared layer."""
    a, b = ann.Input((3, 5, 5), name="a"), ann.Input((2, 5, 5), name="b")
    h = Concatenate(name="cat")([Conv2D(3, 4, 3, padding=1, name="ca", dtype=dtype, rng=0)(a), b])
    flat = Flatten(name="flat")(ReLU(name="r")(h))
    shared = Dense(6 * 25, 6 * 25, name="shared", dtype=dtype, rng=1)
    first = shared(flat)
    second = shared(ReLU(name="r2")(first))  # the same layer again: its gradients summed
    out1 = Dense(6 * 25, 2, name="out1", dtype=dtype, rng=2)(Add(name="sum")([first, second]))
    out2 = Dense(6 * 25, 3, name="out2", dtype=dtype, rng=3)(flat)
    return ann.Model([a, b], [out1, out2])


def torch_params(torch, model):
    return {k: torch.tensor(host(v), requires_grad=True) for k, v in model.params().items()}


def torch_residual(torch, p, x):
    f = torch.nn.functional
    h = f.relu(f.conv2d(x, p["c1.W"], p["c1.b"], padding=1))
    h = f.relu(f.conv2d(h, p["c2.W"], p["c2.b"], padding=1) + h)
    return f.linear(h.mean(dim=(2, 3)), p["fc.W"], p["fc.b"])


def torch_two_input(torch, p, a, b):
    f = torch.nn.functional
    h = torch.cat([f.conv2d(a, p["ca.W"], p["ca.b"], padding=1), b], dim=1)
    flat = f.relu(h).flatten(1)
    first = f.linear(flat, p["shared.W"], p["shared.b"])
    second = f.linear(f.relu(first), p["shared.W"], p["shared.b"])
    return (f.linear(first + second, p["out1.W"], p["out1.b"]),
            f.linear(flat, p["out2.W"], p["out2.b"]))


# --- gradients --------------------------------------------------------------------------------

def test_residual_graph_matches_torch_autograd(torch, rng):
    model = residual_net()
    x, dy = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3))
    y = model.forward(x, train=True)
    dx = model.backward(dy, input_grad=True)
    p, tx = torch_params(torch, model), torch.tensor(x, requires_grad=True)
    ty = torch_residual(torch, p, tx)
    ty.backward(torch.tensor(dy))
    assert_close(y, ty.detach().numpy())
    assert_close(dx, tx.grad.numpy())
    for key, grad in model.grads().items():
        assert_close(grad, p[key].grad.numpy(), rtol=1e-9, atol=1e-12)


def test_concatenating_two_input_two_output_graph_with_a_shared_layer_matches_torch(torch, rng):
    model = two_input_net()
    a, b = rng.standard_normal((3, 3, 5, 5)), rng.standard_normal((3, 2, 5, 5))
    dy1, dy2 = rng.standard_normal((3, 2)), rng.standard_normal((3, 3))
    y1, y2 = model.forward((a, b), train=True)
    da, db = model.backward((dy1, dy2), input_grad=True)
    p = torch_params(torch, model)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    t1, t2 = torch_two_input(torch, p, ta, tb)
    torch.autograd.backward([t1, t2], [torch.tensor(dy1), torch.tensor(dy2)])
    assert_close(y1, t1.detach().numpy())
    assert_close(y2, t2.detach().numpy())
    assert_close(da, ta.grad.numpy())
    assert_close(db, tb.grad.numpy())
    assert set(model.grads()) == set(p)
    for key, grad in model.grads().items():
        assert_close(grad, p[key].grad.numpy(), rtol=1e-9, atol=1e-12)
    assert [layer.name for layer in model.layers].count("shared") == 1
    assert "shared:2" in model.execution_order()


def test_graph_gradients_pass_float64_finite_differences_on_every_backend(xp, rng):
    model = residual_net().to(ann.current_backend().name)
    report = ann.check_gradients(model, ann.asarray(rng.standard_normal((2, 3, 6, 6))),
                                 max_checks=40)
    assert report.passed, str(report)


def test_gradient_checks_of_a_two_input_two_output_graph_on_every_backend(xp, rng,
                                                                          monkeypatch):
    from anyarray_nn.losses import Combined, SoftmaxCrossEntropy
    model = two_input_net().to(ann.current_backend().name)
    inputs = (ann.asarray(rng.standard_normal((2, 3, 5, 5))),
              ann.asarray(rng.standard_normal((2, 2, 5, 5))))
    report = ann.check_gradients(model, inputs, max_checks=20)
    assert report.passed, str(report)
    assert [e.name for e in report.entries][:2] == ["x0", "x1"]
    assert ann.check_gradients(model, list(inputs), max_checks=5).passed  # as forward takes
    loss = Combined([SoftmaxCrossEntropy(), SoftmaxCrossEntropy()], weights=[1.0, 0.3])
    targets = (ann.asarray(np.array([0, 1])), ann.asarray(np.array([2, 0])))
    report = ann.check_gradients(model, inputs, loss=loss, target=targets, max_checks=20)
    assert report.passed, str(report)
    # A wrong gradient for the second input is caught, and only there.
    original = Concatenate._backward
    monkeypatch.setattr(Concatenate, "_backward", lambda self, dy, cache, input_grad: (
        lambda dx, grads: ((dx[0], 2 * dx[1]), grads))(*original(self, dy, cache, input_grad)))
    report = ann.check_gradients(model, inputs, max_checks=20)
    assert not report["x1"].passed and report["x0"].passed


def test_an_input_read_by_a_layer_and_a_shortcut_gets_both_gradients(rng):
    # Add(conv(x), x): the first layer reads the input, but so does the shortcut
    x_node = ann.Input((2, 4, 4))
    out = Add()([Conv2D(2, 2, 3, padding=1, dtype="float64", rng=0)(x_node), x_node])
    model = ann.Model(x_node, out)
    x, dy = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    model.forward(x, train=True)
    assert model.backward(dy) is None  # skipped unless asked
    dx = model.backward(dy, input_grad=True)
    conv_dx = ann.functional.conv2d_backward(x, model["conv1"].params["W"], dy, padding=1)[0]
    assert_close(dx, conv_dx + dy)


def test_the_first_layers_input_gradient_is_skipped_unless_asked(rng, monkeypatch):
    model = residual_net()
    asked = []
    real = Conv2D._backward
    monkeypatch.setattr(Conv2D, "_backward", lambda self, dy, cache, input_grad: asked.append(
        (self.name, input_grad)) or real(self, dy, cache, input_grad))
    model.forward(rng.standard_normal((2, 3, 6, 6)), train=True)
    model.backward(rng.standard_normal((2, 3)))
    assert asked == [("c2", True), ("c1", False)]


# --- one engine: a graph and its Sequential ------------------------------------------------

def sequential_and_graph():
    layers = [Conv2D(1, 3, 3, padding=1, name="conv", rng=0), ReLU(name="relu"),
              MaxPool2D(2, name="pool"), Flatten(name="flat"), Dense(12, 2, name="fc", rng=1)]
    seq = ann.Sequential(layers)
    x = ann.Input((1, 4, 4), name="input")
    h = x
    twins = [type(layer).from_config(layer.get_config()) for layer in layers]
    for layer in twins:
        h = layer(h)
    graph = ann.Model(x, h)
    for key, value in seq.params().items():
        graph.params()[key][...] = value
    return seq, graph


def test_a_graph_and_its_sequential_give_identical_results(rng):
    seq, graph = sequential_and_graph()
    x = rng.standard_normal((5, 1, 4, 4)).astype(np.float32)
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    np.testing.assert_array_equal(graph.forward(x, train=True), seq.forward(x, train=True))
    np.testing.assert_array_equal(graph.backward(dy, input_grad=True),
                                  seq.backward(dy, input_grad=True))
    for key, value in seq.grads().items():
        np.testing.assert_array_equal(graph.grads()[key], value, err_msg=key)
    assert graph.execution_order() == seq.execution_order() == [
        "conv", "pool", "relu", "flat", "fc"]  # both run the ReLU after the pooling


def test_a_relu_read_by_two_layers_is_not_moved_after_the_pool(rng):
    x = ann.Input((1, 4, 4))
    r = ReLU(name="r")(x)
    out = Add()([Flatten()(MaxPool2D(2)(r)), Flatten()(MaxPool2D(2, name="other")(r))])
    model = ann.Model(x, out)
    assert model.execution_order().index("r") == 0


def bn_relu_net(dtype, relu_consumers=1, bn_output=False):
    """conv, batch norm, ReLU (read by ``relu_consumers`` layers), pooled to a dense layer;
    with ``bn_output`` the batch norm's value is a second output."""
    x = ann.Input((2, 5, 5))
    bn = BatchNorm2D(3, name="bn", dtype=dtype)(Conv2D(2, 3, 3, padding=1, name="conv",
                                                       dtype=dtype, rng=0)(x))
    r = ReLU(name="relu")(bn)
    h = GlobalAvgPool2D(name="gap")(r)
    if relu_consumers == 2:
        h = Add(name="add")([h, Flatten(name="flat")(AdaptiveAvgPool2D(1, name="avg")(r))])
    out = Dense(3, 2, name="fc", dtype=dtype, rng=1)(h)
    return ann.Model(x, [out, bn] if bn_output else out)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_relu_after_batch_norm_runs_fused_with_the_same_results(rng, dtype):
    """The plan runs the ReLU inside the batch norm's step (one pass each way); output,
    every gradient and the running statistics equal the layers run one by one."""
    model = bn_relu_net(dtype)
    assert [(step.name, step.relu) for step in model._steps if step.relu] == [("bn", "relu")]
    assert model.execution_order() == ["conv", "bn", "relu", "gap", "fc"]
    x = rng.standard_normal((4, 2, 5, 5)).astype(dtype)
    dy = rng.standard_normal((4, 2)).astype(dtype)
    out = model.forward(x, train=True)
    dx = model.backward(dy, input_grad=True)
    conv, bn, relu, gap, fc = (model[n] for n in ("conv", "bn", "relu", "gap", "fc"))
    twin = [layer.from_config(layer.get_config(), dtype=dtype) if layer.params or layer.buffers
            else layer for layer in (conv, bn, relu, gap, fc)]
    for mine, original in zip(twin, (conv, bn, relu, gap, fc)):
        mine.params.update({k: np.array(v) for k, v in original.params.items()})
    twin[1].buffers.update({"running_mean": np.zeros(3, dtype), "running_var": np.ones(3, dtype)})
    h = x
    for layer in twin:
        h = layer.forward(h, train=True)
    np.testing.assert_array_equal(out, h)
    g = dy
    for layer in reversed(twin):
        g = layer.backward(g)
    np.testing.assert_array_equal(dx, g)
    for mine, original in zip(twin, (conv, bn, relu, gap, fc)):
        for key in original.params:
            np.testing.assert_array_equal(original.grads[key], mine.grads[key], err_msg=key)
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(bn.buffers[key], twin[1].buffers[key])
    np.testing.assert_array_equal(model.forward(x), twin[4].forward(twin[3].forward(
        twin[2].forward(twin[1].forward(twin[0].forward(x))))))  # evaluation mode too


@pytest.mark.parametrize("relu_consumers, bn_output", [(2, False), (1, True)])
def test_a_relu_is_fused_only_when_it_alone_reads_a_value_no_output_needs(relu_consumers,
                                                                          bn_output):
    """The fused step writes only the ReLU's value: a batch norm whose own value is an output
    keeps its step (a ReLU read by two layers still fuses: its value exists)."""
    model = bn_relu_net("float64", relu_consumers, bn_output)
    fused = [step.relu for step in model._steps if step.relu]
    assert fused == ([] if bn_output else ["relu"])
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 5))
    outs = model.forward(x, train=True)
    assert (np.asarray(outs[1] if bn_output else outs) != 0).all()


# --- everything Sequential does -------------------------------------------------------------

def test_summary_lists_each_node_with_its_inputs_and_output_shape():
    text = two_input_net(dtype="float32").summary(print_fn=None)
    lines = text.splitlines()
    assert lines[0].split() == ["node", "type", "inputs", "output", "parameter", "shapes",
                                "weights", "biases", "total"]
    rows = {line.split()[0]: line for line in lines[2:-2]}
    assert rows["cat"].split()[:4] == ["cat", "Concatenate", "ca,", "b"]
    assert "6x5x5" in rows["cat"]
    assert rows["shared:2"].split()[:4] == ["shared:2", "Dense", "r2", "150"]
    assert "shared" in rows["shared:2"].split()[4:]
    total = sum(int(np.prod(v.shape)) for v in two_input_net().params().values())
    assert lines[-1].split()[-1] == f"{total:,}"  # the shared layer counted once


def test_params_buffers_to_and_load_model_round_trip(tmp_path, rng):
    image = ann.Input((3, 6, 6), name="image")
    h = BatchNorm2D(4, name="bn")(Conv2D(3, 4, 3, padding=1, name="c1", rng=0)(image))
    out = Dense(4, 2, name="fc", rng=1)(GlobalAvgPool2D()(ReLU()(Add()([h, Identity()(h)]))))
    model = ann.Model(image, out)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    model.forward(x, train=True)  # moves the running statistics
    assert set(model.buffers()) == {"bn.running_mean", "bn.running_var"}
    path = ann.save_checkpoint(tmp_path / "graph.h5", model)
    rebuilt = ann.load_model(path)
    assert isinstance(rebuilt, ann.Model) and not isinstance(rebuilt, ann.Sequential)
    assert rebuilt.get_config() == model.get_config()
    json.dumps(model.get_config())  # JSON-ready
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))
    model.to(dtype="float64")
    assert model.dtype == "float64" and model.forward(x.astype(np.float64)).dtype == np.float64


def test_exact_resume_of_a_graph_model(tmp_path, rng):
    from anyarray_nn.checkpoint import CheckpointEvery, latest_checkpoint
    from anyarray_nn.data.pipeline import DataLoader, RandomFlip
    x = rng.standard_normal((24, 3, 6, 6)).astype(np.float32)
    labels = np.arange(24) % 3
    loss = ann.losses.SoftmaxCrossEntropy()

    def setup():
        model = residual_net(dtype="float32")
        loader = DataLoader(x, labels, 8, seed=1, augment=[RandomFlip()])
        return model, ann.optim.SGD(model, lr=0.1, momentum=0.9), loader

    model, opt, loader = setup()
    ann.fit(model, loss, opt, loader, epochs=3, progress=False)
    straight = {k: v.copy() for k, v in model.params().items()}
    model, opt, loader = setup()
    ann.fit(model, loss, opt, loader, epochs=1, progress=False,
            callbacks=[CheckpointEvery(tmp_path, per="epoch", loader=loader)])
    model, opt, loader = setup()  # a fresh start, as in a new process
    info = ann.load_checkpoint(latest_checkpoint(tmp_path), model, opt, loader=loader)
    ann.fit(model, loss, opt, loader, epochs=2, history=info.history, progress=False)
    for key, value in straight.items():
        np.testing.assert_array_equal(model.params()[key], value, err_msg=key)


def test_fit_evaluate_and_predict_run_a_graph_model(rng):
    from anyarray_nn.data.pipeline import DataLoader
    x = rng.standard_normal((12, 3, 6, 6)).astype(np.float32)
    labels = np.arange(12) % 3
    model = residual_net(dtype="float32")
    loader = DataLoader(x, labels, 4, seed=0)
    loss = ann.losses.SoftmaxCrossEntropy()
    history = ann.fit(model, loss, ann.optim.SGD(model, lr=0.05), loader, epochs=2,
                      progress=False)
    assert len(history.epochs) == 2
    result = ann.evaluate(model, loss, DataLoader(x, labels, 4, shuffle=False))
    assert 0.0 <= result.accuracy <= 1.0 and np.isfinite(result.loss)
    assert model.predict(x).shape == (12,)


def two_input_data(rng, n=8):
    return ((rng.standard_normal((n, 3, 5, 5)), rng.standard_normal((n, 2, 5, 5))),
            (rng.integers(0, 2, n), rng.integers(0, 3, n)))


def test_fit_and_evaluate_train_a_model_with_two_inputs_and_two_outputs(rng):
    from anyarray_nn.data.pipeline import DataLoader
    from anyarray_nn.losses import Combined, SoftmaxCrossEntropy
    (a, b), (y1, y2) = two_input_data(rng)
    loss = Combined([SoftmaxCrossEntropy(), SoftmaxCrossEntropy(label_smoothing=0.1)],
                    weights=[1.0, 0.5])
    model, by_hand = two_input_net(), two_input_net()
    loader = DataLoader((a, b), (y1, y2), 8, shuffle=False, dtype="float64")
    history = ann.fit(model, loss, ann.optim.SGD(model, lr=0.1), loader, epochs=1,
                      progress=False)
    # The same step written out: each output's loss, its weighted gradient, one update.
    out1, out2 = by_hand.forward((a, b), train=True)
    first, second = SoftmaxCrossEntropy(), SoftmaxCrossEntropy(label_smoothing=0.1)
    value = float(first.forward(out1, y1)) + 0.5 * float(second.forward(out2, y2))
    by_hand.backward((first.backward(), 0.5 * second.backward()))
    ann.optim.SGD(by_hand, lr=0.1).step()
    for key, w in model.params().items():
        assert_close(w, by_hand.params()[key], rtol=1e-12, atol=1e-14)
    assert history.iterations[0]["loss"] == pytest.approx(value, rel=1e-12)
    assert history.iterations[0]["accuracy"] == np.mean(out1.argmax(axis=1) == y1)
    result = ann.evaluate(model, loss, DataLoader((a, b), (y1, y2), 3, shuffle=False,
                                                  dtype="float64"))
    out1, out2 = model.forward((a, b))
    expected = float(first.forward(out1, y1)) + 0.5 * float(second.forward(out2, y2))
    assert result.loss == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(result.predictions, out1.argmax(axis=1))
    np.testing.assert_array_equal(result.labels, y1)
    np.testing.assert_array_equal(model.predict((a, b)), out1.argmax(axis=1))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's, on the infinite input
def test_a_bad_value_in_the_second_input_is_named_and_the_step_not_applied(rng):
    from anyarray_nn.data.pipeline import DataLoader
    from anyarray_nn.losses import Combined, SoftmaxCrossEntropy
    (a, b), (y1, y2) = two_input_data(rng)
    b[3, 1, 2, 2] = np.inf
    model = two_input_net()
    before = {key: w.copy() for key, w in model.params().items()}
    loader = DataLoader((a, b), (y1, y2), 8, dtype="float64")
    loss = Combined([SoftmaxCrossEntropy(), SoftmaxCrossEntropy()])
    with pytest.raises(ann.NonFiniteError, match=r"input 1 of the batch \(shape \(8, 2, 5, "
                                                 r"5\)\) has 0 NaN and 1 infinite values"):
        ann.fit(model, loss, ann.optim.SGD(model, lr=0.1), loader, epochs=1, progress=False)
    for key, w in model.params().items():
        np.testing.assert_array_equal(w, before[key])
    b[3, 1, 2, 2] = 0.0
    with pytest.raises(ann.InputError, match=r"fit: epoch 1, step 1: Combined: predictions: "
                                             r"expected a tuple of 3 \(one per loss\), got 2"):
        ann.fit(model, Combined([SoftmaxCrossEntropy()] * 3), ann.optim.SGD(model, lr=0.1),
                DataLoader((a, b), (y1, y2), 8, dtype="float64"), epochs=1, progress=False)


def test_data_parallel_splits_a_graph_model_like_the_model_itself(rng):
    model = residual_net()
    x, dy = rng.standard_normal((8, 3, 6, 6)), rng.standard_normal((8, 3))
    y = model.forward(x, train=True)
    model.backward(dy)
    expected = {k: v.copy() for k, v in model.grads().items()}
    parallel = ann.DataParallel(model, 2, min_batch=2)
    try:
        assert_close(parallel.forward(x, train=True), y)
        parallel.backward(dy)
    finally:
        parallel.close()
    for key, value in expected.items():
        assert_close(model.grads()[key], value, rtol=1e-10)


def test_feature_maps_of_any_node(rng, tmp_path):
    pytest.importorskip("matplotlib")
    from anyarray_nn import plots
    model = residual_net()
    values = model.node_outputs(rng.standard_normal((1, 3, 6, 6)), ["add", "r1"])
    assert values["add"].shape == (1, 4, 6, 6) and (values["r1"] >= 0).all()
    figure = plots.feature_maps(model, rng.standard_normal((1, 3, 6, 6)), "add",
                                    path=tmp_path / "add.png")
    assert (tmp_path / "add.png").stat().st_size > 0 and figure is not None


# --- warm starts between Sequential and graph ----------------------------------------------

def course_sequential():
    return ann.Sequential([Conv2D(3, 4, 3, padding=1, name="c1", rng=5), ReLU(),
                           Conv2D(4, 4, 3, padding=1, name="c2", rng=6), ReLU(),
                           GlobalAvgPool2D(), Dense(4, 3, name="fc", rng=7)])


def test_warm_start_from_a_sequential_into_a_residual_graph_and_back(tmp_path):
    seq = course_sequential()
    path = ann.save_checkpoint(tmp_path / "seq.h5", seq)
    graph = residual_net(dtype="float32", rng=100)
    report = ann.warm_start(graph, path)
    assert sorted(key for key, _ in report.loaded) == sorted(seq.params())
    assert report.skipped == [] and report.missing == []
    for key, value in seq.params().items():
        np.testing.assert_array_equal(graph.params()[key], value)
    path = ann.save_checkpoint(tmp_path / "graph.h5", graph)
    back = course_sequential()
    for value in back.params().values():
        value[...] = 0
    report = ann.warm_start(back, path)
    assert len(report.loaded) == 6
    for key, value in graph.params().items():
        np.testing.assert_array_equal(back.params()[key], value)


def test_warm_start_by_position_between_differently_named_layers(tmp_path):
    seq = ann.Sequential([Conv2D(3, 4, 3, padding=1, rng=5), ReLU(),
                          Conv2D(4, 4, 3, padding=1, rng=6), ReLU(), GlobalAvgPool2D(),
                          Dense(4, 3, rng=7)])  # conv1, conv2, dense1
    path = ann.save_checkpoint(tmp_path / "seq.h5", seq)
    graph = residual_net(dtype="float32", rng=100)  # c1, c2, fc
    with pytest.raises(ann.checkpoint.WarmStartError):
        ann.warm_start(graph, path)  # by name nothing matches: strict refuses
    report = ann.warm_start(graph, path, by_position=True)
    assert sorted(report.loaded) == sorted([("conv1.W", "c1.W"), ("conv1.b", "c1.b"),
                                            ("conv2.W", "c2.W"), ("conv2.b", "c2.b"),
                                            ("dense1.W", "fc.W"), ("dense1.b", "fc.b")])
    np.testing.assert_array_equal(graph.params()["c2.W"], seq.params()["conv2.W"])


# --- bad graphs -----------------------------------------------------------------------------

def test_mismatched_shapes_at_add_and_concatenate_fail_when_called():
    x = ann.Input((3, 8, 8), name="x")
    a = Conv2D(3, 4, 3, padding=1, name="a")(x)
    b = Conv2D(3, 5, 3, padding=1, name="b")(x)
    with pytest.raises(ann.InputError, match=r"Add 'join': expected inputs of one shape.*"
                                             r"called on Conv2D 'a' of shape \(4, 8, 8\), "
                                             r"Conv2D 'b' of shape \(5, 8, 8\)"):
        Add(name="join")([a, b])
    small = MaxPool2D(2, name="small")(b)
    with pytest.raises(ann.InputError, match=r"Concatenate 'cat': expected inputs whose shapes "
                                             r"differ only along axis 1"):
        Concatenate(name="cat")([a, small])
    with pytest.raises(ann.InputError, match=r"Dense 'fc'.*called on Flatten"):
        Dense(10, 2, name="fc")(Flatten()(a))
    assert Concatenate()([a, b]).shape == (9, 8, 8)


def test_an_input_that_reaches_no_output_and_an_output_not_from_the_inputs_are_refused():
    x, unused = ann.Input((4,), name="x"), ann.Input((4,), name="unused")
    out = Dense(4, 2)(x)
    with pytest.raises(ValueError, match="input 'unused' reaches no output"):
        ann.Model([x, unused], out)
    with pytest.raises(ValueError, match=r"computed from input 'x' \(shape \(4,\)\), which is "
                                         r"not among the model's inputs"):
        ann.Model(unused, out)
    with pytest.raises(ValueError, match="inputs must be ann.Input nodes"):
        ann.Model(out, out)
    with pytest.raises(TypeError, match="expected outputs to be a graph node"):
        ann.Model(x, np.zeros(3))


def test_a_name_used_twice_is_refused():
    x = ann.Input((4,), name="x")
    with pytest.raises(ValueError, match=r"layer names must be unique, got \['fc'\]"):
        ann.Model(x, Dense(4, 2, name="fc")(Dense(4, 4, name="fc")(x)))
    with pytest.raises(ValueError, match=r"names must be unique across inputs and layers, "
                                         r"got \['x'\]"):
        ann.Model(x, Dense(4, 2, name="x")(x))
    a, b = ann.Input((4,), name="same"), ann.Input((4,), name="same")
    with pytest.raises(ValueError, match=r"input names must be unique, got \['same'\]"):
        ann.Model([a, b], Add()([a, b]))


def test_a_cycle_or_an_unknown_node_in_a_config_is_refused():
    config = residual_net(dtype="float32").get_config()
    cyclic = json.loads(json.dumps(config))
    cyclic["calls"][0]["inputs"] = ["r2"]  # c1 reads r2, which is computed from c1
    with pytest.raises(ValueError, match=r"read each other in a cycle"):
        ann.Model.from_config(cyclic)
    unknown = json.loads(json.dumps(config))
    unknown["calls"][1]["inputs"] = ["nowhere"]
    with pytest.raises(ValueError, match=r"node 'r1' reads 'nowhere', which is no input or call"):
        ann.Model.from_config(unknown)
    undefined = json.loads(json.dumps(config))
    undefined["calls"][0]["layer"] = "ghost"
    with pytest.raises(ValueError, match=r"names layer 'ghost', which the config does not"):
        ann.Model.from_config(undefined)
    no_output = json.loads(json.dumps(config))
    no_output["outputs"] = ["missing"]
    with pytest.raises(ValueError, match=r"outputs \['missing'\] are not nodes"):
        ann.Model.from_config(no_output)


def test_a_damaged_graph_config_in_a_checkpoint_is_a_checkpoint_error(tmp_path):
    path = ann.save_checkpoint(tmp_path / "graph.h5", residual_net(dtype="float32"))
    import h5py
    with h5py.File(path, "r+") as f:
        config = json.loads(f["model"].attrs["config"])
        config["calls"][0]["inputs"] = ["r2"]
        f["model"].attrs["config"] = json.dumps(config)
    ann.checkpoint.reseal_checkpoint(path)  # a deliberate edit, sealed again
    with pytest.raises(ann.checkpoint.CheckpointError, match="cycle"):
        ann.load_model(path)


def _probe_net():
    """image -> max-pool -> conv -> adaptive pool -> concatenate with itself -> dense."""
    x = ann.Input((2, 4, 4), name="image")
    h = Conv2D(2, 2, 3, padding=1, name="c", rng=0)(MaxPool2D(2, stride=1, name="p")(x))
    h = AdaptiveAvgPool2D(2, name="a")(h)
    h = Concatenate(name="cat")([h, h])
    return ann.Model(x, Dense(16, 3, name="fc", rng=1)(Flatten(name="f")(h)))


def _doubling_calls(config, levels):
    """cat2 = cat + cat, cat3 = cat2 + cat2, ...: each level doubles the sample."""
    names = ["cat"] + [f"cat{i}" for i in range(2, levels + 2)]
    for previous, name in zip(names, names[1:]):
        config["layers"].append({"type": "Concatenate", "config": {"axis": 1, "name": name}})
        config["calls"].insert(-2, {"layer": name, "inputs": [previous, previous]})
    config["calls"][-2]["inputs"] = [names[-1]]


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c["inputs"][0].update(shape=[2, 10**5, 10**5]), "MaxPool2D 'p'"),
    (lambda c: (c["inputs"][0].update(shape=[2, 4000, 4000]),
                c["layers"][0]["config"].update(kernel_size=[2000, 2000])), "MaxPool2D 'p'"),
    (lambda c: c["layers"][1]["config"].update(padding=[10**5] * 4), "Conv2D 'c'"),
    (lambda c: c["layers"][1]["config"].update(dilation=[1, 1], padding=[10**4, 0, 10**4, 0]),
     "Conv2D 'c'"),
    (lambda c: c["layers"][2]["config"].update(output_size=10**6), "AdaptiveAvgPool2D 'a'"),
    (lambda c: _doubling_calls(c, 60), "Concatenate 'cat18'"),
], ids=["huge-input", "large-input-huge-window", "huge-padding", "padding-one-side",
        "huge-adaptive-size", "doubling-concatenations"])
def test_a_config_declaring_huge_shapes_is_refused_before_allocating(tmp_path, monkeypatch,
                                                                    edit, culprit):
    """A few-KB checkpoint whose graph config declares sizes that the shape probe would turn
    into terabytes (or into loops of 10^12 steps): refused before anything is allocated, the
    layer named; the file unedited loads. (The limit is lowered to 2^20 elements so that the
    doubling concatenations stop within a few MB; the default is 2^25.)"""
    assert ann.checkpoint.MAX_PROBE_ELEMENTS == 1 << 25
    monkeypatch.setattr(ann.checkpoint, "MAX_PROBE_ELEMENTS", 1 << 20)
    model = _probe_net()
    path = ann.save_checkpoint(tmp_path / "graph.h5", model)
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(ann.load_model(path).forward(x), model.forward(x))
    model_config = json.loads(json.dumps(model.get_config()))
    edit(model_config)
    with h5py.File(path, "r+") as f:
        f["model"].attrs["config"] = json.dumps(model_config)
    ann.checkpoint.reseal_checkpoint(path)
    tracemalloc.start()
    try:
        with pytest.raises(ann.checkpoint.CheckpointError,
                           match=rf"graph\.h5: model/config cannot be rebuilt: building a "
                                 rf"graph: {culprit}.* would need arrays of [\d,]+ elements "
                                 rf"for one sample; a model built from a file may need at "
                                 rf"most 1,048,576"):
            ann.load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6


def test_layers_called_wrongly_are_clear_errors():
    x = ann.Input((4,))
    with pytest.raises(TypeError, match="Add 'a': expected a list of graph nodes"):
        Add(name="a")(x)
    with pytest.raises(TypeError, match="Dense: expected one graph node, got a list"):
        Dense(4, 2)([x, x])
    with pytest.raises(TypeError, match="expected a list of graph nodes, got a list of Node, "
                                        "ndarray"):
        Add()([x, np.zeros((1, 4))])
    with pytest.raises(ValueError, match="Input: expected shape"):
        ann.Input((3, -1))
    with pytest.raises(ValueError, match="Concatenate: expected axis to be a non-zero int"):
        Concatenate(axis=0)


def test_forward_and_backward_check_how_many_arrays_they_get(rng):
    model = two_input_net(dtype="float32")
    with pytest.raises(ValueError, match=r"x: expected one array per input \(2\), got one array"):
        model.forward(np.zeros((1, 3, 5, 5), np.float32))
    model.forward((np.zeros((1, 3, 5, 5), np.float32), np.zeros((1, 2, 5, 5), np.float32)),
                  train=True)
    with pytest.raises(ValueError, match=r"dy: expected one array per output \(2\), got 1"):
        model.backward([np.zeros((1, 2), np.float32)])
    fresh = residual_net()
    with pytest.raises(RuntimeError, match="backward\\(\\) needs a preceding forward"):
        fresh.backward(np.zeros((1, 3)))


def test_joining_and_shared_layers_run_on_every_backend(xp, rng):
    """Add, Concatenate, Identity and a shared layer use nothing beyond the standard: each
    backend gives NumPy's outputs and gradients (array_api_strict included)."""
    a, b = rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((2, 2, 5, 5))
    dy1, dy2 = rng.standard_normal((2, 2)), rng.standard_normal((2, 3))
    results = []
    for backend in ("numpy", ann.current_backend().name):
        model = two_input_net().to(backend)
        arrays = [ann.asarray(v, backend=backend) for v in (a, b, dy1, dy2)]
        ys = model.forward((arrays[0], arrays[1]), train=True)
        dxs = model.backward((arrays[2], arrays[3]), input_grad=True)
        results.append([host(v) for v in (*ys, *dxs, *model.grads().values())])
    for got, expected in zip(*results[::-1]):
        assert_close(got, expected)
    x = ann.Input((2, 3))
    identity = ann.Model(x, Identity()(x))
    value = ann.asarray(rng.standard_normal((2, 2, 3)))
    assert_close(identity.forward(value), value)
