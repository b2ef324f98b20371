"""conv2d's groups, padding_mode and unbatched input: PyTorch agreement (forward and every
gradient), float64 finite differences on every backend, errors, and the Conv2D layer."""

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.gradcheck import check_function
from helpers import assert_close, host

# x shape, W shape (O, C / groups, kh, kw), groups, padding_mode, stride, padding, dilation.
CONFIGS = {
    "depthwise": ((2, 4, 6, 7), (4, 1, 3, 3), 4, "zeros", 1, 1, 1),
    "depthwise-multiplier-3": ((2, 3, 5, 6), (9, 1, 3, 3), 3, "zeros", 1, 1, 1),
    "depthwise-stride2": ((2, 4, 7, 8), (4, 1, 3, 3), 4, "zeros", 2, 1, 1),
    "grouped": ((2, 6, 6, 5), (4, 3, 3, 3), 2, "zeros", 1, 1, 1),
    "grouped-stride-dilation-pairs": ((1, 6, 9, 8), (6, 2, 3, 2), 3, "zeros", (2, 1), (2, 1),
                                      (1, 2)),
    "grouped-same-even-kernel": ((2, 4, 5, 6), (4, 2, 2, 4), 2, "zeros", 1, "same", 1),
    "grouped-one-output-per-group": ((2, 6, 5, 5), (2, 3, 3, 3), 2, "zeros", 1, 1, 1),
    "reflect": ((2, 3, 6, 5), (4, 3, 3, 3), 1, "reflect", 1, 2, 1),
    "reflect-same-depthwise": ((1, 4, 5, 5), (4, 1, 3, 3), 4, "reflect", 1, "same", 1),
    "reflect-dilated-same": ((2, 2, 7, 6), (3, 2, 3, 3), 1, "reflect", 1, "same", 2),
    "replicate-4-tuple": ((2, 2, 5, 6), (3, 2, 3, 3), 1, "replicate", 1, (0, 3, 2, 1), 1),
    "replicate-1x1-input": ((2, 2, 1, 1), (2, 1, 3, 3), 2, "replicate", 1, 1, 1),
    "circular-grouped-stride2": ((2, 4, 6, 7), (4, 2, 3, 3), 2, "circular", 2, 2, 1),
    "circular-kernel-equals-padded-input": ((2, 4, 3, 3), (4, 1, 5, 5), 4, "circular", 1, 1, 1),
    "unbatched": ((3, 6, 5), (6, 1, 3, 3), 3, "zeros", 1, 1, 1),
    "unbatched-dense-reflect": ((2, 5, 6), (3, 2, 3, 3), 1, "reflect", 1, 1, 1),
    "batch1-1x1-spatial": ((1, 4, 1, 1), (4, 2, 1, 1), 2, "zeros", 1, 0, 1),
    "batch0": ((0, 4, 5, 5), (4, 2, 3, 3), 2, "replicate", 1, 1, 1),
    # one group: the fast paths on NumPy with numba (Winograd for 8 channels, direct for 2)
    "winograd-reflect": ((2, 8, 6, 6), (8, 8, 3, 3), 1, "reflect", 1, 1, 1),
    "direct-circular": ((2, 2, 6, 5), (4, 2, 3, 3), 1, "circular", 1, 1, 1),
}


def make(rng, config, dtype="float64"):
    xs, ws, groups, mode, stride, padding, dilation = config
    x = ann.asarray(rng.standard_normal(xs), dtype=dtype)
    w = ann.asarray(rng.standard_normal(ws), dtype=dtype)
    b = ann.asarray(rng.standard_normal(ws[0]), dtype=dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                         padding_mode=mode)


def torch_conv(torch, x, w, b, kw):
    """PyTorch's convolution with ``kw``: torch.nn.Conv2d's padding modes, and a 4-tuple
    padding applied by torch.nn.functional.pad (Conv2d takes none)."""
    padding, mode = kw["padding"], kw["padding_mode"]
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        pad_mode = "constant" if mode == "zeros" else mode
        x = torch.nn.functional.pad(x, (left, right, top, bottom), mode=pad_mode)
        return torch.nn.functional.conv2d(x, w, b, kw["stride"], 0, kw["dilation"], kw["groups"])
    conv = torch.nn.Conv2d(w.shape[1] * kw["groups"], w.shape[0], tuple(w.shape[2:]),
                           stride=kw["stride"], padding=padding, dilation=kw["dilation"],
                           groups=kw["groups"], padding_mode=mode, dtype=w.dtype)
    del conv.weight, conv.bias  # ours, so that their gradients reach the caller's tensors
    conv.weight, conv.bias = w, b
    return conv(x)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-4)])
def test_conv2d_options_match_torch(torch, rng, name, dtype, tol):
    x, w, b, kw = make(rng, CONFIGS[name], dtype)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch_conv(torch, tx, tw, tb, kw)
    dy = rng.standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(dy))
    y = F.conv2d_forward(x, w, b, **kw)
    dx, dw, db = F.conv2d_backward(x, w, dy, **kw)
    for ours, ref in [(y, ty), (dx, tx.grad), (dw, tw.grad), (db, tb.grad)]:
        assert host(ours).dtype == np.dtype(dtype) and ours.shape == tuple(ref.shape)
        assert_close(ours, ref, rtol=tol, atol=tol)


GRADIENT_CHECKED = ["depthwise-multiplier-3", "depthwise-stride2", "grouped-stride-dilation-pairs",
                    "grouped-one-output-per-group", "reflect-same-depthwise",
                    "replicate-4-tuple", "circular-grouped-stride2", "unbatched",
                    "unbatched-dense-reflect"]


@pytest.mark.parametrize("name", GRADIENT_CHECKED)
def test_conv2d_options_gradients_float64(xp, rng, name):
    x, w, b, kw = make(rng, CONFIGS[name])

    def backward(dy, x, w, b):
        dx, dw, db = F.conv2d_backward(x, w, dy, **kw)
        return {"x": dx, "w": dw, "b": db}

    report = check_function(lambda x, w, b: F.conv2d_forward(x, w, b, **kw), backward,
                            {"x": x, "w": w, "b": b}, max_checks=20)
    assert report.passed, str(report)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_the_padding_fold_by_hand(xp, mode):
    """A 1x3 row padded by 2 on each side, all ones upstream: each input column's gradient
    counts the padded columns that copy it (itself included)."""
    x = ann.asarray(np.array([[[[1.0, 2.0, 3.0]]]]))
    w = ann.asarray(np.ones((1, 1, 1, 1)))
    kw = dict(padding=(0, 0, 2, 2), padding_mode=mode)
    y = F.conv2d_forward(x, w, **kw)
    dx = F.conv2d_backward(x, w, ann.asarray(np.ones((1, 1, 1, 7))), **kw)[0]
    padded, copies = {"reflect": ([3, 2, 1, 2, 3, 2, 1], [2, 3, 2]),
                      "replicate": ([1, 1, 1, 2, 3, 3, 3], [3, 1, 3]),
                      "circular": ([2, 3, 1, 2, 3, 1, 2], [2, 3, 2])}[mode]
    np.testing.assert_array_equal(host(y)[0, 0, 0], padded)
    np.testing.assert_array_equal(host(dx)[0, 0, 0], copies)


def test_conv2d_options_do_not_modify_inputs(xp, rng):
    x, w, b, kw = make(rng, CONFIGS["circular-grouped-stride2"])
    copies = [host(a).copy() for a in (x, w, b)]
    y = F.conv2d_forward(x, w, b, **kw)
    F.conv2d_backward(x, w, ann.asarray(np.ones(tuple(y.shape))), **kw)
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(host(a), c)


def test_positional_arguments_in_torchs_order(rng):
    x, w, b, kw = make(rng, CONFIGS["reflect-same-depthwise"])
    expected = F.conv2d_forward(x, w, b, **kw)
    assert_close(F.conv2d_forward(x, w, b, 1, "same", 1, 4, "reflect"), expected, 0, 0)
    dy = np.ones(tuple(expected.shape))
    for a, e in zip(F.conv2d_backward(x, w, dy, 1, "same", 1, 4, "reflect"),
                    F.conv2d_backward(x, w, dy, **kw)):
        assert_close(a, e, 0, 0)


def test_grouped_patches_kept_by_the_caller_give_the_same_gradients(rng):
    x, w, b, kw = make(rng, CONFIGS["grouped-stride-dilation-pairs"])
    y, patches = F.conv._conv2d_forward_with_patches(x, w, b, kw["stride"], kw["padding"],
                                                     kw["dilation"], kw["groups"])
    assert patches.kind == "grouped"
    dy = rng.standard_normal(y.shape)
    for a, e in zip(F.conv2d_backward(x, w, dy, **kw, patches=patches),
                    F.conv2d_backward(x, w, dy, **kw)):
        assert_close(a, e, 0, 0)
    assert F.conv2d_backward(x, w, dy, **kw, input_grad=False)[0] is None


def test_conv2d_option_errors(xp):
    x = ann.asarray(np.zeros((2, 6, 5, 5)))
    w = ann.asarray(np.zeros((4, 3, 3, 3)))
    with pytest.raises(ann.InputError, match=r"x: expected 9 input channels \(W has shape \(4, "
                                             r"3, 3, 3\), groups 3\), got shape \(2, 6, 5, 5\)"):
        F.conv2d_forward(x, w, groups=3)
    with pytest.raises(ann.InputError, match=r"W: expected out_channels divisible by groups 2, "
                                             r"got shape \(3, 3, 3, 3\)"):
        F.conv2d_forward(x, ann.asarray(np.zeros((3, 3, 3, 3))), groups=2)
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ann.InputError, match=f"groups: expected an int >= 1, got {bad!r}"):
            F.conv2d_forward(x, w, groups=bad)
    with pytest.raises(ann.InputError, match="padding_mode: expected one of 'zeros', 'reflect', "
                                             "'replicate', 'circular', got 'mirror'"):
        F.conv2d_backward(x, w, ann.asarray(np.zeros((2, 4, 3, 3))), groups=2,
                          padding_mode="mirror")
    with pytest.raises(ann.InputError, match=r"padding_mode 'reflect': expected padding smaller "
                                             r"than the input \(H, W\) = \(5, 5\), got padding "
                                             r"\(5, 5, 0, 0\)"):
        F.conv2d_forward(x, w, padding=(5, 0), groups=2, padding_mode="reflect")
    with pytest.raises(ann.InputError, match=r"padding_mode 'circular': expected padding at most"):
        F.conv2d_forward(x, w, padding=(0, 0, 0, 6), groups=2, padding_mode="circular")
    with pytest.raises(ann.InputError, match=r"x: expected a 4-D array \(N, C, H, W\) or an "
                                             r"unbatched 3-D array \(C, H, W\), got shape "
                                             r"\(5, 5\)"):
        F.conv2d_forward(ann.asarray(np.zeros((5, 5))), w)
    with pytest.raises(ann.InputError, match=r"dy: expected shape \(4, 3, 3\)"):
        F.conv2d_backward(x[0, ...], w, ann.asarray(np.zeros((2, 4, 3, 3))), groups=2)


def test_conv2d_layer_options(tmp_path, rng):
    layer = ann.layers.Conv2D(4, 8, 3, padding=1, groups=4, padding_mode="circular",
                              dtype="float64", rng=0, name="dw")
    assert tuple(layer.params["W"].shape) == (8, 1, 3, 3)
    config = layer.get_config()
    assert (config["groups"], config["padding_mode"]) == (4, "circular")
    x = rng.standard_normal((2, 4, 5, 6))
    dy = rng.standard_normal((2, 8, 5, 6))
    y = layer.forward(x, train=True)
    dx = layer.backward(dy, input_grad=True)
    kw = dict(padding=1, groups=4, padding_mode="circular")
    w, b = layer.params["W"], layer.params["b"]
    assert_close(y, F.conv2d_forward(x, w, b, **kw), 0, 0)
    for a, e in zip((dx, layer.grads["W"], layer.grads["b"]), F.conv2d_backward(x, w, dy, **kw)):
        assert_close(a, e, 0, 0)
    assert layer.forward(x[0], train=False).shape == (8, 5, 6)  # unbatched

    model = ann.Sequential([layer, ann.layers.ReLU()])
    path = tmp_path / "grouped.h5"
    ann.save_checkpoint(path, model)
    rebuilt = ann.load_model(path)
    assert rebuilt.get_config() == model.get_config()
    assert_close(rebuilt.forward(x), model.forward(x), 0, 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(groups=3), "groups: expected a divisor of in_channels 4 and out_channels 8, got 3"),
    (dict(groups=0), "groups: expected an int >= 1, got 0"),
    (dict(padding_mode="same"), "padding_mode: expected one of 'zeros', 'reflect', 'replicate', "
                                "'circular', got 'same'"),
])
def test_conv2d_layer_option_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"Conv2D: {message}"):
        ann.layers.Conv2D(4, 8, 3, **kwargs)


def test_grouped_kernels_in_several_blocks_of_positions(xp, rng, monkeypatch):
    """The grouped kernels work block by block over the positions at stride 1 (see
    conv.BLOCK_VALUES); blocks of 256 positions give what one block gives."""
    x, w, b, kw = make(rng, ((2, 4, 12, 12), (6, 2, 3, 3), 2, "zeros", 1, 1, 1))
    dy = ann.asarray(rng.standard_normal((2, 6, 12, 12)))
    one_block = [F.conv2d_forward(x, w, b, **kw), *F.conv2d_backward(x, w, dy, **kw)]
    monkeypatch.setattr(F.conv, "BLOCK_VALUES", 1)
    assert len(F.conv._Taps((4, 2, 14, 14), (12, 12), (1, 1), (1, 1), (3, 3)).blocks(6)) == 2
    for a, e in zip([F.conv2d_forward(x, w, b, **kw), *F.conv2d_backward(x, w, dy, **kw)],
                    one_block):
        assert_close(a, e, rtol=1e-12, atol=1e-12)
