"""Files written whole or not at all: the temporary file that a write goes to before
``os.replace`` gives it its real name (checkpoints, downloads), and the check that a file can
be created at a path at all, made before long work that ends in writing it."""

from __future__ import annotations

import os
import pathlib
import secrets


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why no file can be created at ``path`` (its folder does not exist, or cannot be
    written), or None when it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} of {str(path)!r} does not exist"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder!r} of {str(path)!r} is not writable"
    return None


def new_temporary_file(folder: pathlib.Path, name: str) -> str:
    """Create an empty ``.<name>.<random>.tmp`` in ``folder``, with the permissions any new
    file gets there (0o666 less the umask, not mkstemp's 0o600), and return its path."""
    while True:
        tmp_name = str(folder / f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp_name
        except FileExistsError:
            continue
