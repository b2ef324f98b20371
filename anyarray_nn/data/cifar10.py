"""CIFAR-10: 60,000 colour images of 32x32 pixels in ten classes.

Two official distributions exist, and both are read here without unpacking anything to disk:

* the binary version (``cifar-10-binary.tar.gz``, folder ``cifar-10-batches-bin``): each batch
  file is a run of 3073-byte records, one label byte (0..9) then 3072 pixel bytes, all red,
  then all green, then all blue, each channel 32x32 row-major;
* the Python version (``cifar-10-python.tar.gz``, folder ``cifar-10-batches-py``): each batch
  is a pickled dict with ``b"data"``, a (10000, 3072) uint8 array with the same pixel layout,
  and ``b"labels"``, a list of 10,000 ints.

The binary version is preferred: it needs no unpickling at all. A pickle can name any Python
callable and have the unpickler call it, so the Python version is never given to an unpickler:
its opcodes run on a small stack machine of its own that builds only dicts, lists, strings,
numbers and NumPy arrays (see "the Python version" below).

No read goes past what a batch can hold (10,000 records), whatever a compressed file or a
tar header declares.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import lzma
import math
import os
import pathlib
import pickletools
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

import numpy as np

from ._files import (DataFormatError, LimitedReader, compression_of, data_root, first_existing,
                     open_decompressed, read_at_most, root_note, wants_download,
                     with_suffixes)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32                  # 3072 bytes of one image
RECORD = 1 + PIXELS                   # 3073 bytes of one binary record
OFFICIAL_RECORDS = 10_000             # records in each official batch file, and the most read

# The most bytes a batch file may hold, decompressed: 10,000 records in the binary version. A
# pickle from Python 3 at protocol 2 stores bytes as UTF-8 text, up to two bytes for each, so
# its pixels take up to twice their size; the labels and file names need well under 8 MiB.
MAX_BINARY_BATCH = OFFICIAL_RECORDS * RECORD
MAX_PICKLE_BATCH = 2 * OFFICIAL_RECORDS * PIXELS + (8 << 20)
# A tarball holds the six batches, a readme and the class names (9 members in all).
MAX_TAR_MEMBERS = 64

BIN_FOLDER, BIN_TARBALL = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
PY_FOLDER, PY_TARBALL = "cifar-10-batches-py", "cifar-10-python.tar.gz"

Batch = tuple[np.ndarray, np.ndarray]           # images (n, 3, 32, 32), labels (n,)
Parser = Callable[[bytes, str], Batch]


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train", *,
                 download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load the CIFAR-10 training (50,000) or test (10,000) images and labels.

    ``root`` is the data folder (default: the ``ANYARRAY_NN_DATA`` environment variable,
    else the user's cache folder, see :func:`~anyarray_nn.data._files.data_root`).
    ``download=True`` first fetches the binary tarball into ``root/cifar-10/`` unless it is
    there with its published checksum (:func:`anyarray_nn.data.download.download`).
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
    the class. Batches of 1 to 10,000 records are accepted (the official ones hold 10,000).

    Raises :class:`FileNotFoundError` listing every place looked, and
    :class:`~anyarray_nn.data.DataFormatError` naming the file when one is truncated,
    corrupt, larger than a batch can be (reading stops there), holds labels outside 0..9,
    or (Python version) is a pickle that holds anything but a batch's dict of strings,
    numbers and NumPy arrays.
    """
    if split not in SPLITS:
        raise ValueError(f"load_cifar10: split must be one of "
                         f"{', '.join(map(repr, SPLITS))}, got {split!r}")
    root = data_root(root)
    if wants_download(download, "load_cifar10"):
        from .download import download as fetch
        fetch("cifar10", root)
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
    limit: int                 # the most bytes a batch file may hold
    what: str                  # the limit in words, for messages


def _sources(root: pathlib.Path) -> list[_Source]:
    """Every place CIFAR-10 may be, in order of preference."""
    def binary(path, tar=False):
        return _Source(path, tar, ".bin", BIN_FOLDER, _parse_binary, MAX_BINARY_BATCH,
                       f"a batch of at most {OFFICIAL_RECORDS:,} records of {RECORD} bytes")

    def python(path, tar=False):
        return _Source(path, tar, "", PY_FOLDER, _parse_pickle, MAX_PICKLE_BATCH,
                       f"a pickled batch of at most {OFFICIAL_RECORDS:,} images")

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
                blobs = _read_tar_members(source, names)
                return [source.parse(data, label) for label, data in blobs]
            continue
        looked.append(f"  {source.path}/  for {', '.join(names)} (optionally .gz/.xz)")
        paths = [first_existing(with_suffixes(source.path / name)) for name in names]
        if all(paths):
            # Decompressing xz is the slow part (about 1.4 s per batch); lzma and gzip
            # release the GIL, so the batches decompress in parallel.
            def read(path):
                return source.parse(read_at_most(path, source.limit, source.what), str(path))
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


def _read_tar_members(source: _Source, names: list[str]) -> list[tuple[str, bytes]]:
    """The contents of ``folder/name`` for each of ``names`` inside the tarball ``source``, in
    the order of ``names``, read in one pass over the archive without extracting anything.

    Only regular files are read, each at most ``source.limit`` bytes as its header declares;
    links, devices, duplicates and archives longer than six such batches (plus 1 MiB for the
    readme and the class names) are refused, as are more than :data:`MAX_TAR_MEMBERS` members.
    """
    tarball, folder = source.path, source.member_folder
    wanted = {f"{folder}/{name}": name for name in names}
    found: dict[str, bytes] = {}
    batches = len(BATCHES["train"]) + len(BATCHES["test"])
    try:
        # Stream mode ("r|"): tarfile reads forward only, from a stream that stops the whole
        # archive at its limit (a forged header cannot make it read or buffer more).
        # (a LimitedReader reads like the file object tarfile's stream mode takes)
        with open_decompressed(tarball, compression_of(tarball)) as stream, tarfile.open(  # type: ignore[call-overload]
                fileobj=LimitedReader(stream, batches * source.limit + (1 << 20), tarball,
                                      f"a tar of {batches} batches"), mode="r|") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_TAR_MEMBERS:
                    raise DataFormatError(f"{tarball}: expected at most {MAX_TAR_MEMBERS} "
                                          f"members in a CIFAR-10 tarball, found more")
                name = member.name.removeprefix("./")
                if name not in wanted:
                    continue                          # never extracted: its name is harmless
                if wanted[name] in found:
                    raise DataFormatError(f"{tarball}: member {name} appears twice; expected "
                                          f"it once (which copy is the batch?)")
                if not member.isreg():
                    # A link could point anywhere on disk or in the archive: never follow it.
                    raise DataFormatError(f"{tarball}: member {name} is a link or special "
                                          f"file, expected a regular file; refusing to "
                                          f"follow it")
                if member.size > source.limit:
                    raise DataFormatError(f"{tarball}: member {name} declares "
                                          f"{member.size:,} bytes, expected at most "
                                          f"{source.limit:,} ({source.what})")
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
#
# A pickle is a program for a stack machine, and pickle.Unpickler runs it with Python's own
# objects: find_class may only hand out allowed names, but the opcodes around them (BUILD,
# SETITEM, REDUCE...) act on whatever they got, which can change attributes of the very
# functions that were allowed. So no unpickler is used at all: pickletools.genops splits the
# bytes into opcodes, and the small machine below runs only the opcodes a CIFAR-10 batch needs,
# on values it creates itself. A name from the file (GLOBAL) becomes an inert label, never an
# imported object; REDUCE and BUILD on a label make one of the stand-ins defined here, from
# whose checked recipe the NumPy arrays are built with np.frombuffer. Nothing the file says can
# reach any other object of the process.

# The names NumPy pickles an array, a dtype and a scalar with (NumPy 1.x and 2.x module names),
# and those Python 3 writes bytes with in protocol 2 (empty bytes as a call of bytes()).
_ALLOWED_GLOBALS = {("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype",
                    ("_codecs", "encode"): "encode", ("__builtin__", "bytes"): "bytes",
                    ("builtins", "bytes"): "bytes"}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = "_reconstruct"
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = "scalar"
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = "_frombuffer"

# Plain numeric dtypes, as a pickle names them (byte order apart); no others are built.
_PLAIN_DTYPES = frozenset(f"{kind}{size}" for kind, sizes in
                          (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248"))
                          for size in sizes)
_KEYS = ("batch_label", "labels", "data", "filenames")       # what a CIFAR-10 batch holds
# A batch takes about 9 opcodes per record (Python 3, protocol 2: a label, and a file name with
# its memo bookkeeping); more means a file built to exhaust memory with small objects.
MAX_PICKLE_OPCODES = 20 * OFFICIAL_RECORDS + 1000
MAX_ARRAY_DIMS = 4


@dataclasses.dataclass(frozen=True)
class _Global:
    """A name of :data:`_ALLOWED_GLOBALS` as the pickle refers to it: a label, not the object."""

    name: str


class _Dtype:
    """What ``numpy.dtype(name, align, copy)`` makes here: a plain numeric dtype, whose byte
    order (and nothing else) its BUILD may set once."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype, self.built = dtype, False


class _Array:
    """What ``_reconstruct(ndarray, ...)`` makes here: an empty stand-in whose BUILD (once)
    gives it ``array``; ``_frombuffer(...)`` makes one with ``array`` already set."""

    def __init__(self, array: np.ndarray | None = None) -> None:
        self.array = array


_LEAVES = (type(None), bool, int, float, str, bytes, bytearray)
_STAND_INS = (_Global, _Dtype, _Array)


class _PickleMachine:
    """Runs the opcodes of one pickled CIFAR-10 batch (see the comment above); :meth:`run`
    returns the dict it holds. Only these shapes of values exist, which keeps every container
    shallow and every dict key hashable without recursion: a dict maps bytes or str keys to
    leaves (None, bool, int, float, str, bytes), lists of leaves, or arrays; a tuple holds
    leaves, stand-ins and tuples of leaves."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source = data, source
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.position = 0

    def refuse(self, why: str, note: str = "") -> DataFormatError:
        """The error for the opcode at the current position."""
        return DataFormatError(f"{self.source}: {why} (at byte {self.position}); a CIFAR-10 "
                               f"batch is a pickled dict of NumPy arrays, lists and strings, "
                               f"so this is not one{note}")

    def run(self) -> dict:
        """The dict the pickle holds; DataFormatError naming the file and the byte otherwise."""
        stream = io.BytesIO(self.data)
        opcodes = pickletools.genops(stream)
        for count in itertools.count(1):
            try:
                opcode, arg, position = next(opcodes)
                self.position = position or 0
            except StopIteration:
                break
            except ValueError as exc:  # cut short, a length past the end, an unknown opcode...
                raise DataFormatError(f"{self.source}: expected a pickled CIFAR-10 batch, but "
                                      f"the pickle is truncated or corrupt ({exc}; reading "
                                      f"stopped at byte {stream.tell()})") from None
            if count > MAX_PICKLE_OPCODES:
                raise self.refuse(f"more than {MAX_PICKLE_OPCODES:,} pickle opcodes, for at "
                                  f"most {OFFICIAL_RECORDS:,} records")
            if count == 1 and opcode.name != "PROTO":
                raise self.refuse(f"expected a pickle of protocol 2 to 5, it starts with the "
                                  f"opcode {opcode.name}")
            run = getattr(self, f"op_{opcode.name}", None)
            if run is None:
                raise self.refuse(f"refused the pickle opcode {opcode.name}")
            run(arg)
        if stream.tell() != len(self.data):
            raise DataFormatError(f"{self.source}: expected the pickle to end the file, but "
                                  f"the file goes on for {len(self.data) - stream.tell():,} "
                                  f"bytes after it")
        return self.result

    # -- the stack

    def push(self, value: Any) -> None:
        self.stack.append(value)

    def peek(self, kind: str = "value") -> Any:
        """The value on top of the stack, above the last MARK (like pickle, never below it)."""
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise self.refuse(f"expected a {kind} on the pickle stack, found none")
        return self.stack[-1]

    def pop(self, kind: str = "value") -> Any:
        self.peek(kind)
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise self.refuse("expected a MARK before this opcode, found none")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self, kind: type, what: str) -> Any:
        target = self.peek(what)
        if type(target) is not kind:
            raise self.refuse(f"expected {what} to add to, found {_describe(target)}")
        return target

    def tuple_of(self, items: list[Any]) -> tuple:
        for item in items:
            if not (isinstance(item, _LEAVES + _STAND_INS) or (type(item) is tuple and all(
                    isinstance(inner, _LEAVES) for inner in item))):
                raise self.refuse(f"refused {_describe(item)} inside a tuple")
        return tuple(items)

    # -- opcodes: the frame of the pickle

    def op_PROTO(self, protocol: int) -> None:
        if self.position != 0 or not 2 <= protocol <= 5:
            raise self.refuse(f"expected one PROTO of 2 to 5 at the start, found PROTO "
                              f"{protocol}")

    def op_FRAME(self, size: int) -> None:
        pass  # only a hint for buffering

    def op_STOP(self, arg: None) -> None:
        if self.marks or len(self.stack) != 1:
            raise self.refuse(f"expected one value on the pickle stack at STOP, found "
                              f"{len(self.stack)} and {len(self.marks)} open MARKs")
        self.result = self.stack.pop()
        if type(self.result) is not dict:
            raise DataFormatError(f"{self.source}: expected a pickled dict, found "
                                  f"{_describe(self.result)}")

    def op_MARK(self, arg: None) -> None:
        self.marks.append(len(self.stack))

    # -- values

    def op_NONE(self, arg: None) -> None:
        self.push(None)

    def op_NEWTRUE(self, arg: None) -> None:
        self.push(True)

    def op_NEWFALSE(self, arg: None) -> None:
        self.push(False)

    def op_BININT(self, value: Any) -> None:
        self.push(value)

    op_BININT1 = op_BININT2 = op_LONG1 = op_BINFLOAT = op_BININT
    op_SHORT_BINUNICODE = op_BINUNICODE = op_BINUNICODE8 = op_BININT
    op_SHORT_BINBYTES = op_BINBYTES = op_BINBYTES8 = op_BYTEARRAY8 = op_BININT

    def op_SHORT_BINSTRING(self, text: str) -> None:
        self.push(text.encode("latin-1"))   # a Python 2 str: its bytes, as encoding="bytes"

    op_BINSTRING = op_SHORT_BINSTRING

    # -- containers

    def op_EMPTY_DICT(self, arg: None) -> None:
        self.push({})

    def op_EMPTY_LIST(self, arg: None) -> None:
        self.push([])

    def op_EMPTY_TUPLE(self, arg: None) -> None:
        self.push(())

    def op_TUPLE(self, arg: None) -> None:
        self.push(self.tuple_of(self.pop_mark()))

    def op_TUPLE1(self, arg: None) -> None:
        self.push(self.tuple_of([self.pop("tuple item")]))

    def op_TUPLE2(self, arg: None) -> None:
        second, first = self.pop("tuple item"), self.pop("tuple item")
        self.push(self.tuple_of([first, second]))

    def op_TUPLE3(self, arg: None) -> None:
        third, second, first = (self.pop("tuple item") for _ in range(3))
        self.push(self.tuple_of([first, second, third]))

    def op_APPEND(self, arg: None) -> None:
        self.extend([self.pop("list item")])

    def op_APPENDS(self, arg: None) -> None:
        self.extend(self.pop_mark())

    def extend(self, items: list[Any]) -> None:
        target = self.top(list, "a list")
        for item in items:
            if not isinstance(item, _LEAVES):
                raise self.refuse(f"refused {_describe(item)} inside a list")
        target.extend(items)

    def op_SETITEM(self, arg: None) -> None:
        value, key = self.pop("dict value"), self.pop("dict key")
        self.set_items([key, value])

    def op_SETITEMS(self, arg: None) -> None:
        self.set_items(self.pop_mark())

    def set_items(self, items: list[Any]) -> None:
        target = self.top(dict, "a dict")
        if len(items) % 2:
            raise self.refuse("expected key, value pairs for SETITEMS, found an odd count")
        for key, value in zip(items[::2], items[1::2]):
            if type(key) not in (bytes, str):
                raise self.refuse(f"refused a dict key that is {_describe(key)}")
            if key in target:
                raise self.refuse(f"the dict key {_shorten(repr(key))} is set twice")
            if not (isinstance(value, _LEAVES) or type(value) in (list, _Array)):
                raise self.refuse(f"refused {_describe(value)} as a dict value")
            target[key] = value

    # -- the memo

    def op_BINPUT(self, index: int) -> None:
        self.memo[index] = self.peek("value to memoize")

    op_LONG_BINPUT = op_BINPUT

    def op_MEMOIZE(self, arg: None) -> None:
        self.op_BINPUT(len(self.memo))

    def op_BINGET(self, index: int) -> None:
        if index not in self.memo:
            raise self.refuse(f"the memo has no entry {index}")
        self.push(self.memo[index])

    op_LONG_BINGET = op_BINGET

    # -- names, calls and states: only the allowed names, only on the stand-ins

    def op_GLOBAL(self, names: str) -> None:
        module, _, name = names.partition(" ")
        self.push(self.allowed(module, name))

    def op_STACK_GLOBAL(self, arg: None) -> None:
        name, module = self.pop("global name"), self.pop("module name")
        if type(module) is not str or type(name) is not str:
            raise self.refuse(f"expected two strings for STACK_GLOBAL, found "
                              f"{_describe(module)} and {_describe(name)}")
        self.push(self.allowed(module, name))

    def allowed(self, module: str, name: str) -> _Global:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise self.refuse(f"refused to unpickle the global {_shorten(module)}."
                              f"{_shorten(name)}", " (loaded with plain pickle, it could run "
                                                   "code)")
        return _Global(_ALLOWED_GLOBALS[(module, name)])

    def op_REDUCE(self, arg: None) -> None:
        args, func = self.pop("argument tuple"), self.pop("callable")
        if type(func) is not _Global or type(args) is not tuple:
            raise self.refuse(f"refused to call {_describe(func)} with {_describe(args)}")
        self.push(self.call(func.name, args))

    def call(self, name: str, args: tuple) -> Any:
        """What the allowed ``name`` called with ``args`` makes here."""
        if name == "encode" and len(args) == 2 and type(args[0]) is str:
            if args[1] not in ("latin1", "latin-1"):
                raise self.refuse(f"_codecs.encode with encoding {_shorten(args[1])} refused")
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                raise self.refuse("expected latin-1 text for _codecs.encode") from None
        if name == "bytes" and not args:
            return b""
        if name == "dtype" and len(args) == 3 and type(args[0]) in (str, bytes):
            code = args[0].decode("latin-1") if type(args[0]) is bytes else args[0]
            if code not in _PLAIN_DTYPES:
                raise self.refuse(f"dtype {_shorten(repr(code))} refused: not a plain "
                                  f"numeric dtype")
            return _Dtype(np.dtype(code))
        if name == "_reconstruct" and len(args) == 3 and args[0] == _Global("ndarray"):
            return _Array()
        if name == "scalar" and len(args) == 2 and type(args[0]) is _Dtype:
            return self.array(args[1], args[0], (), False).item()
        if name == "_frombuffer" and len(args) == 4 and args[3] in ("C", "F"):
            return _Array(self.array(args[0], args[1], args[2], args[3] == "F"))
        raise self.refuse(f"refused the call of {name} with {_describe(args)}")

    def op_BUILD(self, arg: None) -> None:
        state, target = self.pop("state"), self.pop("object")
        self.push(target)
        if type(target) is _Dtype and not target.built and type(state) is tuple \
                and len(state) >= 2:
            order = state[1].decode("latin-1") if type(state[1]) is bytes else state[1]
            if order not in ("<", ">", "=", "|"):
                raise self.refuse(f"refused the byte order {_shorten(order)}")
            target.dtype = target.dtype.newbyteorder("=" if order == "|" else order)  # type: ignore[arg-type]
            target.built = True
        elif type(target) is _Array and target.array is None and type(state) is tuple \
                and len(state) in (4, 5):
            shape, dtype, fortran, raw = state[-4:]
            target.array = self.array(raw, dtype, shape, fortran)
        else:
            raise self.refuse(f"refused to set the state of {_describe(target)} to "
                              f"{_describe(state)}")

    def array(self, raw: Any, dtype: Any, shape: Any, fortran: Any) -> np.ndarray:
        """The array that ``raw`` holds, after checking that it is bytes of exactly the length
        ``shape`` and ``dtype`` (a :class:`_Dtype`) need."""
        if type(raw) not in (bytes, bytearray) or type(dtype) is not _Dtype \
                or type(shape) is not tuple or len(shape) > MAX_ARRAY_DIMS \
                or not all(type(n) is int and n >= 0 for n in shape) \
                or type(fortran) not in (bool, int):
            raise self.refuse(f"refused an array made of {_describe(raw)}, {_describe(dtype)} "
                              f"and {_describe(shape)}: expected bytes, a plain dtype and a "
                              f"shape of at most {MAX_ARRAY_DIMS} dimensions")
        needed = math.prod(shape) * dtype.dtype.itemsize   # Python ints: cannot wrap around
        if len(raw) != needed:
            raise self.refuse(f"an array of shape {shape} and dtype {dtype.dtype} needs "
                              f"{needed:,} bytes, the pickle holds {len(raw):,}")
        try:
            return np.frombuffer(raw, dtype=dtype.dtype).reshape(shape,
                                                                 order="F" if fortran else "C")
        except ValueError as exc:       # e.g. a zero-size array with a dimension past 2**63
            raise self.refuse(f"refused an array of shape {shape} ({exc})") from None


def _shorten(value: Any, width: int = 60) -> str:
    """``value`` (a str as it is, anything else as its repr) cut to ``width`` characters: the
    names and keys a file holds go into messages."""
    text = value if type(value) is str else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _describe(value: Any) -> str:
    """A short description of a value from the pickle, for messages: its type, and for a tuple
    the types inside (never a long or deep repr)."""
    if type(value) is tuple:
        return "a tuple (" + ", ".join(_describe(item) for item in value[:6]) + \
            (", ...)" if len(value) > 6 else ")")
    if type(value) is _Global:
        return f"the global {value.name}"
    if type(value) in (_Dtype, _Array):
        return "a dtype stand-in" if type(value) is _Dtype else "an array stand-in"
    return type(value).__name__


def _parse_pickle(data: bytes, source: str) -> Batch:
    """Images (N, 3, 32, 32) and labels (N,) from the bytes of one Python-version batch."""
    batch: dict[str, Any] = {}
    for key, value in _PickleMachine(data, source).run().items():
        name = key.decode("latin-1") if type(key) is bytes else key
        if name not in _KEYS or name in batch:
            problem = "twice (as bytes and as str)" if name in batch else "unexpectedly"
            raise DataFormatError(f"{source}: the key {_shorten(repr(key))} appears {problem}; "
                                  f"expected the keys {', '.join(_KEYS)} of a CIFAR-10 batch")
        batch[name] = value
    held = batch.get("data")
    images = held.array if isinstance(held, _Array) and type(held) is _Array else None
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
            and images.shape[1] == PIXELS and 0 < len(images) <= OFFICIAL_RECORDS):
        found = (f"{images.dtype} array of shape {images.shape}" if images is not None else
                 _describe(batch["data"]) if "data" in batch else "no such key")
        raise DataFormatError(f"{source}: expected b'data' to be a uint8 array of shape "
                              f"(N, {PIXELS}) with 1 <= N <= {OFFICIAL_RECORDS:,} (N = "
                              f"{OFFICIAL_RECORDS:,} in the official batches), found {found}")
    labels = _labels(batch.get("labels"), len(images), source)
    label, filenames = batch.get("batch_label", b""), batch.get("filenames", [])
    if type(label) not in (bytes, str) or type(filenames) is not list or not all(
            type(name) in (bytes, str) for name in filenames):
        raise DataFormatError(f"{source}: expected b'batch_label' to be a string and "
                              f"b'filenames' a list of strings, found {_describe(label)} and "
                              f"{_describe(filenames)}")
    images = np.ascontiguousarray(images)  # a pickle may hold a Fortran-order array
    return images.reshape(len(images), *SHAPE), labels


def _labels(value: Any, count: int, source: str) -> np.ndarray:
    """The int64 labels of a pickled batch: a list of ``count`` ints, or a 1-D integer array."""
    if type(value) is list and len(value) == count and all(type(v) is int for v in value):
        bad = next((i for i, v in enumerate(value) if not 0 <= v < len(CIFAR10_CLASSES)), None)
        if bad is not None:     # before np.array: a huge int would not fit int64
            raise DataFormatError(f"{source}: expected labels 0..{len(CIFAR10_CLASSES) - 1}, "
                                  f"label {bad} is {value[bad]}")
        return np.array(value, dtype=np.int64)
    labels = value.array if type(value) is _Array else None
    if labels is None or labels.dtype.kind not in "iu" or labels.shape != (count,):
        raise DataFormatError(f"{source}: expected b'labels' to be a list of {count} integers "
                              f"(one per image), found {_describe(value)}")
    return _check_labels(labels, source)
