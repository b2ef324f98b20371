"""Cross-entropy's and mse's torch.nn.functional options, softmax / log-softmax over any axis,
one_hot: agreement with PyTorch (forward and gradient), float64 finite differences, every
backend, and the refusals."""

import json
import warnings

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, fast_and_portable, host

C = 3
# (logits shape, labels shape): batched, batch 1, K-dimensional, unbatched.
HARD_SHAPES = [((5, C), (5,)), ((1, C), (1,)), ((2, C, 2, 3), (2, 2, 3)), ((C,), ())]
SOFT_SHAPES = [(5, C), (2, C, 2, 3), (C,)]
WEIGHTS = {"none": None, "positive": np.array([0.5, 2.0, 1.5]), "zeros": np.zeros(C)}
REDUCTIONS = ["none", "sum", "mean"]
SMOOTHING = [0.0, 0.1, 1.0]


def make_labels(rng, shape, ignore_index, ignored):
    """Labels in [0, C); "some": a few set to ignore_index, "all": every one."""
    labels = rng.integers(0, C, shape)
    if ignored == "all":
        return np.full(shape, ignore_index)
    if ignored == "some" and labels.size > 1:
        labels.reshape(-1)[::2] = ignore_index
    return labels


def torch_cross_entropy(torch, z, target, weight, upstream, **options):
    """PyTorch's loss and its gradient with respect to the logits for ``upstream``."""
    tz = torch.tensor(z, requires_grad=True)
    tw = None if weight is None else torch.tensor(weight)
    loss = torch.nn.functional.cross_entropy(tz, torch.tensor(target), weight=tw, **options)
    loss.backward(torch.tensor(upstream))
    return loss.detach().numpy(), tz.grad.numpy()


def check_against_torch(torch, rng, z, target, weight, **options):
    """Our forward and backward (functional and loss class) equal PyTorch's."""
    loss_shape = () if z.ndim == 1 or options["reduction"] != "none" else \
        z.shape[:1] + z.shape[2:]
    upstream = rng.standard_normal(loss_shape)
    expected_loss, expected_grad = torch_cross_entropy(torch, z, target, weight, upstream,
                                                       **options)
    with warnings.catch_warnings():  # 0 / 0 where no target counts: NaN, as PyTorch
        warnings.simplefilter("ignore", RuntimeWarning)
        loss = F.cross_entropy_forward(z, target, weight, **options)
        grad = F.cross_entropy_backward(z, target, np.asarray(upstream), weight, **options)
        loss_fn = ann.losses.SoftmaxCrossEntropy(weight, **options)
        class_loss = loss_fn.forward(z, target)
        class_grad = loss_fn.backward(np.asarray(upstream))
    assert host(loss).shape == expected_loss.shape
    assert_close(loss, expected_loss)
    assert_close(grad, expected_grad)
    assert_close(class_loss, expected_loss)
    assert_close(class_grad, expected_grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", SMOOTHING)
@pytest.mark.parametrize("weight", WEIGHTS, ids=list(WEIGHTS))
@pytest.mark.parametrize("ignore_index, ignored", [(-100, "none"), (-100, "some"),
                                                   (1, "some"), (-100, "all")])
@pytest.mark.parametrize("shapes", HARD_SHAPES, ids=str)
def test_cross_entropy_with_class_indices_matches_torch(torch, rng, shapes, ignore_index,
                                                        ignored, weight, label_smoothing,
                                                        reduction):
    z = rng.standard_normal(shapes[0]) * 2
    labels = make_labels(rng, shapes[1], ignore_index, ignored)
    check_against_torch(torch, rng, z, labels, WEIGHTS[weight], ignore_index=ignore_index,
                        reduction=reduction, label_smoothing=label_smoothing)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", SMOOTHING)
@pytest.mark.parametrize("weight", WEIGHTS, ids=list(WEIGHTS))
@pytest.mark.parametrize("shape", SOFT_SHAPES, ids=str)
def test_cross_entropy_with_probabilities_matches_torch(torch, rng, shape, weight,
                                                        label_smoothing, reduction):
    z = rng.standard_normal(shape) * 2
    q = rng.random(shape)
    q = q / q.sum(axis=0 if len(shape) == 1 else 1, keepdims=True)
    check_against_torch(torch, rng, z, q, WEIGHTS[weight], reduction=reduction,
                        label_smoothing=label_smoothing)


def test_cross_entropy_of_an_empty_batch_matches_torch(torch, rng):
    z, labels = np.zeros((0, C)), np.zeros(0, dtype=np.int64)
    for reduction in REDUCTIONS:
        check_against_torch(torch, rng, z, labels, None, reduction=reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["weighted_smoothed_ignored", "k_dim", "unbatched",
                                  "probabilities"])
def test_cross_entropy_gradient_float64(xp, rng, case, reduction):
    shapes = {"weighted_smoothed_ignored": ((6, 4), (6,)), "k_dim": ((2, 4, 3, 2), (2, 3, 2)),
              "unbatched": ((4,), ()), "probabilities": ((3, 4, 2), (3, 4, 2))}[case]
    z = ann.asarray(rng.standard_normal(shapes[0]) * 3)
    if case == "probabilities":
        target = ann.asarray(rng.dirichlet(np.ones(4), (3, 2)).transpose(0, 2, 1))
    else:
        target = ann.asarray(make_labels(rng, shapes[1], -100,
                                         "some" if case.endswith("ignored") else "none"))
    options = {"reduction": reduction}
    if case in ("weighted_smoothed_ignored", "probabilities"):
        options.update(weight=ann.asarray(np.array([0.3, 1.0, 2.0, 0.7])), label_smoothing=0.2)
    report = check_function(
        lambda z: F.cross_entropy_forward(z, target, **options),
        lambda dy, z: {"z": F.cross_entropy_backward(z, target, dy, **options)}, {"z": z})
    assert report.passed, str(report)


def test_cross_entropy_ignores_rows_and_keeps_their_logits_out(xp):
    # An ignored row neither counts in the mean nor gets a gradient, whatever its logits.
    z = ann.asarray(np.array([[1.0, 2.0, 3.0], [500.0, -500.0, 0.0]]))
    labels = ann.asarray(np.array([2, -100]))
    alone = F.cross_entropy_forward(z[:1, :], labels[:1])
    assert_close(F.cross_entropy_forward(z, labels), alone)
    grad = host(F.cross_entropy_backward(z, labels))
    np.testing.assert_array_equal(grad[1], 0.0)
    assert_close(grad[:1], F.cross_entropy_backward(z[:1, :], labels[:1]))


def test_cross_entropy_over_no_counted_target_is_nan_not_an_error(xp):
    # As PyTorch: the mean over no counted target is 0 / 0; its gradient is 0 where every
    # label is ignored, NaN where the counted labels all weigh 0. The sum is 0.
    z = ann.asarray(np.array([[1.0, 2.0], [0.5, 0.1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ignored = ann.asarray(np.array([-100, -100]))
        assert np.isnan(float(F.cross_entropy_forward(z, ignored)))
        np.testing.assert_array_equal(host(F.cross_entropy_backward(z, ignored)), 0.0)
        assert float(F.cross_entropy_forward(z, ignored, reduction="sum")) == 0.0
        zero = ann.asarray(np.zeros(2))
        counted = ann.asarray(np.array([0, 1]))
        assert np.isnan(float(F.cross_entropy_forward(z, counted, zero)))
        assert np.isnan(host(F.cross_entropy_backward(z, counted, 1.0, zero))).all()


def test_cross_entropy_extreme_logits_with_options_match_torch(torch):
    # max - min overflows; with smoothing the loss sums every log-probability and is inf in
    # PyTorch too: we say so (NonFiniteError) rather than return it.
    z = np.array([[1e308, -1e308, 0.0], [1.0, 2.0, 3.0]])
    labels = np.array([0, 1])
    with np.errstate(over="ignore"):
        check_against_torch(torch, np.random.default_rng(0), z, labels,
                            np.array([1.0, 2.0, 3.0]), reduction="mean", label_smoothing=0.0)
        with pytest.raises(ann.NonFiniteError, match="logits: expected a finite loss, got inf"):
            F.cross_entropy_forward(z, labels, label_smoothing=0.1)


def test_cross_entropy_non_finite_logits_raise_for_every_reduction(xp):
    z = np.zeros((2, 3, 2))
    z[1, 0, 1] = np.nan
    for reduction in REDUCTIONS:
        with pytest.raises(ann.NonFiniteError, match="logits: expected finite values, got 1 NaN"):
            F.cross_entropy_forward(ann.asarray(z), ann.asarray(np.zeros((2, 2), dtype=np.int64)),
                                    reduction=reduction)


def test_cross_entropy_refusals(xp):
    z = ann.asarray(np.zeros((2, 3, 4)))
    labels = ann.asarray(np.zeros((2, 4), dtype=np.int64))
    refusals = [
        ({"reduction": "avg"}, r"expected reduction to be one of 'none', 'sum', 'mean', got 'avg'"),
        ({"label_smoothing": 1.5}, r"expected label_smoothing to be a number in \[0, 1\], got 1.5"),
        ({"label_smoothing": -0.1}, r"label_smoothing .*got -0.1"),
        ({"ignore_index": 1.0}, r"expected ignore_index to be an int, got 1.0"),
        ({"weight": ann.asarray(np.ones(4))}, r"weight: expected shape \(3,\) .*got \(4,\)"),
        ({"weight": ann.asarray(np.ones(3), dtype="float32")}, r"weight: expected dtype float64"),
    ]
    probabilities = ann.asarray(np.full((2, 3, 4), 1 / 3))
    with pytest.raises(ann.InputError, match="ignore_index applies to class indices, not to "
                                             "probability targets: expected the default -100, "
                                             "got 0"):
        F.cross_entropy_forward(z, probabilities, ignore_index=0)
    for options, message in refusals:
        with pytest.raises(ann.InputError, match=message):
            F.cross_entropy_forward(z, labels, **options)
        with pytest.raises(ann.InputError, match=message):
            F.cross_entropy_backward(z, labels, 1.0, **options)
    with pytest.raises(ann.InputError, match=r"labels: expected shape \(2, 4\) \(the logits' "
                                             r"shape \(2, 3, 4\) without the class axis\), "
                                             r"got \(2, 3\)"):
        F.cross_entropy_forward(z, ann.asarray(np.zeros((2, 3), dtype=np.int64)))
    with pytest.raises(ann.InputError, match=r"logits: expected a 1-D array \(C,\) for labels of "
                                             r"shape \(\), got shape \(2, 3, 4\)"):
        F.cross_entropy_forward(z, ann.asarray(np.array(1)))
    with pytest.raises(ann.InputError, match=r"target: expected dtype float64 .*got float32"):
        F.cross_entropy_forward(z, ann.asarray(np.zeros((2, 3, 4)), dtype="float32"))
    with pytest.raises(ann.InputError, match=r"labels: expected class indices in \[0, 3\) or "
                                             r"ignore_index -100, got values from 0 to 3"):
        F.cross_entropy_forward(z, ann.asarray(np.array([[0, 3, -100, 1], [0, 0, 0, 0]])))
    with pytest.raises(ann.InputError, match=r"dloss: expected shape \(2, 4\) \(the per-element "
                                             r"loss, reduction='none'\), got shape \(\)"):
        F.cross_entropy_backward(z, labels, ann.asarray(np.array(1.0)), reduction="none")


def test_mse_reductions_match_torch(xp, torch, rng):
    p, t = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    for reduction in REDUCTIONS:
        upstream = rng.standard_normal(p.shape if reduction == "none" else ())
        tp = torch.tensor(p, requires_grad=True)
        expected = torch.nn.functional.mse_loss(tp, torch.tensor(t), reduction=reduction)
        expected.backward(torch.tensor(upstream))
        pred, target, dloss = ann.asarray(p), ann.asarray(t), ann.asarray(upstream)
        assert_close(F.mse_forward(pred, target, reduction), expected)
        assert_close(F.mse_backward(pred, target, dloss, reduction), tp.grad)
        loss_fn = ann.losses.MSE(reduction=reduction)
        assert_close(loss_fn.forward(pred, target), expected)
        assert_close(loss_fn.backward(dloss), tp.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_gradient_float64(xp, rng, reduction):
    target = ann.asarray(rng.standard_normal((4, 3)))
    report = check_function(lambda p: F.mse_forward(p, target, reduction),
                            lambda dy, p: {"p": F.mse_backward(p, target, dy, reduction)},
                            {"p": ann.asarray(rng.standard_normal((4, 3)))})
    assert report.passed, str(report)


def test_mse_refuses_an_unknown_reduction(xp):
    x = ann.asarray(np.zeros(2))
    with pytest.raises(ann.InputError, match=r"mse_loss: expected reduction .*got 'avg'"):
        F.mse_forward(x, x, "avg")
    with pytest.raises(ann.InputError, match=r"MSE: expected reduction .*got 'avg'"):
        ann.losses.MSE(reduction="avg")


SOFTMAX_SHAPES = [(), (5,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (5, 0, 0), (4, 0, 3)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES, ids=str)
def test_softmax_and_log_softmax_match_torch_on_every_axis(torch, rng, shape):
    x = rng.standard_normal(shape) * 5
    rank = max(len(shape), 1)  # a 0-d array takes dim 0 or -1, as in PyTorch
    for dim in range(-rank, rank):
        dy = rng.standard_normal(shape)
        for ours, theirs in [(F.softmax_forward, torch.nn.functional.softmax),
                             (F.log_softmax_forward, torch.nn.functional.log_softmax)]:
            backward = {F.softmax_forward: F.softmax_backward,
                        F.log_softmax_forward: F.log_softmax_backward}[ours]
            tx = torch.tensor(x, requires_grad=True)
            expected = theirs(tx, dim=dim)
            expected.backward(torch.tensor(dy))
            y = ours(x, dim)
            assert_close(y, expected)
            assert_close(backward(x, dy, dim), tx.grad)
            assert_close(backward(x, dy, dim, y=y), tx.grad)


@pytest.mark.parametrize("kernel", ["softmax", "log_softmax"])
def test_softmax_gradient_float64(xp, rng, kernel):
    forward = getattr(F, f"{kernel}_forward")
    backward = getattr(F, f"{kernel}_backward")
    for dim in (0, 1, -1):
        report = check_function(lambda x: forward(x, dim),
                                lambda dy, x: {"x": backward(x, dy, dim)},
                                {"x": ann.asarray(rng.standard_normal((3, 4, 2)))})
        assert report.passed, str(report)


def test_softmax_of_a_0_d_or_an_empty_array_on_every_backend(xp):
    """One element has probability 1 (log 0) and no gradient; an empty array stays empty
    (a max over an empty axis has no value, so it is never taken)."""
    one = ann.asarray(np.array(3.0))
    assert float(F.softmax_forward(one, 0)) == 1.0 and float(F.log_softmax_forward(one)) == 0.0
    assert float(F.softmax_backward(one, ann.asarray(np.array(2.0)), 0)) == 0.0
    empty = ann.asarray(np.zeros((5, 0, 2)))
    for kernel in (F.softmax_forward, F.log_softmax_forward):
        assert tuple(kernel(empty, 1).shape) == (5, 0, 2)
    assert tuple(F.log_softmax_backward(empty, empty, -1).shape) == (5, 0, 2)


def test_softmax_is_stable_for_large_inputs(xp):
    x = ann.asarray(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    np.testing.assert_allclose(host(F.softmax_forward(x, 1)), [[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(host(F.log_softmax_forward(x, 0)),
                               [[0.0, 0.0], [-2000.0, -1000.0 - np.log1p(np.exp(-1000.0))]])


def test_softmax_refusals(xp):
    x = ann.asarray(np.zeros((2, 3)))
    with pytest.raises(ann.InputError, match=r"softmax: expected dim to be an int in \[-2, 2\) "
                                             r"for x of shape \(2, 3\), got 2"):
        F.softmax_forward(x, 2)
    with pytest.raises(ann.InputError, match=r"log_softmax: expected dim .*got 1.0"):
        F.log_softmax_forward(x, 1.0)
    with pytest.raises(ann.InputError, match=r"log_softmax: expected dim to be an int in "
                                             r"\[-1, 1\) for x of shape \(\), got 1"):
        F.log_softmax_forward(ann.asarray(np.array(1.0)), 1)
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(2, 3\)"):
        F.softmax_backward(x, ann.asarray(np.zeros((3, 2))))


@pytest.mark.parametrize("shape", [(), (5,), (2, 3)], ids=str)
@pytest.mark.parametrize("num_classes", [-1, 6])
def test_one_hot_matches_torch(xp, torch, rng, shape, num_classes):
    labels = rng.integers(0, 5, shape)
    expected = torch.nn.functional.one_hot(torch.tensor(labels), num_classes).numpy()
    got = F.one_hot(ann.asarray(labels), num_classes)
    assert ann.backend.dtype_name(got.dtype) == "int64"
    np.testing.assert_array_equal(host(got), expected)
    as_float = F.one_hot(ann.asarray(labels), num_classes, ann.asarray(np.zeros(1)).dtype)
    np.testing.assert_array_equal(host(as_float), expected.astype(np.float64))


def test_one_hot_of_no_labels_needs_num_classes(xp):
    empty = ann.asarray(np.zeros(0, dtype=np.int64))
    assert tuple(F.one_hot(empty, 4).shape) == (0, 4)
    with pytest.raises(ann.InputError, match=r"one_hot: cannot infer num_classes \(-1\) from "
                                             r"empty labels"):
        F.one_hot(empty)


def test_one_hot_refusals(xp):
    refusals = [
        (np.array([0.0, 1.0]), 3, "one_hot: labels: expected an integer dtype .*got float64"),
        (np.array([0, -2, 1]), 3, "one_hot: labels: expected values >= 0, got the smallest -2"),
        (np.array([0, 3, 1]), 3, "one_hot: labels: expected values below num_classes=3, "
                                 "got the largest 3"),
        (np.array([0, 1]), -2, r"one_hot: expected num_classes to be -1 \(infer\) or an int "
                               r">= 0, got -2"),
        (np.array([0, 1]), 2.0, "one_hot: expected num_classes .*got 2.0"),
    ]
    for labels, num_classes, message in refusals:
        with pytest.raises(ann.InputError, match=message):
            F.one_hot(ann.asarray(labels), num_classes)


def test_cross_entropy_takes_numpy_scalars_as_options(xp):
    z = ann.asarray(np.array([[1.0, 2.0, 0.5], [0.3, 0.2, 0.1]]))
    labels = ann.asarray(np.array([1, 2]))
    numpy_options = {"ignore_index": np.int64(2), "label_smoothing": np.float32(0.25)}
    expected = F.cross_entropy_forward(z, labels, ignore_index=2, label_smoothing=0.25)
    assert_close(F.cross_entropy_forward(z, labels, **numpy_options), expected)
    assert_close(F.cross_entropy_backward(z, labels, 1.0, **numpy_options),
                 F.cross_entropy_backward(z, labels, 1.0, ignore_index=2, label_smoothing=0.25))


def test_loss_classes_keep_their_options_in_a_json_config(xp, rng):
    weight = ann.asarray(np.array([0.5, 2.0, 1.0]))  # an array of the active backend
    loss_fn = ann.losses.SoftmaxCrossEntropy(weight, ignore_index=2, reduction="sum",
                                             label_smoothing=0.1)
    config = json.loads(json.dumps(loss_fn.get_config()))
    assert config == {"weight": [0.5, 2.0, 1.0], "ignore_index": 2, "reduction": "sum",
                      "label_smoothing": 0.1}
    rebuilt = ann.losses.SoftmaxCrossEntropy(**config)  # weight as a list of numbers
    z = ann.asarray(rng.standard_normal((4, 3)), dtype="float32")  # weights follow the dtype
    labels = ann.asarray(np.array([0, 1, 2, 1]))
    assert_close(rebuilt.forward(z, labels), loss_fn.forward(z, labels))
    assert_close(rebuilt.backward(), loss_fn.backward())
    assert_close(loss_fn.forward(z, labels),
                 F.cross_entropy_forward(z, labels, ann.asarray(np.array([0.5, 2.0, 1.0]),
                                                                dtype="float32"),
                                         ignore_index=2, reduction="sum", label_smoothing=0.1))
    mse = ann.losses.MSE(reduction="none")
    assert ann.losses.MSE(**json.loads(json.dumps(mse.get_config()))).reduction == "none"


def test_loss_class_refusals_name_the_class():
    with pytest.raises(ann.InputError, match="SoftmaxCrossEntropy: cross_entropy: expected "
                                             "label_smoothing"):
        ann.losses.SoftmaxCrossEntropy(label_smoothing=2)
    with pytest.raises(ann.InputError, match=r"SoftmaxCrossEntropy: weight: expected a 1-D "
                                             r"sequence of class weights, got shape \(2, 2\)"):
        ann.losses.SoftmaxCrossEntropy(np.ones((2, 2)))
    loss_fn = ann.losses.SoftmaxCrossEntropy(np.ones(2))
    with pytest.raises(ann.InputError, match=r"SoftmaxCrossEntropy: weight: expected shape \(3,\)"):
        loss_fn.forward(np.zeros((2, 3)), np.array([0, 1]))


def test_cross_entropy_fast_path_with_ignored_labels_equals_portable(xp, backend_name):
    # The CUDA kernels apply to the default options; ignored labels must still count for
    # nothing there (a fast path exists on CuPy only).
    if not backend_name.startswith("cupy"):
        pytest.skip("the cross-entropy fast path runs on CuPy only")
    rng = np.random.default_rng(0)
    z = ann.asarray(rng.standard_normal((6, 5)))
    labels = ann.asarray(np.array([0, -100, 4, 2, -100, 1]))
    fast, portable = fast_and_portable(lambda: (F.cross_entropy_forward(z, labels),
                                                F.cross_entropy_backward(z, labels)))
    assert_close(fast[0], portable[0])
    assert_close(fast[1], portable[1])


def test_fit_trains_with_the_options_and_refuses_a_batch_with_no_counted_label(rng):
    model = ann.Sequential([ann.layers.Dense(4, 3, name="fc")])
    x = rng.standard_normal((8, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    labels[::3] = -100
    loss_fn = ann.losses.SoftmaxCrossEntropy([1.0, 2.0, 0.5], label_smoothing=0.1)
    history = ann.train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.5), [(x, labels)],
                            iterations=3, progress=False)
    losses = [step["loss"] for step in history.iterations]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    # Every label ignored: the mean is NaN (as PyTorch), which fit refuses like any NaN loss.
    before = {key: host(value).copy() for key, value in model.params().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ann.NonFiniteError, match="not applied.*the loss is nan"):
            ann.train.fit(model, loss_fn, ann.optim.SGD(model, lr=0.5),
                          [(x, np.full(8, -100))], iterations=1, progress=False)
    for key, value in model.params().items():
        np.testing.assert_array_equal(host(value), before[key])


def combined_case(rng):
    """A classification and a regression output, their targets, and their Combined loss."""
    outputs = (rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
    targets = (rng.integers(0, 3, 4), rng.standard_normal((4, 2)))
    loss_fn = ann.losses.Combined([ann.losses.SoftmaxCrossEntropy(label_smoothing=0.1),
                                   ann.losses.MSE()], weights=[1.0, 0.5])
    return outputs, targets, loss_fn


def test_combined_loss_is_the_weighted_sum_of_its_losses_as_torch(xp, torch, rng):
    outputs, targets, loss_fn = combined_case(rng)
    z = [torch.tensor(o, requires_grad=True) for o in outputs]
    f = torch.nn.functional
    expected = (f.cross_entropy(z[0], torch.tensor(targets[0]), label_smoothing=0.1)
                + 0.5 * f.mse_loss(z[1], torch.tensor(targets[1])))
    (0.7 * expected).backward()
    loss = loss_fn.forward(tuple(map(ann.asarray, outputs)), tuple(map(ann.asarray, targets)))
    grads = loss_fn.backward(ann.asarray(np.array(0.7)))
    assert_close(loss, expected)
    assert isinstance(grads, tuple) and len(grads) == 2
    for grad, tz in zip(grads, z):
        assert_close(grad, tz.grad)
    assert loss_fn.ignore_index == -100  # the first loss's, for fit's accuracy


def test_combined_loss_with_one_loss_object_for_two_outputs(xp, rng):
    outputs = tuple(ann.asarray(rng.standard_normal((4, 3))) for _ in range(2))
    targets = tuple(ann.asarray(rng.integers(0, 3, 4)) for _ in range(2))
    shared = ann.losses.SoftmaxCrossEntropy()
    separate = ann.losses.Combined([ann.losses.SoftmaxCrossEntropy() for _ in range(2)],
                                   weights=[1.0, 2.0])
    once = ann.losses.Combined([shared, shared], weights=[1.0, 2.0])
    assert_close(once.forward(outputs, targets), separate.forward(outputs, targets))
    for mine, theirs in zip(once.backward(), separate.backward()):
        assert_close(mine, theirs)


def test_combined_loss_gradient_float64(xp, rng):
    outputs, targets, loss_fn = combined_case(rng)
    targets = tuple(map(ann.asarray, targets))

    def backward(dy, z1, z2):
        loss_fn.forward((z1, z2), targets)
        return dict(zip(("z1", "z2"), loss_fn.backward(dy)))

    report = check_function(lambda z1, z2: loss_fn.forward((z1, z2), targets), backward,
                            {"z1": ann.asarray(outputs[0]), "z2": ann.asarray(outputs[1])})
    assert report.passed, str(report)


def test_combined_loss_refusals_name_what_is_wrong():
    mse = ann.losses.MSE()
    for losses in ([], [mse, "mse"], mse, None):
        with pytest.raises(ann.InputError, match=r"Combined: expected a non-empty list of "
                                                 r"losses \(one per output\), each a Loss"):
            ann.losses.Combined(losses)
    for weights in ([1.0], [1.0, float("nan")], [1.0, "2"], [1.0, True], 2.0):
        with pytest.raises(ann.InputError, match=r"Combined: expected 2 finite weights \(one "
                                                 r"per loss\), got"):
            ann.losses.Combined([mse, mse], weights)
    loss_fn = ann.losses.Combined([mse, mse])
    z = np.zeros((2, 1))
    with pytest.raises(ann.InputError, match=r"Combined: predictions: expected a tuple of 2 "
                                             r"\(one per loss\), got one ndarray"):
        loss_fn.forward(z, (z, z))
    with pytest.raises(ann.InputError, match=r"Combined: targets: expected a tuple of 2 "
                                             r"\(one per loss\), got 3"):
        loss_fn.forward((z, z), (z, z, z))
    with pytest.raises(ann.InputError, match=r"Combined: output 1: MSE: .*shape"):
        loss_fn.forward((z, z), (z, np.zeros((2, 3))))
    with pytest.raises(RuntimeError, match="Combined: backward\\(\\) needs a preceding"):
        ann.losses.Combined([mse]).backward()
