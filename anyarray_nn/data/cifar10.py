"""CIFAR-10: 60,000 colour images of 32x32 pixels in ten classes.

Two official distributions exist, and both are read here without unpacking anything to disk:

* the binary version (``cifar-10-binary.tar.gz``, folder ``cifar-10-batches-bin``): each batch
  file is a run of 3073-byte records, one label byte (0..9) then 3072 pixel bytes, all red,
  then all green, then all blue, each channel 32x32 row-major;
* the Python version (``cifar-10-python.tar.gz``, folder ``cifar-10-batches-py``): each batch
  is a pickled dict with ``b"data"``, a (10000, 3072) uint8 array with the same pixel layout,
  and ``b"labels"``, a list of 10,000 ints.

The binary version is preferred: it needs no unpickling at all. A pickle can name any Python
callable and have the unpickler call it, so the Python version is read with a restricted
unpickler that only lets through the NumPy functions an array needs.
"""

from __future__ import annotations

import io
import lzma
import math
import os
import pathlib
import pickle
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

import numpy as np

from ._files import (DataFormatError, data_root, first_existing, open_member, root_note,
                     with_suffixes)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32                  # 3072 bytes of one image
RECORD = 1 + PIXELS                   # 3073 bytes of one binary record
OFFICIAL_RECORDS = 10_000             # records in each official batch file

BIN_FOLDER, BIN_TARBALL = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
PY_FOLDER, PY_TARBALL = "cifar-10-batches-py", "cifar-10-python.tar.gz"

Batch = tuple[np.ndarray, np.ndarray]           # images (n, 3, 32, 32), labels (n,)
Parser = Callable[[bytes, str], Batch]


def load_cifar10(root: str | os.PathLike | None = None,
                 split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the CIFAR-10 training (50,000) or test (10,000) images and labels.

    ``root`` is the data folder (default: the ``ANYARRAY_NN_DATA`` environment variable).
    ``split`` is ``"train"`` (``data_batch_1`` .. ``data_batch_5``, in order) or ``"test"``
    (``test_batch``). Sources, first found wins:

    1. binary batches ``data_batch_1.bin`` ... ``test_batch.bin`` (each possibly ``.gz`` or
       ``.xz``) in ``root/cifar-10/cifar-10-batches-bin/``, ``root/cifar-10-batches-bin/``
       or ``root/``;
    2. the tarball ``cifar-10-binary.tar.gz`` in ``root/`` or ``root/cifar-10/``;
    3. Python batches ``data_batch_1`` ... ``test_batch`` in
       ``root/cifar-10/cifar-10-batches-py/`` or ``root/cifar-10-batches-py/``;
    4. the tarball ``cifar-10-python.tar.gz`` in ``root/`` or ``root/cifar-10/``.

    Returns ``(images, labels)``: uint8 images of shape (N, 3, 32, 32) (NCHW, channels red,
    green, blue) and int64 labels of shape (N,) in 0..9; ``CIFAR10_CLASSES[label]`` names
    the class. Batches of any whole number of records are accepted (the official ones hold
    10,000 each).

    Raises :class:`FileNotFoundError` listing every place looked, and
    :class:`~anyarray_nn.data.DataFormatError` naming the file when one is truncated,
    corrupt, holds labels outside 0..9, or (Python version) is a pickle that asks for
    anything other than NumPy arrays.
    """
    if split not in SPLITS:
        raise ValueError(f"load_cifar10: split must be one of "
                         f"{', '.join(map(repr, SPLITS))}, got {split!r}")
    root = data_root(root)
    parts = _read_batches(root, BATCHES[split])
    images = np.concatenate([images for images, _ in parts])   # a fresh, writable array
    labels = np.concatenate([labels for _, labels in parts])
    return images, labels


# --------------------------------------------------------------------------- finding files

class _Source(NamedTuple):
    path: pathlib.Path         # a folder, or a tarball
    is_tarball: bool
    suffix: str                # ".bin" for the binary version, "" for the Python version
    member_folder: str         # the folder inside the tarball
    parse: Parser


def _sources(root: pathlib.Path) -> list[_Source]:
    """Every place CIFAR-10 may be, in order of preference."""
    def binary(path, tar=False):
        return _Source(path, tar, ".bin", BIN_FOLDER, _parse_binary)

    def python(path, tar=False):
        return _Source(path, tar, "", PY_FOLDER, _parse_pickle)

    return [binary(root / "cifar-10" / BIN_FOLDER), binary(root / BIN_FOLDER), binary(root),
            binary(root / BIN_TARBALL, True), binary(root / "cifar-10" / BIN_TARBALL, True),
            python(root / "cifar-10" / PY_FOLDER), python(root / PY_FOLDER),
            python(root / PY_TARBALL, True), python(root / "cifar-10" / PY_TARBALL, True)]


def _read_batches(root: pathlib.Path, batches: tuple[str, ...]) -> list[Batch]:
    """Parse ``batches`` from the first source that has them all."""
    looked, partial = [], []
    for source in _sources(root):
        names = [batch + source.suffix for batch in batches]
        if source.is_tarball:
            looked.append(f"  {source.path}")
            if source.path.is_file():
                blobs = _read_tar_members(source.path, source.member_folder, names)
                return [source.parse(data, label) for label, data in blobs]
            continue
        looked.append(f"  {source.path}/  for {', '.join(names)} (optionally .gz/.xz)")
        paths = [first_existing(with_suffixes(source.path / name)) for name in names]
        if all(paths):
            # Decompressing xz is the slow part (about 1.4 s per batch); lzma and gzip
            # release the GIL, so the batches decompress in parallel.
            def read(path):
                return source.parse(open_member(path), str(path))
            with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
                return list(pool.map(read, paths))
        if any(paths):
            missing = [name for name, path in zip(names, paths) if path is None]
            partial.append(f"{source.path} has only some batches; missing: {', '.join(missing)}")
    message = "CIFAR-10 batches not found; looked in:\n" + "\n".join(looked)
    if partial:
        message += "\n" + "\n".join(partial)
    message += root_note(root)
    message += (f"\nPut the binary batches data_batch_1.bin .. data_batch_5.bin and "
                f"test_batch.bin in {root / 'cifar-10' / BIN_FOLDER}, or {BIN_TARBALL} in "
                f"{root / 'cifar-10'}; anyarray_nn.data.download can fetch the tarball when "
                f"online.")
    raise FileNotFoundError(message)


def _read_tar_members(tarball: pathlib.Path, folder: str,
                      names: list[str]) -> list[tuple[str, bytes]]:
    """The contents of ``folder/name`` for each of ``names`` inside ``tarball``, in the order
    of ``names``, read in one pass over the archive without extracting anything to disk."""
    wanted = {f"{folder}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, mode="r:*") as archive:
            for member in archive:                    # one pass: a .tar.gz cannot seek back
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue
                if not member.isreg():
                    # A link could point anywhere on disk or in the archive: never follow it.
                    raise DataFormatError(f"{tarball}: member {name} is a link or special "
                                          f"file, expected a regular file; refusing to "
                                          f"follow it")
                found[wanted[name]] = archive.extractfile(member).read()
            # To the end, past the members we need: gzip and xz check their checksums only
            # there, and tarfile stops without a word at a damaged header further on.
            damaged_header = _rest_is_not_padding(archive.fileobj)
    except (FileNotFoundError, PermissionError):
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise DataFormatError(f"{tarball}: expected a complete tar archive, but reading it "
                              f"failed ({type(exc).__name__}: {exc}); the file is damaged or "
                              f"truncated, download it again") from None
    if damaged_header:
        raise DataFormatError(f"{tarball}: the tar archive stops at a damaged member header "
                              f"with data after it; the file is damaged, download it again")
    missing = [f"{folder}/{name}" for name in names if name not in found]
    if missing:
        raise DataFormatError(f"{tarball}: expected the members {', '.join(missing)}, "
                              f"not found in the archive (is it the right tarball?)")
    return [(f"{tarball} (member {folder}/{name})", found[name]) for name in names]


def _rest_is_not_padding(stream: Any, chunk: int = 1 << 20) -> bool:
    """Read ``stream`` to its end; True if anything but zero bytes (a tar's padding) is left."""
    data_left = False
    while block := stream.read(chunk):
        data_left = data_left or bool(block.strip(b"\0"))
    return data_left


# --------------------------------------------------------------------------- the binary version

def _parse_binary(data: bytes, source: str) -> Batch:
    """Images (N, 3, 32, 32) and labels (N,) from the bytes of one binary batch."""
    records, rest = divmod(len(data), RECORD)
    if records == 0 or rest:
        raise DataFormatError(
            f"{source}: expected whole {RECORD}-byte records (1 label byte + {PIXELS} pixel "
            f"bytes; an official batch is {OFFICIAL_RECORDS:,} records = "
            f"{OFFICIAL_RECORDS * RECORD:,} bytes), but it holds {len(data):,} bytes = "
            f"{records} whole record{'' if records == 1 else 's'} and {rest} bytes of a partial "
            f"record (truncated?)")
    table = np.frombuffer(data, dtype=np.uint8).reshape(records, RECORD)
    labels = _check_labels(table[:, 0], source)
    return table[:, 1:].reshape(records, *SHAPE), labels


def _check_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """``labels`` as int64 after checking each is a class index 0..9."""
    bad = np.flatnonzero((labels < 0) | (labels >= len(CIFAR10_CLASSES)))
    if bad.size:
        raise DataFormatError(f"{source}: expected labels 0..{len(CIFAR10_CLASSES) - 1}, "
                              f"label {bad[0]} is {labels[bad[0]]}")
    return labels.astype(np.int64)


# --------------------------------------------------------------------------- the Python version

def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles (protocol < 3) store bytes as _codecs.encode(text, "latin1"); only that
    # use is let through, not the general codec machinery.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused")
    return text.encode("latin1")


class _PickledDtype:
    """What a pickle's ``numpy.dtype(name, align, copy)`` builds here: the name of a plain
    numeric dtype and a byte order, nothing more. NumPy's own dtype would take its flags from
    the file, which can turn raw bytes from the file into object pointers (a crash)."""

    def __init__(self, name: Any, align: Any = False, copy: Any = False) -> None:
        name = name.decode("latin1") if isinstance(name, bytes) else name
        try:
            plain = isinstance(name, str) and np.dtype(name).kind in "biufc"
        except TypeError:
            plain = False
        if not plain:
            raise pickle.UnpicklingError(f"dtype {name!r} refused: a CIFAR-10 batch holds "
                                         f"plain numbers only")
        self.name, self.order = name, "|"

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, ...): only the byte order is used; flags are never trusted.
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        order = order.decode("latin1") if isinstance(order, bytes) else order
        if order not in ("<", ">", "=", "|"):
            raise pickle.UnpicklingError(f"byte order {order!r} refused")
        self.order = order

    def numpy(self) -> np.dtype:
        """The NumPy dtype this stands for."""
        return np.dtype(self.name).newbyteorder(self.order if self.order != "|" else "=")


class _PickledArray:
    """What a pickle's ``_reconstruct(ndarray, ...)`` builds here; its ``__setstate__`` makes a
    NumPy array from the file's bytes with :func:`np.frombuffer` (``.array``)."""

    def __init__(self, *args: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("array state refused: expected (shape, dtype, "
                                         "fortran order, bytes)")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _array_from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _array_from_bytes(raw: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if isinstance(raw, str):  # Python 2 pickles read with encoding="latin1"
        raw = raw.encode("latin1")
    if not isinstance(dtype, _PickledDtype) or not isinstance(raw, (bytes, bytearray)) or not (
            isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise pickle.UnpicklingError("array refused: expected a shape, a plain dtype and bytes")
    dt = dtype.numpy()
    if len(raw) != math.prod(shape) * dt.itemsize:
        raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dt} needs "
                                     f"{math.prod(shape) * dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order)


def _reconstruct(cls: Any, *args: Any) -> _PickledArray:
    if cls is not _PickledArray:
        raise pickle.UnpicklingError("_reconstruct of anything but numpy.ndarray refused")
    return _PickledArray()


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    order = order.decode("latin1") if isinstance(order, bytes) else order
    return _array_from_bytes(bytes(buffer), dtype, shape, "F" if order == "F" else "C")


def _scalar(dtype: Any, raw: Any) -> Any:
    return _array_from_bytes(raw, dtype, (), "C")[()]


def _unpickled(value: Any) -> Any:
    """A value from the restricted unpickler with its array stand-ins replaced by arrays."""
    return value.array if isinstance(value, _PickledArray) else value


# What a pickled array (and a NumPy scalar) refers to, under the NumPy 1.x and 2.x module
# names, mapped to the stand-ins above: the pickle's module names import nothing, and no NumPy
# constructor sees the file's state.
_ALLOWED_GLOBALS = {("numpy", "ndarray"): _PickledArray, ("numpy", "dtype"): _PickledDtype,
                    ("_codecs", "encode"): _latin1_encode}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _frombuffer


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, strings, numbers and NumPy arrays.

    A pickle refers to a callable by module and name (``os system``) and the unpickler calls
    it while loading: plain :func:`pickle.load` on a file from the internet runs whatever the
    file asks for. Every such reference goes through :meth:`find_class`, which here looks it
    up in a short allow-list and refuses anything else with a :class:`DataFormatError`, so the
    refused callable is never imported, let alone called. Containers, strings and numbers come
    from pickle opcodes of their own and need no lookup.
    """

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")    # the official batches are Python 2 pickles
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else raises DataFormatError."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self.source}: refused to unpickle the global {module}.{name}; a CIFAR-10 "
                f"batch needs only NumPy arrays, so this is not one (loaded with plain pickle "
                f"it could run code)") from None


def _parse_pickle(data: bytes, source: str) -> Batch:
    """Images (N, 3, 32, 32) and labels (N,) from the bytes of one Python-version batch."""
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), source).load()
    except DataFormatError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways: EOFError, UnpicklingError,
        # ValueError, TypeError from a truncated array state...; all mean "not a valid batch"
        raise DataFormatError(f"{source}: expected a pickled CIFAR-10 batch, but unpickling "
                              f"failed ({type(exc).__name__}: {exc}); the file is truncated or "
                              f"corrupt") from None
    if not isinstance(batch, dict):
        raise DataFormatError(f"{source}: expected a pickled dict, found {type(batch).__name__}")
    images, labels = (_unpickled(batch.get(key.encode(), batch.get(key)))
                      for key in ("data", "labels"))
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == PIXELS and len(images) > 0):
        found = (f"{images.dtype} array of shape {images.shape}"
                 if isinstance(images, np.ndarray) else type(images).__name__)
        raise DataFormatError(f"{source}: expected b'data' to be a uint8 array of shape "
                              f"(N, {PIXELS}) (N = {OFFICIAL_RECORDS:,} in the official "
                              f"batches), found {found}")
    if isinstance(labels, (list, tuple)):
        labels = [_unpickled(v) for v in labels]
    labels = np.asarray(labels) if isinstance(labels, (list, tuple, np.ndarray)) else None
    if labels is None or labels.dtype.kind not in "iu" or labels.shape != (len(images),):
        raise DataFormatError(f"{source}: expected b'labels' to be a list of {len(images)} "
                              f"integers (one per image)")
    images = np.ascontiguousarray(images)  # a pickle may hold a Fortran-order array
    return images.reshape(len(images), *SHAPE), _check_labels(labels, source)
