"""Files written whole or not at all: the temporary file that a write goes to before
``os.replace`` gives it its real name (checkpoints, downloads)."""

from __future__ import annotations

import os
import pathlib
import secrets


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
