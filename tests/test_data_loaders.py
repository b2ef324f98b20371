"""The MNIST and CIFAR-10 loaders, the file helpers and the download helper.

Most tests write small files in the real formats (IDX, CIFAR binary records, CIFAR Python
pickles, tarballs, compressed with gzip or xz) into ``tmp_path`` and read them back. The
real-data tests at the end run only when ``ANYARRAY_NN_DATA`` points at the real files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import pathlib
import pickle
import struct
import subprocess
import tarfile
import time

import numpy as np
import pytest

from helpers import REAL_DATA_REASON, real_data_root

import anyarray_nn.data.download as download_module
from anyarray_nn.data import CIFAR10_CLASSES, DataFormatError, load_cifar10, load_mnist
from anyarray_nn.data._files import ENV_VAR, data_root, find_first, read_at_most
from anyarray_nn.data.download import download, verify

MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


# --------------------------------------------------------------------------- writing test files

def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``path``, compressed as its suffix says (.gz, .xz or none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    compress = {".gz": gzip.compress, ".xz": lzma.compress}.get(path.suffix, bytes)
    path.write_bytes(compress(data))
    return path


def idx_header(magic: int, *shape: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in (magic, *shape))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return idx_header(magic, *array.shape) + array.astype(np.uint8).tobytes()


def make_mnist(root: pathlib.Path, folder: str = "mnist", suffix: str = ".gz",
               counts=(7, 5), seed: int = 0) -> dict:
    """Write both MNIST splits under root/folder; return {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, n in zip(("train", "test"), counts):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        image_name, label_name = MNIST_NAMES[split]
        write(root / folder / (image_name + suffix), idx_bytes(images, 0x803))
        write(root / folder / (label_name + suffix), idx_bytes(labels, 0x801))
        written[split] = (images, labels)
    return written


def make_cifar(seed: int = 0) -> dict:
    """Six small batches {name: (images (n, 3, 32, 32), labels (n,))}, n differing per batch."""
    rng = np.random.default_rng(seed)
    names = CIFAR_BATCHES["train"] + CIFAR_BATCHES["test"]
    return {name: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                   rng.integers(0, 10, n, dtype=np.uint8))
            for n, name in enumerate(names, start=2)}


def binary_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records of 1 label byte + 3072 pixel bytes, as in cifar-10-batches-bin."""
    return np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1).tobytes()


def python_batch(images: np.ndarray, labels: np.ndarray, protocol: int = 2,
                 byte_keys: bool = True) -> bytes:
    """A pickled dict like those in cifar-10-batches-py."""
    key = (lambda k: k.encode()) if byte_keys else (lambda k: k)
    batch = {key("batch_label"): b"synthetic", key("data"): images.reshape(len(images), -1),
             key("labels"): [int(v) for v in labels],
             key("filenames"): [b"img_%d.png" % i for i in range(len(images))]}
    return pickle.dumps(batch, protocol=protocol)


def python2_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch pickled the way the official files were: by Python 2 and NumPy 1.x, with
    byte strings (SHORT_BINSTRING) for keys, dtype codes and the pixel data."""
    def string(b):
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (
            b"T" + struct.pack("<I", len(b)) + b)
    n, pixels = len(images), images.reshape(len(images), -1).tobytes()
    dtype = (b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R"      # dtype("u1", 0, 1)
             + b"(K\x03" + string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
             + b"K\x00\x85" + string(b"b") + b"\x87R"                  # _reconstruct(...)
             + b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", 3072) + b"\x86"
             + dtype + b"\x89" + string(pixels) + b"tb")               # __setstate__
    label_list = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    return (b"\x80\x02}(" + string(b"batch_label") + string(b"testing batch 1 of 1")
            + string(b"labels") + label_list + string(b"data") + array + b"u.")


def write_tar(tarball: pathlib.Path, members: dict[str, bytes]) -> pathlib.Path:
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return tarball


def expected(batches: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = CIFAR_BATCHES[split]
    return (np.concatenate([batches[n][0] for n in names]),
            np.concatenate([batches[n][1] for n in names]))


def assert_same(loaded, images, labels, channels):
    x, y = loaded
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert x.shape == (len(labels), channels, *images.shape[-2:]) and y.shape == (len(labels),)
    assert x.flags.c_contiguous and x.flags.writeable
    np.testing.assert_array_equal(x.reshape(images.shape), images)
    np.testing.assert_array_equal(y, labels)


# --------------------------------------------------------------------------- file helpers

def test_data_root_argument_beats_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "/somewhere/else")
    assert data_root(tmp_path) == tmp_path
    assert data_root() == pathlib.Path("/somewhere/else")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The user's cache folder, made a temporary one (platformdirs' answer)."""
    import platformdirs
    folder = tmp_path / "cache"
    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda name: str(folder / name))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return folder / "anyarray_nn" / "data"


@pytest.mark.parametrize("value", [None, ""])
def test_without_a_folder_the_data_lives_in_the_user_cache(cache, monkeypatch, caplog, value):
    """Neither root nor ANYARRAY_NN_DATA: the cache folder platformdirs names, logged; a
    loader that finds nothing there says download=True fetches the files there."""
    if value is not None:
        monkeypatch.setenv(ENV_VAR, value)
    with caplog.at_level("INFO", logger="anyarray_nn"):
        assert data_root() == cache
    assert any(f"data folder: {cache} (the default cache" in r.message for r in caplog.records)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist()
    message = str(info.value)
    assert f"the data folder {cache}, the default cache, does not exist" in message
    assert "download=True" in message and ENV_VAR in message and "root=DIR" in message


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_read_at_most_decompresses_by_suffix(tmp_path, suffix):
    data = bytes(range(256)) * 40
    assert read_at_most(write(tmp_path / f"file.bin{suffix}", data), len(data), "") == data
    with pytest.raises(DataFormatError, match=r"expected at most 10,239 bytes \(a test\)"):
        read_at_most(tmp_path / f"file.bin{suffix}", len(data) - 1, "a test")


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_read_at_most_truncated_stream(tmp_path, suffix):
    path = write(tmp_path / f"file.bin{suffix}", os.urandom(5000))
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFormatError, match=str(path)):
        read_at_most(path, 10_000, "")


def test_read_at_most_bad_crc(tmp_path):
    path = write(tmp_path / "file.bin.gz", b"hello" * 100)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF                                  # the gzip trailer: CRC32, then size
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="CRC"):
        read_at_most(path, 10_000, "")


def test_read_at_most_not_compressed_at_all(tmp_path):
    path = tmp_path / "file.bin.xz"
    path.write_bytes(b"plain text, not xz")
    with pytest.raises(DataFormatError, match=r"file\.bin\.xz.*xz stream"):
        read_at_most(path, 10_000, "")


def test_find_first_prefers_earlier_candidates_and_lists_all(tmp_path):
    write(tmp_path / "b" / "f.gz", b"x")
    write(tmp_path / "c" / "f", b"x")
    assert find_first(tmp_path, ["a/f", "b/f", "c/f"], what="f") == tmp_path / "b" / "f.gz"
    with pytest.raises(FileNotFoundError) as info:
        find_first(tmp_path, ["a/g", "b/g"], what="the g file", hint="put g in a/")
    message = str(info.value)
    for rel in ["a/g", "a/g.gz", "a/g.xz", "b/g", "b/g.gz", "b/g.xz"]:
        assert str(tmp_path / rel) in message
    assert "the g file" in message and "put g in a/" in message


# --------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
@pytest.mark.parametrize("folder", ["mnist", ".", "MNIST/raw"])
def test_mnist_round_trip(tmp_path, folder, suffix):
    written = make_mnist(tmp_path, folder, suffix)
    for split in ("train", "test"):
        assert_same(load_mnist(tmp_path, split), *written[split], channels=1)


def test_mnist_default_split_is_train_and_root_from_environment(tmp_path, monkeypatch):
    written = make_mnist(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert_same(load_mnist(), *written["train"], channels=1)
    assert_same(load_mnist(split="test"), *written["test"], channels=1)


def test_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="'train', 'test'.*'validation'"):
        load_mnist(tmp_path, "validation")


def test_mnist_missing_file_lists_places(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_mnist(tmp_path, "train")[0].shape == (7, 1, 28, 28)
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, "test")
    message = str(info.value)
    for folder in ("mnist", "MNIST/raw"):
        for suffix in ("", ".gz", ".xz"):
            assert str(tmp_path / folder / f"t10k-labels-idx1-ubyte{suffix}") in message
    assert str(tmp_path / "t10k-labels-idx1-ubyte.gz") in message
    assert "train-images-idx3-ubyte.gz" in message          # the hint lists every file


def test_mnist_missing_root_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("cut", [1, 784, 5000])
def test_mnist_truncated_idx(tmp_path, cut):
    make_mnist(tmp_path, suffix="")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(DataFormatError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert str(len(data)) in message and str(len(data) - cut) in message


def test_mnist_idx_with_extra_bytes(tmp_path):
    make_mnist(tmp_path, suffix="")
    path = tmp_path / "mnist" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(DataFormatError, match="extra bytes"):
        load_mnist(tmp_path)


def test_mnist_shorter_than_header(tmp_path):
    write(tmp_path / "mnist" / "train-images-idx3-ubyte", b"\0\0\x08\x03\0")
    write(tmp_path / "mnist" / "train-labels-idx1-ubyte", idx_bytes(np.zeros(1), 0x801))
    with pytest.raises(DataFormatError, match="header of 16 bytes.*only 5 bytes"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip(tmp_path):
    make_mnist(tmp_path, suffix=".gz")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataFormatError, match=str(path)):
        load_mnist(tmp_path)


def test_mnist_wrong_magic_swapped_files(tmp_path):
    make_mnist(tmp_path, suffix="")
    folder = tmp_path / "mnist"
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    images_data, labels_data = images.read_bytes(), labels.read_bytes()
    images.write_bytes(labels_data)
    labels.write_bytes(images_data)
    with pytest.raises(DataFormatError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(images) in message and "0x00000803" in message and "0x00000801" in message
    assert "swapped" in message


@pytest.mark.parametrize("image_shape,labels,match", [
    ((2, 27, 28), [0, 0], "expected 28x28 images.*27x28"),
    ((3, 28, 28), [0, 0, 0, 0], "3 images but .* 4 labels"),
    ((3, 28, 28), [1, 2, 10], r"train-labels-idx1-ubyte.*0\.\.9.*label 2 is 10"),
])
def test_mnist_bad_contents(tmp_path, image_shape, labels, match):
    write(tmp_path / "mnist" / "train-images-idx3-ubyte", idx_bytes(np.zeros(image_shape), 0x803))
    write(tmp_path / "mnist" / "train-labels-idx1-ubyte", idx_bytes(np.array(labels), 0x801))
    with pytest.raises(DataFormatError, match=match):
        load_mnist(tmp_path)


# --------------------------------------------------------------------------- CIFAR-10, binary

@pytest.mark.parametrize("folder", ["cifar-10/cifar-10-batches-bin", "cifar-10-batches-bin", "."])
@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_cifar_binary_round_trip(tmp_path, folder, suffix):
    batches = make_cifar()
    for name, (images, labels) in batches.items():
        write(tmp_path / folder / f"{name}.bin{suffix}", binary_batch(images, labels))
    for split in ("train", "test"):
        assert_same(load_cifar10(tmp_path, split), *expected(batches, split), channels=3)


def test_cifar_channels_are_red_green_blue(tmp_path):
    # One record whose red plane is 1, green 2, blue 3: channel c must hold c + 1.
    record = bytes([7]) + bytes([1]) * 1024 + bytes([2]) * 1024 + bytes([3]) * 1024
    write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", record)
    images, labels = load_cifar10(tmp_path, "test")
    assert labels.tolist() == [7] and CIFAR10_CLASSES[7] == "horse"
    assert [int(images[0, c].min()) for c in range(3)] == [1, 2, 3]
    assert [int(images[0, c].max()) for c in range(3)] == [1, 2, 3]


def test_cifar_classes():
    assert CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                               "horse", "ship", "truck")


def test_cifar_binary_tarball(tmp_path):
    batches = make_cifar()
    write_tar(tmp_path / "cifar-10" / "cifar-10-binary.tar.gz",
              {"cifar-10-batches-bin/batches.meta.txt": b"\n".join(
                  c.encode() for c in CIFAR10_CLASSES),
               **{f"cifar-10-batches-bin/{name}.bin": binary_batch(*batch)
                  for name, batch in reversed(batches.items())}})   # order in the tar: any
    for split in ("train", "test"):
        assert_same(load_cifar10(tmp_path, split), *expected(batches, split), channels=3)


def test_cifar_partial_record(tmp_path):
    images, labels = make_cifar()["test_batch"]
    path = write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin",
                 binary_batch(images, labels)[:-10])
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    actual = len(labels) * 3073 - 10
    assert str(path) in message and "3073-byte records" in message
    assert "30,730,000" in message and f"{actual:,} bytes" in message


def test_cifar_empty_batch(tmp_path):
    write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", b"")
    with pytest.raises(DataFormatError, match="0 bytes"):
        load_cifar10(tmp_path, "test")


def test_cifar_binary_label_out_of_range(tmp_path):
    images, labels = make_cifar()["test_batch"]
    labels = labels.copy()
    labels[1] = 10
    path = write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin.gz",
                 binary_batch(images, labels))
    with pytest.raises(DataFormatError, match=f"{path}.*0..9.*label 1 is 10"):
        load_cifar10(tmp_path, "test")


def test_cifar_truncated_xz(tmp_path):
    path = write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin.xz",
                 binary_batch(*make_cifar()["test_batch"]))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataFormatError, match=str(path)):
        load_cifar10(tmp_path, "test")


def test_cifar_truncated_tarball(tmp_path):
    batches = make_cifar()
    tarball = write_tar(tmp_path / "cifar-10-binary.tar.gz",
                        {f"cifar-10-batches-bin/{n}.bin": binary_batch(*b)
                         for n, b in batches.items()})
    tarball.write_bytes(tarball.read_bytes()[:len(tarball.read_bytes()) // 2])
    with pytest.raises(DataFormatError, match=f"{tarball}.*damaged or truncated"):
        load_cifar10(tmp_path, "test")


def test_cifar_tarball_missing_member(tmp_path):
    tarball = write_tar(tmp_path / "cifar-10-binary.tar.gz",
                        {"cifar-10-batches-bin/data_batch_1.bin": binary_batch(
                            *make_cifar()["data_batch_1"])})
    with pytest.raises(DataFormatError, match="cifar-10-batches-bin/test_batch.bin"):
        load_cifar10(tmp_path, "test")
    assert tarball.exists()


def test_cifar_tarball_never_follows_links(tmp_path):
    secret = write(tmp_path / "secret.bin", binary_batch(*make_cifar()["test_batch"]))
    tarball = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.type, info.linkname = tarfile.SYMTYPE, str(secret)
        archive.addfile(info)
    with pytest.raises(DataFormatError, match="link"):
        load_cifar10(tmp_path, "test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz",
                                                          "secret.bin"]   # nothing extracted


def test_cifar_missing_lists_places(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path, "train")
    message = str(info.value)
    for place in ["cifar-10/cifar-10-batches-bin", "cifar-10-batches-bin",
                  "cifar-10-binary.tar.gz", "cifar-10/cifar-10-binary.tar.gz",
                  "cifar-10/cifar-10-batches-py", "cifar-10-batches-py",
                  "cifar-10-python.tar.gz"]:
        assert str(tmp_path / place) in message
    assert "data_batch_1.bin" in message and "test_batch.bin" in message


def test_cifar_incomplete_folder_names_missing_batches(tmp_path):
    batches = make_cifar()
    for name in ("data_batch_1", "data_batch_2", "test_batch"):
        write(tmp_path / "cifar-10-batches-bin" / f"{name}.bin", binary_batch(*batches[name]))
    assert len(load_cifar10(tmp_path, "test")[1]) == len(batches["test_batch"][1])
    with pytest.raises(FileNotFoundError, match="missing: data_batch_3.bin, data_batch_4.bin, "
                                                "data_batch_5.bin"):
        load_cifar10(tmp_path, "train")


def test_cifar_bad_split(tmp_path):
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_cifar10(tmp_path, "valid")


# --------------------------------------------------------------------------- CIFAR-10, Python

@pytest.mark.parametrize("protocol,byte_keys", [(2, True), (2, False), (4, True), (5, False)])
def test_cifar_python_round_trip(tmp_path, protocol, byte_keys):
    batches = make_cifar()
    for name, batch in batches.items():
        write(tmp_path / "cifar-10-batches-py" / name,
              python_batch(*batch, protocol=protocol, byte_keys=byte_keys))
    for split in ("train", "test"):
        assert_same(load_cifar10(tmp_path, split), *expected(batches, split), channels=3)


def test_cifar_python_numpy1_module_names(tmp_path):
    # NumPy 1.x (and the official files) name numpy.core.multiarray, not numpy._core.
    images, labels = make_cifar()["test_batch"]
    data = python_batch(images, labels, protocol=2)
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    write(tmp_path / "cifar-10" / "cifar-10-batches-py" / "test_batch", data)
    assert_same(load_cifar10(tmp_path, "test"), images, labels, channels=3)


def test_cifar_python2_pickle_like_the_official_files(tmp_path):
    batches = make_cifar()
    data = python2_batch(*batches["test_batch"])
    assert b"_codecs" not in data and b"numpy.core.multiarray" in data
    write_tar(tmp_path / "cifar-10" / "cifar-10-python.tar.gz",
              {"cifar-10-batches-py/test_batch": data})
    assert_same(load_cifar10(tmp_path, "test"), *batches["test_batch"], channels=3)


def test_cifar_python_tarball(tmp_path):
    batches = make_cifar()
    write_tar(tmp_path / "cifar-10-python.tar.gz",
              {f"cifar-10-batches-py/{name}": python_batch(*batch)
               for name, batch in batches.items()})
    for split in ("train", "test"):
        assert_same(load_cifar10(tmp_path, split), *expected(batches, split), channels=3)


def test_cifar_binary_preferred_over_python(tmp_path):
    binary, python = make_cifar(seed=1)["test_batch"], make_cifar(seed=2)["test_batch"]
    write(tmp_path / "cifar-10-batches-py" / "test_batch", python_batch(*python))
    assert_same(load_cifar10(tmp_path, "test"), *python, channels=3)
    write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin", binary_batch(*binary))
    assert_same(load_cifar10(tmp_path, "test"), *binary, channels=3)


class Exploit:
    """Pickles as 'call func(*args)': what a malicious file would contain."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploits(target: pathlib.Path):
    return {"system": (os.system, (f"echo pwned > {target}",)),
            "eval": (eval, (f"open({str(target)!r}, 'w').write('pwned')",)),
            "Popen": (subprocess.Popen, (["sh", "-c", f"echo pwned > {target}"],))}


def test_exploit_runs_with_plain_pickle(tmp_path):
    # The control for the next test: unpickled the ordinary way, the file does run a command.
    target = tmp_path / "pwned.txt"
    pickle.loads(pickle.dumps(Exploit(*_exploits(target)["system"]), protocol=2))
    assert target.read_text().strip() == "pwned"


@pytest.mark.parametrize("kind", ["system", "eval", "Popen"])
@pytest.mark.parametrize("where", ["data", "labels"])
def test_cifar_malicious_pickle_is_refused_without_running(tmp_path, kind, where):
    target = tmp_path / "pwned.txt"
    func, args = _exploits(target)[kind]
    images, labels = make_cifar()["test_batch"]
    batch = {b"data": images.reshape(len(images), -1), b"labels": [int(v) for v in labels]}
    if where == "data":
        batch[b"data"] = Exploit(func, args)
    else:
        batch[b"labels"].append(Exploit(func, args))
    path = write(tmp_path / "cifar-10-batches-py" / "test_batch",
                 pickle.dumps(batch, protocol=2))
    assert not target.exists()
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    assert str(path) in message and "refused" in message and kind in message
    assert not target.exists()          # nothing ran


def test_cifar_malicious_pickle_in_tarball(tmp_path):
    target = tmp_path / "pwned.txt"
    write_tar(tmp_path / "cifar-10-python.tar.gz",
              {"cifar-10-batches-py/test_batch": pickle.dumps(
                  Exploit(*_exploits(target)["system"]), protocol=2)})
    with pytest.raises(DataFormatError, match=r"member cifar-10-batches-py/test_batch.*system"):
        load_cifar10(tmp_path, "test")
    assert not target.exists()


def test_cifar_python_codecs_only_latin1(tmp_path):
    # _codecs.encode is allowed for the latin-1 bytes of protocol-2 pickles, nothing else.
    data = python_batch(*make_cifar()["test_batch"], protocol=2)
    assert data.count(b"latin1") > 0
    write(tmp_path / "cifar-10-batches-py" / "test_batch",
          data.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00rot_13"))
    with pytest.raises(DataFormatError, match="rot_13"):
        load_cifar10(tmp_path, "test")


def test_cifar_python_truncated(tmp_path):
    data = python_batch(*make_cifar()["test_batch"])
    path = write(tmp_path / "cifar-10-batches-py" / "test_batch", data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=f"{path}.*truncated or corrupt"):
        load_cifar10(tmp_path, "test")


@pytest.mark.parametrize("change,match", [
    (lambda b: b.update({b"data": b[b"data"][:, :100]}), r"uint8 array of shape \(N, 3072\)"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.float32)}), "found float32 array"),
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "list of 7 integers"),
    (lambda b: b.update({b"labels": [0.5] * 7}), "list of 7 integers"),
    (lambda b: b[b"labels"].__setitem__(3, 12), "label 3 is 12"),
    (lambda b: b.pop(b"data"), "found no such key"),
])
def test_cifar_python_bad_contents(tmp_path, change, match):
    images, labels = make_cifar()["test_batch"]
    batch = {b"data": images.reshape(len(images), -1), b"labels": [int(v) for v in labels]}
    change(batch)
    path = write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps(batch, 2))
    with pytest.raises(DataFormatError, match=match) as info:
        load_cifar10(tmp_path, "test")
    assert str(path) in str(info.value)


def test_cifar_python_not_a_dict(tmp_path):
    write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps([1, 2, 3], 2))
    with pytest.raises(DataFormatError, match="expected a pickled dict, found list"):
        load_cifar10(tmp_path, "test")


# --------------------------------------------------------------------------- download, verify

MNIST_GZ = [name + ".gz" for pair in MNIST_NAMES.values() for name in pair]


@pytest.mark.parametrize("name,files,folder", [
    ("mnist", MNIST_GZ, "mnist"), ("cifar10", ["cifar-10-binary.tar.gz"], "cifar-10")])
def test_download_offline_fails_fast_with_help(tmp_path, monkeypatch, name, files, folder):
    # Port 9 (discard) on the loopback interface: nothing listens, the connection is refused.
    monkeypatch.setitem(download_module.MIRRORS, name, ["http://127.0.0.1:9/"])
    monkeypatch.delenv(ENV_VAR, raising=False)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as info:
        download(name, tmp_path, timeout=3)
    assert time.perf_counter() - start < 3
    message = str(info.value)
    assert "http://127.0.0.1:9/" in message and ENV_VAR in message
    assert str(tmp_path / folder) in message
    for file in files:
        assert file in message
    assert list((tmp_path / folder).iterdir()) == []   # no temporary file left behind


def test_download_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="'mnist', 'cifar10'"):
        download("imagenet", tmp_path)


def _serve(tmp_path, monkeypatch, contents: dict[str, bytes], checksums: dict[str, str]):
    """Mirror: a dead server first, then a local folder through file:// URLs."""
    served = tmp_path / "server"
    served.mkdir()
    for file, data in contents.items():
        (served / file).write_bytes(data)
    monkeypatch.setitem(download_module.MIRRORS, "mnist",
                        ["http://127.0.0.1:9/", served.as_uri() + "/"])
    monkeypatch.setitem(download_module.DATASETS, "mnist", download_module.Remote(
        "mnist", {file: ("sha256", digest) for file, digest in checksums.items()}))


def test_download_verifies_and_renames(tmp_path, monkeypatch):
    data = {"a.gz": b"first file", "b.gz": b"second file"}
    _serve(tmp_path, monkeypatch, data,
           {file: hashlib.sha256(content).hexdigest() for file, content in data.items()})
    root = tmp_path / "data"
    paths = download("mnist", root, timeout=3)
    assert paths == [root / "mnist" / "a.gz", root / "mnist" / "b.gz"]
    assert [p.read_bytes() for p in paths] == list(data.values())
    assert sorted(p.name for p in (root / "mnist").iterdir()) == ["a.gz", "b.gz"]
    # Present with the right checksum: kept, no network needed.
    monkeypatch.setitem(download_module.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    assert download("mnist", root, timeout=3) == paths


def test_download_checksum_mismatch_deletes(tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, {"a.gz": b"tampered"}, {"a.gz": "0" * 64})
    root = tmp_path / "data"
    with pytest.raises(DataFormatError, match="expected sha256 0{64}"):
        download("mnist", root, timeout=3)
    assert list((root / "mnist").iterdir()) == []


class _CutResponse:
    """What urlopen returns when the server closes early: a body shorter than announced."""

    def __init__(self, body: bytes, announced: int):
        self.stream, self.headers = io.BytesIO(body), {"Content-Length": str(announced)}

    def read(self, size=-1):
        return self.stream.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("first", ["truncated", "wrong_file"])
def test_download_goes_on_to_the_next_mirror(tmp_path, monkeypatch, first):
    good = b"the published file"
    _serve(tmp_path, monkeypatch, {"a.gz": good}, {"a.gz": hashlib.sha256(good).hexdigest()})
    real = download_module.urllib.request.urlopen

    def urlopen(request, timeout):
        if request.full_url.startswith("http://127.0.0.1:9/"):  # the first mirror
            if first == "truncated":
                return _CutResponse(good[:5], len(good))
            return _CutResponse(b"<html>moved</html>", 18)
        return real(request, timeout=timeout)

    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(download_module, "_resolve", lambda host, timeout: None)
    root = tmp_path / "data"
    assert download("mnist", root, timeout=3) == [root / "mnist" / "a.gz"]
    assert (root / "mnist" / "a.gz").read_bytes() == good


def test_download_says_truncated_when_every_mirror_cuts_off(tmp_path, monkeypatch):
    _serve(tmp_path, monkeypatch, {}, {"a.gz": "0" * 64})
    monkeypatch.setitem(download_module.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda request, timeout: _CutResponse(b"12345", 200_000))
    monkeypatch.setattr(download_module, "_resolve", lambda host, timeout: None)
    with pytest.raises(ConnectionError, match="truncated: received 5 of 200,000 bytes"):
        download("mnist", tmp_path / "data", timeout=3)
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_download_stops_a_server_that_sends_more_than_any_published_file(tmp_path,
                                                                         monkeypatch):
    _serve(tmp_path, monkeypatch, {}, {"a.gz": "0" * 64})
    monkeypatch.setitem(download_module.MIRRORS, "mnist", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(download_module, "MAX_DOWNLOAD_BYTES", 3 * (1 << 20))
    sent = []

    class Endless(_CutResponse):                # no Content-Length, and no end
        def read(self, size=-1):
            sent.append(size)
            return bytes(size)

    monkeypatch.setattr(download_module.urllib.request, "urlopen",
                        lambda request, timeout: Endless(b"", 0))
    monkeypatch.setattr(download_module, "_resolve", lambda host, timeout: None)
    with pytest.raises(ConnectionError, match="sent more than 3,145,728 bytes, more than any "
                                              "published file; stopped"):
        download("mnist", tmp_path / "data", timeout=3)
    assert sum(sent) == 4 * (1 << 20)            # read in 1 MiB chunks, one past the limit
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


@pytest.mark.parametrize("limit,matches", [(40_000, True), (30_000, False)])
def test_verify_stops_unpacking_past_the_largest_published_file(tmp_path, monkeypatch, limit,
                                                                matches):
    data = os.urandom(5000) * 7                  # 35,000 bytes, compressible: xz of ~5 KB
    write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin.xz", data)
    monkeypatch.setitem(download_module.CIFAR10_BIN_SHA256, "test_batch.bin",
                        hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(download_module, "MAX_UNPACKED_BYTES", limit)
    assert verify("cifar10", tmp_path) == {"cifar-10-batches-bin/test_batch.bin.xz": matches}


def test_downloaded_files_get_the_umask_permissions(tmp_path, monkeypatch):
    data = b"first file"
    _serve(tmp_path, monkeypatch, {"a.gz": data}, {"a.gz": hashlib.sha256(data).hexdigest()})
    previous = os.umask(0o027)
    try:
        (path,) = download("mnist", tmp_path / "data", timeout=3)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, not mkstemp's 0o600


def test_mnist_header_whose_sizes_overflow_int64_names_the_file(tmp_path):
    make_mnist(tmp_path)
    count = 2**32 - 1                                     # the largest count IDX can state
    path = write(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz",
                 idx_header(0x803, count, 28, 28))
    write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", idx_header(0x801, count))
    with pytest.raises(DataFormatError, match=rf"{path}: expected at most 1,000,000 images, the "
                                              rf"header says 4,294,967,295"):
        load_mnist(tmp_path, "test")
    # A plausible count, in labels that stop after their header: refused before reading.
    path = write(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", idx_header(0x801, 10**6))
    write(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", idx_header(0x803, 10**6, 28, 28))
    with pytest.raises(DataFormatError, match=rf"{path}: the header promises 1000000 labels .*"
                                              rf"i.e. 1000008 bytes .* at most"):
        load_mnist(tmp_path, "test")
    path = write(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz",
                 idx_header(0x803, 2**22, 2**21, 2**21))
    with pytest.raises(DataFormatError, match=rf"{path}: expected 28x28 images, the header says "
                                              rf"2097152x2097152"):
        load_mnist(tmp_path, "test")


def test_verify_synthetic(tmp_path):
    assert verify("mnist", tmp_path) == {}
    make_mnist(tmp_path, suffix=".gz")
    write(tmp_path / "cifar-10-binary.tar.gz", b"not the tarball")
    write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin.xz", b"not the batch")
    result = verify("mnist", tmp_path)
    assert result == {f"mnist/{file}": False for file in MNIST_GZ}
    assert verify("cifar10", tmp_path) == {"cifar-10-batches-bin/test_batch.bin.xz": False,
                                           "cifar-10-binary.tar.gz": False}


# --------------------------------------------------------------------------- the real data

REAL_ROOT = real_data_root()
real_data = pytest.mark.skipif(REAL_ROOT is None, reason=REAL_DATA_REASON)


@pytest.fixture(scope="module")
def real_mnist():
    """Both MNIST splits, loaded once for all the tests in this module."""
    return {split: load_mnist(REAL_ROOT, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def real_cifar():
    """Both CIFAR-10 splits (about 180 MB of xz to decompress), loaded once."""
    return {split: load_cifar10(REAL_ROOT, split) for split in ("train", "test")}


@real_data
def test_real_mnist_checksums():
    assert verify("mnist", REAL_ROOT) == {f"mnist/{file}": True for file in MNIST_GZ}


@real_data
def test_real_mnist(real_mnist):
    (x_train, y_train), (x_test, y_test) = real_mnist["train"], real_mnist["test"]
    assert x_train.shape == (60000, 1, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 1, 28, 28) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    # the published per-digit histograms of the two splits
    assert np.bincount(y_train, minlength=10).tolist() == [5923, 6742, 5958, 6131, 5842, 5421,
                                                           5918, 6265, 5851, 5949]
    assert np.bincount(y_test, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892,
                                                          958, 1028, 974, 1009]
    assert y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert x_train.max() == 255 and x_train.min() == 0


@real_data
def test_real_cifar10(real_cifar):
    (x_train, y_train), (x_test, y_test) = real_cifar["train"], real_cifar["test"]
    assert x_train.shape == (50000, 3, 32, 32) and y_train.shape == (50000,)
    assert x_test.shape == (10000, 3, 32, 32) and y_test.shape == (10000,)
    assert x_train.dtype == np.uint8 and y_test.dtype == np.int64
    assert np.bincount(y_train, minlength=10).tolist() == [5000] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [1000] * 10
    assert y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


def test_missing_data_says_the_folder_came_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    for load in (load_mnist, load_cifar10):
        with pytest.raises(FileNotFoundError, match=rf"the data folder {tmp_path / 'nowhere'}, "
                                                    rf"named by the environment variable "
                                                    rf"{ENV_VAR}, does not exist"):
            load(split="test")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))      # the folder exists, the files do not
    for load in (load_mnist, load_cifar10):
        with pytest.raises(FileNotFoundError, match=rf"the data folder {tmp_path} is the one "
                                                    rf"the environment variable {ENV_VAR} names"):
            load(split="test")
    for load in (load_mnist, load_cifar10):           # root given: the variable is not used
        with pytest.raises(FileNotFoundError) as info:
            load(tmp_path / "elsewhere", "test")
        assert ENV_VAR not in str(info.value)


class _ForgedObjectDtype:
    """numpy.dtype('O8') with its flags forged to 0: NumPy's own __setstate__ would then take
    raw bytes from the file as object pointers (a crash)."""

    def __reduce__(self):
        return np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0)


class _ForgedObjectArray:
    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1,), _ForgedObjectDtype(), False, (0x41414141).to_bytes(8, "little")))


@pytest.mark.parametrize("where", ["data", "labels"])
def test_cifar_pickle_with_a_forged_object_dtype_is_refused(tmp_path, where):
    images, labels = make_cifar()["test_batch"]
    batch = {b"data": images.reshape(len(images), -1), b"labels": [int(v) for v in labels]}
    if where == "data":
        batch[b"data"] = _ForgedObjectArray()
    else:
        batch[b"labels"][0] = _ForgedObjectArray()
    path = write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps(batch, 2))
    with pytest.raises(DataFormatError, match=rf"{path}.*dtype 'O8' refused"):
        load_cifar10(tmp_path, "test")


def test_cifar_pickled_arrays_of_every_protocol_byte_order_and_layout(tmp_path):
    images, labels = make_cifar()["test_batch"]
    for protocol in (2, 3, 4, 5):
        batch = {b"data": np.asfortranarray(images.reshape(len(images), -1)),
                 b"labels": np.asarray(labels, dtype=">i4")}
        write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps(batch, protocol))
        assert_same(load_cifar10(tmp_path, "test"), images, labels, channels=3)


@pytest.mark.parametrize("damage", ["gzip_bit", "second_header"])
def test_cifar_damaged_tarball_is_an_error_even_past_the_members_read(tmp_path, damage):
    batches = make_cifar()
    members = {f"cifar-10-batches-bin/{name}.bin": binary_batch(*batch)
               for name, batch in batches.items()}
    tarball = write_tar(tmp_path / "cifar-10-binary.tar.gz", members)
    if damage == "gzip_bit":
        # a bit of the last member's data: loading the test batch (read before it) used to
        # stop early and never see gzip's checksum at the end of the stream
        raw = bytearray(tarball.read_bytes())
        raw[-40] ^= 0x01
        tarball.write_bytes(bytes(raw))
        match = "the file is damaged or truncated"
    else:
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode="w") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        raw = bytearray(plain.getvalue())
        second = 512 + -(-len(next(iter(members.values()))) // 512) * 512
        raw[second + 148] ^= 0x01                # the checksum field of the second header
        tarball.write_bytes(bytes(raw))  # uncompressed under the usual name: tarfile sniffs it
        match = "stops at a damaged member header"
    with pytest.raises(DataFormatError, match=match):
        load_cifar10(tmp_path, "train")



def test_download_true_fetches_missing_files_then_loads(tmp_path, monkeypatch, cache):
    """load_mnist(download=True) into the default cache: the files come from the (local)
    mirror, checked against their checksums, then load; a second call finds them there."""
    served = tmp_path / "served"
    written = make_mnist(served, folder="", suffix=".gz")
    files = {name + ".gz": (served / (name + ".gz")).read_bytes()
             for pair in MNIST_NAMES.values() for name in pair}
    monkeypatch.setitem(download_module.MIRRORS, "mnist", [served.as_uri() + "/"])
    monkeypatch.setitem(download_module.DATASETS, "mnist", download_module.Remote(
        "mnist", {f: ("sha256", hashlib.sha256(b).hexdigest()) for f, b in files.items()}))
    images, labels = load_mnist(split="test", download=True)
    np.testing.assert_array_equal(images[:, 0], written["test"][0])
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(files)
    monkeypatch.setitem(download_module.MIRRORS, "mnist", ["http://127.0.0.1:9/"])  # offline
    assert load_mnist(split="test", download=True)[1].tolist() == written["test"][1].tolist()


def test_download_must_be_true_or_false(tmp_path):
    with pytest.raises(ValueError, match=r"load_mnist: download: expected True or False"):
        load_mnist(tmp_path, download="yes")
    with pytest.raises(ValueError, match=r"load_cifar10: download: expected True or False"):
        load_cifar10(tmp_path, download=1)


def test_download_true_offline_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setitem(download_module.MIRRORS, "cifar10", ["http://127.0.0.1:9/"])
    with pytest.raises(ConnectionError, match=r"cifar-10-binary.tar.gz"):
        load_cifar10(tmp_path, download=True)
