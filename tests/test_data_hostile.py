"""Hostile and damaged data files: the MNIST and CIFAR-10 readers give a correct result or a
DataFormatError naming the file, never a crash, a bare MemoryError or zlib/lzma error, a
silent wrong value, or a change to the running process.

Every file is built here, small: a decompression "bomb" of gigabytes is a few hundred
kilobytes of gzip members (or xz streams) of one MiB of zeros each, repeated. The readers are
run against the bombs once, in a fresh Python whose address space may grow by only
``MARGIN`` past what importing the package took, so that any large allocation fails there.
"""

from __future__ import annotations

import _codecs
import builtins
import copy
import copyreg
import functools
import gzip
import io
import json
import lzma
import os
import pathlib
import pickle
import pickletools
import re
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib

import numpy as np
import pytest
from numpy._core import multiarray, numeric

from anyarray_nn.data import DataFormatError, cifar10, load_cifar10, load_mnist
from anyarray_nn.data._files import MAX_EXPANSION

MIB = 1 << 20
MARGIN = 512 * MIB          # what a bomb may make the reader allocate, at most
BOMB_MIB = 2048             # each bomb decompresses to 2 GiB or more


# --------------------------------------------------------------------------- building files

def idx_header(magic: int, *shape: int) -> bytes:
    return b"".join(n.to_bytes(4, "big") for n in (magic, *shape))


@functools.cache
def zero_member(suffix: str) -> bytes:
    """One MiB of zeros, as one gzip member or one xz stream (both may be concatenated)."""
    return gzip.compress(bytes(MIB), mtime=0) if suffix == ".gz" else lzma.compress(bytes(MIB))


def compressed(suffix: str, head: bytes, zero_mib: int = 0) -> bytes:
    """``head`` then ``zero_mib`` MiB of zeros, compressed as ``suffix`` says, without ever
    holding the zeros: one compressed MiB is repeated."""
    first = gzip.compress(head, mtime=0) if suffix == ".gz" else lzma.compress(head)
    return first + zero_member(suffix) * zero_mib


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mnist_files(root: pathlib.Path, suffix: str, images: bytes, labels: bytes):
    """The test split's two files under root/mnist, already compressed as ``suffix`` says."""
    return (write(root / "mnist" / f"t10k-images-idx3-ubyte{suffix}", images),
            write(root / "mnist" / f"t10k-labels-idx1-ubyte{suffix}", labels))


def valid_mnist(n: int = 3) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(n)
    return (idx_header(0x803, n, 28, 28) + rng.integers(0, 256, n * 784, np.uint8).tobytes(),
            idx_header(0x801, n) + rng.integers(0, 10, n, np.uint8).tobytes())


def cifar_records(n: int = 2, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    data = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return data, images, labels


def tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE, **fields) -> bytes:
    """One 512-byte tar header; ``size`` may be far more than the data that follows."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(format=tarfile.GNU_FORMAT)


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


# --------------------------------------------------------------------------- bombs, in a subprocess

_RUN_LIMITED = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from anyarray_nn.data import load_cifar10, load_mnist

    # The address space used after the imports, plus the margin: any larger allocation fails.
    base = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (base + {margin}, base + {margin}))
    results = {{}}
    try:                                    # the control: the limit does bite
        np.ones({margin} + (1 << 20), dtype=np.uint8)
        results["control"] = "allocated"
    except MemoryError:
        results["control"] = "MemoryError"
    for name, (loader, root, split) in json.loads(sys.argv[1]).items():
        try:
            {{"mnist": load_mnist, "cifar10": load_cifar10}}[loader](root, split)
            results[name] = "loaded"
        except BaseException as exc:
            results[name] = f"{{type(exc).__name__}}: {{exc}}"
    print(json.dumps(results))
""")


def _bomb_cases(base: pathlib.Path) -> dict[str, tuple[str, str, str]]:
    """Write each bomb under its own root; {case: (loader, root, split)}."""
    cases = {}

    def root(name):
        cases[name] = (name.split("-")[0], str(base / name), "test")
        return base / name

    for suffix in (".gz", ".xz"):
        # A header declaring a million images (784 MB, more than MARGIN) followed by 8 MiB of
        # zeros: refused up front, before a buffer of the declared size is allocated.
        mnist_files(root(f"mnist-declares-more{suffix}"), suffix,
                    compressed(suffix, idx_header(0x803, 10**6, 28, 28), 8),
                    compressed(suffix, idx_header(0x801, 10**6) + bytes(10**6)))
        # A small header (one image) whose stream goes on for 2 GiB.
        images, labels = valid_mnist(1)
        mnist_files(root(f"mnist-endless{suffix}"), suffix,
                    compressed(suffix, images, BOMB_MIB), compressed(suffix, labels))
        # The largest count a header can state, in both files.
        mnist_files(root(f"mnist-huge-count{suffix}"), suffix,
                    compressed(suffix, idx_header(0x803, 2**32 - 1, 28, 28), 1),
                    compressed(suffix, idx_header(0x801, 2**32 - 1), 1))
        # 2 GiB of zeros are valid records (label 0, black pixels) but far more than a batch.
        write(root(f"cifar10-binary-endless{suffix}") / "cifar-10-batches-bin"
              / f"test_batch.bin{suffix}", compressed(suffix, b"", BOMB_MIB))
        write(root(f"cifar10-pickle-endless{suffix}") / "cifar-10-batches-py"
              / f"test_batch{suffix}", compressed(suffix, b"\x80\x02", BOMB_MIB))
    # A tarball: the members, then 2 GiB of zeros inside a member that declares that size.
    head = tar_header("cifar-10-batches-bin/readme.html", BOMB_MIB * MIB)
    write(root("cifar10-tar-endless") / "cifar-10-binary.tar.gz",
          compressed(".gz", head, BOMB_MIB))
    # A pax extended header declaring 2 GiB: tarfile reads such a header whole into memory.
    pax = tar_header("././@PaxHeader", BOMB_MIB * MIB, tarfile.XHDTYPE)
    write(root("cifar10-tar-pax") / "cifar-10-binary.tar.gz", compressed(".gz", pax, BOMB_MIB))
    return cases


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    """{case: (root, what the loader raised)} for every bomb, all run in one limited process."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("measuring the address space needs Linux's /proc")
    base = tmp_path_factory.mktemp("bombs")
    cases = _bomb_cases(base)
    done = subprocess.run([sys.executable, "-c", _RUN_LIMITED.format(margin=MARGIN),
                           json.dumps(cases)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results.pop("control") == "MemoryError"      # the limit does catch a large allocation
    return {name: (pathlib.Path(cases[name][1]), outcome) for name, outcome in results.items()}


def test_bomb_files_are_small(bombs):
    for root, _ in bombs.values():
        for path in root.rglob("*"):
            assert not path.is_file() or path.stat().st_size < 8 * MIB


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_idx_header_declaring_more_than_the_file_can_hold_is_refused_up_front(bombs, suffix):
    root, outcome = bombs[f"mnist-declares-more{suffix}"]
    path = root / "mnist" / f"t10k-images-idx3-ubyte{suffix}"
    limit = path.stat().st_size * MAX_EXPANSION[suffix]
    assert outcome == (f"DataFormatError: {path}: the header promises 1000000 images of shape "
                       f"(28, 28), i.e. {16 + 10**6 * 784} bytes (decompressed), but a "
                       f"{ {'.gz': 'gzip', '.xz': 'xz'}[suffix]} file of {path.stat().st_size} "
                       f"bytes holds at most {limit} bytes ({MAX_EXPANSION[suffix]} times its "
                       f"size): the header is forged or the file is truncated")


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_idx_stream_longer_than_its_header_stops_one_byte_past(bombs, suffix):
    root, outcome = bombs[f"mnist-endless{suffix}"]
    path = root / "mnist" / f"t10k-images-idx3-ubyte{suffix}"
    assert outcome == (f"DataFormatError: {path}: the header promises 1 image of shape "
                       f"(28, 28), i.e. 800 bytes (decompressed), but the file holds more "
                       f"(decompression stopped at 801 bytes): it has extra bytes")


@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_idx_largest_count_a_header_can_state(bombs, suffix):
    root, outcome = bombs[f"mnist-huge-count{suffix}"]
    path = root / "mnist" / f"t10k-images-idx3-ubyte{suffix}"
    assert outcome == (f"DataFormatError: {path}: expected at most 1,000,000 images, the header "
                       f"says 4,294,967,295")


@pytest.mark.parametrize("version", ["binary", "pickle"])
@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_cifar_batch_stream_stops_one_byte_past_a_batch(bombs, version, suffix):
    root, outcome = bombs[f"cifar10-{version}-endless{suffix}"]
    folder = "cifar-10-batches-bin" if version == "binary" else "cifar-10-batches-py"
    name = "test_batch.bin" if version == "binary" else "test_batch"
    limit = cifar10.MAX_BINARY_BATCH if version == "binary" else cifar10.MAX_PICKLE_BATCH
    assert outcome.startswith(f"DataFormatError: {root / folder / (name + suffix)}: expected at "
                              f"most {limit:,} bytes")
    assert f"decompression stopped at {limit + 1:,} bytes" in outcome


@pytest.mark.parametrize("case", ["cifar10-tar-endless", "cifar10-tar-pax"])
def test_cifar_tarball_stops_at_six_batches(bombs, case):
    root, outcome = bombs[case]
    limit = 6 * cifar10.MAX_BINARY_BATCH + MIB
    assert outcome.startswith(f"DataFormatError: {root / 'cifar-10-binary.tar.gz'}: expected at "
                              f"most {limit:,} bytes (a tar of 6 batches)")


# --------------------------------------------------------------------------- damaged streams

def _damage(data: bytes, how: str) -> bytes:
    middle = len(data) // 2
    if how == "cut":
        return data[:middle]
    if how == "flipped":          # a bit in the middle: a CRC or a decoding error
        return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1:]
    if how == "trailer":          # the last byte: the stream's length or check field
        return data[:-1] + bytes([data[-1] ^ 0xFF])
    if how == "garbage":          # the right magic number, then noise
        return data[:6] + np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()
    return data + b"trailing garbage"


DAMAGES = ["cut", "flipped", "trailer", "garbage", "appended"]


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_damaged_idx_stream_names_the_file(tmp_path, suffix, how):
    images, labels = valid_mnist(40)
    image_path, _ = mnist_files(tmp_path, suffix, _damage(compressed(suffix, images), how),
                                compressed(suffix, labels))
    with pytest.raises(DataFormatError) as info:
        load_mnist(tmp_path, "test")
    assert str(info.value).startswith(f"{image_path}: ")


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("suffix", [".gz", ".xz"])
def test_damaged_cifar_stream_names_the_file(tmp_path, suffix, how):
    path = write(tmp_path / "cifar-10-batches-bin" / f"test_batch.bin{suffix}",
                 _damage(compressed(suffix, cifar_records(5)[0]), how))
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_tarball_names_the_file(tmp_path, how):
    data = tar_bytes([(member("cifar-10-batches-bin/test_batch.bin"), cifar_records(5)[0])])
    tarball = write(tmp_path / "cifar-10-binary.tar.gz", _damage(gzip.compress(data), how))
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    assert str(info.value).startswith(f"{tarball}: ")


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
@pytest.mark.parametrize("found,state", [(2, "is truncated"), (4, "has extra bytes")])
def test_idx_stream_that_holds_fewer_or_more_images_than_declared(tmp_path, suffix, found, state):
    images, labels = valid_mnist(3)
    data = idx_header(0x803, 3, 28, 28) + valid_mnist(found)[0][16:]
    pack = (lambda b: b) if not suffix else (lambda b: compressed(suffix, b))
    image_path, _ = mnist_files(tmp_path, suffix, pack(data), pack(labels))
    with pytest.raises(DataFormatError) as info:
        load_mnist(tmp_path, "test")
    held = (f"holds {len(data)} bytes" if state == "is truncated" or not suffix else
            f"holds more (decompression stopped at {len(images) + 1} bytes)")
    assert str(info.value) == (f"{image_path}: the header promises 3 images of shape (28, 28), "
                               f"i.e. {len(images)} bytes (decompressed), but the file {held}: "
                               f"it {state}")


@pytest.mark.parametrize("magic,found", [
    (0x0D03, "element type 0x0D with 3 dimensions, where MNIST images are unsigned bytes "
             "(0x08) with 3"),
    (0x0804, "element type 0x08 with 4 dimensions, where MNIST images are unsigned bytes "
             "(0x08) with 3"),
    (0x0801, "a label file: swapped file names?"),
])
def test_idx_header_with_another_element_type_or_rank(tmp_path, magic, found):
    images, labels = valid_mnist(2)
    image_path, _ = mnist_files(tmp_path, ".gz", compressed(".gz", idx_header(magic, 2, 28, 28)
                                                            + images[16:]),
                                compressed(".gz", labels))
    with pytest.raises(DataFormatError) as info:
        load_mnist(tmp_path, "test")
    assert str(info.value) == (f"{image_path}: expected the IDX magic number 0x00000803 of an "
                               f"MNIST image file, found 0x{magic:08X} ({found})")


def test_idx_labels_of_another_count_fail_before_any_image_is_read(tmp_path):
    images, _ = valid_mnist(3)
    # The image stream is damaged past its header: reading it would fail differently.
    image_path, label_path = mnist_files(tmp_path, ".gz",
                                         _damage(compressed(".gz", images), "trailer"),
                                         compressed(".gz", idx_header(0x801, 4) + bytes(4)))
    with pytest.raises(DataFormatError, match=rf"{image_path} holds 3 images but {label_path} "
                                              rf"holds 4 labels"):
        load_mnist(tmp_path, "test")


def test_xz_stream_asking_for_a_4_gib_dictionary_is_refused(tmp_path):
    """The dictionary size sits in the block header: patched to 4 GiB (and the header's CRC
    fixed), a decoder without a memory limit would reserve that much before any output."""
    xz = bytearray(compressed(".xz", cifar_records(1)[0]))
    size = (xz[12] + 1) * 4                       # the block header, after the stream header
    header = xz[12:12 + size]
    header[header.index(b"\x21\x01", 2) + 2] = 40     # LZMA2, one property byte: 4 GiB - 1
    header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
    xz[12:12 + size] = header
    path = write(tmp_path / "cifar-10-batches-bin" / "test_batch.bin.xz", bytes(xz))
    with pytest.raises(DataFormatError, match=rf"{path}: .*Memory usage limit"):
        load_cifar10(tmp_path, "test")


def test_plain_cifar_batch_larger_than_a_batch_is_refused_before_reading(tmp_path):
    path = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    path.parent.mkdir()
    with open(path, "wb") as file:             # sparse: 30 MB of zeros that take no disk
        file.truncate(cifar10.MAX_BINARY_BATCH + cifar10.RECORD)
    with pytest.raises(DataFormatError, match=rf"{path}: expected at most 30,730,000 bytes "
                                              rf"\(a batch of at most 10,000 records of 3073 "
                                              rf"bytes\), but the file holds 30,733,073 bytes"):
        load_cifar10(tmp_path, "test")


# --------------------------------------------------------------------------- hostile tarballs

TEST_MEMBER = "cifar-10-batches-bin/test_batch.bin"


def _load_tar(tmp_path, data: bytes):
    tarball = write(tmp_path / "cifar-10" / "cifar-10-binary.tar.gz", gzip.compress(data))
    return tarball, lambda: load_cifar10(tmp_path, "test")


def _nothing_written(tmp_path):
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert files == ["cifar-10", "cifar-10/cifar-10-binary.tar.gz"]


@pytest.mark.parametrize("kind,fields", [
    (tarfile.SYMTYPE, {"linkname": "/etc/passwd"}),
    (tarfile.LNKTYPE, {"linkname": "cifar-10-batches-bin/data_batch_1.bin"}),
    (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 5}),            # /dev/zero
    (tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}),
    (tarfile.FIFOTYPE, {}),
    (tarfile.DIRTYPE, {}),
], ids=["symlink", "hardlink", "char-device", "block-device", "fifo", "directory"])
def test_tar_member_that_is_not_a_regular_file_is_refused(tmp_path, kind, fields):
    records = cifar_records()[0]
    data = tar_bytes([(member("cifar-10-batches-bin/data_batch_1.bin"), records),
                      (member(TEST_MEMBER, kind, **fields), b"")])
    tarball, load = _load_tar(tmp_path, data)
    with pytest.raises(DataFormatError, match=rf"{tarball}: member {TEST_MEMBER} is a link or "
                                              rf"special file, expected a regular file"):
        load()
    _nothing_written(tmp_path)


@pytest.mark.parametrize("name", [f"/{TEST_MEMBER}", f"../{TEST_MEMBER}",
                                  f"cifar-10-batches-bin/../../{TEST_MEMBER}",
                                  f"x/../{TEST_MEMBER}"])
def test_tar_member_outside_its_folder_is_never_read_nor_written(tmp_path, name):
    tarball, load = _load_tar(tmp_path, tar_bytes([(member(name), cifar_records()[0])]))
    with pytest.raises(DataFormatError, match=rf"{tarball}: expected the members {TEST_MEMBER}, "
                                              rf"not found in the archive"):
        load()
    _nothing_written(tmp_path)
    assert not (tmp_path.parent / TEST_MEMBER).exists()


def test_tar_duplicate_member_is_refused(tmp_path):
    first, second = cifar_records(seed=1)[0], cifar_records(seed=2)[0]
    tarball, load = _load_tar(tmp_path, tar_bytes([(member(TEST_MEMBER), first),
                                                   (member(f"./{TEST_MEMBER}"), second)]))
    with pytest.raises(DataFormatError, match=rf"{tarball}: member {TEST_MEMBER} appears twice"):
        load()


def test_tar_member_declaring_more_than_a_batch_is_refused_before_reading(tmp_path):
    # The header declares 100 GB; the archive holds none of it.
    data = tar_header(TEST_MEMBER, 100 * 10**9) + bytes(10 * 512)
    tarball, load = _load_tar(tmp_path, data)
    with pytest.raises(DataFormatError, match=rf"{tarball}: member {TEST_MEMBER} declares "
                                              rf"100,000,000,000 bytes, expected at most "
                                              rf"30,730,000"):
        load()


def test_tar_member_shorter_than_declared_is_truncated(tmp_path):
    records = cifar_records(3)[0]
    data = tar_header(TEST_MEMBER, len(records)) + records[:5000]
    tarball, load = _load_tar(tmp_path, data)
    with pytest.raises(DataFormatError, match=rf"{tarball}: expected a complete tar archive"):
        load()


def test_tar_with_too_many_members_is_refused(tmp_path):
    many = [(member(f"cifar-10-batches-bin/junk_{i}"), b"x") for i in range(65)]
    tarball, load = _load_tar(tmp_path, tar_bytes(many + [(member(TEST_MEMBER),
                                                           cifar_records()[0])]))
    with pytest.raises(DataFormatError, match=rf"{tarball}: expected at most 64 members"):
        load()


def test_tar_under_any_compression_is_read_by_its_contents(tmp_path):
    records, images, labels = cifar_records(3)
    data = tar_bytes([(member(TEST_MEMBER), records)])
    for packed in (data, gzip.compress(data), lzma.compress(data)):
        write(tmp_path / "cifar-10-binary.tar.gz", packed)    # the name says gzip, always
        x, y = load_cifar10(tmp_path, "test")
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)


# --------------------------------------------------------------------------- hostile pickles

def text(value: str) -> bytes:
    """BINUNICODE: a str."""
    raw = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw


def raw(value: bytes) -> bytes:
    """SHORT_BINBYTES or BINBYTES: bytes."""
    if len(value) < 256:
        return pickle.SHORT_BINBYTES + bytes([len(value)]) + value
    return pickle.BINBYTES + struct.pack("<I", len(value)) + value


def integer(value: int) -> bytes:
    return pickle.BININT + struct.pack("<i", value)


def name(module: str, attribute: str) -> bytes:
    """GLOBAL: a module's attribute."""
    return pickle.GLOBAL + f"{module}\n{attribute}\n".encode()


def tuple_of(*items: bytes) -> bytes:
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def dict_of(*pairs: tuple[bytes, bytes]) -> bytes:
    return pickle.EMPTY_DICT + b"".join(key + value + pickle.SETITEM for key, value in pairs)


def batch(n: int = 2, seed: int = 0, protocol: int = 2, **changes) -> dict:
    rng = np.random.default_rng(seed)
    value = {b"batch_label": b"testing batch 1 of 1",
             b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"image_%d.png" % i for i in range(n)]}
    value.update({key.encode(): item for key, item in changes.items()})
    return value


VALID = pickle.dumps(batch(), protocol=2)


def with_value(value: bytes, key: bytes = b"batch_label") -> tuple[bytes, int]:
    """A valid batch whose ``key`` is what the opcodes ``value`` leave on the stack, and the
    position where ``value`` starts."""
    others = pickle.dumps({k: v for k, v in batch().items() if k != key}, protocol=2)
    head = others[:-2] + raw(key)                 # before SETITEMS and STOP
    return head + value + others[-2:], len(head)


def _snapshot() -> dict:
    """What a hostile pickle could try to change: the functions and classes its names refer
    to (or did, before: the old unpickler handed some of them out), and the loader module."""
    targets = {"ndarray": np.ndarray, "dtype": np.dtype, "reconstruct": multiarray._reconstruct,
               "scalar": multiarray.scalar, "frombuffer": numeric._frombuffer,
               "encode": _codecs.encode, "system": os.system, "eval": builtins.eval,
               "getattr": builtins.getattr, "exec": builtins.exec}
    targets.update({f"cifar10.{key}": value for key, value in vars(cifar10).items()
                    if callable(value)})
    state = {key: (getattr(value, "__defaults__", None),
                   copy.copy(getattr(value, "__kwdefaults__", None)),
                   dict(vars(value)) if hasattr(value, "__dict__") else None,
                   getattr(value, "__code__", None), type(value))
             for key, value in targets.items()}
    state["cifar10 globals"] = {key: copy.copy(value) if type(value) in (dict, list, set) else value
                                for key, value in vars(cifar10).items()}
    return state


@pytest.fixture
def untouched():
    """Checks, after the test, that nothing a pickle could reach changed."""
    before = _snapshot()
    yield
    assert _snapshot() == before


def refused(tmp_path, data: bytes, match: str = "") -> str:
    """The DataFormatError loading ``data`` as the test batch gives; checks that it names the
    file (and matches ``match``)."""
    path = write(tmp_path / "cifar-10-batches-py" / "test_batch", data)
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path, "test")
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    if match:
        assert re.search(match, message), message
    return message


def victim(a=1, *, b=2):
    """The target of the control test: plain pickle lets the hostile bytes change it."""
    return a, b


def _set_attribute(target: bytes, attribute: str, value: bytes, slots: bool) -> bytes:
    """Opcodes that push ``target``, then BUILD it with a state setting ``attribute``: as a
    dict state (written into ``__dict__``) or as a slot state (``setattr``)."""
    state = dict_of((text(attribute), value))
    if slots:
        state = pickle.NONE + state + pickle.TUPLE2
    return target + state + pickle.BUILD


def test_control_plain_pickle_lets_build_change_a_function():
    attack = _set_attribute(name(victim.__module__, "victim"), "__defaults__", pickle.NONE, True)
    try:
        pickle.loads(pickle.PROTO + b"\x02" + attack + pickle.STOP)
        assert victim.__defaults__ is None      # the bytes do what the next tests refuse
    finally:
        victim.__defaults__ = (1,)


@pytest.mark.parametrize("slots", [False, True], ids=["dict-state", "slot-state"])
@pytest.mark.parametrize("attribute", ["__defaults__", "__kwdefaults__", "__dict__", "__code__",
                                       "__class__"])
@pytest.mark.parametrize("module,attr", sorted(cifar10._ALLOWED_GLOBALS))
def test_build_on_an_allowed_name_is_refused_and_changes_nothing(tmp_path, untouched, module,
                                                                 attr, attribute, slots):
    attack = _set_attribute(name(module, attr), attribute, pickle.NONE, slots)
    data, start = with_value(attack)
    if slots:   # the (None, dict) state is refused as it is built, before BUILD
        message = refused(tmp_path, data, "refused dict inside a tuple")
        assert f"(at byte {start + len(attack) - 2})" in message      # the TUPLE2 opcode
    else:
        message = refused(tmp_path, data, f"refused to set the state of the global "
                                          f"{cifar10._ALLOWED_GLOBALS[(module, attr)]} to dict")
        assert f"(at byte {start + len(attack) - 1})" in message      # the BUILD opcode


@pytest.mark.parametrize("state", [
    dict_of((text("__class__"), pickle.NONE)),
    pickle.NONE + dict_of((text("__class__"), pickle.NONE)) + pickle.TUPLE2,
    tuple_of(integer(3), dict_of((text("__dict__"), pickle.NONE))),
], ids=["dict-state", "slot-state", "tuple-with-dict"])
@pytest.mark.parametrize("stand_in", ["dtype", "array"])
def test_build_with_anything_but_a_numpy_state_on_a_stand_in_is_refused(tmp_path, untouched,
                                                                        stand_in, state):
    target = (name("numpy", "dtype") + tuple_of(text("u1"), pickle.NEWFALSE, pickle.NEWTRUE)
              if stand_in == "dtype" else
              name("numpy.core.multiarray", "_reconstruct") + tuple_of(
                  name("numpy", "ndarray"), tuple_of(integer(0)), raw(b"b")))
    refused(tmp_path, with_value(target + pickle.REDUCE + state + pickle.BUILD)[0], "refused")


def test_build_twice_is_refused(tmp_path, untouched):
    dtype = name("numpy", "dtype") + tuple_of(text("u1"), pickle.NEWFALSE, pickle.NEWTRUE) \
        + pickle.REDUCE
    state = tuple_of(integer(3), text("<"))
    refused(tmp_path, with_value(dtype + state + pickle.BUILD + state + pickle.BUILD)[0],
            "refused to set the state of a dtype stand-in")


@pytest.fixture
def extensions():
    """Callables that run a shell command, registered in copyreg's extension registry under
    codes of each EXT opcode's size (as a program may have done for its own classes)."""
    codes = {1: ("os", "system", 0xF1), 2: ("posix", "system", 0xF123),
             4: ("subprocess", "getoutput", 0x1234567)}
    for entry in codes.values():
        copyreg.add_extension(*entry)
    yield {size: code for size, (_, _, code) in codes.items()}
    for entry in codes.values():
        copyreg.remove_extension(*entry)


def _code_attacks(target: pathlib.Path, codes: dict[int, int]) -> dict[str, tuple[bytes, str]]:
    """Ways a pickle asks to run ``echo pwned > target`` (or eval, exec, getattr), each with
    what the refusal says."""
    command = text(f"echo pwned > {target}")
    code = text(f"open({str(target)!r}, 'w').write('pwned')")
    call = tuple_of(command) + pickle.REDUCE
    by_name = "refused to unpickle the global"
    return {
        "GLOBAL": (name("os", "system") + call, f"{by_name} os.system"),
        "posix": (name("posix", "system") + call, f"{by_name} posix.system"),
        "STACK_GLOBAL": (text("os") + text("system") + pickle.STACK_GLOBAL + call,
                         f"{by_name} os.system"),
        "eval": (name("builtins", "eval") + tuple_of(code) + pickle.REDUCE,
                 f"{by_name} builtins.eval"),
        "exec": (name("builtins", "exec") + tuple_of(code) + pickle.REDUCE,
                 f"{by_name} builtins.exec"),
        "getattr": (name("builtins", "getattr") + tuple_of(name("numpy", "dtype"),
                                                           text("__init__")) + pickle.REDUCE,
                    f"{by_name} builtins.getattr"),
        "INST": (pickle.MARK + command + pickle.INST + b"os\nsystem\n",
                 "refused the pickle opcode INST"),
        "OBJ": (pickle.MARK + name("os", "system") + command + pickle.OBJ,
                f"{by_name} os.system"),
        "OBJ-allowed": (pickle.MARK + name("numpy", "dtype") + text("u1") + pickle.OBJ,
                        "refused the pickle opcode OBJ"),
        "NEWOBJ": (name("numpy", "ndarray") + tuple_of(integer(3)) + pickle.NEWOBJ,
                   "refused the pickle opcode NEWOBJ"),
        "NEWOBJ_EX": (name("numpy", "ndarray") + tuple_of(integer(3)) + pickle.EMPTY_DICT
                      + pickle.NEWOBJ_EX, "refused the pickle opcode NEWOBJ_EX"),
        "EXT1": (pickle.EXT1 + bytes([codes[1]]) + call, "refused the pickle opcode EXT1"),
        "EXT2": (pickle.EXT2 + struct.pack("<H", codes[2]) + call,
                 "refused the pickle opcode EXT2"),
        "EXT4": (pickle.EXT4 + struct.pack("<i", codes[4]) + call,
                 "refused the pickle opcode EXT4"),
        "PERSID": (pickle.PERSID + b"os.system\n", "refused the pickle opcode PERSID"),
        "BINPERSID": (text("os.system") + pickle.BINPERSID, "refused the pickle opcode BINPERSID"),
        "REDUCE-on-a-list": (pickle.EMPTY_LIST + call,
                             r"refused to call list with a tuple \(str\)"),
        "encode-rot13": (name("_codecs", "encode") + tuple_of(command, text("rot_13"))
                         + pickle.REDUCE, "_codecs.encode with encoding rot_13 refused"),
    }


@pytest.mark.parametrize("kind", ["GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "EXT1", "EXT2", "EXT4"])
def test_control_plain_pickle_runs_the_code_attacks(tmp_path, extensions, kind):
    target = tmp_path / "pwned.txt"
    attack, _ = _code_attacks(target, extensions)[kind]
    pickle.loads(pickle.PROTO + b"\x04" + attack + pickle.STOP)
    assert target.read_text().strip() == "pwned"


@pytest.mark.parametrize("kind", list(_code_attacks(pathlib.Path("x"), {1: 1, 2: 1, 4: 1})))
def test_code_attack_is_refused_without_running(tmp_path, untouched, extensions, kind):
    target = tmp_path / "pwned.txt"
    attack, match = _code_attacks(target, extensions)[kind]
    data, start = with_value(attack)
    message = refused(tmp_path, data, match)
    assert re.search(r"\(at byte (\d+)\)", message)
    assert start <= int(re.search(r"\(at byte (\d+)\)", message)[1]) < start + len(attack)
    assert not target.exists()


@pytest.mark.parametrize("attack,match", [
    (name("numpy", "dtype") + raw(b"k") + raw(b"v") + pickle.SETITEM,
     "expected a dict to add to, found the global dtype"),
    (name("numpy", "dtype") + pickle.MARK + raw(b"k") + raw(b"v") + pickle.SETITEMS,
     "expected a dict to add to, found the global dtype"),
    (name("numpy", "dtype") + tuple_of(text("u1"), pickle.NEWFALSE, pickle.NEWTRUE)
     + pickle.REDUCE + raw(b"x") + pickle.APPEND,
     "expected a list to add to, found a dtype stand-in"),
    (name("numpy._core.multiarray", "_reconstruct") + tuple_of(
        name("numpy", "ndarray"), tuple_of(integer(0)), raw(b"b")) + pickle.REDUCE
     + pickle.MARK + raw(b"x") + pickle.APPENDS, "expected a list to add to, found an? array"),
    (pickle.EMPTY_TUPLE + raw(b"x") + pickle.APPEND, "expected a list to add to, found a tuple"),
    (pickle.EMPTY_LIST + raw(b"k") + raw(b"v") + pickle.SETITEM,
     "expected a dict to add to, found list"),
    (pickle.EMPTY_DICT + pickle.EMPTY_DICT + pickle.BUILD, "refused to set the state of dict"),
    (pickle.EMPTY_LIST + pickle.EMPTY_LIST + pickle.APPEND, "refused list inside a list"),
    (pickle.EMPTY_LIST + pickle.BINPUT + b"\xf0" + pickle.BINGET + b"\xf0" + pickle.APPEND,
     "refused list inside a list"),                                     # a list in itself
    (pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + raw(b"v") + pickle.SETITEM,
     "refused a dict key that is a tuple"),
    (pickle.EMPTY_DICT + raw(b"k") + pickle.EMPTY_DICT + pickle.SETITEM,
     "refused dict as a dict value"),
    (pickle.EMPTY_DICT + raw(b"k") + raw(b"v") + pickle.SETITEM + raw(b"k") + raw(b"w")
     + pickle.SETITEM, "the dict key b'k' is set twice"),
], ids=["setitem-global", "setitems-global", "append-dtype", "appends-array", "append-tuple",
        "setitem-list", "build-dict", "list-in-list", "list-in-itself", "tuple-key",
        "dict-in-dict", "key-twice"])
def test_containers_only_take_what_a_batch_holds(tmp_path, untouched, attack, match):
    refused(tmp_path, with_value(attack)[0], match)


def test_a_deep_nest_is_refused_at_its_third_level(tmp_path, untouched):
    data, start = with_value(pickle.NONE + pickle.TUPLE1 * 100_000)
    message = refused(tmp_path, data, r"refused a tuple \(a tuple \(NoneType\)\) inside a tuple")
    assert f"(at byte {start + 3})" in message      # NONE, (None,), ((None,),), then refused


@pytest.mark.parametrize("attack,match", [
    (pickle.BINBYTES8 + struct.pack("<Q", 2**62), "expected 4611686018427387904 bytes in a "
                                                  "bytes8, but only"),
    (pickle.BINUNICODE8 + struct.pack("<Q", 2**63 - 1), "in a unicodestring8, but only"),
    (pickle.BINBYTES + struct.pack("<I", 2**32 - 1), "in a bytes4, but only"),
    (pickle.BYTEARRAY8 + struct.pack("<Q", 2**40), "in a bytearray8, but only"),
    (pickle.LONG4 + struct.pack("<i", 2**31 - 1), "not enough data in stream to read long4"),
    (pickle.BINSTRING + struct.pack("<i", 2**31 - 1), "in a string4, but only"),
], ids=["BINBYTES8", "BINUNICODE8", "BINBYTES", "BYTEARRAY8", "LONG4", "BINSTRING"])
def test_a_declared_length_past_the_end_is_refused(tmp_path, untouched, attack, match):
    refused(tmp_path, with_value(attack)[0], "truncated or corrupt .*" + match)


@pytest.mark.parametrize("attack,match", [
    (pickle.BINGET + b"\x77", "the memo has no entry 119"),
    (pickle.LONG_BINGET + struct.pack("<I", 2**32 - 1), "the memo has no entry 4294967295"),
    (pickle.MARK * 300_000, "more than 201,000 pickle opcodes"),
    (pickle.NONE * 300_000, "more than 201,000 pickle opcodes"),
    (pickle.POP, "refused the pickle opcode POP"),
    (pickle.DUP, "refused the pickle opcode DUP"),
    (pickle.EMPTY_SET, "refused the pickle opcode EMPTY_SET"),
    (pickle.NEXT_BUFFER, "refused the pickle opcode NEXT_BUFFER"),
    (pickle.PROTO + b"\x04", "expected one PROTO of 2 to 5 at the start, found PROTO 4"),
    (pickle.STOP, r"expected one value on the pickle stack at STOP, found \d+ and 1 open"),
    (pickle.POP_MARK, "refused the pickle opcode POP_MARK"),
    (b"\xff", "opcode b'\\\\xff' unknown"),
], ids=["missing-memo", "missing-memo-long", "marks", "values", "POP", "DUP", "EMPTY_SET",
        "NEXT_BUFFER", "second-PROTO", "early-STOP", "POP_MARK", "unknown"])
def test_stack_memo_and_opcodes_beyond_a_batch_are_refused(tmp_path, untouched, attack, match):
    refused(tmp_path, with_value(attack)[0], match)


@pytest.mark.parametrize("data,match", [
    (pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + pickle.TUPLE + pickle.STOP,
     "expected a MARK before this opcode, found none"),
    (pickle.PROTO + b"\x02" + pickle.STOP, "expected one value on the pickle stack at STOP, "
                                          "found 0"),
    (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT * 2 + pickle.STOP, "found 2 and 0 open"),
    (pickle.PROTO + b"\x02" + pickle.MARK + pickle.APPEND + pickle.STOP,
     "expected a list item on the pickle stack, found none"),
    (pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + pickle.MARK + pickle.BINPUT + b"\x00",
     "expected a value to memoize on the pickle stack, found none"),
    (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + raw(b"k") + pickle.SETITEMS
     + pickle.STOP, "expected key, value pairs for SETITEMS, found an odd count"),
], ids=["no-MARK", "empty-STOP", "two-values", "below-MARK", "memo-below-MARK", "odd-SETITEMS"])
def test_stack_underflow_is_refused(tmp_path, untouched, data, match):
    refused(tmp_path, data, match)


def test_pickle_with_bytes_after_its_end_is_refused(tmp_path):
    refused(tmp_path, VALID + b"\0", "expected the pickle to end the file, but the file goes on "
                                    "for 1 bytes after it")


def test_pickle_of_protocol_0_or_1_is_refused(tmp_path):
    for protocol in (0, 1):
        refused(tmp_path, pickle.dumps({b"labels": [1]}, protocol),
                "expected a pickle of protocol 2 to 5, it starts with the opcode")


def _batch_pickle(protocol: int = 2, **changes) -> bytes:
    return pickle.dumps(batch(**changes), protocol=protocol)


@pytest.mark.parametrize("data,match", [
    (_batch_pickle(data=np.zeros((2, 3072), np.float32)), "found float32 array"),
    (_batch_pickle(data=np.zeros((2, 3072), np.int64)), "found int64 array"),
    (_batch_pickle(data=np.zeros((2, 3, 1024), np.uint8)), r"found uint8 array of shape "
                                                           r"\(2, 3, 1024\)"),
    (_batch_pickle(data=np.zeros((0, 3072), np.uint8), labels=[]), "found uint8 array of shape "
                                                                   r"\(0, 3072\)"),
    (_batch_pickle(data=np.array(["x"] * 2)), "dtype '<U1' refused|dtype 'U1' refused"),
    (_batch_pickle(data=np.zeros(2, "V8")), "dtype 'V8' refused"),
    (_batch_pickle(data=np.zeros(2, np.complex64)), "dtype 'c8' refused"),
    (_batch_pickle(data=b"\0" * 6144), "found bytes"),
    (_batch_pickle(data=[0] * 3072), "found list"),
    (_batch_pickle(labels=[1.0, 2.0]), "list of 2 integers .* found list"),
    (_batch_pickle(labels=[1, True]), "list of 2 integers"),
    (_batch_pickle(labels=[1, None]), "list of 2 integers"),
    (_batch_pickle(labels=[b"1", b"2"]), "list of 2 integers"),
    (_batch_pickle(labels=[1, 2, 3]), "list of 2 integers"),
    (_batch_pickle(labels=[1, 2**100]), "label 1 is 1267650600228229401496703205376"),
    (_batch_pickle(labels=[-1, 2]), "label 0 is -1"),
    (_batch_pickle(labels=[1, 10]), "label 1 is 10"),
    (_batch_pickle(labels=np.array([1.0, 2.0])), "list of 2 integers .* found an? array"),
    (_batch_pickle(labels=np.array([True, False])), "list of 2 integers"),
    (_batch_pickle(labels=np.array([[1], [2]])), "list of 2 integers"),
    (_batch_pickle(labels=np.array([1, 12], np.uint16)), "label 1 is 12"),
    (_batch_pickle(labels=np.array([1, -3], ">i8")), "label 1 is -3"),
    (_batch_pickle(labels=[np.float64(1.0), np.float64(2.0)]), "list of 2 integers"),
    (_batch_pickle(batch_label=[b"x"]), "b'batch_label' to be a string"),
    (_batch_pickle(filenames=[b"x", 3]), "b'filenames' a list of strings"),
    (_batch_pickle(coarse_labels=[1, 2]), "the key b'coarse_labels' appears unexpectedly"),
    (pickle.dumps({**batch(), "data": batch()[b"data"]}, 2), "the key 'data' appears twice"),
    (pickle.dumps((b"data", b"labels"), 2),
     r"expected a pickled dict, found a tuple \(bytes, bytes\)"),
], ids=["float32", "int64", "3-d", "empty", "str", "void", "complex", "bytes", "list", "float",
        "bool", "none", "bytes-labels", "count", "huge", "negative", "ten", "float-array",
        "bool-array", "2-d-labels", "uint16-out-of-range", "big-endian-negative",
        "float-scalars", "label-list", "filename-int", "extra-key", "key-twice", "not-a-dict"])
def test_valid_looking_batch_with_wrong_contents(tmp_path, untouched, data, match):
    refused(tmp_path, data, match)


def _array_state(shape: bytes, raw_bytes: bytes, dtype: str = "u1", order: str = "|") -> bytes:
    """numpy's protocol-2 recipe for an array: _reconstruct, then BUILD with a forged state."""
    dtype_opcodes = (name("numpy", "dtype") + tuple_of(text(dtype), pickle.NEWFALSE,
                                                       pickle.NEWTRUE) + pickle.REDUCE
                     + tuple_of(integer(3), text(order), pickle.NONE, pickle.NONE, pickle.NONE,
                                integer(-1), integer(-1), integer(0)) + pickle.BUILD)
    return (name("numpy.core.multiarray", "_reconstruct")
            + tuple_of(name("numpy", "ndarray"), tuple_of(integer(0)), raw(b"b")) + pickle.REDUCE
            + tuple_of(integer(1), shape, dtype_opcodes, pickle.NEWFALSE, raw(raw_bytes))
            + pickle.BUILD)


@pytest.mark.parametrize("shape,size,match", [
    (tuple_of(integer(2), integer(3072)), 6143, "needs 6,144 bytes, the pickle holds 6,143"),
    (tuple_of(integer(2), integer(3072)), 6145, "needs 6,144 bytes, the pickle holds 6,145"),
    (pickle.MARK + pickle.LONG1 + b"\x09" + (2**70).to_bytes(9, "little") + integer(3072)
     + pickle.TUPLE, 6144, "needs 3,626,777,458,843,887,524,118,528 bytes"),
    (tuple_of(integer(0), pickle.LONG1 + b"\x09" + (2**70).to_bytes(9, "little")), 0,
     r"refused an array of shape \(0, 1180591620717411303424\)"),
    (tuple_of(integer(2), integer(-3072)), 6144, "refused an array made of"),
    (tuple_of(*[integer(1)] * 5), 1, "shape of at most 4 dimensions"),
    (tuple_of(integer(2), text("3072")), 6144, "refused an array made of"),
], ids=["short", "long", "huge", "zero-and-huge", "negative", "5-d", "str-dim"])
def test_array_whose_shape_lies_about_its_bytes(tmp_path, untouched, shape, size, match):
    refused(tmp_path, with_value(_array_state(shape, bytes(size)), b"data")[0], match)


@pytest.mark.parametrize("order,dtype,match", [
    ("?", "u1", "refused the byte order \\?"),
    ("<", "O8", "dtype 'O8' refused"),
    ("<", "M8", "dtype 'M8' refused"),
    ("<", "u1, u1", "dtype 'u1, u1' refused"),
])
def test_array_with_a_forged_dtype(tmp_path, untouched, order, dtype, match):
    shape = tuple_of(integer(2), integer(3072))
    refused(tmp_path, with_value(_array_state(shape, bytes(6144), dtype, order), b"data")[0],
            match)


def test_every_truncation_and_many_byte_flips_give_a_batch_or_a_clear_error():
    """A corrupted pickle is either still a valid batch or a DataFormatError: never another
    exception, a crash or a wrong shape. (The parser of one batch file, called directly: the
    loader around it is the same for every file.)"""
    rng = np.random.default_rng(0)
    for protocol in (2, 3, 5):
        data = pickle.dumps(batch(n=1, filenames=[b"a"]), protocol=protocol)
        damaged = [data[:pos] for _, _, pos in pickletools.genops(data)]
        damaged += [data[:end] for end in rng.integers(0, len(data), 50)]
        for _ in range(500):
            flipped = bytearray(data)
            for at in rng.integers(0, len(data), rng.integers(1, 4)):
                flipped[at] = rng.integers(0, 256)
            damaged.append(bytes(flipped))
        for candidate in damaged:
            try:
                images, labels = cifar10._parse_pickle(candidate, "SOURCE")
            except DataFormatError as exc:
                assert str(exc).startswith("SOURCE: ")
                continue
            assert images.shape == (1, 3, 32, 32) and images.dtype == np.uint8
            assert labels.shape == (1,) and labels.dtype == np.int64 and 0 <= labels[0] <= 9


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("byte_keys", [True, False])
def test_round_trip_of_a_batch_pickled_at_every_protocol(tmp_path, untouched, protocol,
                                                         byte_keys):
    value = batch(n=5, seed=protocol)
    value[b"labels"][0] = np.int64(value[b"labels"][0])     # a NumPy scalar among the ints
    if not byte_keys:
        value = {key.decode(): item for key, item in value.items()}
    write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps(value, protocol))
    images, labels = load_cifar10(tmp_path, "test")
    expected = batch(n=5, seed=protocol)
    np.testing.assert_array_equal(images, expected[b"data"].reshape(5, 3, 32, 32))
    assert labels.tolist() == expected[b"labels"] and labels.dtype == np.int64
    assert images.flags.c_contiguous and images.flags.writeable


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("dtype", ["<i8", ">i4", "u1", "<u2"])
def test_round_trip_with_label_arrays_of_any_integer_dtype(tmp_path, protocol, dtype):
    value = batch(n=4)
    value[b"labels"] = np.asarray(value[b"labels"], dtype=dtype)
    value[b"data"] = np.asfortranarray(value[b"data"])
    write(tmp_path / "cifar-10-batches-py" / "test_batch", pickle.dumps(value, protocol))
    images, labels = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(images, batch(n=4)[b"data"].reshape(4, 3, 32, 32))
    assert labels.tolist() == batch(n=4)[b"labels"]
