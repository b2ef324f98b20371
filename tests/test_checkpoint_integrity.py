"""Checkpoints attacked as an unlucky user and an attacker would: every byte of a file changed,
headers cut or forged, sizes that lie, full and read-only disks, saves killed with SIGKILL,
pruning beside files that are not its own. The outcome is always a CheckpointError (or an
OSError naming the file, for writes) or a correct result, and a previous checkpoint is never
lost."""

import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import random
import signal
import stat
import subprocess
import sys
import time
import tracemalloc

import h5py
import numpy as np
import pytest

import anyarray_nn as ann
from anyarray_nn import _atomic
from anyarray_nn import checkpoint as ck
from anyarray_nn import train
from anyarray_nn.checkpoint import CheckpointError, CheckpointEvery, latest_checkpoint
from anyarray_nn.data.pipeline import DataLoader
from anyarray_nn.layers import Dense, ReLU
from helpers import edited_checkpoint, host, legacy_copy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny(seed=0):
    return ann.Sequential([Dense(3, 4, name="fc", rng=seed), ReLU(),
                           Dense(4, 2, name="out", rng=seed + 1)])


def full_checkpoint(path, seed=0):
    """A small checkpoint with every part: weights, optimizer slots, history, loader state."""
    x, y = ann.data.make_circles(40, seed=0)
    x = np.concatenate([x, x[:, :1]], axis=1)  # three features
    loader = DataLoader(x, y, 20, seed=0)
    model = tiny(seed)
    opt = ann.optim.SGD(model, lr=0.1, momentum=0.9)
    history = train.fit(model, ann.losses.SoftmaxCrossEntropy(), opt, loader, epochs=1,
                        progress=False)
    return ck.save_checkpoint(path, model, opt, epoch=1, step=2, history=history,
                              loader=loader), model


def params_of(model):
    return {k: host(v).copy() for k, v in {**model.params(), **model.buffers()}.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# --- every byte --------------------------------------------------------------------------

SWEEP = r"""
import pathlib, sys
import numpy as np
import anyarray_nn as ann
from anyarray_nn import checkpoint as ck

good, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
data = good.read_bytes()
reference = ck.read_checkpoint(good)["params"]
work.write_bytes(data)
with open(work, "r+b", buffering=0) as f:  # one byte changed in place, then put back
    for mask in (0xFF, 0x01):
        for i in range(len(data)):
            f.seek(i)
            f.write(bytes([data[i] ^ mask]))
            try:
                model = ann.load_model(work)
                same = all(np.array_equal(ann.to_host(v), reference[k])
                           for k, v in model.params().items())
                outcome = "same" if same else "DIFFERENT"
            except ck.CheckpointError:
                outcome = "error"
            except Exception as exc:
                outcome = "foreign:" + type(exc).__name__
            f.seek(i)
            f.write(data[i:i + 1])
            print(mask, i, outcome, flush=True)
print("done", flush=True)
"""


def test_every_byte_changed_is_an_error_never_a_crash_a_hang_or_a_wrong_value(tmp_path):
    """Each byte of a complete checkpoint flipped (all bits, then the lowest bit), each
    variant loaded: in a subprocess with a time limit, so that a crash or a hang would show
    as such, with the byte that caused it."""
    good, _ = full_checkpoint(tmp_path / "good.h5")
    size = good.stat().st_size
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run([sys.executable, str(script), str(good), str(tmp_path / "bad.h5")],
                             capture_output=True, text=True, timeout=240, env=env)
    except subprocess.TimeoutExpired as exc:
        last = (exc.stdout or b"").decode().strip().splitlines()[-1:]
        pytest.fail(f"the sweep hung after {last}")
    lines = run.stdout.strip().splitlines()
    assert run.returncode == 0, (f"the sweep died (returncode {run.returncode}) after "
                                 f"{lines[-1:]}: {run.stderr[-2000:]}")
    assert lines[-1] == "done"
    outcomes = [line.split() for line in lines[:-1]]
    assert len(outcomes) == 2 * size
    bad = [o for o in outcomes if o[2] != "error"]
    assert bad == []  # every change is found: none loads, not even to the same values


# --- the header --------------------------------------------------------------------------

def test_the_header_can_be_verified_without_anyarray_nn(tmp_path):
    """What docs/checkpoints.md tells other tools: three ASCII lines, then NUL bytes up to
    byte 512; the SHA-256 and the size are those of the rest of the file."""
    path, _ = full_checkpoint(tmp_path / "a.h5")
    data = path.read_bytes()
    header, body = data[:512], data[512:]
    lines = header.rstrip(b"\0").decode("ascii").splitlines()
    assert lines[0] == "anyarray_nn checkpoint"
    assert lines[1] == "sha256 " + hashlib.sha256(body).hexdigest()
    assert lines[2] == f"size {len(body)}"
    assert set(header[len("\n".join(lines)) + 1:]) == {0}
    with h5py.File(path, "r") as f:  # HDF5 tools skip the header: it is the user block
        assert f.userblock_size == 512 and f.attrs["format_version"] == 2


@pytest.mark.parametrize("damage, message", [
    (lambda d: d + b"\0", r"declares \d+ bytes after it, the file holds \d+"),
    (lambda d: d[:-1], r"declares \d+ bytes after it, the file holds \d+"),
    (lambda d: d[:600], r"declares \d+ bytes after it, the file holds 88"),
    (lambda d: d[:300], r"integrity header \(the first 512 bytes\) is damaged"),
    (lambda d: b"", r"starts with neither"),
    (lambda d: d.replace(b"size ", b"size 0", 1)[:512] + d[512:], r"header .* is damaged"),
    (lambda d: d[:100] + b"x" + d[101:], r"header .* is damaged"),  # in the digest's hex
    (lambda d: d[:511] + b"\1" + d[512:], r"header .* is damaged"),  # in the padding
    (lambda d: d[:512] + d[512:][::-1], r"damaged: the SHA-256 of its content"),
])
def test_a_cut_extended_or_forged_header_is_refused(tmp_path, damage, message):
    path, _ = full_checkpoint(tmp_path / "a.h5")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError, match=r"a\.h5: .*" + message):
        ann.load_model(path)


def test_paths_that_are_not_files_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(CheckpointError, match=r"pipe\.h5: not a regular file"):
        ann.load_model(fifo)
    with pytest.raises(CheckpointError, match=r"zero: not a regular file"):
        ck.read_checkpoint("/dev/zero")  # reading it would never end
    with pytest.raises(CheckpointError, match=r"tmp.*: not a regular file"):
        ck.read_checkpoint(tmp_path)


def test_a_format_2_file_without_its_header_is_refused(tmp_path):
    path, _ = full_checkpoint(tmp_path / "a.h5")
    stripped = tmp_path / "stripped.h5"
    stripped.write_bytes(path.read_bytes()[512:])  # still a valid HDF5 file
    with pytest.raises(CheckpointError, match=r"stripped\.h5: format_version 2 files begin "
                                              r"with an integrity header"):
        ann.load_model(stripped)


def test_an_edit_with_another_tool_is_found_and_reseal_accepts_it(tmp_path):
    path, model = full_checkpoint(tmp_path / "a.h5")
    with h5py.File(path, "a") as f:
        f["model/out/b"][...] = 7.0
    with pytest.raises(CheckpointError, match="changed after it was written"):
        ann.load_model(path)
    ck.reseal_checkpoint(path)
    assert np.all(host(ann.load_model(path)["out"].params["b"]) == 7.0)


def test_files_without_a_header_still_load_with_a_warning_and_reseal_upgrades_them(
        tmp_path, caplog):
    path, model = full_checkpoint(tmp_path / "new.h5")
    old = legacy_copy(path, tmp_path / "old.h5")
    with caplog.at_level(logging.WARNING, logger="anyarray_nn"):
        loaded = ann.load_model(old)
    assert "without an integrity header" in caplog.text and "old.h5" in caplog.text
    assert_same(params_of(loaded), params_of(model))
    assert ck.read_checkpoint(old)["format_version"] == 1
    ck.reseal_checkpoint(old)
    assert old.read_bytes().startswith(b"anyarray_nn checkpoint\n")
    assert ck.read_checkpoint(old)["format_version"] == 2
    assert_same(params_of(ann.load_model(old)), params_of(model))


@pytest.mark.parametrize("code, message", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)", "it died of SIGSEGV"),
    ("import time; time.sleep(60)", "did not finish reading it within 2 s"),
    ("raise SystemExit('HDF5 gave up')", "exit status 1: HDF5 gave up"),
])
def test_a_crash_or_a_hang_while_parsing_a_file_without_a_header_is_an_error(
        tmp_path, code, message):
    """Files without the header are parsed by a child process first: what becomes of the
    child's crash, hang or failure."""
    with pytest.raises(CheckpointError, match=r"x\.h5: a checkpoint without an integrity "
                                              r"header.*" + message):
        ck._parse_in_child(b"", tmp_path / "x.h5", code=code, timeout=2)


# One-byte changes (all bits flipped) that made HDF5 die of SIGSEGV (the first four) or hang
# (the fifth) when this small file without the header was parsed in-process, found by a
# full sweep of its 21,840 bytes; then a few others.
LEGACY_FAILURES = [849, 921, 1841, 21721, 2472]
LEGACY_DAMAGE = LEGACY_FAILURES + [100, 3000, 9000, 15000]


def test_damaged_files_without_a_header_never_crash_or_hang_the_loader(tmp_path, monkeypatch):
    path = legacy_copy(ck.save_checkpoint(tmp_path / "new.h5", tiny()), tmp_path / "old.h5")
    data = path.read_bytes()
    real = ck._parse_in_child
    monkeypatch.setattr(ck, "_parse_in_child",
                        lambda data, path: real(data, path, timeout=8))
    outcomes = {}
    for i in LEGACY_DAMAGE:
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        path.write_bytes(damaged)
        try:
            ann.load_model(path)
            outcomes[i] = "loaded"
        except CheckpointError:
            outcomes[i] = "error"
    # The crashes are errors here, and this process is alive. (Without a digest, other
    # changes may load, even with other values: see docs/checkpoints.md.)
    assert all(outcomes[i] == "error" for i in LEGACY_FAILURES), str(outcomes)


@pytest.mark.parametrize("value, message", [
    (1.7, r"format_version: expected an integer, got 1\.7"),
    (np.array([1, 2]), r"format_version: expected an integer, got array"),
    (True, r"format_version: expected an integer, got .*True"),
    ("1", r"format_version: expected an integer, got '1'"),
    (0, r"format_version 0 is not supported"),
    (None, r"missing the attribute format_version"),
])
@pytest.mark.parametrize("sealed", [True, False])
def test_format_version_is_read_strictly(tmp_path, value, message, sealed):
    path, _ = full_checkpoint(tmp_path / "new.h5")
    if not sealed:
        path = legacy_copy(path, tmp_path / "old.h5")
    with (edited_checkpoint(path) if sealed else h5py.File(path, "a")) as f:
        if value is None:
            del f.attrs["format_version"]
        else:
            f.attrs["format_version"] = value
    with pytest.raises(CheckpointError, match=message):
        ann.load_model(path)


def test_a_config_declaring_a_huge_layer_allocates_nothing(tmp_path):
    """A file of a few KB whose config declares a 10^6 x 10^6 layer (4 TB): the config is
    compared with the stored arrays on memoryless stand-ins first."""
    path, _ = full_checkpoint(tmp_path / "a.h5")
    for size in (10**6, 10**30):
        with edited_checkpoint(path) as f:
            config = json.loads(f["model"].attrs["config"])
            config["layers"][0]["config"].update(in_features=size, out_features=size)
            f["model"].attrs["config"] = json.dumps(config)
        tracemalloc.start()
        try:
            with pytest.raises(CheckpointError, match=r"a\.h5: model/config"):
                ann.load_model(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 20e6


def test_a_config_that_does_not_match_its_arrays_names_them(tmp_path):
    path, _ = full_checkpoint(tmp_path / "a.h5")
    with edited_checkpoint(path) as f:
        config = json.loads(f["model"].attrs["config"])
        config["layers"][0]["config"]["out_features"] = 5
        f["model"].attrs["config"] = json.dumps(config)
    with pytest.raises(CheckpointError, match=r"model/config does not match the stored arrays: "
                                              r".*fc\.W: the model has shape \(5, 3\), the "
                                              r"file \(4, 3\)"):
        ann.load_model(path)


# --- writes that cannot half-happen ----------------------------------------------------

def test_bad_paths_are_clear_errors_and_change_nothing(tmp_path):
    model = tiny()
    with pytest.raises(ValueError, match="expected a file path, got ''"):
        ck.save_checkpoint("", model)
    (tmp_path / "folder.h5").mkdir()
    with pytest.raises(IsADirectoryError, match=r"folder\.h5: is a folder"):
        ck.save_checkpoint(tmp_path / "folder.h5", model)
    os.mkfifo(tmp_path / "pipe.h5")
    with pytest.raises(FileExistsError, match=r"pipe\.h5: exists and is not a regular file"):
        ck.save_checkpoint(tmp_path / "pipe.h5", model)
    assert stat.S_ISFIFO((tmp_path / "pipe.h5").stat().st_mode)
    (tmp_path / "pipe.h5").unlink()
    (tmp_path / "file").write_text("mine")
    with pytest.raises(OSError, match=r"file/sub/a\.h5: cannot create its folder"):
        ck.save_checkpoint(tmp_path / "file" / "sub" / "a.h5", model)
    with pytest.raises(OSError, match=r"file/a\.h5: cannot create its folder"):
        ck.save_checkpoint(tmp_path / "file" / "a.h5", model)
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.h5"]


def test_a_write_error_midway_keeps_the_previous_checkpoint_and_leaves_nothing(
        tmp_path, monkeypatch):
    """ENOSPC after part of the bytes are written, as on a full disk."""
    path, model = full_checkpoint(tmp_path / "a.h5")
    before = path.read_bytes()
    real_write = os.write
    calls = []

    def write_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[:100])  # a short write first

    monkeypatch.setattr(_atomic.os, "write", write_then_fail)
    with pytest.raises(OSError, match=r"a\.h5: cannot write it \(No space left on device\); "
                                      r"the previous file is unchanged") as info:
        ck.save_checkpoint(path, tiny(5))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]
    assert_same(params_of(ann.load_model(path)), params_of(model))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs, where this machine lets the tests mount one (root on Linux)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_nothing(small_disk):
    path, model = full_checkpoint(small_disk / "a.h5")
    big = ann.Sequential([Dense(1000, 1000, name="fc", rng=0)])  # 4 MB on a 1 MB disk
    with pytest.raises(OSError, match=r"a\.h5: cannot write it \(No space left on device\)"):
        ck.save_checkpoint(small_disk / "a.h5", big)
    with pytest.raises(OSError, match=r"b\.h5: cannot write it .*nothing was written"):
        ck.save_checkpoint(small_disk / "b.h5", big)
    assert sorted(p.name for p in small_disk.iterdir()) == ["a.h5"]
    assert_same(params_of(ann.load_model(path)), params_of(model))
    ck.save_checkpoint(small_disk / "a.h5", tiny(3))  # space came back with the temporaries
    assert_same(params_of(ann.load_model(path)), params_of(tiny(3)))


def test_a_read_only_folder_is_a_clear_error(small_disk):
    path, model = full_checkpoint(small_disk / "a.h5")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with pytest.raises(OSError, match=r"a\.h5: cannot write it \(Read-only file system\); the "
                                      r"previous file is unchanged"):
        ck.save_checkpoint(path, tiny(4))
    assert_same(params_of(ann.load_model(path)), params_of(model))


KILLED_WRITE = r"""
import os, sys, time
import anyarray_nn as ann
from anyarray_nn import _atomic, checkpoint as ck

real_write = os.write
def stalled_write(fd, data):
    written = real_write(fd, bytes(data)[:1000])  # part of the file, then the kill
    print("writing", flush=True)
    time.sleep(60)
    return written
_atomic.os.write = stalled_write
model = ann.Sequential([ann.layers.Dense(3, 4, name="fc", rng=9), ann.layers.ReLU(),
                        ann.layers.Dense(4, 2, name="out", rng=10)])
ck.save_checkpoint(sys.argv[1], model)
"""


def test_a_save_killed_while_writing_keeps_the_previous_one_and_the_next_save_cleans_up(
        tmp_path):
    path, model = full_checkpoint(tmp_path / "a.h5")
    script = tmp_path / "killed.py"
    script.write_text(KILLED_WRITE)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".ckpt-tmp")]
    assert len(left) == 1 and left[0].read_bytes().startswith(b"anyarray_nn checkpoint\n")
    assert_same(params_of(ann.load_model(path)), params_of(model))

    # Beside it, files that look alike but are not killed saves' temporaries.
    (tmp_path / ".notes.0123abcd.ckpt-tmp").write_bytes(b"the user's own bytes")
    (tmp_path / ".a.h5.0123abcd.tmp").write_bytes(b"anyarray_nn checkpoint\n")  # a download's
    (tmp_path / ".link.89abcdef.ckpt-tmp").symlink_to(left[0])
    live = tmp_path / ".b.h5.fedcba98.ckpt-tmp"  # a save in progress in another process
    live.write_bytes(b"anyarray_nn checkpoint\n")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        ck.save_checkpoint(tmp_path / "other.h5", tiny(2))
    assert not left[0].exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".a.h5.0123abcd.tmp", ".b.h5.fedcba98.ckpt-tmp", ".link.89abcdef.ckpt-tmp",
         ".notes.0123abcd.ckpt-tmp", "a.h5", "killed.py", "other.h5"])
    assert (tmp_path / ".notes.0123abcd.ckpt-tmp").read_bytes() == b"the user's own bytes"


REPEATED_SAVES = r"""
import sys
import anyarray_nn as ann
from anyarray_nn import checkpoint as ck
models = [ann.Sequential([ann.layers.Dense(300, 300, name="fc", rng=seed)]) for seed in (1, 2)]
print("ready", flush=True)
i = 0
while True:
    ck.save_checkpoint(sys.argv[1], models[i % 2])
    i += 1
"""


def test_saves_killed_at_random_moments_always_leave_a_whole_checkpoint(tmp_path):
    path = ck.save_checkpoint(tmp_path / "a.h5", ann.Sequential([Dense(300, 300, name="fc",
                                                                       rng=1)]))
    expected = [params_of(ann.Sequential([Dense(300, 300, name="fc", rng=s)])) for s in (1, 2)]
    script = tmp_path / "saves.py"
    script.write_text(REPEATED_SAVES)
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), str(path)],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        loaded = params_of(ann.load_model(path))
        assert any(all(np.array_equal(loaded[k], e[k]) for k in e) for e in expected)
    ck.save_checkpoint(tmp_path / "b.h5", tiny())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".ckpt-tmp")]


# --- pruning -----------------------------------------------------------------------------

def fit_with_saver(folder, saver_args, seed=0, history=None):
    """One epoch of 5 steps, saving after each; returns the history."""
    x, y = ann.data.make_circles(100, seed=0)
    x = np.concatenate([x, x[:, :1]], axis=1)
    loader = DataLoader(x, y, 20, seed=seed)
    model = tiny(seed)
    saver = CheckpointEvery(folder, 1, per="iteration", loader=loader, **saver_args)
    return train.fit(model, ann.losses.SoftmaxCrossEntropy(), ann.optim.SGD(model, lr=0.1),
                     loader, epochs=1, callbacks=[saver], progress=False, history=history)


def test_pruning_touches_only_what_it_wrote(tmp_path):
    user_checkpoint = ck.save_checkpoint(tmp_path / "ckpt-best.h5", tiny(7))
    user_bytes = user_checkpoint.read_bytes()
    (tmp_path / "ckpt-000000001.h5").mkdir()  # a folder with a matching name
    (tmp_path / "ckpt-000000001.h5" / "inside.txt").write_text("keep")
    (tmp_path / "ckpt-notes.h5").write_text("the user's notes")
    (tmp_path / "ckpt-000000000.h5").symlink_to(user_checkpoint)
    with pytest.raises(CheckpointError, match=r"ckpt-000000001\.h5: exists and was not written "
                                              r"by CheckpointEvery"):
        fit_with_saver(tmp_path, {"keep": 2})
    os.rename(tmp_path / "ckpt-000000001.h5", tmp_path / "mine")
    fit_with_saver(tmp_path, {"keep": 2})  # steps 1..5
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoints.json", "ckpt-000000000.h5", "ckpt-000000004.h5",
                     "ckpt-000000005.h5", "ckpt-best.h5", "ckpt-notes.h5", "mine"]
    assert user_checkpoint.read_bytes() == user_bytes
    assert (tmp_path / "ckpt-notes.h5").read_text() == "the user's notes"
    assert (tmp_path / "mine" / "inside.txt").read_text() == "keep"
    assert latest_checkpoint(tmp_path).name == "ckpt-000000005.h5"
    record = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [e["name"] for e in record["files"]] == ["ckpt-000000004.h5", "ckpt-000000005.h5"]


def test_a_resumed_run_prunes_the_earlier_runs_files_but_not_a_changed_one(tmp_path, caplog):
    history = fit_with_saver(tmp_path, {"keep": 3})  # steps 1..5: 3, 4, 5 kept
    changed = tmp_path / "ckpt-000000003.h5"
    ck.save_checkpoint(changed, tiny(8))  # the user replaced it with a checkpoint of theirs
    with caplog.at_level(logging.WARNING, logger="anyarray_nn"):  # resumed: steps 6..10
        fit_with_saver(tmp_path, {"keep": 3}, seed=1, history=history)
    assert "ckpt-000000003.h5: changed since CheckpointEvery wrote it" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoints.json", "ckpt-000000003.h5", "ckpt-000000008.h5", "ckpt-000000009.h5",
        "ckpt-000000010.h5"]
    assert_same(params_of(ann.load_model(changed)), params_of(tiny(8)))
    # A new run counting from step 1 again stops at the user's file instead of replacing it.
    with pytest.raises(CheckpointError, match=r"ckpt-000000003\.h5: exists and was not written"):
        fit_with_saver(tmp_path, {"keep": 3})
    assert_same(params_of(ann.load_model(changed)), params_of(tiny(8)))


def test_a_foreign_file_at_the_next_name_or_at_the_record_stops_without_overwriting(tmp_path):
    (tmp_path / "ckpt-000000003.h5").write_bytes(b"someone else's")
    with pytest.raises(CheckpointError, match=r"ckpt-000000003\.h5: exists and was not written "
                                              r".*Nothing was overwritten"):
        fit_with_saver(tmp_path, {"keep": 1})
    assert (tmp_path / "ckpt-000000003.h5").read_bytes() == b"someone else's"
    assert latest_checkpoint(tmp_path).name == "ckpt-000000002.h5"

    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints.json").write_text('{"my": "settings"}')
    with pytest.raises(CheckpointError, match=r"checkpoints\.json: not a record of the "
                                              r"checkpoints CheckpointEvery wrote"):
        fit_with_saver(other, {"keep": 1})
    assert (other / "checkpoints.json").read_text() == '{"my": "settings"}'
    assert sorted(p.name for p in other.iterdir()) == ["checkpoints.json"]


@pytest.mark.parametrize("keep", [0, -1, 1.5, "3", None])
def test_keep_must_be_a_positive_integer(tmp_path, keep):
    with pytest.raises(ValueError, match="expected keep >= 1"):
        CheckpointEvery(tmp_path, keep=keep)
