"""The examples: the circles toy set learned on every backend, and the command line of the
real-data examples on small synthetic files."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import anyarray_nn as ann
from anyarray_nn.data import make_circles
from anyarray_nn.data.pipeline import AlternatingFlip, Standardize
from anyarray_nn.examples import circles, experiment, mnist


def test_circles_is_seeded_and_balanced():
    x1, y1 = make_circles(200, seed=3)
    x2, y2 = make_circles(200, seed=3)
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (200, 2) and y1.dtype == np.int64 and y1.sum() == 100
    radius = np.hypot(x1[:, 0], x1[:, 1])
    assert radius[y1 == 0].mean() > radius[y1 == 1].mean() + 0.3


def test_circles_mlp_reaches_95_percent(xp, backend_name):
    result = circles.train_circles(backend_name, epochs=30, verbose=False)
    assert result["test_accuracy"] >= 0.95, result


def test_circles_command_line():
    out = CliRunner().invoke(circles.main, ["--backend", "numpy", "--epochs", "20"])
    assert out.exit_code == 0, out.output
    accuracy = float(out.output.strip().split("test accuracy ")[1].split(",")[0])
    assert accuracy >= 0.95
    bad = CliRunner().invoke(circles.main, ["--epochs", "0"])
    assert bad.exit_code == 2


# --- the real-data examples' command line, on small synthetic data ----------------------------


def write_mnist(root, n=(120, 40)):
    """Tiny MNIST files (random images) under root/mnist, as the loader reads them."""
    rng = np.random.default_rng(0)
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for (split, (images, labels)), count in zip(names.items(), n):
        folder = root / "mnist"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        digits = rng.integers(0, 10, count, dtype=np.uint8)
        header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (count, 28, 28))
        (folder / f"{images}.gz").write_bytes(gzip.compress(header + pixels.tobytes()))
        header = (0x801).to_bytes(4, "big") + count.to_bytes(4, "big")
        (folder / f"{labels}.gz").write_bytes(gzip.compress(header + digits.tobytes()))


def invoke_mnist(tmp_path, *args):
    return CliRunner().invoke(mnist.main, ["--data", str(tmp_path), "--epochs", "1",
                                           "--no-progress", *args])


@pytest.mark.parametrize("args,message", [
    (["--backend", "nosuch"], "Invalid value for '--backend': unknown backend 'nosuch'"),
    (["--lr", "nan"], "Invalid value for '--lr': expected a finite number > 0, got nan"),
    (["--lr", "inf"], "expected a finite number > 0, got inf"),
    (["--seed", "-1"], "-1 is not in the range x>=0"),
    (["--limit", "1000"], "Invalid value for '--limit': expected at most the 120 training"),
    (["--save", "{tmp}/missing/m.h5"], "Invalid value for '--save': the folder"),
    (["--report", "{tmp}/adir"], "Invalid value for '--report': '{tmp}/adir' exists"),
    (["--save", "{tmp}/same", "--report", "{tmp}/same"], "--save and --report name the same"),
])
def test_bad_options_are_usage_errors_before_training(tmp_path, monkeypatch, args, message):
    write_mnist(tmp_path)
    (tmp_path / "adir").mkdir()  # an earlier report
    monkeypatch.setattr(ann.train, "fit", lambda *a, **k: pytest.fail("trained"))
    out = invoke_mnist(tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert out.exit_code == 2, out.output
    assert message.format(tmp=tmp_path) in out.output


def test_a_missing_or_damaged_data_set_is_an_error_without_traceback(tmp_path):
    out = invoke_mnist(tmp_path / "nowhere")
    assert out.exit_code == 2 and "Invalid value for '--data'" in out.output
    write_mnist(tmp_path)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    out = invoke_mnist(tmp_path)
    assert out.exit_code == 1 and f"Error: {path}" in out.output
    assert not isinstance(out.exception, ann.data.DataFormatError)  # reported, not raised


def test_an_existing_checkpoint_is_replaced_only_with_overwrite(tmp_path):
    write_mnist(tmp_path)
    saved = tmp_path / "m.h5"
    saved.write_bytes(b"an earlier model")
    out = invoke_mnist(tmp_path, "--save", str(saved))
    assert out.exit_code == 2 and "pass --overwrite to replace it" in out.output
    assert saved.read_bytes() == b"an earlier model"
    out = invoke_mnist(tmp_path, "--save", str(saved), "--overwrite")
    assert out.exit_code == 0, out.output
    assert ann.load_model(saved).num_params() == 14_682


def test_workers_train_on_mpi_ranks_started_for_the_user(tmp_path):
    """--workers 2 starts the same command under mpiexec -n 2 (and says so); the ranks train
    on their parts of each batch, rank 0 alone prints the report and writes the checkpoint,
    and the test set is evaluated whole."""
    pytest.importorskip("mpi4py", reason="the mpi extra is not installed")
    write_mnist(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ann.distributed.LAUNCHER_VARIABLES}
    done = subprocess.run([sys.executable, "-m", "anyarray_nn.examples.mnist", "--data",
                           str(tmp_path), "--epochs", "1", "--no-progress", "--workers", "2",
                           "--batch-size", "16", "--save", str(tmp_path / "m.h5")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "running: " in done.stdout and " -n 2 " in done.stdout
    assert done.stdout.count("summary {") == 1 and '"workers": 2' in done.stdout
    assert "batch split over 2 MPI ranks" in done.stdout
    summary = json.loads(done.stdout.split("summary ", 1)[1].splitlines()[0])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert ann.load_model(tmp_path / "m.h5").num_params() == 14_682


def test_workers_on_a_run_started_on_other_ranks_are_refused(tmp_path, monkeypatch):
    write_mnist(tmp_path)
    monkeypatch.setattr(ann.distributed, "world_size", lambda: 3)
    out = invoke_mnist(tmp_path, "--workers", "2")
    assert out.exit_code == 2 and "started on 3 MPI ranks; give --workers 3, or 1" in out.output


def test_batch_normalization_leaves_out_a_last_batch_of_one(capsys):
    rng = np.random.default_rng(0)

    def load(data, split):
        n = 111 if split == "train" else 20  # 100 training images after the 10% validation
        return rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), rng.integers(0, 2, n)

    def build(rng, backend):
        return ann.Sequential([ann.layers.Flatten(), ann.layers.Dense(16, 4, rng=rng, name="d"),
                               ann.layers.BatchNorm1D(4, name="bn"),
                               ann.layers.Dense(4, 2, rng=rng, name="out")])

    summary = experiment.run("bn", load, build=build, data=None, backend="numpy", epochs=1,
                             batch_size=11, lr=0.01, weight_decay=0.0, progress=False)
    assert "leave a last batch of 1" in capsys.readouterr().out
    assert summary["epochs"] == 1  # trained: the batch of one did not reach BatchNorm


def spy_on_training(monkeypatch, record):
    """Wrap train.fit and train.evaluate: ``record(model, loss_fn, opt, loader, kw)`` sees
    fit's arguments. Returns the lists that fill as they run: the learning rate after each
    step, and the type of each evaluated model."""
    rates, evaluated = [], []
    real_fit, real_evaluate = ann.train.fit, ann.train.evaluate

    class Rates(ann.train.Callback):
        def on_iteration_end(self, state):
            rates.append(state.optimizer.lr)

    def fit(model, loss_fn, opt, loader, **kw):
        record(model, loss_fn, opt, loader, kw)
        kw["callbacks"] = [*kw["callbacks"], Rates()]
        return real_fit(model, loss_fn, opt, loader, **kw)

    def evaluate(model, loss_fn, loader):
        evaluated.append(type(model).__name__)
        return real_evaluate(model, loss_fn, loader)

    monkeypatch.setattr(ann.train, "fit", fit)
    monkeypatch.setattr(ann.train, "evaluate", evaluate)
    return rates, evaluated


def test_the_fast_recipe_options_reach_the_loss_optimizer_schedule_and_test(capsys,
                                                                           monkeypatch):
    """label_smoothing, nesterov, a warm-up then a cosine updated every step, and the test
    logits averaged with the mirror images'."""
    rng = np.random.default_rng(0)

    def load(data, split):
        n = 110 if split == "train" else 20
        return rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), rng.integers(0, 2, n)

    def build(rng, backend):
        return ann.Sequential([ann.layers.Flatten(), ann.layers.Dense(16, 2, rng=rng, name="d")])

    seen = {}
    rates, evaluated = spy_on_training(monkeypatch, lambda model, loss_fn, opt, loader, kw: (
        seen.update(smoothing=loss_fn.label_smoothing, form=opt.form,
                    per=kw["callbacks"][0].per)))
    experiment.run("recipe", load, build=build, data=None, backend="numpy", epochs=3,
                   batch_size=11, lr=0.1, weight_decay=0.0, progress=False,
                   label_smoothing=0.2, nesterov=True, warmup_epochs=1, lr_per="iteration",
                   test_views="flip")
    assert seen["smoothing"] == 0.2 and seen["form"] == "nesterov" and seen["per"] == "iteration"
    assert evaluated[-1] == "FlipAveraged"  # the test set
    steps_per_epoch = 9  # 99 training images in batches of 11
    assert len(rates) == 3 * steps_per_epoch
    warm = rates[:steps_per_epoch]
    assert all(a < b for a, b in zip(warm, warm[1:]))  # rising through the warm-up
    after = rates[steps_per_epoch:]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[-1] < 0.01


def test_flip_averaged_logits_are_the_mean_over_the_mirror_images():
    rng = np.random.default_rng(1)
    model = ann.Sequential([ann.layers.Flatten(), ann.layers.Dense(12, 3, rng=0)])
    x = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    expected = (model.forward(x) + model.forward(x[..., ::-1])) / 2
    np.testing.assert_allclose(experiment.FlipAveraged(model).forward(x), expected, rtol=1e-6)


def test_flip_translate_averaged_logits_weigh_six_reflected_views():
    rng = np.random.default_rng(2)
    model = ann.Sequential([ann.layers.Flatten(), ann.layers.Dense(20, 3, rng=0,
                                                                   dtype="float64")])
    x = rng.standard_normal((2, 1, 4, 5))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")

    def mirrored(v):
        return (model.forward(v) + model.forward(v[..., ::-1].copy())) / 2
    expected = (0.5 * mirrored(x) + 0.25 * mirrored(padded[:, :, :4, :5].copy())
                + 0.25 * mirrored(padded[:, :, 2:, 2:].copy()))
    np.testing.assert_allclose(experiment.FlipTranslateAveraged(model).forward(x), expected,
                               rtol=1e-12)


def test_the_cifar10_fast_recipe_trains_on_every_image_with_its_options(monkeypatch):
    """val_fraction 0 (no validation, every training image used), the whitening set from
    standardized images, the triangle schedule per step, lookahead, lr_scale and no_decay in
    the optimizer, and six test views."""
    from anyarray_nn.examples import cifar10
    rng = np.random.default_rng(0)

    loaded = {}

    def load(data, split):
        n = 60 if split == "train" else 10
        loaded[split] = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        return loaded[split], rng.integers(0, 10, n)

    seen = {}
    rates, evaluated = spy_on_training(monkeypatch, lambda model, loss_fn, opt, loader, kw: (
        seen.update(images=len(loader.x), val=kw["val_loader"], opt=opt.get_config(),
                    callbacks=[type(c).__name__ for c in kw["callbacks"]],
                    whiten=model["whiten"].params["W"].copy())))
    build, augment, _, lr, weight_decay, _ = cifar10.NETWORKS["fast"]
    crop, flip = augment  # translations read mirrored edges; each image flips every epoch
    assert (crop.padding, crop.padding_mode, type(flip)) == (2, "reflect", AlternatingFlip)
    summary = experiment.run("fast", load, build=lambda **kw: build(widths=(4, 8, 8), **kw),
                             data=None, backend="numpy", epochs=2, batch_size=20, lr=lr,
                             weight_decay=weight_decay, augment=augment, progress=False,
                             **cifar10.RECIPES["fast"])
    assert seen["images"] == 60 and seen["val"] is None and summary["val_accuracy"] is None
    assert seen["opt"]["momentum"] == 0.85 and seen["opt"]["form"] == "nesterov"
    assert seen["opt"]["lr_scale"] == {"whiten.W": 0.0, "gamma": 0.0, "beta": 64.0}
    assert seen["opt"]["no_decay"] == ["beta"]
    assert seen["callbacks"] == ["LearningRateSchedule", "Lookahead"]
    assert evaluated[-1] == "FlipTranslateAveraged"
    assert len(rates) == 6 and max(rates) <= lr and rates[-1] == pytest.approx(0.07 * lr)
    assert rates.index(max(rates)) == 1  # 0.23 of 6 steps: the peak comes early
    x = loaded["train"].astype(np.float64)
    standardized = Standardize.fit(x, scale=1 / 255)(x)
    np.testing.assert_allclose(seen["whiten"], ann.init.patch_whitening(standardized, 2),
                               rtol=1e-5, atol=1e-5)
