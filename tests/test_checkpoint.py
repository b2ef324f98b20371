"""HDF5 checkpoints: round trips on every backend, exact resume in a new process, warm starts,
atomic writes under SIGKILL, damaged and foreign files, hand-written files."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import checkpoint as ck
from anyarray_nn import train
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Tanh
from helpers import edited_checkpoint, host, legacy_copy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def trained_mnist_net(steps=2):
    model = ann.networks.mnist_net(rng=0)
    opt = ann.optim.Adam(model, lr=1e-3)
    rng = np.random.default_rng(0)
    loss = ann.losses.SoftmaxCrossEntropy()
    for _ in range(steps):
        x = ann.asarray(rng.standard_normal((4, 1, 28, 28)), dtype="float32")
        loss.forward(model.forward(x, train=True), ann.asarray(rng.integers(0, 10, 4)))
        model.backward(loss.backward())
        opt.step()
    return model, opt


def same_params(a, b):
    assert list(a.params()) == list(b.params())
    for key in a.params():
        np.testing.assert_array_equal(host(a.params()[key]), host(b.params()[key]))


def test_round_trip_on_every_backend(xp, backend_name, tmp_path):
    model, opt = trained_mnist_net()
    path = ck.save_checkpoint(tmp_path / "a.h5", model, opt, epoch=3, step=7)
    other = ann.networks.mnist_net(rng=9)   # built on the active backend
    other_opt = ann.optim.Adam(other, lr=0.5)
    info = ann.load_checkpoint(path, other, other_opt)
    assert (info.epoch, info.step, info.format_version) == (3, 7, ck.FORMAT_VERSION)
    assert other.backend == backend_name
    same_params(model, other)
    assert other_opt.step_count == 2 and other_opt.lr == 1e-3
    for key, slots in opt.state.items():
        for slot, value in slots.items():
            np.testing.assert_array_equal(host(other_opt.state[key][slot]), host(value))
    rebuilt = ann.load_model(path)
    assert rebuilt.get_config() == model.get_config() and rebuilt.backend == backend_name
    same_params(model, rebuilt)


def test_layout_is_readable_with_plain_h5py(tmp_path):
    model, opt = trained_mnist_net()
    path = ck.save_checkpoint(tmp_path / "a.h5", model, opt)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "anyarray_nn" and f.attrs["format_version"] == 2
        assert f.userblock_size == ck.HEADER_SIZE
        np.testing.assert_array_equal(f["model/conv1/W"][()], host(model.params()["conv1.W"]))
        assert f["optimizer/fc/b/m"].shape == (10,)
        assert json.loads(f["model"].attrs["config"])["layers"][0]["type"] == "Conv2D"
        assert json.loads(f["optimizer"].attrs["config"])["type"] == "Adam"


def test_a_file_written_by_hand_in_the_documented_layout_loads(tmp_path):
    model = ann.Sequential([Dense(3, 2, name="fc")])
    path = tmp_path / "by_hand.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "anyarray_nn"
        f.attrs["format_version"] = 1
        group = f.create_group("model")
        group.attrs["config"] = json.dumps(model.get_config())
        group["fc/W"] = np.arange(6, dtype=np.float32).reshape(2, 3)
        group["fc/b"] = np.array([1.0, -1.0], dtype=np.float32)
    ann.load_checkpoint(path, model)
    assert host(model.params()["fc.W"]).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert ann.load_model(path).get_config() == model.get_config()


def test_strict_load_refuses_a_different_model_and_changes_nothing(tmp_path):
    model, _ = trained_mnist_net()
    path = ck.save_checkpoint(tmp_path / "a.h5", model)
    wider = ann.Sequential([*ann.networks.mnist_net(rng=1).layers[:-1], Dense(784, 20, name="fc")])
    before = {k: host(v).copy() for k, v in wider.params().items()}
    with pytest.raises(ck.CheckpointError, match=r"a\.h5: does not match the model: fc\.W: the "
                                                 r"model has shape \(20, 784\), the file \(10, 784\)"):
        ann.load_checkpoint(path, wider)
    for key, value in wider.params().items():
        np.testing.assert_array_equal(host(value), before[key])
    with pytest.raises(ck.CheckpointError, match="holds no optimizer state"):
        ann.load_checkpoint(path, ann.networks.mnist_net(), ann.optim.SGD(ann.networks.mnist_net()))


def test_dtype_conversion_only_on_request(tmp_path):
    model = ann.networks.mnist_net(rng=0, dtype="float64")
    path = ck.save_checkpoint(tmp_path / "a.h5", model)
    target = ann.networks.mnist_net(rng=1)
    with pytest.raises(ck.CheckpointError, match="conv1.W: the model is float32, the file float64"):
        ann.load_checkpoint(path, target)
    ann.load_checkpoint(path, target, convert_dtype=True)
    assert target.dtype == "float32"
    np.testing.assert_allclose(host(target.params()["fc.W"]), host(model.params()["fc.W"]), rtol=1e-6)
    assert ann.load_model(path, dtype="float32").dtype == "float32"


RESUME = r"""
import sys
import numpy as np
import anyarray_nn as ann
from anyarray_nn import train, checkpoint as ck
from anyarray_nn.data.pipeline import DataLoader, RandomFlip

def setup():
    x, y = ann.data.make_circles(300, seed=0)
    loader = DataLoader(x[:, :, None, None], y, 16, seed=1, augment=[RandomFlip()])
    model = ann.Sequential([ann.layers.Flatten(), ann.layers.Dense(2, 8, init="glorot", rng=0),
                            ann.layers.Tanh(), ann.layers.Dense(8, 2, init="glorot", rng=1)])
    opt = ann.optim.Adam(model, lr=0.01)
    sched = train.LearningRateSchedule(ann.schedules.cosine(0.01, 5))
    return loader, model, opt, sched

mode, path = sys.argv[1], sys.argv[2]
loader, model, opt, sched = setup()
loss = ann.losses.SoftmaxCrossEntropy()
if mode == "straight":
    train.fit(model, loss, opt, loader, epochs=5, callbacks=[sched], progress=False)
elif mode == "first":
    train.fit(model, loss, opt, loader, epochs=2, progress=False,
              callbacks=[sched, ck.CheckpointEvery(path, per="epoch", loader=loader)])
    sys.exit(0)
else:
    info = ck.load_checkpoint(ck.latest_checkpoint(path), model, opt, loader=loader)
    train.fit(model, loss, opt, loader, epochs=3, callbacks=[sched], history=info.history,
              progress=False)
np.savez(sys.argv[3], **{k: ann.to_host(v) for k, v in model.params().items()})
"""


def test_exact_resume_in_a_new_process(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    path = [str(ROOT), os.environ.get("PYTHONPATH")]  # the caller's own entries too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))

    def run(*args):
        done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    run("straight", tmp_path / "unused", tmp_path / "straight.npz")
    run("first", tmp_path / "ckpts", "-")
    run("resume", tmp_path / "ckpts", tmp_path / "resumed.npz")
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert set(straight.files) == set(resumed.files)
    for key in straight.files:  # bitwise, not approximately
        np.testing.assert_array_equal(straight[key], resumed[key])


def test_checkpoint_every_keeps_the_last_k(tmp_path):
    x, y = ann.data.make_circles(200, seed=0)
    model = ann.Sequential([Dense(2, 4, rng=0), Tanh(), Dense(4, 2, rng=1)])
    loader = DataLoader(x, y, 20, seed=0)
    train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1), loader,
              iterations=25, progress=False,
              callbacks=[ck.CheckpointEvery(tmp_path, 5, per="iteration", keep=2)])
    names = sorted(p.name for p in tmp_path.glob("ckpt-*.h5"))
    assert names == ["ckpt-000000020.h5", "ckpt-000000025.h5"]
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-000000025.h5"
    assert ck.read_checkpoint(ck.latest_checkpoint(tmp_path))["step"] == 25


def variant(**kw):
    """The MNIST network with an extra 3x3 conv and a wider dense layer (32 outputs)."""
    return ann.Sequential([
        Conv2D(1, 16, 5, padding=2, name="conv1", **kw), ReLU(), MaxPool2D(2),
        Conv2D(16, 16, 5, padding=2, name="conv2", **kw), ReLU(),
        Conv2D(16, 16, 3, padding=1, name="conv_extra", **kw), ReLU(), MaxPool2D(2),
        Flatten(), Dense(784, 32, name="fc", **kw), ReLU(), Dense(32, 10, name="out", **kw)])


def test_warm_start_into_a_changed_architecture_reports_everything(tmp_path):
    source, _ = trained_mnist_net()
    path = ck.save_checkpoint(tmp_path / "mnist.h5", source)
    model = variant(rng=3)
    untouched = {k: host(v).copy() for k, v in model.params().items()}
    with pytest.raises(ck.WarmStartError, match="strict warm start loads all or nothing"):
        ann.warm_start(model, path)
    for key, value in model.params().items():  # nothing loaded by the refused call
        np.testing.assert_array_equal(host(value), untouched[key])

    report = ann.warm_start(model, path, strict=False)
    assert report.loaded == [("conv1.W", "conv1.W"), ("conv1.b", "conv1.b"),
                             ("conv2.W", "conv2.W"), ("conv2.b", "conv2.b")]
    assert [(a, b) for a, b, _ in report.skipped] == [("fc.W", "fc.W"), ("fc.b", "fc.b")]
    assert "shape (10, 784) in the file, (32, 784) in the model" in report.skipped[0][2]
    assert report.missing == ["conv_extra.W", "conv_extra.b", "fc.W", "fc.b", "out.W", "out.b"]
    assert report.unexpected == [] and report.resized == []
    same = {k for k, _ in report.loaded}
    for key in same:
        np.testing.assert_array_equal(host(model.params()[key]), host(source.params()[key]))
    np.testing.assert_array_equal(host(model.params()["fc.W"]), untouched["fc.W"])

    resized = ann.warm_start(variant(rng=3), path, strict=False, resize=True)
    assert resized.resized == [("fc.W", "fc.W", (10, 784), (32, 784)),
                               ("fc.b", "fc.b", (10,), (32,))]
    assert "fc.W" not in resized.missing
    text = str(resized)
    assert "resized     2: fc.W (10, 784) -> (32, 784), fc.b (10,) -> (32,)" in text


def test_warm_start_by_position_and_complete_strict_load(tmp_path, capsys):
    source = ann.Sequential([Dense(3, 4, name="a", rng=0), Tanh(), Dense(4, 2, name="b", rng=1)])
    path = ck.save_checkpoint(tmp_path / "s.h5", source)
    renamed = ann.Sequential([Dense(3, 4, name="first", rng=5), Tanh(), Dense(4, 2, name="second", rng=6)])
    report = ann.warm_start(renamed, path, by_position=True, print_report=True)
    assert report.complete and report.loaded[0] == ("a.W", "first.W")
    assert "a.W -> first.W" in capsys.readouterr().out
    np.testing.assert_array_equal(host(renamed.params()["second.W"]), host(source.params()["b.W"]))


def test_saved_from_torch_loads_on_array_api_strict(torch, tmp_path):
    source = ann.networks.mnist_net(rng=0, backend="torch")
    path = ck.save_checkpoint(tmp_path / "t.h5", source)
    with ann.using("array_api_strict"):
        model = ann.load_model(path)
        assert model.backend == "array_api_strict"
        report = ann.warm_start(ann.networks.mnist_net(rng=4), path)
    assert report.complete
    same_params(source, model)


def test_a_killed_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    model, _ = trained_mnist_net()
    path = ck.save_checkpoint(tmp_path / "ck.h5", model)
    script = tmp_path / "slow_save.py"
    script.write_text(f"""
import sys, time, numpy as np
sys.path.insert(0, {str(ROOT)!r})
import anyarray_nn as ann
from anyarray_nn import checkpoint as ck
model = ann.Sequential([ann.layers.Dense(4000, 4000, name="fc", rng=0)])  # 64 MB of weights
original = ck._write_optimizer
def slow(*args):
    print("writing", flush=True)
    time.sleep(30)
ck._write_optimizer = slow
ck.save_checkpoint({str(path)!r}, model, ann.optim.SGD(model, lr=0.1))
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # in the middle of the save
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    reloaded = ann.networks.mnist_net(rng=7)
    ann.load_checkpoint(path, reloaded)
    same_params(model, reloaded)
    # The file is built in memory: killed before writing, the save left nothing on disk.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.h5", "slow_save.py"]


def test_damaged_and_foreign_files_name_the_file_and_key(tmp_path):
    model, _ = trained_mnist_net()
    good = ck.save_checkpoint(tmp_path / "good.h5", model)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ck.CheckpointError, match=r"truncated\.h5: damaged: the header declares "
                                                 r"\d+ bytes after it, the file holds 1488"):
        ann.load_checkpoint(truncated, model)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ck.CheckpointError, match=r"text\.h5: not a readable checkpoint: it starts "
                                                 r"with neither"):
        ann.load_model(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(ck.CheckpointError, match=r"foreign\.h5: expected attribute format='anyarray_nn', got None"):
        ann.load_checkpoint(foreign, model)
    newer = tmp_path / "newer.h5"
    newer.write_bytes(good.read_bytes())
    with edited_checkpoint(newer) as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ck.CheckpointError, match=r"newer\.h5: format_version 99 is not supported"):
        ann.load_checkpoint(newer, model)
    missing = tmp_path / "missing.h5"
    missing.write_bytes(good.read_bytes())
    with edited_checkpoint(missing) as f:
        del f["model/conv2/b"]
    with pytest.raises(ck.CheckpointError, match=r"missing\.h5: does not match the model: missing in the file: conv2\.b"):
        ann.load_checkpoint(missing, model)
    with pytest.raises(FileNotFoundError, match="nowhere.h5: no such checkpoint"):
        ann.load_checkpoint(tmp_path / "nowhere.h5", model)


def test_load_model_builds_only_registered_layer_types(tmp_path):
    model = ann.Sequential([Dense(2, 2, name="fc")])
    path = ck.save_checkpoint(tmp_path / "a.h5", model)
    with edited_checkpoint(path) as f:
        config = json.loads(f["model"].attrs["config"])
        config["layers"][0]["type"] = "os.system"
        f["model"].attrs["config"] = json.dumps(config)
    with pytest.raises(ck.CheckpointError, match=r"a\.h5: model/config cannot be rebuilt: unknown layer type 'os.system'"):
        ann.load_model(path)


def test_changed_bytes_in_an_array_are_detected_by_the_checksums(tmp_path):
    """Files without the integrity header (format_version 1) still have HDF5's Fletcher-32
    checksums on every array."""
    model, _ = trained_mnist_net()
    path = legacy_copy(ck.save_checkpoint(tmp_path / "new.h5", model), tmp_path / "a.h5")
    with h5py.File(path, "r") as f:
        offset = f["model/fc/W"].id.get_offset()
        if offset is None:  # chunked storage: find the first chunk
            offset = f["model/fc/W"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 100:offset + 140] = b"\xff" * 40
    path.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match=r"a\.h5: /model/fc/W: damaged.*checksum"):
        ann.load_checkpoint(path, ann.networks.mnist_net())


def test_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = ck.save_checkpoint(tmp_path / "a.h5", ann.Sequential([Dense(2, 2)]))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_load_model_leaves_the_global_generator_alone(tmp_path):
    path = ck.save_checkpoint(tmp_path / "a.h5", ann.Sequential([Dense(2, 2, rng=0)]))
    ann.seed(5)
    expected = np.random.default_rng(5).standard_normal()
    ann.load_model(path)
    assert ann.backend.host_rng().standard_normal() == expected


def test_iteration_checkpoints_record_completed_epochs_and_never_delete_the_new_file(tmp_path):
    x, y = ann.data.make_circles(100, seed=0)
    loader = DataLoader(x, y, 25, seed=0)  # 4 steps per epoch
    model = ann.Sequential([Dense(2, 4, rng=0), Tanh(), Dense(4, 2, rng=1)])
    saver = ck.CheckpointEvery(tmp_path, 4, per="iteration", keep=1)
    train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1), loader,
              iterations=8, callbacks=[saver], progress=False)
    data = ck.read_checkpoint(ck.latest_checkpoint(tmp_path))
    assert data["step"] == 8 and data["epoch"] == 1 and len(data["history"]["epochs"]) == 1
    # a restarted run (without its history) counts steps from 0 again: keep its new file
    train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1), loader,
              iterations=4, callbacks=[saver], progress=False)
    assert [p.name for p in tmp_path.glob("ckpt-*.h5")] == ["ckpt-000000004.h5"]
    assert ck.read_checkpoint(ck.latest_checkpoint(tmp_path))["step"] == 4


# --- all or nothing, and files that lie ------------------------------------------------------

def small_trained(tmp_path):
    """A trained dense model, its optimizer and loader, and a full checkpoint of them."""
    model = ann.Sequential([Dense(2, 4, name="fc", rng=0), Tanh(), Dense(4, 2, name="out", rng=1)])
    opt = ann.optim.Adam(model, lr=0.01, betas=(0.8, 0.9))
    x, y = ann.data.make_circles(40, seed=0)
    loader = DataLoader(x, y, 10, seed=0)
    history = train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, loader, epochs=1,
                        progress=False)
    path = ck.save_checkpoint(tmp_path / "a.h5", model, opt, epoch=1, step=4, history=history,
                              loader=loader)
    return path


def fresh_state():
    model = ann.Sequential([Dense(2, 4, name="fc", rng=7), Tanh(), Dense(4, 2, name="out", rng=8)])
    opt = ann.optim.Adam(model, lr=0.5, betas=(0.7, 0.95))
    loader = DataLoader(*ann.data.make_circles(40, seed=0), 10, seed=123)
    return model, opt, loader


def edit_json_attr(path, where, name, change):
    with edited_checkpoint(path) as f:
        f[where].attrs[name] = json.dumps(change(json.loads(f[where].attrs[name])))


def break_loader_rng(state):
    state["loader"]["rng"] = {"bit_generator": "MT19937"}
    return state


def break_global_rng(state):
    state["global_rng"] = {"bit_generator": "Philox"}
    return state


@pytest.mark.parametrize("where, name, change, message", [
    ("train", "state", break_loader_rng, "data loader's position"),
    ("train", "state", break_global_rng, "random generators"),
    ("train", "history", lambda history: {"epochs": 5}, "train/history"),
    ("optimizer", "config", lambda config: dict(config, lr="0.01"), "expected lr to be a number"),
    ("optimizer", "config", lambda config: dict(config, betas=5), "betas to be a pair"),
    ("optimizer", "config", lambda config: dict(config, eps=None), "expected eps to be a number"),
])
def test_a_load_that_fails_in_any_part_changes_nothing(tmp_path, where, name, change, message):
    path = small_trained(tmp_path)
    edit_json_attr(path, where, name, change)
    model, opt, loader = fresh_state()
    params = {k: host(v).copy() for k, v in model.params().items()}
    opt_attrs, loader_state = dict(vars(opt)), loader.state_dict()
    global_state = ann.backend.host_rng().bit_generator.state
    with pytest.raises(ck.CheckpointError, match=f"a\\.h5: .*{message}"):
        ann.load_checkpoint(path, model, opt, loader=loader)
    for key, value in model.params().items():
        np.testing.assert_array_equal(host(value), params[key])
    assert vars(opt) == opt_attrs and opt.betas == (0.7, 0.95) and opt.step_count == 0
    assert loader.state_dict() == loader_state
    assert ann.backend.host_rng().bit_generator.state == global_state


def test_an_optimizer_refuses_bad_hyper_parameters_and_stays_as_it_was():
    model = ann.Sequential([Dense(2, 2, rng=0)])
    opt = ann.optim.Adam(model, lr=0.1, betas=(0.8, 0.9))
    state = opt.state_dict()
    for config, message in [({"lr": "0.1"}, "lr to be a number"), ({"betas": [0.9, 2.0]}, "betas"),
                            ({"no_decay": "b"}, "no_decay")]:
        before = dict(vars(opt))
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(dict(state, config=dict(state["config"], **config)))
        assert vars(opt) == before and type(opt.betas) is tuple
    with pytest.raises(ValueError, match="no_decay"):
        ann.optim.SGD(model, lr=0.1, no_decay="bias")  # would have meant ('b', 'i', 'a', 's')


@pytest.mark.parametrize("where, name, value", [
    ("train", "epoch", "abc"), ("optimizer", "step", "x"), ("model", "config", "[]"),
    ("model", "config", '{"layers": [{"type": "Dense"}]}'), ("optimizer", "config", "[1]"),
])
def test_damaged_attributes_are_named(tmp_path, where, name, value):
    path = small_trained(tmp_path)
    with edited_checkpoint(path) as f:
        f[where].attrs[name] = value
    model, opt, _ = fresh_state()
    for load in (lambda: ann.load_checkpoint(path, model, opt), lambda: ann.warm_start(model, path)):
        with pytest.raises(ck.CheckpointError, match=f"a\\.h5: {where}/{name}"):
            load()


def replace_dataset(path, key, **create):
    with edited_checkpoint(path) as f:
        del f[key]
        f.create_dataset(key, **create)


def test_an_array_declared_without_its_bytes_is_refused_before_reading(tmp_path):
    path = small_trained(tmp_path)
    replace_dataset(path, "model/fc/W", shape=(10**6, 10**6), dtype="f4")  # 4 TB, nothing stored
    assert path.stat().st_size < 100_000
    with pytest.raises(ck.CheckpointError, match=r"/model/fc/W: shape \(1000000, 1000000\) needs "
                                                 r"4000000000000 bytes, the file holds 0"):
        ann.load_checkpoint(path, fresh_state()[0])


def test_arrays_stored_outside_the_file_are_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(8, dtype=np.float32).tobytes())
    path = small_trained(tmp_path)
    replace_dataset(path, "model/fc/W", shape=(4, 2), dtype="f4", external=[(str(secret), 0, 32)])
    with pytest.raises(ck.CheckpointError, match="fc/W: its data are stored in other files"):
        ann.load_checkpoint(path, fresh_state()[0])
    other = ck.save_checkpoint(tmp_path / "b.h5", fresh_state()[0])
    path = small_trained(tmp_path)
    with edited_checkpoint(path) as f:
        del f["model/fc/W"]
        f["model/fc/W"] = h5py.ExternalLink(str(other), "/model/fc/W")
    with pytest.raises(ck.CheckpointError, match="/model/fc/W: a ExternalLink"):
        ann.load_checkpoint(path, fresh_state()[0])


def test_only_floating_point_arrays_are_saved_and_nothing_is_left_behind(tmp_path):
    model = ann.Sequential([Dense(2, 2, name="fc", rng=0)])
    model["fc"].params["b"] = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match="cannot save 'fc.b': .* int64"):
        ck.save_checkpoint(tmp_path / "a.h5", model)
    assert list(tmp_path.iterdir()) == []


def test_a_symbolic_link_stays_a_link_to_the_new_checkpoint(tmp_path):
    target = ck.save_checkpoint(tmp_path / "run1.h5", ann.Sequential([Dense(2, 2, rng=0)]))
    link = tmp_path / "best.h5"
    link.symlink_to(target.name)
    model = ann.Sequential([Dense(2, 2, rng=5)])
    ck.save_checkpoint(link, model)
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["best.h5", "run1.h5"]
    loaded = ann.load_model(target)
    same_params(model, loaded)


def test_a_resized_warm_start_into_float64_keeps_the_other_rows_exactly(tmp_path):
    path = ck.save_checkpoint(tmp_path / "a.h5", ann.Sequential([Dense(2, 4, name="fc", rng=0)]))
    model = ann.Sequential([Dense(2, 6, name="fc", rng=1, dtype="float64")])
    before = host(model.params()["fc.W"]).copy()
    ann.warm_start(model, path, resize=True, strict=False)
    np.testing.assert_array_equal(host(model.params()["fc.W"])[4:], before[4:])


def test_a_0_d_parameter_loads_back(tmp_path):
    model = ann.Sequential([Dense(2, 2, name="fc", rng=0)])
    model["fc"].params["b"] = ann.asarray(np.array(1.5), dtype="float32")  # a 0-d parameter
    path = ck.save_checkpoint(tmp_path / "a.h5", model)
    model["fc"].params["b"] = ann.asarray(np.array(0.0), dtype="float32")
    ann.load_checkpoint(path, model)
    assert tuple(model.params()["fc.b"].shape) == () and float(model.params()["fc.b"]) == 1.5


# --- files from other machines and writers; generators; history (a second audit) ---------------

def small_net():
    return ann.Sequential([Dense(2, 3, name="fc", rng=0)])


def test_a_big_endian_file_loads_like_any_other(tmp_path):
    path = ann.save_checkpoint(tmp_path / "be.h5", small_net())
    with edited_checkpoint(path) as f:  # as written on a big-endian machine
        for key in ("model/fc/W", "model/fc/b"):
            data = f[key][()]
            del f[key]
            f.create_dataset(key, data=data.astype(">f4"), fletcher32=True)
    model = ann.Sequential([Dense(2, 3, name="fc", rng=1)])
    ann.load_checkpoint(path, model)
    same_params(model, small_net())
    rebuilt = ann.load_model(path)
    assert rebuilt.dtype == "float32"
    same_params(rebuilt, small_net())


def test_fixed_length_string_attributes_are_read(tmp_path):
    model = small_net()
    path = tmp_path / "c_api.h5"
    with h5py.File(path, "w") as f:  # what the HDF5 C API or MATLAB writes
        f.attrs["format"] = np.bytes_("anyarray_nn")
        f.attrs["format_version"] = 1
        group = f.create_group("model")
        group.attrs["config"] = np.bytes_(json.dumps(model.get_config()))
        group["fc/W"] = np.ones((3, 2), np.float32)
        group["fc/b"] = np.zeros(3, np.float32)
    ann.load_checkpoint(path, model)
    assert host(model.params()["fc.W"]).tolist() == [[1.0, 1.0]] * 3


def dropout_net(seed):
    return ann.Sequential([Dense(4, 4, name="fc", rng=seed), ann.layers.Dropout(0.5, name="drop",
                                                                                 rng=seed)])


def test_load_model_leaves_the_global_generator_alone_with_dropout(tmp_path):
    path = ann.save_checkpoint(tmp_path / "d.h5", dropout_net(0))
    ann.seed(5)
    first = ann.backend.host_rng().random()
    ann.seed(5)
    ann.load_model(path)
    assert ann.backend.host_rng().random() == first


def test_restore_rng_false_still_restores_the_layers_generators(tmp_path):
    model = dropout_net(0)
    x = ann.asarray(np.ones((2, 4)), dtype="float32")
    path = ann.save_checkpoint(tmp_path / "d.h5", model)
    after_save = host(model.forward(x, train=True))
    other = dropout_net(1)
    ann.load_checkpoint(path, other, restore_rng=False)
    np.testing.assert_array_equal(host(other.forward(x, train=True)), after_save)


@pytest.mark.parametrize("key", ["global_rng", "layer_rngs"])
def test_a_bad_generator_state_names_the_generator_and_what_the_file_holds(tmp_path, key):
    path = ann.save_checkpoint(tmp_path / "d.h5", dropout_net(0))
    philox = {"bit_generator": "Philox", "state": {"counter": [0, 0, 0, 0], "key": [0, 0]}}
    with edited_checkpoint(path) as f:
        state = json.loads(f["train"].attrs["state"])
        if key == "global_rng":
            state["global_rng"] = philox
        else:
            state["layer_rngs"]["drop"] = philox
        f["train"].attrs["state"] = json.dumps(state)
    where = "global_rng" if key == "global_rng" else "layer_rngs/drop"
    with pytest.raises(ck.CheckpointError, match=rf"train/state/{where}: expected a PCG64 "
                                                 rf"generator state, the file holds 'Philox'"):
        ann.load_checkpoint(path, dropout_net(1))


def test_a_history_that_is_not_lists_of_records_is_refused(tmp_path):
    model = small_net()
    history = train.History(epochs=[{"epoch": 1, "loss": 0.5}])
    path = ann.save_checkpoint(tmp_path / "h.h5", model, history=history)
    with edited_checkpoint(path) as f:
        f["train"].attrs["history"] = json.dumps({"iterations": [1, 2, 3], "epochs": "abc"})
    with pytest.raises(ck.CheckpointError, match=r"train/history cannot be read: .*expected "
                                                 r"'iterations' to be a list of dicts, got \[1, 2, 3\]"):
        ann.load_checkpoint(path, small_net())
