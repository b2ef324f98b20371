"""Dropout and batch normalization: finite differences, PyTorch agreement, strict, checkpoints."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from anyarray_nn.layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, ReLU
from helpers import assert_close, host


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 4, 5)])
def test_batchnorm_gradients_float64(xp, rng, shape, relu):
    """Plain, and with relu=True (the gradients of relu(batchnorm(x)), from the forward's
    statistics)."""
    inputs = {"x": ann.asarray(rng.standard_normal(shape)),
              "gamma": ann.asarray(rng.standard_normal(shape[1])),
              "beta": ann.asarray(rng.standard_normal(shape[1]))}

    def backward(dy, x, gamma, beta):
        _, mean, var = F.batchnorm_forward(x, gamma, beta, relu=relu)
        stats = {"mean": mean, "var": var, "beta": beta, "relu": True} if relu else {}
        dx, dgamma, dbeta = F.batchnorm_backward(x, gamma, dy, **stats)
        return {"x": dx, "gamma": dgamma, "beta": dbeta}

    # eps=1e-5: BatchNorm's x-gradient sums many cancelling terms; a smaller step is roundoff
    report = check_function(lambda x, gamma, beta: F.batchnorm_forward(x, gamma, beta,
                                                                       relu=relu)[0],
                            backward, inputs, eps=1e-5, max_checks=80)
    assert report.passed, str(report)


def test_dropout_gradient_float64_with_a_fixed_mask(xp, rng):
    mask = ann.asarray((rng.random((4, 5)) > 0.3).astype(np.float64))
    report = check_function(lambda x: F.dropout_forward(x, mask, 0.3),
                            lambda dy, x: {"x": F.dropout_backward(mask, dy, 0.3)},
                            {"x": ann.asarray(rng.standard_normal((4, 5)))})
    assert report.passed, str(report)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)])
def test_batchnorm_with_a_fused_relu_matches_torch(xp, torch, rng, shape):
    """Forward and every gradient of torch's relu(batch_norm(x)), on every backend."""
    x, g, b, dy = (rng.standard_normal(s) for s in (shape, shape[1], shape[1], shape))
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    ty = torch.relu(torch.nn.functional.batch_norm(tx, None, None, tg, tb, training=True))
    ty.backward(torch.tensor(dy))
    ax, ag, ab, ady = (ann.asarray(a) for a in (x, g, b, dy))
    y, mean, var = F.batchnorm_forward(ax, ag, ab, relu=True)
    dx, dg, db = F.batchnorm_backward(ax, ag, ady, mean=mean, var=var, beta=ab, relu=True)
    assert float(host(y).min()) == 0.0  # some outputs were cut
    for ours, ref in [(y, ty), (dx, tx.grad), (dg, tg.grad), (db, tb.grad)]:
        assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    rm, rv = torch.tensor(host(mean)), torch.tensor(host(var))
    te = torch.relu(torch.nn.functional.batch_norm(torch.tensor(x), rm, rv, torch.tensor(g),
                                                   torch.tensor(b), training=False))
    assert_close(F.batchnorm_inference(ax, ag, ab, mean, var, relu=True), te, rtol=1e-10,
                 atol=1e-12)


def test_batchnorm_backward_refuses_half_the_statistics_or_a_relu_without_beta(xp, rng):
    x, dy = (ann.asarray(rng.standard_normal((4, 3))) for _ in range(2))
    gamma = ann.asarray(np.ones(3))
    _, mean, var = F.batchnorm_forward(x, gamma, ann.asarray(np.zeros(3)))
    with pytest.raises(ann.InputError, match="both mean and var .* or neither"):
        F.batchnorm_backward(x, gamma, dy, mean=mean)
    with pytest.raises(ann.InputError, match="relu=True needs beta"):
        F.batchnorm_backward(x, gamma, dy, mean=mean, var=var, relu=True)
    with pytest.raises(ann.InputError, match=r"var: expected shape \(3,\) .* got \(2,\)"):
        F.batchnorm_backward(x, gamma, dy, mean=mean, var=ann.asarray(np.ones(2)))


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 5, 6)])
def test_batchnorm_matches_torch_in_both_modes(torch, rng, shape):
    x, g, b, dy = (rng.standard_normal(s) for s in (shape, shape[1], shape[1], shape))
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, g, b))
    rm, rv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    ty = torch.nn.functional.batch_norm(tx, rm, rv, tg, tb, training=True, momentum=0.1)
    ty.backward(torch.tensor(dy))
    y, mean, var = F.batchnorm_forward(x, g, b)
    dx, dg, db = F.batchnorm_backward(x, g, dy)
    new_mean, new_var = F.batchnorm_update_running(np.zeros(shape[1]), np.ones(shape[1]), mean,
                                                   var, x.size // shape[1], 0.1)
    for ours, ref in [(y, ty), (dx, tx.grad), (dg, tg.grad), (db, tb.grad),
                      (new_mean, rm), (new_var, rv)]:
        assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    te = torch.nn.functional.batch_norm(torch.tensor(x), rm, rv, torch.tensor(g), torch.tensor(b),
                                        training=False)
    assert_close(F.batchnorm_inference(x, g, b, new_mean, new_var), te, rtol=1e-10, atol=1e-12)


def test_batchnorm_layer_tracks_running_statistics_like_torch(torch, rng):
    layer = BatchNorm2D(3, momentum=0.2, dtype="float64")
    reference = torch.nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    for _ in range(4):
        x = rng.standard_normal((5, 3, 4, 4)) * 3 + 1
        layer.forward(x, train=True)
        reference(torch.tensor(x))
    assert_close(layer.buffers["running_mean"], reference.running_mean, rtol=1e-12)
    assert_close(layer.buffers["running_var"], reference.running_var, rtol=1e-12)
    reference.eval()
    x = rng.standard_normal((2, 3, 4, 4))
    assert_close(layer.forward(x, train=False), reference(torch.tensor(x)), rtol=1e-10, atol=1e-12)


def test_batchnorm_layers_on_every_backend(xp, rng):
    for layer, shape in [(BatchNorm1D(4, dtype="float64"), (6, 4)),
                         (BatchNorm2D(2, dtype="float64"), (3, 2, 3, 3))]:
        report = ann.check_gradients(layer, ann.asarray(rng.standard_normal(shape)), eps=1e-5)
        assert report.passed, str(report)
        y = host(layer.forward(ann.asarray(rng.standard_normal(shape)), train=False))
        assert y.shape == shape


def test_dropout_statistics_match_torch(torch):
    x = np.ones((200, 500))
    ours = host(Dropout(0.3, rng=0).forward(x, train=True))
    theirs = torch.nn.functional.dropout(torch.tensor(x), 0.3, training=True).numpy()
    for y in (ours, theirs):
        assert set(np.unique(y)) == {0.0, 1 / 0.7}
        assert abs((y == 0).mean() - 0.3) < 0.01 and abs(y.mean() - 1.0) < 0.02


def test_dropout_layer(xp):
    x = ann.asarray(np.arange(1.0, 13.0).reshape(3, 4))
    layer = Dropout(0.5, rng=3)
    assert host(layer.forward(x, train=False)).tolist() == host(x).tolist()
    y = host(layer.forward(x, train=True))
    kept = y != 0
    np.testing.assert_allclose(y[kept], host(x)[kept] * 2)
    dx = host(layer.backward(ann.asarray(np.ones((3, 4)))))
    np.testing.assert_array_equal(dx, kept * 2.0)
    again = Dropout(0.5, rng=3)
    np.testing.assert_array_equal(host(again.forward(x, train=True)), y)  # seeded
    with pytest.raises(ValueError, match="Dropout: expected 0 <= p <= 1, got 1.5"):
        Dropout(1.5)


def test_errors_name_the_layer():
    with pytest.raises(ann.InputError, match=r"BatchNorm2D 'bn': x: expected a 4-D array \(N, C, H, W\), got shape \(2, 3\)"):
        BatchNorm2D(3, name="bn").forward(np.zeros((2, 3), np.float32), train=True)
    # x is what does not fit the layer, not gamma: say so, as Dense and Conv2D do.
    with pytest.raises(ann.InputError, match=r"BatchNorm1D 'bn': x: expected 3 features \(gamma "
                                             r"has shape \(3,\)\), got shape \(8, 4\)"):
        BatchNorm1D(3, name="bn").forward(np.zeros((8, 4), np.float32), train=True)
    with pytest.raises(ann.InputError, match=r"BatchNorm2D 'bn': x: expected 3 channels \(gamma "
                                             r"has shape \(3,\)\), got shape \(2, 4, 5, 5\)"):
        BatchNorm2D(3, name="bn").forward(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ann.InputError, match=r"BatchNorm1D 'bn': x: expected dtype float64 \(the "
                                             r"dtype of gamma\), got float32"):
        BatchNorm1D(3, name="bn", dtype="float64").forward(np.zeros((8, 3), np.float32))
    with pytest.raises(ann.InputError, match="at least 2 values per feature"):
        BatchNorm1D(3).forward(np.zeros((1, 3), np.float32), train=True)


def bn_net(**kw):
    return ann.Sequential([Conv2D(3, 4, 3, padding=1, name="conv", **kw), BatchNorm2D(4, name="bn"),
                           ReLU(), Flatten(), Dropout(0.5, name="drop", rng=1),
                           Dense(4 * 4 * 4, 2, name="fc", **kw), BatchNorm1D(2, name="bn_out")])


def test_checkpoint_restores_running_statistics_and_dropout_state(tmp_path, rng):
    model = bn_net(rng=0)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    for _ in range(3):
        model.forward(x, train=True)
    path = ann.save_checkpoint(tmp_path / "bn.h5", model)
    expected_next = host(model.forward(x, train=True))  # uses the saved dropout generator state
    restored = bn_net(rng=5)
    ann.load_checkpoint(path, restored)
    for key, value in model.buffers().items():
        np.testing.assert_array_equal(host(restored.buffers()[key]), host(ann.load_model(path).buffers()[key]))
    np.testing.assert_array_equal(host(restored.forward(x, train=True)), expected_next)
    import h5py
    with h5py.File(path, "a") as f:
        del f["buffers/bn/running_mean"]
    ann.checkpoint.reseal_checkpoint(path)  # accept the edit: the bytes are intact again
    with pytest.raises(ann.checkpoint.CheckpointError, match="missing in the file: bn.running_mean"):
        ann.load_checkpoint(path, bn_net())


def test_dropout_errors_name_the_layer_and_the_argument():
    layer = Dropout(0.5, name="drop", rng=0)
    layer.forward(np.ones((2, 3), np.float32), train=True)
    with pytest.raises(ann.InputError, match=r"Dropout 'drop': dy: expected shape \(2, 3\) \(the "
                                             r"forward output\), got \(2, 4\)"):
        layer.backward(np.ones((2, 4), np.float32))
    with pytest.raises(ann.InputError, match=r"Dropout 'drop': dy: expected dtype float32"):
        layer.backward(np.ones((2, 3), np.float64))
    state = layer.rng.bit_generator.state
    with pytest.raises(ann.InputError, match=r"Dropout 'drop': x: expected a floating dtype "
                                             r"\(float32 or float64\), got int64"):
        layer.forward(np.ones((2, 3), np.int64), train=True)
    assert layer.rng.bit_generator.state == state  # a refused input draws no mask
    with pytest.raises(ann.InputError, match="Dropout 'drop': x: expected a floating dtype"):
        Dropout(0.0, name="drop").forward(np.ones((2, 3), np.int64), train=True)


def test_batchnorm_update_running_checks_its_arguments(torch):
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    stats = np.ones(3, np.float32)
    update = F.batchnorm_update_running
    with pytest.raises(ann.InputError, match=r"mean: expected shape \(3,\) \(the shape of "
                                             r"running_mean\), got \(1,\)"):
        update(rm, rv, np.ones(1, np.float32), stats, 8)  # would broadcast
    with pytest.raises(ann.InputError, match=r"var: expected shape \(3,\).*got \(3, 1\)"):
        update(rm, rv, stats, np.ones((3, 1), np.float32), 8)
    with pytest.raises(ann.InputError, match=r"mean: expected dtype float32 \(the dtype of "
                                             r"running_mean\), got float64"):
        update(rm, rv, np.ones(3), np.ones(3), 8)  # would return float64 buffers
    with pytest.raises(ann.InputError, match="running_mean: expected a floating dtype"):
        update(np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3, np.int64),
               np.zeros(3, np.int64), 8)
    with pytest.raises(ann.BackendMismatchError, match="running_mean is torch.*mean is numpy"):
        update(torch.zeros(3), torch.ones(3), stats, stats, 8)
    with pytest.raises(ann.BackendMismatchError, match="running_mean is numpy.*mean is torch"):
        update(rm, rv, torch.ones(3), torch.ones(3), 8)
    for bad in (1, 0, 2.5, None):
        with pytest.raises(ann.InputError, match=f"count: expected an int >= 2.*got {bad}"):
            update(rm, rv, stats, stats, bad)
    new_mean, new_var = update(rm, rv, stats, stats, np.int64(5), 0.5)
    np.testing.assert_allclose(host(new_mean), 0.5)
    np.testing.assert_allclose(host(new_var), 0.5 + 0.5 * 5 / 4)


def test_dropout_with_p0_checks_dy_like_any_p(torch):
    for p in (0.0, 0.5):
        layer = Dropout(p, name="drop", rng=0)
        layer.forward(np.ones((2, 3), np.float32), train=True)
        with pytest.raises(ann.InputError, match=r"Dropout 'drop': dy: expected shape \(2, 3\) "
                                                 r"\(the forward output\), got \(5, 7\)"):
            layer.backward(np.ones((5, 7), np.float32))
        with pytest.raises(ann.InputError, match="Dropout 'drop': dy: expected dtype float32"):
            layer.backward(np.ones((2, 3), np.float64))
        with pytest.raises(ann.BackendMismatchError, match="Dropout 'drop': .*dy is torch"):
            layer.backward(torch.ones(2, 3))
    dy = np.arange(6, dtype=np.float32).reshape(2, 3)
    layer = Dropout(0.0)
    layer.forward(np.ones((2, 3), np.float32), train=True)
    np.testing.assert_array_equal(layer.backward(dy), dy)


@pytest.mark.parametrize("make, message", [
    (lambda: BatchNorm1D(3, momentum=1.5), r"BatchNorm1D: expected 0 <= momentum <= 1 and eps > 0.*momentum=1.5"),
    (lambda: BatchNorm2D(3, momentum="0.1"), r"BatchNorm2D: expected 0 <= momentum <= 1 and eps > 0"),
    (lambda: BatchNorm1D(3, eps=None), r"BatchNorm1D: expected 0 <= momentum <= 1 and eps > 0.*eps=None"),
    (lambda: Dropout(None), "Dropout: expected 0 <= p <= 1, got None"),
    (lambda: Dropout("0.5"), "Dropout: expected 0 <= p <= 1, got '0.5'"),
], ids=["momentum-1.5", "momentum-str", "eps-None", "p-None", "p-str"])
def test_constructor_arguments_that_are_not_numbers_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()
