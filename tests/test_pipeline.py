"""The data pipeline: split, standardization, loader order, device batches, augmentation."""

import re

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.backend import backend_name_of, dtype_name
from anyarray_nn.data.pipeline import (AlternatingFlip, DataLoader, RandomCrop, RandomFlip,
                                       Standardize, train_val_split)
from helpers import host


def images(n=20, c=3, h=6, w=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, c, h, w), dtype=np.uint8), rng.integers(0, 10, n)


def test_train_val_split_is_a_seeded_partition():
    x, y = np.arange(100)[:, None], np.arange(100)
    xt, yt, xv, yv = train_val_split(x, y, 0.2, seed=3)
    assert len(xv) == 20 and len(xt) == 80
    assert sorted(np.concatenate([yt, yv]).tolist()) == list(range(100))
    again = train_val_split(x, y, 0.2, seed=3)
    np.testing.assert_array_equal(again[3], yv)
    with pytest.raises(ValueError, match="x has 3 examples but y has 2"):
        train_val_split(np.zeros((3, 1)), np.zeros(2))
    with pytest.raises(ValueError, match="expected 0 < val_fraction < 1, got 1.5"):
        train_val_split(x, y, 1.5)


def test_standardize_uses_per_channel_statistics(xp):
    x, _ = images(50)
    st = Standardize.fit(x, scale=1 / 255, chunk=7)  # chunks must not change the result
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(st.mean, ref.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(st.std, ref.std(axis=(0, 2, 3)))
    out = host(st(ann.asarray(x, dtype="float64")))
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match="expected 3 channels, got shape"):
        st(ann.asarray(np.zeros((2, 4, 2, 2)), dtype="float64"))
    with pytest.raises(ValueError, match="std must be positive"):
        Standardize([0.0], [0.0])
    with pytest.raises(ValueError, match="Standardize: expected a float32 or float64 batch, "
                                         "got dtype uint8"):
        st(x)


def test_loader_visits_every_example_once_per_epoch_in_a_seeded_order(xp, backend_name):
    x, y = np.arange(23, dtype=np.float64)[:, None], np.arange(23)
    loader = DataLoader(x, y, 5, seed=1)
    assert len(loader) == 5
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [int(b[1].shape[0]) for b in batches] == [5, 5, 5, 5, 3]
        xb, yb = batches[0]
        assert backend_name_of(xb) == backend_name and dtype_name(xb.dtype) == "float32"
        assert dtype_name(yb.dtype) == "int64"
        seen = np.concatenate([host(b[1]) for b in batches])
        assert sorted(seen.tolist()) == list(range(23))
        epochs.append(seen)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order every epoch
    again = DataLoader(x, y, 5, seed=1)
    np.testing.assert_array_equal(np.concatenate([host(b[1]) for b in again]), epochs[0])


def test_loader_options():
    x, y = np.arange(10, dtype=np.float64)[:, None], np.arange(10)
    assert [host(b[1]).tolist() for b in DataLoader(x, y, 4, shuffle=False)] == \
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(list(DataLoader(x, y, 4, drop_last=True))) == 2
    doubled = DataLoader(x, y, 10, shuffle=False, preprocess=lambda b: b * 2)
    assert host(next(iter(doubled))[0])[:, 0].tolist() == [2.0 * i for i in range(10)]
    calls = []
    augmented = DataLoader(x, y, 10, augment=[lambda b, rng: calls.append(1) or b], train=False)
    list(augmented)
    assert calls == []  # no augmentation outside training
    with pytest.raises(ValueError, match="expected batch_size >= 1"):
        DataLoader(x, y, 0)


def test_loader_state_resumes_the_same_order():
    x, y = np.arange(30, dtype=np.float64)[:, None], np.arange(30)
    loader = DataLoader(x, y, 7, seed=5)
    list(loader)
    state = loader.state_dict()
    expected = [host(b[1]).tolist() for b in loader]
    resumed = DataLoader(x, y, 7, seed=99)
    resumed.load_state_dict(state)
    assert [host(b[1]).tolist() for b in resumed] == expected and resumed.epoch == 2


def test_random_crop_takes_a_window_of_the_padded_image(xp):
    x, _ = images(4, 2, 5, 6)
    out = host(RandomCrop(2)(ann.asarray(x, dtype="float32"), np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    top, left = rng.integers(0, 5, 4), rng.integers(0, 5, 4)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))).astype(np.float32)
    for i in range(4):
        np.testing.assert_array_equal(out[i], padded[i, :, top[i]:top[i] + 5, left[i]:left[i] + 6])


def test_random_crop_with_reflect_padding_mirrors_the_edges(xp):
    x, _ = images(4, 2, 5, 6)
    out = host(RandomCrop(2, padding_mode="reflect")(ann.asarray(x, dtype="float32"),
                                                       np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    top, left = rng.integers(0, 5, 4), rng.integers(0, 5, 4)
    padded = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect").astype(np.float32)
    for i in range(4):
        np.testing.assert_array_equal(out[i], padded[i, :, top[i]:top[i] + 5, left[i]:left[i] + 6])
    with pytest.raises(ValueError, match=r"RandomCrop: reflect padding 5 needs images larger "
                                         r"than it, got 5x6"):
        RandomCrop(5, padding_mode="reflect")(ann.asarray(x, dtype="float32"),
                                              np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"RandomCrop: expected padding_mode in \('zeros', "
                                         r"'reflect'\), got 'edge'"):
        RandomCrop(2, padding_mode="edge")


def test_random_flip(xp):
    x, _ = images(6)
    xb = ann.asarray(x, dtype="float32")
    np.testing.assert_array_equal(host(RandomFlip(0.0)(xb, np.random.default_rng(0))), x)
    np.testing.assert_array_equal(host(RandomFlip(1.0)(xb, np.random.default_rng(0))), x[..., ::-1])
    mixed = host(RandomFlip(0.5)(xb, np.random.default_rng(3)))
    flips = np.random.default_rng(3).random(6) < 0.5
    assert 0 < flips.sum() < 6
    for i in range(6):
        np.testing.assert_array_equal(mixed[i], x[i, ..., ::-1] if flips[i] else x[i])


@pytest.mark.parametrize("augmentation", [RandomCrop(2), RandomFlip(), AlternatingFlip()],
                         ids=["crop", "flip", "alternating-flip"])
def test_augmentations_refuse_what_is_not_a_batch_of_images(augmentation):
    flat = ann.asarray(np.zeros((4, 10)), dtype="float32")
    with pytest.raises(ValueError, match=rf"{type(augmentation).__name__}: expected a batch "
                                         r"of images \(N, C, H, W\), got shape \(4, 10\)"):
        extra = dict(index=np.arange(4), epoch=1) if hasattr(augmentation, "per_example") else {}
        augmentation(flat, np.random.default_rng(0), **extra)


def flipped_by_epoch(loader, x, epochs):
    """{example: [mirrored in epoch 1, 2, ...]} from the batches ``loader`` yields; the labels
    are the examples' indices."""
    seen = {}
    for _ in range(epochs):
        for xb, yb in loader:
            for image, i in zip(host(xb), host(yb)):
                mirrored = np.array_equal(image, x[i, ..., ::-1])
                assert mirrored or np.array_equal(image, x[i])
                seen.setdefault(int(i), []).append(mirrored)
    return seen


def test_a_loader_of_several_inputs_or_outputs_yields_a_tuple_for_each(xp):
    x, y = images(10)
    extra, y2 = np.arange(10.0)[:, None], 9 - y
    for xb, yb in DataLoader((x, extra), (y, y2), 4, seed=1, dtype="float64"):
        (images_b, extra_b), (labels, labels2) = map(host, xb), map(host, yb)
        rows = extra_b[:, 0].astype(int)  # which examples this batch holds
        np.testing.assert_array_equal(images_b, x[rows])
        np.testing.assert_array_equal(labels, y[rows])
        np.testing.assert_array_equal(labels2, y2[rows])
    xb, yb = next(iter(DataLoader(x, (y, y2), 10, shuffle=False, augment=[RandomFlip(1.0)])))
    np.testing.assert_array_equal(host(xb), x[..., ::-1])  # one input: augmented as usual
    assert isinstance(yb, tuple) and len(yb) == 2


def test_a_loader_of_several_inputs_refuses_what_it_cannot_do():
    x, y = images(10)
    with pytest.raises(ValueError, match=r"DataLoader: preprocess and augment take one array, "
                                         r"and x has 2 \(one per model input\)"):
        DataLoader((x, x), y, augment=[RandomFlip()])
    with pytest.raises(ValueError, match=r"DataLoader: every array of x and y needs one row "
                                         r"per example; x has \[10, 9\] and y \[10\] rows"):
        DataLoader((x, x[:9]), y)
    with pytest.raises(ValueError, match=r"DataLoader: x\[1\]: expected x to hold examples "
                                         r"of numbers"):
        DataLoader((x, np.array(["a"] * 10)), y)
    with pytest.raises(ValueError, match=r"expected at least one array in x and in y, got 0"):
        DataLoader((), y)
    with pytest.raises(ValueError, match="DataLoader: expected integer class labels"):
        DataLoader(x, (y, y + 0.5))


def test_alternating_flip_mirrors_each_image_every_other_epoch(xp):
    x = np.random.default_rng(0).integers(0, 256, (200, 1, 2, 3)).astype(np.float32)
    labels = np.arange(200)
    seen = flipped_by_epoch(DataLoader(x, labels, 7, seed=1, augment=[AlternatingFlip()]),
                            x, 4)
    assert sorted(seen) == list(range(200))
    for flips in seen.values():
        assert flips[0] != flips[1] and flips[:2] == flips[2:]
    first = [flips[0] for flips in seen.values()]
    assert 70 < sum(first) < 130  # a random half, not a fixed pattern of the indices
    # It depends on the example and the seed only: not on the batch size, the order or the
    # loader's generator.
    again = flipped_by_epoch(DataLoader(x, labels, 200, shuffle=False, seed=9,
                                        augment=[AlternatingFlip()]), x, 2)
    assert all(again[i] == seen[i][:2] for i in range(200))
    other = flipped_by_epoch(DataLoader(x, labels, 200, augment=[AlternatingFlip(seed=1)]), x, 1)
    assert 50 < sum(other[i][0] != seen[i][0] for i in range(200)) < 150


def test_alternating_flip_resumes_exactly_and_is_balanced():
    x = np.arange(40, dtype=np.float32).reshape(20, 1, 1, 2)
    loader = DataLoader(x, np.arange(20), 6, seed=3, augment=[AlternatingFlip(5)])
    flipped_by_epoch(loader, x, 2)
    state = loader.state_dict()
    expected = flipped_by_epoch(loader, x, 1)
    resumed = DataLoader(x, np.arange(20), 6, seed=0, augment=[AlternatingFlip(5)])
    resumed.load_state_dict(state)
    assert flipped_by_epoch(resumed, x, 1) == expected
    halves = AlternatingFlip().first_half(np.arange(2**20))
    assert abs(halves.mean() - 0.5) < 0.002
    assert abs(np.mean(halves[1:] == halves[:-1]) - 0.5) < 0.002  # neighbours independent
    huge = np.array([2**63 - 1, 2**63 - 2])
    assert AlternatingFlip(2**64 - 1).first_half(huge).dtype == bool


def test_alternating_flip_refuses_a_call_without_indices_or_with_bad_ones():
    flip = AlternatingFlip()
    xb = ann.asarray(np.zeros((3, 1, 2, 2)), dtype="float32")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"AlternatingFlip: needs the examples' indices and "
                                         r"the epoch \(index=, epoch=; a DataLoader passes"):
        flip(xb, rng)
    with pytest.raises(ValueError, match=r"expected 3 example indices >= 0 for a batch of 3, "
                                         r"got int64 of shape \(2,\)"):
        flip(xb, rng, index=np.arange(2), epoch=1)
    with pytest.raises(ValueError, match="expected 3 example indices >= 0"):
        flip(xb, rng, index=np.array([0, -1, 2]), epoch=1)
    with pytest.raises(ValueError, match="got float64 of shape"):
        flip(xb, rng, index=np.array([0.0, 1.0, 2.0]), epoch=1)
    for epoch in (-1, 1.5, "1", True):
        with pytest.raises(ValueError, match=r"AlternatingFlip: expected an epoch count >= 0, "
                                             rf"got {re.escape(repr(epoch))}"):
            flip(xb, rng, index=np.arange(3), epoch=epoch)
    for seed in (-1, 2**64, 0.5, True, None):
        with pytest.raises(ValueError, match=r"AlternatingFlip: expected a seed from 0 to "
                                             rf"2\*\*64 - 1, got {re.escape(repr(seed))}"):
            AlternatingFlip(seed)


def test_the_same_batches_on_every_backend(xp):
    x, y = images(16)
    st = Standardize.fit(x, scale=1 / 255)
    augment = [RandomCrop(2), RandomFlip()]
    here = [host(b[0]) for b in DataLoader(x, y, 5, seed=2, preprocess=st, augment=augment)]
    with ann.using("numpy"):
        ref = [b[0] for b in DataLoader(x, y, 5, seed=2, preprocess=st, augment=augment)]
    for a, b in zip(here, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("value", [0.1, 1 / 3, 123.456, -7.0])
def test_standardize_treats_a_constant_feature_as_constant(value):
    rng = np.random.default_rng(0)
    x = np.column_stack([np.full(1000, value), rng.normal(size=1000),
                         0.1 + 1e-3 * rng.normal(size=1000)])   # small but real variation
    st = Standardize.fit(x, chunk=64)
    assert st.std[0] == 1.0 and st.mean[0] == pytest.approx(value, rel=1e-15)
    np.testing.assert_allclose(st.std[1:], x[:, 1:].std(axis=0), rtol=1e-12)
    out = st(ann.asarray(np.array([[value + 0.1, 0.0, 0.1]]), backend="numpy", dtype="float64"))
    assert out[0, 0] == pytest.approx(0.1, rel=1e-6)


def test_standardize_applies_statistics_by_the_batch_layout(xp):
    st = Standardize([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0])
    flat = host(st(ann.asarray(np.zeros((2, 4)), dtype="float64")))
    np.testing.assert_array_equal(flat, [[0.0, -1.0, -2.0, -3.0]] * 2)
    images = host(st(ann.asarray(np.zeros((1, 4, 1, 3)), dtype="float64")))
    np.testing.assert_array_equal(images[0, :, 0, :], [[0.0] * 3, [-1.0] * 3, [-2.0] * 3,
                                                       [-3.0] * 3])      # per channel, not per W
    with pytest.raises(ValueError, match=r"Standardize: expected \(N, D\) or \(N, C, H, W\) "
                                         r"data, got shape \(2, 4, 3\)"):
        st(ann.asarray(np.zeros((2, 4, 3)), dtype="float64"))


def test_loader_labels_must_be_class_indices():
    x = np.zeros((4, 2))
    whole = DataLoader(x, np.array([0.0, 1.0, 2.0, 1.0]), 4, shuffle=False)
    assert host(next(iter(whole))[1]).tolist() == [0, 1, 2, 1]
    assert DataLoader(x, [0, 1, 2, 1]).y.dtype == np.int64
    with pytest.raises(ValueError, match=r"DataLoader: expected integer class labels, got "
                                         r"float64 labels that are not whole numbers "
                                         r"\(e.g. y\[0\] = 0.9\)"):
        DataLoader(x, np.array([0.9, 1.7, 2.5, -0.5]))
    with pytest.raises(ValueError, match="y\\[1\\] = nan"):
        DataLoader(x, np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"DataLoader: expected y of shape \(N,\) \(one class "
                                         r"index per example\), got shape \(4, 3\)"):
        DataLoader(x, np.eye(3)[[0, 1, 2, 1]])          # one-hot labels
    with pytest.raises(ValueError, match="got <U1 labels"):
        DataLoader(x, np.array(["a", "b", "a", "b"]))


def test_loader_refuses_a_bad_state_and_stays_unchanged():
    x, y = np.arange(30, dtype=np.float64)[:, None], np.arange(30)
    loader = DataLoader(x, y, 7, seed=5)
    list(loader)
    good = loader.state_dict()
    bad_rng = {**good["rng"], "state": {"state": "x", "inc": 1}}
    for state, match in [
        ({"epoch": 3}, r"missing 'rng'"),
        ({**good, "extra": 1}, r"unexpected 'extra'"),
        ({**good, "epoch": "3"}, r"expected 'epoch' to be an integer >= 0, got '3'"),
        ({**good, "epoch": -1}, r"got -1"),
        ({"epoch": 7, "rng": bad_rng}, r"'rng' is not a PCG64 generator state"),
        ({"epoch": 7, "rng": {**good["rng"], "bit_generator": "MT19937"}}, r"not a PCG64"),
        ([1, 2], r"expected a dict with 'epoch' and 'rng', got list"),
    ]:
        with pytest.raises(ValueError, match=f"DataLoader.load_state_dict: .*{match}"):
            loader.load_state_dict(state)
        assert loader.state_dict() == good  # nothing changed
    loader.load_state_dict({**good, "epoch": np.int64(4)})
    assert loader.epoch == 4 and type(loader.epoch) is int


@pytest.mark.parametrize("x,found", [
    (np.array([["a"], ["b"]]), "got <U1 of shape (2, 1)"),
    (np.array([[object()], [None]]), "got object of shape (2, 1)"),
    (np.ones((2, 1), np.complex64), "got complex64 of shape (2, 1)"),
    (np.float64(1.0), "got float64 of shape ()"),
], ids=["strings", "objects", "complex", "scalar"])
def test_loader_refuses_x_that_does_not_hold_numbers(x, found):
    with pytest.raises(ValueError) as info:
        DataLoader(x, [0, 1])
    assert str(info.value) == (f"DataLoader: expected x to hold examples of numbers (bool, "
                               f"integer or float) along axis 0, {found}")


def test_loader_takes_a_list_of_numbers_as_x():
    loader = DataLoader([[1.0], [2.0]], [0, 1], 2, shuffle=False)
    assert host(next(iter(loader))[0]).tolist() == [[1.0], [2.0]]


@pytest.mark.parametrize("y,shown", [
    (np.array([0, -1]), "y[1] = -1"),
    (np.array([0, 2**63], np.uint64), "y[1] = 9223372036854775808"),   # int64 would wrap it
    (np.array([2.0**63, 0.0]), "y[0] = 9.223372036854776e+18"),
    (np.array([1e300, 0.0]), "y[0] = 1e+300"),
    (np.array([0.0, -3.0]), "y[1] = -3.0"),
], ids=["negative", "uint64-past-int64", "float-2**63", "float-huge", "float-negative"])
def test_loader_refuses_labels_that_are_not_class_indices(y, shown):
    with pytest.raises(ValueError, match=rf"DataLoader: expected class indices from 0 to "
                                         rf"2\*\*63 - 1, got {re.escape(shown)}$"):
        DataLoader(np.zeros((2, 1)), y)


def test_loader_labels_at_the_edges_of_int64_and_bool():
    x = np.zeros((2, 1))
    assert DataLoader(x, np.array([True, False])).y.tolist() == [1, 0]
    assert DataLoader(x, np.array([2**63 - 1, 0], np.uint64)).y.tolist() == [2**63 - 1, 0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e308])
@pytest.mark.parametrize("layout", ["features", "images"])
def test_standardize_fit_names_the_feature_that_holds_nan_or_infinity(bad, layout):
    x = np.random.default_rng(0).normal(size=(6, 3, 2, 2) if layout == "images" else (6, 3))
    x[4, 2] = bad
    x[5, 2] = bad                                 # 1e308 twice: the sum overflows
    what = "channel" if layout == "images" else "feature"
    with pytest.raises(ValueError, match=rf"Standardize.fit: {what} 2 of x holds NaN or "
                                         rf"infinity"):
        Standardize.fit(x, chunk=4)


@pytest.mark.parametrize("mean,std,scale,match", [
    ([np.nan], [1.0], 1.0, r"mean must be finite, got \[nan\]"),
    ([np.inf], [1.0], 1.0, r"mean must be finite, got \[inf\]"),
    ([0.0], [np.inf], 1.0, r"std must be positive and finite, got \[inf\]"),
    ([0.0], [np.nan], 1.0, r"std must be positive and finite, got \[nan\]"),
    ([0.0], [1.0], np.nan, "expected a finite, non-zero scale, got nan"),
    ([0.0], [1.0], 0.0, "expected a finite, non-zero scale, got 0.0"),
    ([0.0], [1.0], np.inf, "expected a finite, non-zero scale, got inf"),
])
def test_standardize_refuses_statistics_that_are_not_finite(mean, std, scale, match):
    with pytest.raises(ValueError, match=f"Standardize: {match}"):
        Standardize(mean, std, scale)
