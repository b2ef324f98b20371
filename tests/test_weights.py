"""Weights in safetensors files (anyarray_nn/weights.py): round trips on every backend, both
ways with PyTorch (its state_dict saved by safetensors into our MNIST network with identical
predictions, and ours into the equivalent torch.nn network), matching by name and by
position, and damaged, truncated and hostile files."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn.checkpoint import CheckpointError, WarmStartError
from anyarray_nn.layers import BatchNorm2D, Conv2D, Dense, Flatten, ReLU
from helpers import host

pytest.importorskip("safetensors")


def test_weights_round_trip_on_every_backend(xp, tmp_path, rng):
    source = ann.networks.mnist_net(rng=0, dtype="float64")
    source.to(ann.current_backend().name)
    path = ann.save_weights(source, tmp_path / "mnist.safetensors")
    target = ann.networks.mnist_net(rng=5, dtype="float64")
    target.to(ann.current_backend().name)
    report = ann.load_weights(target, path)
    assert report.missing_keys == [] and report.unexpected_keys == []
    for key, value in source.state_dict().items():
        np.testing.assert_array_equal(host(target.state_dict()[key]), host(value))
        assert host(target.state_dict()[key]).dtype == np.float64


def test_load_checkpoint_and_warm_start_take_our_files_and_refuse_an_optimizer(tmp_path):
    model = ann.Sequential([Conv2D(2, 3, 3, rng=0), BatchNorm2D(3), ReLU(), Flatten(),
                            Dense(12, 4, rng=1)])
    model.layers[1].buffers["running_var"] = np.full(3, 2.0, dtype=np.float32)
    path = ann.save_weights(model, tmp_path / "w.safetensors")
    other = ann.Sequential([Conv2D(2, 3, 3, rng=3), BatchNorm2D(3), ReLU(), Flatten(),
                            Dense(12, 4, rng=4)])
    ann.load_checkpoint(path, other)
    np.testing.assert_array_equal(other.buffers()["batchnorm1.running_var"], 2.0)
    assert ann.warm_start(ann.Sequential([Conv2D(2, 3, 3, rng=9), BatchNorm2D(3), ReLU(),
                                          Flatten(), Dense(12, 4, rng=8)]), path).complete
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        ann.load_checkpoint(path, other, ann.optim.SGD(other, lr=0.1))


class TorchMnist:
    """The MNIST network in torch.nn, its modules named as ours (conv1, conv2, fc)."""

    def __new__(cls, torch):
        F = torch.nn.functional

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = torch.nn.Conv2d(1, 16, 5, padding=2)
                self.conv2 = torch.nn.Conv2d(16, 16, 5, padding=2)
                self.fc = torch.nn.Linear(16 * 7 * 7, 10)

            def forward(self, x):
                x = F.max_pool2d(F.relu(self.conv1(x)), 2)
                x = F.max_pool2d(F.relu(self.conv2(x)), 2)
                return self.fc(x.flatten(1))
        return Net()


def test_a_network_trained_in_pytorch_predicts_the_same_here(torch, tmp_path, rng):
    """Trained a few steps in PyTorch, saved with safetensors.torch, loaded by name into
    our MNIST network: the same logits (float32 rounding) and the same classes."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    net = TorchMnist(torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x = torch.tensor(rng.standard_normal((64, 1, 28, 28)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 10, 64))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    path = tmp_path / "torch.safetensors"
    save_file(net.state_dict(), str(path))
    ours = ann.networks.mnist_net(rng=1)
    ann.load_checkpoint(path, ours)
    with torch.no_grad():
        expected = net(x).numpy()
    got = host(ours.forward(x.numpy()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(host(ours.predict(x.numpy())), expected.argmax(axis=1))


def test_our_weights_load_into_the_equivalent_torch_network(torch, tmp_path, rng):
    from safetensors.torch import load_file
    ours = ann.networks.mnist_net(rng=2)
    path = ann.save_weights(ours, tmp_path / "ours.safetensors", names="pytorch")
    net = TorchMnist(torch)
    net.load_state_dict(load_file(str(path)))  # strict: every name as PyTorch's
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(host(ours.forward(x)), expected, rtol=1e-4, atol=1e-5)
    back = ann.networks.mnist_net(rng=3)
    ann.load_weights(back, path)  # and PyTorch's names read back here
    np.testing.assert_array_equal(back.state_dict()["fc.W"], ours.state_dict()["fc.W"])


def test_batch_norm_travels_both_ways_with_pytorch_s_names(torch, tmp_path, rng):
    from safetensors.torch import load_file, save_file
    ours = ann.Sequential([Conv2D(3, 4, 3, padding=1, rng=0, name="conv"),
                           BatchNorm2D(4, name="bn")])
    ours.layers[1].buffers["running_mean"] = rng.standard_normal(4).astype(np.float32)
    path = ann.save_weights(ours, tmp_path / "bn.safetensors", names="pytorch")
    net = torch.nn.Sequential()
    net.add_module("conv", torch.nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("bn", torch.nn.BatchNorm2d(4))
    net.load_state_dict(load_file(str(path)))
    net.eval()
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(host(ours.forward(x)), expected, rtol=1e-4, atol=1e-5)
    save_file(net.state_dict(), str(tmp_path / "back.safetensors"))  # num_batches_tracked too
    again = ann.Sequential([Conv2D(3, 4, 3, padding=1, rng=5, name="conv"),
                            BatchNorm2D(4, name="bn")])
    ann.load_checkpoint(tmp_path / "back.safetensors", again)
    np.testing.assert_allclose(host(again.forward(x)), expected, rtol=1e-4, atol=1e-5)


def test_a_pytorch_sequential_warm_starts_by_position_and_shape(torch, tmp_path, rng):
    """nn.Sequential names its modules 0, 1, ...: no name matches ours, and by position
    (in module order: 3 before 10) and shape every array loads."""
    from safetensors.torch import save_file
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 5, padding=2),
                              torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity(),
                              torch.nn.Linear(784, 10))
    save_file(net.state_dict(), str(tmp_path / "seq.safetensors"))
    ours = ann.networks.mnist_net(rng=4)
    with pytest.raises(WarmStartError, match="strict warm start"):
        ann.warm_start(ours, tmp_path / "seq.safetensors")
    report = ann.warm_start(ours, tmp_path / "seq.safetensors", by_position=True)
    assert report.complete
    assert report.loaded[0] == ("0.W", "conv1.W") and report.loaded[-1] == ("10.b", "fc.b")
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    np.testing.assert_allclose(host(ours.forward(x)), expected, rtol=1e-4, atol=1e-5)


def test_a_file_of_another_dtype_needs_convert_dtype(tmp_path):
    from safetensors.numpy import save_file
    model = ann.Sequential([Dense(2, 3, rng=0, name="fc")])
    save_file({"fc.weight": np.ones((3, 2), np.float16), "fc.bias": np.zeros(3, np.float16)},
              str(tmp_path / "half.safetensors"))
    with pytest.raises(CheckpointError, match=r"fc.W: the model is float32, the file float16 "
                                              r"\(pass convert_dtype=True"):
        ann.load_checkpoint(tmp_path / "half.safetensors", model)
    ann.load_checkpoint(tmp_path / "half.safetensors", model, convert_dtype=True)
    np.testing.assert_array_equal(model.params()["fc.W"], 1.0)


def test_a_file_that_does_not_match_is_refused_and_the_model_kept(tmp_path):
    model = ann.networks.mnist_net(rng=0)
    path = ann.save_weights(model, tmp_path / "m.safetensors")
    other = ann.Sequential([Dense(3, 2, rng=0, name="fc")])
    before = {k: np.array(v) for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"m.safetensors: does not match the model"):
        ann.load_weights(other, path)
    with pytest.raises(CheckpointError, match=r"does not match the model"):
        ann.load_checkpoint(path, other)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def _damaged_variants(data: bytes, rng):
    """A valid file's bytes broken every way: cut anywhere, bytes flipped anywhere, the
    header's length made huge or wrong, the header not JSON, nothing at all."""
    yield "empty", b""
    for cut in sorted(set(rng.integers(1, len(data), 12).tolist()) | {4, 8, 9, len(data) - 1}):
        yield f"cut at {cut}", data[:cut]
    for at in sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 7, 8, 9, 20}):
        yield f"byte {at} flipped", data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    yield "header length 2**62", (2**62).to_bytes(8, "little") + data[8:]
    yield "header length past the end", (len(data)).to_bytes(8, "little") + data[8:]
    length = int.from_bytes(data[:8], "little")
    yield "header not JSON", data[:8] + b"\x00" * length + data[8 + length:]
    header = json.loads(data[8:8 + length])
    key = next(k for k in header if k != "__metadata__")
    header[key]["data_offsets"] = [0, 2**40]
    text = json.dumps(header).encode()
    yield "offsets past the end", len(text).to_bytes(8, "little") + text + data[8 + length:]
    header[key]["data_offsets"], header[key]["shape"] = [0, 4], [10**12, 10**12]
    text = json.dumps(header).encode()
    yield "huge declared shape", len(text).to_bytes(8, "little") + text + data[8 + length:]


def test_damaged_files_raise_a_clear_error_or_load_what_they_hold(tmp_path, rng):
    """Every damaged variant either raises CheckpointError naming the file (the model left
    as it was) or loads arrays that are exactly what the file holds (a flipped byte inside
    a value's bytes is a different, valid number: safetensors has no checksum)."""
    model = ann.Sequential([Dense(4, 3, rng=0, name="fc"), ReLU(), Dense(3, 2, rng=1)])
    good = ann.save_weights(model, tmp_path / "good.safetensors").read_bytes()
    target = ann.Sequential([Dense(4, 3, rng=5, name="fc"), ReLU(), Dense(3, 2, rng=6)])
    before = {k: np.array(v) for k, v in target.state_dict().items()}
    outcomes = {"error": 0, "loaded": 0}
    for what, data in _damaged_variants(good, rng):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(data)
        try:
            ann.load_checkpoint(path, target)
        except CheckpointError as exc:
            assert "bad.safetensors" in str(exc), what
            for key, value in target.state_dict().items():
                np.testing.assert_array_equal(value, before[key], err_msg=what)
            outcomes["error"] += 1
            continue
        from safetensors.numpy import load
        stored = load(data)
        for key, value in target.state_dict().items():
            np.testing.assert_array_equal(value, stored[key], err_msg=what)
            before[key] = np.array(value)
        outcomes["loaded"] += 1
    assert outcomes["error"] >= 20


def test_bad_names_and_paths_are_refused(tmp_path):
    model = ann.Sequential([Dense(2, 3, rng=0)])
    with pytest.raises(ValueError, match=r"expected a file name ending in .safetensors"):
        ann.save_weights(model, tmp_path / "w.h5")
    with pytest.raises(ValueError, match=r"names='anyarray_nn' or 'pytorch', got 'keras'"):
        ann.save_weights(model, tmp_path / "w.safetensors", names="keras")
    with pytest.raises(FileNotFoundError, match=r"nowhere.safetensors: no such weights file"):
        ann.load_weights(model, tmp_path / "nowhere.safetensors")
    with pytest.raises(OSError, match="missing"):
        ann.save_weights(model, tmp_path / "missing" / "w.safetensors")


def test_a_failed_save_leaves_the_old_file_whole(tmp_path, monkeypatch):
    model = ann.Sequential([Dense(2, 3, rng=0)])
    path = ann.save_weights(model, tmp_path / "w.safetensors")
    old = path.read_bytes()

    def full_disk(fd, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="w.safetensors"):
        ann.save_weights(ann.Sequential([Dense(2, 3, rng=7)]), path)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left


def test_a_killed_save_s_temporary_is_cleaned_by_the_next_save(tmp_path):
    """A save killed mid-write leaves only its temporary (never a half file under the real
    name); the next save to that folder removes it."""
    model = ann.Sequential([Dense(2, 3, rng=0)])
    stale = tmp_path / ".w.safetensors.0123abcd.safetensors-tmp"
    stale.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__meta")  # half a header
    old = os.stat(stale).st_mtime - 3600
    os.utime(stale, (old, old))
    ann.save_weights(model, tmp_path / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    ann.load_weights(ann.Sequential([Dense(2, 3, rng=1)]), tmp_path / "w.safetensors")
