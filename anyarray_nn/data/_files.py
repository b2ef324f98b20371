"""File helpers shared by the data-set loaders: where the data lives, finding a file among
several possible places, and reading it with transparent decompression that never holds or
decompresses more than the format allows (a small file cannot inflate to gigabytes).

Everything here works on the host: paths, bytes and NumPy arrays, never device arrays.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import logging
import os
import pathlib
import zlib
from typing import Any, BinaryIO, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger("anyarray_nn")

ENV_VAR = "ANYARRAY_NN_DATA"

# A data file may sit on disk as it was published or compressed; these are tried in order.
SUFFIXES = ("", ".gz", ".xz")


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the format promises.

    The message names the file, what was expected and what was found (a truncated download,
    a wrong file under the right name, a corrupt archive, a refused pickle global...).
    """


def data_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder the data sets live under.

    ``root`` when given, else the ``ANYARRAY_NN_DATA`` environment variable, else the
    user's cache folder for this library (:func:`default_root`: ``~/.cache/anyarray_nn/data``
    on Linux, as platformdirs names it on each system), where ``download=True`` puts the
    files. Which one is used is logged (once per folder).
    """
    if root is not None:
        return pathlib.Path(root).expanduser()
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return pathlib.Path(from_env).expanduser()
    folder = default_root()
    if folder not in _announced:
        _announced.add(folder)
        logger.info("data folder: %s (the default cache; pass root=DIR or set %s to use "
                    "another)", folder, ENV_VAR)
    return folder


_announced: set[pathlib.Path] = set()


def wants_download(value: object, loader: str) -> bool:
    """A loader's ``download`` argument, which must be True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{loader}: download: expected True or False, got {value!r}")
    return value


def default_root() -> pathlib.Path:
    """The default data folder: ``data`` in the user's cache folder for anyarray_nn
    (platformdirs' ``user_cache_dir``), created by ``download``."""
    import platformdirs
    return pathlib.Path(platformdirs.user_cache_dir("anyarray_nn")) / "data"


def with_suffixes(path: pathlib.Path, suffixes: Sequence[str] = SUFFIXES) -> list[pathlib.Path]:
    """``path`` as published and with each compression suffix: ``[p, p.gz, p.xz]``."""
    return [path.with_name(path.name + suffix) for suffix in suffixes]


def first_existing(paths: Iterable[pathlib.Path]) -> pathlib.Path | None:
    """The first of ``paths`` that is an existing file, or ``None``."""
    for path in paths:
        if path.is_file():
            return path
    return None


def find_first(root: pathlib.Path, candidates: Sequence[str], *, what: str,
               hint: str = "") -> pathlib.Path:
    """The first existing file among ``candidates`` (paths relative to ``root``), each also
    tried with the suffixes ``.gz`` and ``.xz``.

    Raises :class:`FileNotFoundError` listing every path looked at, so that the message
    alone tells the user where to put the file; ``what`` names the file in words and
    ``hint`` is appended (typically the full list of files the data set needs).
    """
    looked = [path for rel in candidates for path in with_suffixes(root / rel)]
    found = first_existing(looked)
    if found is not None:
        return found
    raise FileNotFoundError(not_found_message(root, what, looked, hint))


def not_found_message(root: pathlib.Path, what: str, looked: Sequence[pathlib.Path],
                      hint: str = "") -> str:
    """The text of a 'file not found' error: what is missing and every place looked."""
    places = "\n".join(f"  {path}" for path in looked)
    message = f"{what} not found; looked for:\n{places}" + root_note(root)
    if hint:
        message += "\n" + hint
    return message


def root_note(root: pathlib.Path) -> str:
    """A line for a 'not found' message about the data folder ``root``: that it does not
    exist, and that the environment variable ``ANYARRAY_NN_DATA`` names it when it does
    (the user may have forgotten that it is set, or where to). Empty when neither applies."""
    from_env = os.environ.get(ENV_VAR, "").strip()
    named = bool(from_env) and pathlib.Path(from_env).expanduser() == root
    if not root.is_dir():
        if not from_env and root in _announced:
            return (f"\n(the data folder {root}, the default cache, does not exist: "
                    f"download=True fetches the files there; or pass root=DIR or set "
                    f"{ENV_VAR})")
        by_env = f", named by the environment variable {ENV_VAR}," if named else ""
        return f"\n(the data folder {root}{by_env} does not exist)"
    if named:
        return (f"\n(the data folder {root} is the one the environment variable {ENV_VAR} "
                f"names; pass root=DIR to the loader to use another)")
    return ""


# How far a compressed file can expand at most, per byte on disk. Reading refuses up front a
# size that the file cannot hold (a forged header), so a small file never makes the reader
# allocate or decompress gigabytes.
# - deflate (gzip) codes a match of at most 258 bytes in at least 2 bits: at most 1032 bytes
#   out per byte in (zlib reaches 1029 on zeros);
# - LZMA (xz) codes a match of at most 273 bytes in at least 14 range-coder decisions, each at
#   least -log2(2017/2048) = 0.022 bits (its probabilities are 11-bit and adapt by 1/32): at
#   most about 7,090 bytes out per byte in (7,073 measured on zeros in the .lzma format,
#   6,851 in .xz); 8,000 leaves a margin.
MAX_EXPANSION = {".gz": 1032, ".xz": 8000}
# The most memory decoding one xz stream may take: xz -9 needs 65 MiB (its 64 MiB dictionary);
# a stream that asks for more is refused rather than allowed to reserve gigabytes.
XZ_MEMORY_LIMIT = 256 << 20
_NAMES = {".gz": "gzip", ".xz": "xz"}

_CHUNK = 1 << 20   # bytes read at a time
_MAGIC = {b"\x1f\x8b": ".gz", b"\xfd7zXZ\x00": ".xz"}


def compression_of(path: pathlib.Path) -> str:
    """``".gz"`` or ``".xz"`` when the file starts like one, else ``""`` (for a tarball, whose
    name does not always say how it is compressed)."""
    with open(path, "rb") as file:
        start = file.read(6)
    return next((kind for magic, kind in _MAGIC.items() if start.startswith(magic)), "")


def max_decompressed_size(path: pathlib.Path) -> int:
    """The most bytes the file ``path`` can hold once decompressed: its size on disk times
    :data:`MAX_EXPANSION` for its suffix (``.gz``, ``.xz``), its size if it has neither."""
    return path.stat().st_size * MAX_EXPANSION.get(path.suffix, 1)


@contextlib.contextmanager
def open_decompressed(path: str | os.PathLike,
                      compression: str | None = None) -> Iterator[BinaryIO]:
    """The file ``path`` opened for reading, decompressed as ``compression`` says (``".gz"``,
    ``".xz"`` or ``""``; by default its suffix).

    Every read is bounded by the size asked for, whatever the stream holds. A damaged stream
    (truncated, bad CRC, not compressed at all) raises :class:`DataFormatError` naming the file
    while it is read; a missing file stays a :class:`FileNotFoundError`.
    """
    path = pathlib.Path(path)
    kind = path.suffix if compression is None else compression
    opener: Any = {".gz": gzip.open, ".xz": _XzReader}.get(kind, open)
    try:
        with opener(path, "rb") as file:
            yield file
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # about the path, not the contents: keep the standard error
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        # EOFError: the stream stops early (a truncated download); BadGzipFile (an OSError),
        # LZMAError and zlib.error: the bytes are not a valid stream or the CRC is wrong.
        expected = f"a complete {_NAMES[kind]} stream" if kind in _NAMES else "a readable file"
        raise DataFormatError(
            f"{path}: expected {expected}, but reading it failed "
            f"({type(exc).__name__}: {exc}); the file is damaged or truncated, "
            f"download it again") from None


class _XzReader:
    """The decompressed contents of an ``.xz`` (or ``.lzma``) file, read ``size`` bytes at a time.

    xz allows several streams one after the other, with zero bytes of padding between them;
    anything else after a stream is damage, which :func:`lzma.open` would silently ignore, and
    raises :class:`lzma.LZMAError` here. Decoding may use at most :data:`XZ_MEMORY_LIMIT`
    bytes, whatever dictionary size the stream asks for.
    """

    def __init__(self, path: pathlib.Path, mode: str = "rb") -> None:
        self.file = open(path, mode)
        self.decompressor = lzma.LZMADecompressor(memlimit=XZ_MEMORY_LIMIT)

    def __enter__(self) -> "_XzReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def read(self, size: int) -> bytes:
        """Up to ``size`` decompressed bytes; fewer only at the end of the last stream."""
        chunks = []
        while size > 0:
            if self.decompressor.eof:                   # the next stream, or the end
                data = self.decompressor.unused_data.lstrip(b"\0")
                while not data and (more := self.file.read(_CHUNK)):
                    data = more.lstrip(b"\0")          # padding: never held, however long
                if not data:
                    break
                self.decompressor = lzma.LZMADecompressor(memlimit=XZ_MEMORY_LIMIT)
            elif self.decompressor.needs_input:
                data = self.file.read(_CHUNK)
                if not data:
                    raise EOFError("the xz stream ends before its end marker")
            else:
                data = b""                              # output still pending inside
            chunk = self.decompressor.decompress(data, size)
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


def read_header(path: pathlib.Path, size: int) -> bytes:
    """The first ``size`` bytes of the file ``path`` decompressed (fewer if it is shorter);
    nothing past them is decompressed."""
    with open_decompressed(path) as file:
        return file.read(size)


def read_exactly(path: pathlib.Path, size: int, promise: str) -> np.ndarray:
    """The decompressed contents of ``path`` as a new, writable uint8 array of ``size`` bytes:
    the size its header declares (``promise`` says so in words, for the messages).

    Raises :class:`DataFormatError` naming the file, the declared and the found size when
    the file cannot hold ``size`` bytes (checked before anything is decompressed or
    allocated) or holds fewer (truncated) or more (extra bytes; decompression stops one byte
    past ``size``).
    """
    disk, limit = path.stat().st_size, max_decompressed_size(path)
    stated = f"{path}: {promise}, i.e. {size} bytes (decompressed), but"
    if path.suffix not in MAX_EXPANSION and disk != size:
        state = "is truncated" if disk < size else "has extra bytes"
        raise DataFormatError(f"{stated} the file holds {disk} bytes: it {state}")
    if size > limit:
        raise DataFormatError(
            f"{stated} a {_NAMES[path.suffix]} file of {disk} bytes holds at most {limit} "
            f"bytes ({MAX_EXPANSION[path.suffix]} times its size): the header is forged or "
            f"the file is truncated")
    try:
        buffer = np.empty(size, dtype=np.uint8)
    except MemoryError:
        raise MemoryError(f"{path}: {promise}, i.e. {size:,} bytes, more memory than could be "
                          f"allocated") from None
    filled = 0
    with open_decompressed(path) as file:
        while filled < size and (chunk := file.read(min(_CHUNK, size - filled))):
            buffer[filled:filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            filled += len(chunk)
        extra = file.read(1) if filled == size else b""
    if filled < size:
        raise DataFormatError(f"{stated} the file holds {filled} bytes: it is truncated")
    if extra:
        raise DataFormatError(f"{stated} the file holds more (decompression stopped at "
                              f"{size + 1} bytes): it has extra bytes")
    return buffer


def read_at_most(path: pathlib.Path, limit: int, what: str) -> bytes:
    """The decompressed contents of ``path``, which may be at most ``limit`` bytes long
    (``what`` says why, for the message).

    A longer file raises :class:`DataFormatError` naming the file and both sizes; at most
    ``limit + 1`` bytes are ever decompressed or held in memory.
    """
    if path.suffix not in MAX_EXPANSION and path.stat().st_size > limit:
        raise DataFormatError(f"{path}: expected at most {limit:,} bytes ({what}), but the "
                              f"file holds {path.stat().st_size:,} bytes")
    with open_decompressed(path) as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise DataFormatError(f"{path}: expected at most {limit:,} bytes ({what}), but it "
                              f"holds more (decompression stopped at {limit + 1:,} bytes)")
    return data


class LimitedReader:
    """A stream that reads ``stream`` and raises :class:`DataFormatError` naming ``path`` as
    soon as more than ``limit`` bytes came out of it (``what`` says why there is a limit):
    what bounds the work done on an archive, whatever its headers declare."""

    def __init__(self, stream: BinaryIO, limit: int, path: pathlib.Path, what: str) -> None:
        self.stream, self.limit, self.path, self.what = stream, limit, path, what
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all that is left within the limit, plus one, when negative)."""
        left = self.limit - self.count + 1
        data = self.stream.read(left if size < 0 else min(size, left))
        self.count += len(data)
        if self.count > self.limit:
            raise DataFormatError(f"{self.path}: expected at most {self.limit:,} bytes "
                                  f"({self.what}), but it holds more (decompression stopped "
                                  f"at {self.count:,} bytes)")
        return data

