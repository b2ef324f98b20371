"""Files written whole or not at all: the temporary file that a write goes to before
``os.replace`` gives it its real name (checkpoints, downloads), the cleaning of temporaries
that a killed process left behind, and the check that a file can be created at a path at
all, made before long work that ends in writing it."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import pathlib
import re
import secrets
import time
from typing import Iterable

try:  # POSIX; elsewhere temporaries are written unlocked and never cleaned automatically
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("anyarray_nn")

# An empty temporary may belong to a writer that has created it and not yet locked it; one
# older than this cannot (the writer locks it right after creating it).
_EMPTY_TEMPORARY_GRACE_S = 60.0


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why no file can be created at ``path`` (its folder does not exist, or cannot be
    written), or None when it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} of {str(path)!r} does not exist"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder!r} of {str(path)!r} is not writable"
    return None


def new_temporary_file(folder: pathlib.Path, name: str, suffix: str = ".tmp") -> str:
    """Create an empty ``.<name>.<random><suffix>`` in ``folder``, with the permissions any
    new file gets there (0o666 less the umask, not mkstemp's 0o600), and return its path."""
    fd, tmp_name = _create_temporary(folder, name, suffix)
    os.close(fd)
    return tmp_name


def _create_temporary(folder: pathlib.Path, name: str, suffix: str) -> tuple[int, str]:
    while True:
        tmp_name = str(folder / f".{name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666), tmp_name
        except FileExistsError:
            continue


def write_atomically(path: pathlib.Path, chunks: Iterable[bytes | memoryview], *,
                     suffix: str, magic: bytes) -> None:
    """Write the concatenated ``chunks`` to ``path`` whole or not at all.

    The bytes go to a temporary ``.<name>.<random><suffix>`` in the same folder, locked
    (flock) while it is written, are flushed to disk, and only then replace ``path``; the
    rename is made durable too. On any error the temporary is removed and ``path`` is left as
    it was; the OSError names ``path``. Temporaries of earlier writes that were killed are
    removed first (:func:`remove_stale_temporaries`; ``magic`` is how every such file
    begins). ``path`` must not name a folder.
    """
    folder = path.parent
    existed = path.exists()
    remove_stale_temporaries(folder, suffix, magic)
    # The first bytes are made before the temporary exists and written right after it is
    # locked: a write killed at any later moment leaves a file that begins with ``magic``,
    # which the next write removes (an empty one is kept for a minute, as it may be new).
    chunks = iter(chunks)
    first = next(chunks, b"")
    tmp_name = None
    try:
        fd, tmp_name = _create_temporary(folder, path.name, suffix)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "in use": not stale
            for chunk in itertools.chain((first,), chunks):
                view = memoryview(chunk)
                while view.nbytes:  # os.write may write less than asked (a full disk)
                    view = view[os.write(fd, view):]
            os.fsync(fd)  # the bytes are on disk before the rename
            os.replace(tmp_name, path)
        finally:
            os.close(fd)
    except BaseException as exc:
        if tmp_name is not None:
            with contextlib.suppress(OSError):  # the error that matters is the one above
                os.remove(tmp_name)
        if isinstance(exc, OSError):
            kept = "the previous file is unchanged" if existed else "nothing was written"
            raise OSError(exc.errno, f"{path}: cannot write it ({exc.strerror or exc}); "
                                     f"{kept}") from None
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: pathlib.Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: pathlib.Path, suffix: str, magic: bytes) -> list[str]:
    """Delete the temporaries that killed writes left in ``folder``; return their names.

    Only files that this module names (``.<name>.<8 hex digits><suffix>``), that no writer
    holds locked, and whose content is what a write of this kind begins with (``magic``, or
    nothing for one older than a minute) are deleted: never a link, a folder or a file of
    someone else's. Without flock (not POSIX) nothing is deleted.
    """
    if fcntl is None:
        return []
    pattern = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(suffix))
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            if _is_stale(entry.path, magic):
                try:
                    os.remove(entry.path)
                except OSError:
                    continue
                removed.append(entry.name)
                logger.info("removed %s, left by a write that was killed", entry.path)
    return removed


def _is_stale(path: str, magic: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:  # held by a live writer, or locks unsupported: keep it
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                logger.debug("cannot lock %s (%s): kept", path, exc)
            return False
        head = os.read(fd, len(magic))
        if not head:
            return time.time() - os.fstat(fd).st_mtime > _EMPTY_TEMPORARY_GRACE_S
        return magic.startswith(head) if len(head) < len(magic) else head == magic
    finally:
        os.close(fd)
