"""File helpers shared by the data-set loaders: where the data lives, finding a file among
several possible places, and reading it with transparent decompression.

Everything here works on the host: paths, bytes and NumPy arrays, never device arrays.
"""

from __future__ import annotations

import gzip
import lzma
import os
import pathlib
import zlib
from typing import Iterable, Sequence

ENV_VAR = "ANYARRAY_NN_DATA"

# A data file may sit on disk as it was published or compressed; these are tried in order.
SUFFIXES = ("", ".gz", ".xz")

_COMPRESSION = {".gz": "gzip", ".xz": "xz"}


class DataFormatError(ValueError):
    """A data file exists but its contents are not what the format promises.

    The message names the file, what was expected and what was found (a truncated download,
    a wrong file under the right name, a corrupt archive, a refused pickle global...).
    """


def data_root(root: str | os.PathLike | None = None) -> pathlib.Path:
    """The folder the data sets live under.

    ``root`` when given, else the ``ANYARRAY_NN_DATA`` environment variable. With neither,
    raises :class:`FileNotFoundError` explaining both ways to say where the data is and
    pointing to :mod:`anyarray_nn.data.download`, which fetches it when online.
    """
    if root is not None:
        return pathlib.Path(root).expanduser()
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return pathlib.Path(from_env).expanduser()
    raise FileNotFoundError(
        f"no data folder given: pass root=DIR to the loader or set the environment variable "
        f"{ENV_VAR}=DIR (a folder holding e.g. mnist/ and cifar-10/). To fetch the files "
        f"(needs a network), use anyarray_nn.data.download: "
        f"from anyarray_nn.data.download import download; download('mnist', 'DIR').")


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
        by_env = f", named by the environment variable {ENV_VAR}," if named else ""
        return f"\n(the data folder {root}{by_env} does not exist)"
    if named:
        return (f"\n(the data folder {root} is the one the environment variable {ENV_VAR} "
                f"names; pass root=DIR to the loader to use another)")
    return ""


def open_member(path: str | os.PathLike) -> bytes:
    """The contents of the file ``path``, decompressed when its name ends in ``.gz`` or ``.xz``.

    A damaged file (truncated gzip or xz stream, bad CRC, not compressed at all) raises
    :class:`DataFormatError` naming the file; a missing file stays a
    :class:`FileNotFoundError`.
    """
    path = pathlib.Path(path)
    kind = _COMPRESSION.get(path.suffix)
    opener = {"gzip": gzip.open, "xz": lzma.open}.get(kind, open)
    try:
        with opener(path, "rb") as file:
            return file.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # about the path, not the contents: keep the standard error
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        # EOFError: the stream stops early (a truncated download); BadGzipFile (an OSError),
        # LZMAError and zlib.error: the bytes are not a valid stream or the CRC is wrong.
        expected = f"a complete {kind} stream" if kind else "a readable file"
        raise DataFormatError(
            f"{path}: expected {expected}, but reading it failed "
            f"({type(exc).__name__}: {exc}); the file is damaged or truncated, "
            f"download it again") from None
