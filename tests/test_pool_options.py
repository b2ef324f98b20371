"""Pooling options as torch.nn.functional has them: max_pool2d's dilation, ceil_mode and
return_indices; avg_pool2d's ceil_mode, count_include_pad and divisor_override; adaptive
average and max pooling; unbatched (C, H, W) inputs. Each against PyTorch (forward, indices
and the input gradient, ties included), by finite differences on every backend, and as
layers that survive a checkpoint."""

import numpy as np
import pytest
from helpers import assert_close, host

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from anyarray_nn.layers import (
    AdaptiveAvgPool2D,
    AdaptiveMaxPool2D,
    AvgPool2D,
    GlobalAvgPool2D,
    MaxPool2D,
    ReLU,
)

# name: (input shape, kernel_size, stride, padding, dilation, ceil_mode)
MAX_CONFIGS = {
    "dilation": ((2, 2, 7, 8), 3, 1, 1, 2, False),
    "dilation-non-square": ((1, 2, 9, 7), (2, 3), (2, 1), (1, 0), (3, 2), False),
    "ceil-adds-a-window": ((2, 2, 7, 9), 2, 2, 0, 1, True),
    "ceil-adds-none": ((1, 3, 6, 8), 2, 2, 0, 1, True),
    "ceil-padding-dilation": ((1, 2, 8, 7), 3, 2, 1, 2, True),
    "ceil-window-past-a-1x1-input": ((2, 3, 1, 1), 2, 2, 0, 1, True),
    "kernel-equals-padded-input": ((1, 2, 3, 5), (5, 7), 1, (1, 1), 1, False),
    "unbatched": ((3, 5, 7), 3, 2, 1, 1, True),
    "batch-0": ((0, 2, 4, 4), 2, 2, 0, 1, False),
}

# name: (input shape, kernel_size, stride, padding, ceil_mode)
AVG_CONFIGS = {
    "padding": ((2, 2, 7, 6), 3, 2, 1, False),
    "ceil-padding": ((1, 2, 7, 8), 3, 2, 1, True),
    "ceil-cut-window": ((2, 1, 5, 9), (2, 4), (2, 3), (1, 2), True),
    "ceil-window-past-a-1x1-input": ((1, 2, 1, 1), 2, 2, 0, True),
    "unbatched": ((2, 5, 5), 2, 2, 1, True),
    "batch-0": ((0, 2, 4, 4), 2, 2, 0, False),
}
AVG_DIVISORS = [(True, None), (False, None), (True, 3), (False, -2)]  # count_include_pad, override

# input shape, output_size
ADAPTIVE_CONFIGS = {
    "uneven-overlapping": ((2, 2, 7, 10), (3, 4)),
    "larger-than-input": ((1, 2, 3, 4), (5, 6)),
    "none-keeps-a-size": ((1, 3, 5, 6), (None, 4)),
    "divisible": ((2, 2, 8, 6), (4, 3)),
    "global-1x1": ((2, 3, 5, 7), 1),
    "1x1-input": ((1, 2, 1, 1), 2),
    "unbatched": ((3, 7, 5), 3),
}


def tied(rng, shape):
    """Values on a coarse grid, so windows hold ties (and zero-size shapes work)."""
    return np.round(rng.standard_normal(shape) * 2) / 2


def distinct(rng, shape):
    """Values in [-1, 1) with no ties (so max pooling is differentiable everywhere) and
    small, so finite differences stay well above rounding."""
    count = int(np.prod(shape))
    return (rng.permutation(count).reshape(shape) - count / 2) / count


def torch_pass(torch, function, x, dy_rng, *args, **kwargs):
    """PyTorch's output, its indices if asked (else None), dy and dL/dx, all as NumPy."""
    tx = torch.tensor(x, requires_grad=True)
    out = function(tx, *args, **kwargs)
    ty, ti = out if isinstance(out, tuple) else (out, None)
    dy = dy_rng.standard_normal(tuple(ty.shape))
    if ty.numel():
        ty.backward(torch.tensor(dy))
        grad = tx.grad.numpy()
    else:  # torch's backward refuses empty outputs; nothing flows back
        grad = np.zeros(x.shape)
    return ty.detach().numpy(), None if ti is None else ti.numpy(), dy, grad


def with_nans(rng, shape):
    """Tied values with about a third NaN: windows with one NaN, several, or all NaN."""
    x = tied(rng, shape)
    x[rng.random(shape) < 0.35] = np.nan
    return x


NAN_CONFIGS = {**MAX_CONFIGS, "2x2-course": ((2, 3, 6, 8), 2, 2, 0, 1, False),
               "overlapping-3x3": ((2, 2, 7, 7), 3, 1, 1, 1, False)}


@pytest.mark.parametrize("name", NAN_CONFIGS)
def test_a_nan_maximum_sends_its_gradient_to_the_last_nan_as_torch(xp, torch, rng, name):
    shape, k, s, p, d, ceil = NAN_CONFIGS[name]
    values = with_nans(rng, shape)
    ty, ti, dy_values, dx_torch = torch_pass(torch, torch.nn.functional.max_pool2d, values, rng,
                                             k, s, p, d, ceil, return_indices=True)
    x, dy = ann.asarray(values), ann.asarray(dy_values)
    y, indices = F.maxpool2d_forward(x, k, s, p, d, ceil, return_indices=True)
    np.testing.assert_array_equal(host(y), ty)  # NaN where torch has NaN
    np.testing.assert_array_equal(host(indices), ti)
    for given in ({}, {"y": y}, {"indices": indices}):  # overlapping windows: sums reordered
        assert_close(F.maxpool2d_backward(x, dy, k, s, p, d, ceil, **given), dx_torch)


@pytest.mark.parametrize("output_size", [(3, 4), (None, 3), 1])
def test_adaptive_max_pooling_with_nans_matches_torch(xp, torch, rng, output_size):
    values = with_nans(rng, (2, 2, 7, 6))
    ty, ti, dy_values, dx_torch = torch_pass(torch, torch.nn.functional.adaptive_max_pool2d,
                                             values, rng, output_size, return_indices=True)
    x, dy = ann.asarray(values), ann.asarray(dy_values)
    y, indices = F.adaptive_maxpool2d_forward(x, output_size, return_indices=True)
    np.testing.assert_array_equal(host(y), ty)
    np.testing.assert_array_equal(host(indices), ti)
    for given in ({}, {"y": y}, {"indices": indices}):
        assert_close(F.adaptive_maxpool2d_backward(x, dy, output_size, **given), dx_torch)


@pytest.mark.parametrize("name", MAX_CONFIGS)
def test_maxpool_options_match_torch_ties_included(torch, rng, name):
    shape, k, s, p, d, ceil = MAX_CONFIGS[name]
    x = tied(rng, shape)
    ty, ti, dy, dx = torch_pass(torch, torch.nn.functional.max_pool2d, x, rng, k, s, p, d, ceil,
                                return_indices=True)
    y, indices = F.maxpool2d_forward(x, k, s, p, d, ceil, return_indices=True)
    np.testing.assert_array_equal(y, ty)
    assert indices.dtype == np.int64
    np.testing.assert_array_equal(indices, ti)
    np.testing.assert_array_equal(F.maxpool2d_forward(x, k, s, p, d, ceil), ty)
    for gradient in (F.maxpool2d_backward(x, dy, k, s, p, d, ceil),
                     F.maxpool2d_backward(x, dy, k, s, p, d, ceil, y=y),
                     F.maxpool2d_backward(x, dy, k, s, p, d, ceil, indices=indices)):
        assert_close(gradient, dx)


def test_maxpool_all_minus_infinity_goes_to_the_first_input_element_not_padding(torch):
    x = np.full((1, 1, 2, 3), -np.inf)
    _, ti, dy, dx = torch_pass(torch, torch.nn.functional.max_pool2d, x,
                                np.random.default_rng(0), 3, 1, 1, 1, True, return_indices=True)
    _, indices = F.maxpool2d_forward(x, 3, 1, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(indices, ti)
    assert_close(F.maxpool2d_backward(x, dy, 3, 1, 1, ceil_mode=True), dx)
    assert dx[0, 0, 0, 0] != 0  # the case is real: padding came first in the window


def test_a_dilated_window_wholly_in_the_padding_gives_minus_infinity_and_no_gradient():
    """Rows -1 and 1 of a one-row input: no input element (PyTorch 2.13's CPU kernel
    corrupts memory here, so there is no reference to compare with)."""
    x = np.arange(2.0).reshape(1, 1, 1, 2)
    y, indices = F.maxpool2d_forward(x, 2, 1, 1, 2, return_indices=True)
    np.testing.assert_array_equal(y, np.full((1, 1, 1, 2), -np.inf))
    np.testing.assert_array_equal(indices, np.full((1, 1, 1, 2), -1))
    for gradient in (F.maxpool2d_backward(x, np.ones(y.shape), 2, 1, 1, 2),
                     F.maxpool2d_backward(x, np.ones(y.shape), 2, 1, 1, 2, indices=indices)):
        np.testing.assert_array_equal(gradient, np.zeros(x.shape))


@pytest.mark.parametrize("name", AVG_CONFIGS)
def test_avgpool_options_match_torch(torch, rng, name):
    shape, k, s, p, ceil = AVG_CONFIGS[name]
    x = rng.standard_normal(shape)
    for count_include_pad, divisor in AVG_DIVISORS:
        options = (k, s, p, ceil, count_include_pad, divisor)
        ty, _, dy, dx = torch_pass(torch, torch.nn.functional.avg_pool2d, x, rng, *options)
        assert_close(F.avgpool2d_forward(x, *options), ty)
        assert_close(F.avgpool2d_backward(x, dy, *options), dx)


@pytest.mark.parametrize("name", ADAPTIVE_CONFIGS)
def test_adaptive_pooling_matches_torch_ties_included(torch, rng, name):
    shape, out = ADAPTIVE_CONFIGS[name]
    x = tied(rng, shape)
    ty, _, dy, dx = torch_pass(torch, torch.nn.functional.adaptive_avg_pool2d, x, rng, out)
    assert_close(F.adaptive_avgpool2d_forward(x, out), ty)
    assert_close(F.adaptive_avgpool2d_backward(x, dy, out), dx)
    ty, ti, dy, dx = torch_pass(torch, torch.nn.functional.adaptive_max_pool2d, x, rng, out,
                                return_indices=True)
    y, indices = F.adaptive_maxpool2d_forward(x, out, return_indices=True)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(indices, ti)
    np.testing.assert_array_equal(F.adaptive_maxpool2d_forward(x, out), ty)
    for gradient in (F.adaptive_maxpool2d_backward(x, dy, out),
                     F.adaptive_maxpool2d_backward(x, dy, out, y=y),
                     F.adaptive_maxpool2d_backward(x, dy, out, indices=indices)):
        assert_close(gradient, dx)


def test_adaptive_pooling_to_an_empty_output_and_an_empty_batch(torch, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    for ours, ref in [(F.adaptive_avgpool2d_forward, torch.nn.functional.adaptive_avg_pool2d),
                      (F.adaptive_maxpool2d_forward, torch.nn.functional.adaptive_max_pool2d)]:
        assert ours(x, (0, 2)).shape == tuple(ref(torch.tensor(x), (0, 2)).shape) == (2, 3, 0, 2)
        assert ours(x[:0], 3).shape == tuple(ref(torch.tensor(x[:0]), 3).shape) == (0, 3, 3, 3)
    dx = F.adaptive_maxpool2d_backward(x, np.zeros((2, 3, 0, 2)), (0, 2))
    np.testing.assert_array_equal(dx, np.zeros(x.shape))


def test_global_avgpool_unbatched(torch, rng):
    x = rng.standard_normal((3, 4, 5))
    assert_close(F.global_avgpool2d_forward(x), x.mean(axis=(1, 2)))
    dy = rng.standard_normal(3)
    assert_close(F.global_avgpool2d_backward(x, dy), np.broadcast_to(dy[:, None, None] / 20,
                                                                     x.shape))


# --- finite differences, on every backend (array_api_strict proves the standard) ---------

GRADCHECK_CASES = {
    "max-dilation-ceil": (lambda x: F.maxpool2d_forward(x, 3, 2, 1, 2, True),
                          lambda dy, x: F.maxpool2d_backward(x, dy, 3, 2, 1, 2, True)),
    "max-indices": (lambda x: F.maxpool2d_forward(x, 2, 1, 1, 1, True),
                    lambda dy, x: F.maxpool2d_backward(
                        x, dy, 2, 1, 1, 1, True,
                        indices=F.maxpool2d_forward(x, 2, 1, 1, 1, True, True)[1])),
    "avg-ceil-exclude-pad": (lambda x: F.avgpool2d_forward(x, 3, 2, 1, True, False),
                             lambda dy, x: F.avgpool2d_backward(x, dy, 3, 2, 1, True, False)),
    "avg-divisor-override": (lambda x: F.avgpool2d_forward(x, 2, 2, 1, True, True, 3),
                             lambda dy, x: F.avgpool2d_backward(x, dy, 2, 2, 1, True, True, 3)),
    "adaptive-avg": (lambda x: F.adaptive_avgpool2d_forward(x, (3, 4)),
                     lambda dy, x: F.adaptive_avgpool2d_backward(x, dy, (3, 4))),
    "adaptive-max": (lambda x: F.adaptive_maxpool2d_forward(x, (3, 4)),
                     lambda dy, x: F.adaptive_maxpool2d_backward(x, dy, (3, 4))),
    "adaptive-max-divisible": (lambda x: F.adaptive_maxpool2d_forward(x, (None, 3)),
                               lambda dy, x: F.adaptive_maxpool2d_backward(x, dy, (None, 3))),
}


@pytest.mark.parametrize("name", GRADCHECK_CASES)
@pytest.mark.parametrize("unbatched", [False, True])
def test_gradients_float64(xp, rng, name, unbatched):
    forward, backward = GRADCHECK_CASES[name]
    shape = (2, 7, 6) if unbatched else (2, 2, 7, 6)
    report = check_function(forward, lambda dy, x: {"x": backward(dy, x)},
                            {"x": ann.asarray(distinct(rng, shape))})
    assert report.passed, str(report)


def test_indices_are_int64_on_every_backend_and_equal_numpy(xp, rng):
    values = tied(rng, (2, 2, 7, 5))
    x = ann.asarray(values)
    _, indices = F.maxpool2d_forward(x, 3, 2, 1, 2, True, return_indices=True)
    assert indices.dtype == xp.int64
    np.testing.assert_array_equal(host(indices), F.maxpool2d_forward(values, 3, 2, 1, 2, True,
                                                                      return_indices=True)[1])
    _, indices = F.adaptive_maxpool2d_forward(x, (3, 4), return_indices=True)
    assert indices.dtype == xp.int64
    np.testing.assert_array_equal(host(indices), F.adaptive_maxpool2d_forward(
        values, (3, 4), return_indices=True)[1])


# --- layers --------------------------------------------------------------------------------

def layer_cases():
    return [
        (MaxPool2D(3, 2, 1, dilation=2, ceil_mode=True, name="mp"),
         lambda x: F.maxpool2d_forward(x, 3, 2, 1, 2, True)),
        (AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False, divisor_override=None,
                   name="ap"), lambda x: F.avgpool2d_forward(x, 3, 2, 1, True, False)),
        (AvgPool2D(2, divisor_override=3, name="ap3"),
         lambda x: F.avgpool2d_forward(x, 2, divisor_override=3)),
        (AdaptiveAvgPool2D((3, None), name="aap"),
         lambda x: F.adaptive_avgpool2d_forward(x, (3, None))),
        (AdaptiveMaxPool2D(4, name="amp"), lambda x: F.adaptive_maxpool2d_forward(x, 4)),
    ]


@pytest.mark.parametrize("index", range(5))
def test_layers_run_the_kernels_and_check_their_gradients(xp, rng, index):
    layer, reference = layer_cases()[index]
    values = distinct(rng, (2, 2, 7, 6))
    x = ann.asarray(values)
    assert_close(layer.forward(x, train=True), reference(values))
    report = ann.gradcheck.check_gradients(ann.Sequential([layer]), x)
    assert report.passed, str(report)
    unbatched = layer.forward(ann.asarray(values[0]))  # (C, H, W) through the layer too
    assert_close(unbatched, reference(values)[0])


def test_layers_round_trip_through_a_checkpoint(tmp_path, rng):
    model = ann.Sequential([layer for layer, _ in layer_cases()] + [GlobalAvgPool2D()])
    x = ann.asarray(distinct(rng, (2, 2, 17, 16)))
    path = ann.save_checkpoint(tmp_path / "pools.h5", model)
    rebuilt = ann.load_model(path)
    assert rebuilt.get_config() == model.get_config()
    assert [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in model.layers]
    assert_close(rebuilt.forward(x), model.forward(x))
    config = {layer.name: layer.get_config() for layer in model.layers}
    assert config["mp"]["dilation"] == [2, 2] and config["mp"]["ceil_mode"] is True
    assert config["ap"]["count_include_pad"] is False and config["ap3"]["divisor_override"] == 3
    assert config["aap"]["output_size"] == [3, None] and config["amp"]["output_size"] == 4


@pytest.mark.parametrize("pool", [lambda: MaxPool2D(3, 2, 1, dilation=2, ceil_mode=True),
                                  lambda: MaxPool2D(2, ceil_mode=True)],
                         ids=["dilation-ceil", "ceil-adds-a-window"])
def test_relu_before_maxpool_swap_stays_exact_with_the_new_options(rng, pool):
    """Sequential runs a ReLU after the MaxPool2D that follows it; with dilation and
    ceil mode the result and the gradient still equal ReLU-then-pool done by hand."""
    values = tied(rng, (2, 3, 7, 9))
    model = ann.Sequential([ReLU(), pool()])
    layer = model.layers[1]
    options = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
    relu = np.maximum(values, 0.0)
    y = model.forward(values, train=True)
    np.testing.assert_array_equal(y, F.maxpool2d_forward(relu, *options))
    dy = rng.standard_normal(y.shape)
    dx = model.backward(dy, input_grad=True)
    by_hand = F.maxpool2d_backward(relu, dy, *options) * (values > 0)
    np.testing.assert_array_equal(dx, by_hand)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda x: F.maxpool2d_forward(x, 2, dilation=0),
     r"dilation: expected ints >= 1, got \(0, 0\)"),
    (lambda x: F.maxpool2d_forward(x, 2, ceil_mode=1), "ceil_mode: expected True or False, got 1"),
    (lambda x: F.maxpool2d_forward(x, 2, return_indices="yes"),
     "return_indices: expected True or False, got 'yes'"),
    (lambda x: F.maxpool2d_forward(x, 3, dilation=2),
     (r"pooling window \(5, 5\) \(kernel_size \(3, 3\), dilation \(2, 2\)\) is larger than "
      r"the padded input \(4, 4\); x has shape \(1, 2, 4, 4\)")),
    (lambda x: F.avgpool2d_forward(x, 2, count_include_pad=None),
     "count_include_pad: expected True or False, got None"),
    (lambda x: F.avgpool2d_forward(x, 2, divisor_override=0),
     "divisor_override: expected None or a nonzero int, got 0"),
    (lambda x: F.avgpool2d_forward(x, 2, divisor_override=1.5),
     "divisor_override: expected None or a nonzero int, got 1.5"),
    (lambda x: F.adaptive_avgpool2d_forward(x, -1), r"output_size: expected an int >= 0 or a pair"),
    (lambda x: F.adaptive_maxpool2d_forward(x, (2, 2, 2)), r"output_size: .*got \(2, 2, 2\)"),
    (lambda x: F.adaptive_maxpool2d_forward(x[:, :, :0], 2),
     r"x: expected non-empty planes \(H, W >= 1\) for adaptive pooling, got shape \(1, 2, 0, 4\)"),
    (lambda x: F.adaptive_avgpool2d_forward(x[0, 0], 2),
     r"x: expected a 4-D array \(N, C, H, W\) or a 3-D array \(C, H, W\), got shape \(4, 4\)"),
    (lambda x: F.maxpool2d_backward(x, np.zeros((1, 2, 2, 2)), 2, indices=np.zeros((1, 2, 2, 2))),
     "indices: expected dtype int64 .*got float64"),
    (lambda x: F.maxpool2d_backward(x, np.zeros((1, 2, 2, 2)), 2,
                                    indices=np.zeros((1, 2, 2), dtype=np.int64)),
     r"indices: expected shape \(1, 2, 2, 2\) \(the forward output\), got \(1, 2, 2\)"),
    (lambda x: F.maxpool2d_backward(x[0], np.zeros((1, 2, 2, 2)), 2),
     r"dy: expected shape \(2, 2, 2\) \(the forward output\), got \(1, 2, 2, 2\)"),
])
def test_bad_options_are_clear_errors(call, message):
    with pytest.raises(ann.InputError, match=message):
        call(np.zeros((1, 2, 4, 4)))


def test_layers_check_their_options_when_built():
    with pytest.raises(ann.InputError, match="MaxPool2D: dilation: expected ints >= 1"):
        MaxPool2D(2, dilation=0)
    with pytest.raises(ann.InputError, match="AvgPool2D: divisor_override: expected None"):
        AvgPool2D(2, divisor_override=0)
    with pytest.raises(ann.InputError, match="AvgPool2D: ceil_mode: expected True or False"):
        AvgPool2D(2, ceil_mode="no")
    with pytest.raises(ann.InputError, match="AdaptiveMaxPool2D: output_size: expected"):
        AdaptiveMaxPool2D((2, -1))


@pytest.mark.parametrize("options", [dict(kernel_size=3, padding=(1,)),
                                     dict(kernel_size=(3,), stride=()),
                                     dict(kernel_size=(4,), stride=(1,), padding=(2,))],
                         ids=["padding-1-tuple", "empty-stride", "all-1-tuples"])
def test_one_value_sequences_and_an_empty_stride_are_taken_as_pytorch_takes_them(
        torch, rng, options):
    """(k,) means (k, k), and stride=() the kernel's size, in PyTorch's pooling samples."""
    x = rng.standard_normal((2, 3, 7, 6))
    for ours, theirs in [(F.avgpool2d_forward, torch.nn.functional.avg_pool2d),
                         (F.maxpool2d_forward, torch.nn.functional.max_pool2d)]:
        np.testing.assert_allclose(ours(x, **options),
                                   theirs(torch.tensor(x), **options).numpy())
