"""HDF5 checkpoints: save, exact resume, warm starts into changed models, rebuilding models.

A checkpoint (``format_version`` 2) is a 512-byte integrity header followed by an HDF5 file
that declares those 512 bytes as its user block, so HDF5 tools skip them::

    anyarray_nn checkpoint\n
    sha256 <64 hex digits: the SHA-256 of every byte after the header>\n
    size <the number of bytes after the header>\n
    NUL bytes up to byte 512

The digest is checked before HDF5 parses anything, so a damaged byte anywhere is a
:class:`CheckpointError`, never a crash, a hang or a wrong value. Files of ``format_version``
1 (no header) still load, unverified, with a logged warning. The HDF5 part, readable by any
HDF5 tool under the layers' own names::

    /                               attrs: format="anyarray_nn", format_version, library_version,
                                           created (ISO 8601, UTC)
    /model                          attrs: config (JSON: layer types, names, hyper-parameters)
    /model/<layer>/<param>          datasets, e.g. /model/conv1/W, stored from the host
    /buffers/<layer>/<buffer>       state that is not trained, e.g. /buffers/bn1/running_mean
    /optimizer                      attrs: config (JSON: type and hyper-parameters), step
    /optimizer/<layer>/<param>/<slot>   datasets, e.g. /optimizer/conv1/W/momentum
    /train                          attrs: epoch, step, state (JSON: the data loader's position,
                                           the global generator and the dropout layers'
                                           generators), history (JSON)

Writes are atomic: the file is built in memory, written under a temporary name in the same
folder and renamed over the old one only when complete, so a full disk, a crash or a kill
during a save leaves the previous checkpoint intact; the next save in that folder removes
the temporaries of killed saves. Loading is strict: every parameter must be present with its shape and
dtype, and nothing is assigned until everything has been checked. A warm start into a changed
model reports what it loaded, skipped and resized, and refuses to load partially unless asked.
Nothing named in a file is ever imported or evaluated: models are rebuilt only from registered
layer types.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
import pathlib
import re
import signal
import stat
import subprocess
import sys
from typing import Any, Iterator, cast

import numpy as np

from . import __version__
from . import backend as _backend
from . import distributed
from ._atomic import write_atomically
from .errors import as_int, shorten
from .layers.base import bounded_probes, shapes_only
from .model import Model, model_from_config
from .train import Every, History

FORMAT = "anyarray_nn"
FORMAT_VERSION = 2  # 2: the integrity header; 1: none (still read)
HEADER_SIZE = 512  # the HDF5 user block that holds the integrity header
_HEADER_MAGIC = b"anyarray_nn checkpoint\n"
_HEADER_PATTERN = re.compile(rb"anyarray_nn checkpoint\nsha256 ([0-9a-f]{64})\nsize ([0-9]{1,20})\n\0*")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TEMPORARY_SUFFIX = ".ckpt-tmp"  # .<name>.<random>.ckpt-tmp while a save is written

logger = logging.getLogger("anyarray_nn")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: not HDF5, foreign, too new, incomplete or not
    matching the model. The message names the file and the key."""


def _h5py() -> Any:
    import h5py
    return h5py


# --- saving ---------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: Model, optimizer: Any = None, *,
                    epoch: int | None = None, step: int | None = None, history: Any = None,
                    loader: Any = None) -> pathlib.Path:
    """Write ``model`` (and optionally the optimizer and the training position) to ``path``.

    ``epoch``, ``step`` and ``history`` (a :class:`~anyarray_nn.train.History`) record where
    training stands; ``loader`` (a DataLoader) records the position in the data order. The
    global generator of :func:`anyarray_nn.seed` is saved too. Missing folders are created.

    The write is atomic: the file is built in memory and replaces ``path`` only once it is
    complete on disk. A full disk, a folder that cannot be written or a path that cannot be
    a file is an ``OSError`` (or ``ValueError`` for an empty path) naming ``path``; the
    previous checkpoint there is left intact and no temporary file remains. A symbolic link
    at ``path`` is followed: the file it points to is replaced.
    """
    state = _train_state(model, loader)
    if distributed.is_distributed(model):
        return _save_on_rank_0(path, model, optimizer, epoch, step, history, state)
    return _write(path, model, optimizer, epoch, step, history, state)


def _write(path: Any, model: Any, optimizer: Any, epoch: int | None, step: int | None,
           history: Any, state: dict[str, Any]) -> pathlib.Path:
    """The checkpoint written atomically to ``path`` (see :func:`save_checkpoint`)."""
    path = _target_path(path)
    image = _hdf5_image(model, optimizer, epoch, step, history, state)
    write_atomically(path, _sealed(image), suffix=_TEMPORARY_SUFFIX, magic=_HEADER_MAGIC)
    return path


def _save_on_rank_0(path: Any, model: Any, optimizer: Any, epoch: int | None,
                    step: int | None, history: Any, state: dict[str, Any]) -> pathlib.Path:
    """save_checkpoint of a model trained on several ranks, called on every rank: rank 0
    writes one file with every rank's generators and loader position (``train/state``:
    ``world_size`` and ``ranks``, rank 0's also at the top), so that each rank resumes
    exactly; every rank returns the path, or raises rank 0's error."""
    states = [json.loads(part) for part in distributed.allgather_bytes(
        json.dumps(state, default=_json_default).encode())]
    written = None
    if distributed.is_main():
        try:
            written = _write(path, model, optimizer, epoch, step, history,
                             {**state, "world_size": len(states), "ranks": states})
        except (OSError, ValueError) as exc:
            distributed.allgather_bytes(f"{type(exc).__name__}: {exc}".encode())  # tell them
            raise
    verdict = distributed.allgather_bytes(b"")[0]  # rank 0's word: empty when it wrote
    if verdict:
        raise OSError(f"{path}: rank 0 could not write the checkpoint: {verdict.decode()}")
    return written or pathlib.Path(path)


def _train_state(model: Any, loader: Any) -> dict[str, Any]:
    """What an exact resume needs besides the arrays: the generators and the loader's place."""
    return {"global_rng": _backend.host_rng().bit_generator.state,
            "layer_rngs": {name: rng.bit_generator.state
                           for name, rng in _layer_generators(model).items()},
            "loader": loader.state_dict() if loader is not None else None}


def _target_path(path: str | os.PathLike) -> pathlib.Path:
    """``path`` as the regular file a save will replace, its folder created; errors name it."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"save_checkpoint: expected a file path, got {path!r}")
    path = pathlib.Path(path)
    if path.is_symlink():  # replace the file the link points to, and keep the link
        path = path.resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give the path of a file to save the "
                                f"checkpoint in")
    if path.exists() and not path.is_file():  # renaming over /dev/null would replace it
        raise FileExistsError(f"{path}: exists and is not a regular file (a device, a FIFO or "
                              f"a socket); a checkpoint replaces only regular files")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a full disk...
        raise OSError(exc.errno, f"{path}: cannot create its folder {folder} "
                                 f"({exc.strerror or exc})") from None
    return path


def _hdf5_image(model: Model, optimizer: Any, epoch: int | None, step: int | None,
                history: Any, state: dict[str, Any]) -> bytes:
    """The checkpoint as HDF5 bytes, built in memory, with an empty user block for the
    integrity header (no disk is touched, so no HDF5 write can fail half-way on disk)."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=HEADER_SIZE) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["library_version"] = __version__
        f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        group = f.create_group("model")
        group.attrs["config"] = json.dumps(model.get_config())
        _write_arrays(group, model.params())
        buffers = model.buffers()
        if buffers:
            _write_arrays(f.create_group("buffers"), buffers)
        if optimizer is not None:
            _write_optimizer(f, optimizer)
        train = f.create_group("train")
        train.attrs["epoch"] = -1 if epoch is None else int(epoch)
        train.attrs["step"] = -1 if step is None else int(step)
        train.attrs["history"] = json.dumps(history.to_dict() if history is not None else None)
        train.attrs["state"] = json.dumps(state, default=_json_default)
    return buffer.getvalue()


# --- the integrity header ---------------------------------------------------------------

def _header(digest: str, size: int) -> bytes:
    """The first HEADER_SIZE bytes of a checkpoint whose remaining ``size`` bytes have the
    SHA-256 ``digest`` (hex)."""
    text = _HEADER_MAGIC + f"sha256 {digest}\nsize {size}\n".encode("ascii")
    return text.ljust(HEADER_SIZE, b"\0")


def _sealed(image: bytes) -> list[Any]:
    """An HDF5 image with an empty user block, as the header and the body to write."""
    body = memoryview(image)[HEADER_SIZE:]
    return [_header(hashlib.sha256(body).hexdigest(), body.nbytes), body]


def _verified_image(path: pathlib.Path) -> bytes:
    """The bytes of the checkpoint at ``path``, read once and checked before anything parses
    them: the digest of a sealed file (format_version 2); for an older one, which has no
    digest, a first parse in a separate process (with a logged warning)."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or not end
            raise CheckpointError(f"{path}: not a regular file, so not a checkpoint")
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: its {path.stat().st_size} bytes do not fit in "
                              f"memory") from None
    if data.startswith(_HDF5_SIGNATURE):
        logger.warning("%s: a checkpoint without an integrity header (format_version 1, or "
                       "written by another tool): its bytes cannot be verified; parsing it in "
                       "a separate process first. reseal_checkpoint() adds a header", path)
        _parse_in_child(data, path)
        return data
    _check_header(data, path)
    return data


def _check_header(data: bytes, path: Any) -> None:
    """Raise CheckpointError unless ``data`` starts with an integrity header that matches
    every byte after it."""
    match = _HEADER_PATTERN.fullmatch(data[:HEADER_SIZE])
    if len(data) < HEADER_SIZE or match is None:
        what = ("its integrity header (the first 512 bytes) is damaged"
                if data.startswith(_HEADER_MAGIC[:8]) else
                "it starts with neither the integrity header of an anyarray_nn checkpoint "
                "nor the signature of an HDF5 file")
        raise CheckpointError(f"{path}: not a readable checkpoint: {what}")
    digest, size = match[1].decode("ascii"), int(match[2])
    body = memoryview(data)[HEADER_SIZE:]
    if data[:HEADER_SIZE] != _header(digest, size):  # e.g. a size written "0123"
        raise CheckpointError(f"{path}: not a readable checkpoint: its integrity header (the "
                              f"first 512 bytes) is damaged")
    if size != body.nbytes:
        raise CheckpointError(f"{path}: damaged: the header declares {size} bytes after it, "
                              f"the file holds {body.nbytes} (truncated, or extended)")
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise CheckpointError(f"{path}: damaged: the SHA-256 of its content is "
                              f"{actual[:16]}..., the header records {digest[:16]}...; the file "
                              f"changed after it was written (a disk or copy error, or an edit "
                              f"by another tool)")


def reseal_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """Accept the current bytes of ``path`` as intended: recompute its integrity header.

    For a checkpoint edited on purpose with another HDF5 tool (``h5py.File(path, "a")``),
    whose digest no longer matches; also upgrades a format_version 1 file, which has no
    header yet. Whatever the file holds is then trusted, so use it only on files you
    changed yourself. The file is rewritten atomically.
    """
    path = pathlib.Path(path)
    data = path.read_bytes()
    if data.startswith(_HDF5_SIGNATURE):  # no user block yet: rebuild the HDF5 file
        _parse_in_child(data, path)
        h5py = _h5py()
        buffer = io.BytesIO()
        with h5py.File(io.BytesIO(data), "r") as old, \
                h5py.File(buffer, "w", userblock_size=HEADER_SIZE) as new:
            for key, value in old.attrs.items():
                new.attrs[key] = value
            for name in old:
                old.copy(old[name], new, name=name)
            new.attrs["format_version"] = FORMAT_VERSION
        data = buffer.getvalue()
    elif _HEADER_PATTERN.match(data[:HEADER_SIZE]) is None:
        raise CheckpointError(f"{path}: not a checkpoint (no integrity header, no HDF5 "
                              f"signature); cannot reseal it")
    write_atomically(path, _sealed(data), suffix=_TEMPORARY_SUFFIX, magic=_HEADER_MAGIC)
    return path


def _write_arrays(group: Any, arrays: dict[str, Any]) -> None:
    """Arrays keyed "layer.param[.slot]" as datasets group/layer/param[/slot]."""
    for key, value in arrays.items():
        host = _backend.to_host(value)
        if host.dtype.kind != "f":  # what loading accepts, and what a model computes with
            raise ValueError(f"cannot save {key!r}: checkpoints hold floating-point arrays, "
                             f"this one is {host.dtype}")
        # Fletcher-32 checksums (a standard HDF5 filter) make damaged bytes an error on
        # reading instead of silently wrong weights.
        group.create_dataset(key.replace(".", "/"), data=host,
                             fletcher32=host.ndim > 0 and host.size > 0)


def _write_optimizer(f: Any, optimizer: Any) -> None:
    state = optimizer.state_dict()
    group = f.create_group("optimizer")
    group.attrs["config"] = json.dumps({"type": state["type"], **state["config"]})
    group.attrs["step"] = int(state["step"])
    _write_arrays(group, {f"{key}.{slot}": value for key, slots in state["state"].items()
                          for slot, value in slots.items()})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


# --- reading --------------------------------------------------------------------------------

@dataclasses.dataclass
class CheckpointInfo:
    """What :func:`load_checkpoint` restored besides the arrays."""

    path: pathlib.Path
    format_version: int
    created: str
    epoch: int | None
    step: int | None
    history: Any


def _check_identity(f: Any, path: Any, sealed: bool) -> int:
    """The file's format_version, after checking that it is a checkpoint this version reads."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):  # a fixed-length string (HDF5's C API, MATLAB, np.bytes_)
        fmt = fmt.decode("utf-8", "replace")
    if not isinstance(fmt, str) or fmt != FORMAT:
        raise CheckpointError(f"{path}: expected attribute format={FORMAT!r}, got "
                              f"{shorten(fmt)}: not an anyarray_nn checkpoint")
    if "format_version" not in f.attrs:
        raise CheckpointError(f"{path}: missing the attribute format_version")
    raw = f.attrs["format_version"]
    version = as_int(raw)
    if version is None:
        shown = raw.item() if isinstance(raw, np.generic) else raw  # 1.7, not np.float64(1.7)
        raise CheckpointError(f"{path}: format_version: expected an integer, got "
                              f"{shorten(shown)}")
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is not supported by this "
                              f"version of anyarray_nn ({__version__}, reads 1 to "
                              f"{FORMAT_VERSION}); upgrade anyarray_nn to read it")
    if version >= 2 and not sealed:
        raise CheckpointError(f"{path}: format_version {version} files begin with an integrity "
                              f"header and this one has none: its first {HEADER_SIZE} bytes "
                              f"were removed or replaced (reseal_checkpoint() accepts the file as "
                              f"it is)")
    return version


def _json_attr(f: Any, where: str, name: str, path: Any) -> Any:
    try:
        return json.loads(f[where].attrs[name])
    except KeyError:
        raise CheckpointError(f"{path}: missing {where}/{name}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {where}/{name} is not valid JSON ({exc})") from None


def _read_arrays(group: Any, path: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Every dataset below ``group`` as ("layer.param[.slot]", host array)."""
    h5py = _h5py()
    for name in list(group):
        key = f"{prefix}.{name}" if prefix else name
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):  # soft and external links point elsewhere
            raise CheckpointError(f"{path}: {group.name.rstrip('/')}/{name}: a "
                                  f"{type(link).__name__}; a checkpoint keeps its arrays in the "
                                  f"file itself")
        item = group[name]
        if isinstance(item, h5py.Dataset):
            yield key, _read_dataset(item, path)
        else:
            yield from _read_arrays(item, path, key)


def _read_dataset(item: Any, path: Any) -> np.ndarray:
    """One dataset as a host array, after checking that its bytes are in this file."""
    where = f"{path}: {item.name}"
    if item.dtype.kind != "f":
        raise CheckpointError(f"{where}: expected a floating-point array, got {item.dtype}")
    if item.external or item.is_virtual:
        raise CheckpointError(f"{where}: its data are stored in other files; a checkpoint "
                              f"keeps its arrays in the file itself")
    if item.compression is not None or item.scaleoffset is not None:
        raise CheckpointError(f"{where}: stored with the {item.compression or 'scaleoffset'} "
                              f"filter, which anyarray_nn never writes")
    # Every byte of an uncompressed array is in the file: a header alone cannot make the
    # reader allocate more memory than the file holds.
    needed, stored = item.size * item.dtype.itemsize, item.id.get_storage_size()
    if stored < needed:
        raise CheckpointError(f"{where}: shape {item.shape} needs {needed} bytes, the file "
                              f"holds {stored}: incomplete or damaged")
    try:
        host = np.asarray(item[()])
    except (OSError, RuntimeError) as exc:  # h5py's errors for damaged data
        raise CheckpointError(f"{where}: damaged, cannot read it ({exc}); a checksum or the "
                              f"file structure does not match") from None
    # h5py keeps the stored byte order: a file from a big-endian machine reads as '>f4'.
    return host.astype(host.dtype.newbyteorder("="), copy=False)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Everything in a checkpoint as host data: ``model_config``, ``params`` ({"conv1.W":
    array}), ``buffers`` (likewise), ``optimizer`` (a state dict or None), ``epoch``, ``step``,
    ``history``, ``state``, ``format_version``, ``created``.

    The file is read once and its integrity header checked before HDF5 parses a byte of it.
    Errors are :class:`CheckpointError` naming the file and the key (``FileNotFoundError``
    when there is no file).
    """
    path = pathlib.Path(path)
    return _parse(_verified_image(path), path)


def _parse(data: bytes, path: Any) -> dict[str, Any]:
    """read_checkpoint's work on the file's bytes, in memory."""
    h5py = _h5py()
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            version = _check_identity(f, path, sealed=not data.startswith(_HDF5_SIGNATURE))
            return _read_open_file(f, path, version)
    except CheckpointError:
        raise
    except Exception as exc:  # HDF5's errors for a file it cannot parse
        raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: "
                              f"{shorten(str(exc), 200)}); the HDF5 structure cannot be "
                              f"read") from None


# A file without the integrity header is parsed by a child process first: HDF5 can crash or
# hang on damaged metadata, and then only the child does. 3: a CheckpointError, on stderr.
_CHILD_PARSE = """
import sys
from anyarray_nn.checkpoint import CheckpointError, _parse
try:
    _parse(sys.stdin.buffer.read(), sys.argv[1])
except CheckpointError as exc:
    sys.stderr.write(str(exc))
    sys.exit(3)
"""


def _parse_in_child(data: bytes, path: Any, code: str = _CHILD_PARSE,
                    timeout: float | None = None) -> None:
    """Parse ``data`` in a separate Python process; a crash, a hang (beyond ``timeout``
    seconds, by default a minute plus one per 20 MB) or an error there is a CheckpointError
    here, and this process never parses what made the child fail."""
    if timeout is None:
        timeout = 60.0 + len(data) / 20e6
    package_root = str(pathlib.Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    where = f"{path}: a checkpoint without an integrity header"
    try:
        run = subprocess.run([sys.executable, "-c", code, str(path)], input=data,
                             capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise CheckpointError(f"{where}, and HDF5 did not finish reading it within "
                              f"{timeout:.0f} s: damaged") from None
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot check it in a separate process ({exc})") from None
    if run.returncode == 3:
        raise CheckpointError(run.stderr.decode("utf-8", "replace"))
    if run.returncode != 0:
        if run.returncode < 0:
            cause = f"it died of {signal.Signals(-run.returncode).name}"
        else:
            lines = run.stderr.decode("utf-8", "replace").strip().splitlines()
            cause = f"exit status {run.returncode}: {(lines[-1] if lines else '')[:200]}"
        raise CheckpointError(f"{where}, and reading it in a separate process failed ({cause}): "
                              f"damaged")


def _read_open_file(f: Any, path: Any, version: int) -> dict[str, Any]:
    """read_checkpoint's work on an open file (h5py errors are translated by the caller)."""
    if "model" not in f:
        raise CheckpointError(f"{path}: missing the group /model")
    out = {"format_version": version,
           "created": str(f.attrs.get("created", "")),
           "model_config": _model_config(f, path),
           "params": dict(_read_arrays(f["model"], path)),
           "buffers": dict(_read_arrays(f["buffers"], path)) if "buffers" in f else {},
           "optimizer": None,
           "epoch": None, "step": None, "history": None, "state": None}
    if "optimizer" in f:
        config = _json_attr(f, "optimizer", "config", path)
        if not (isinstance(config, dict) and isinstance(config.get("type"), str)):
            raise CheckpointError(f"{path}: optimizer/config: expected an object with a "
                                  f"\"type\", got {shorten(config)}")
        slots: dict[str, dict[str, np.ndarray]] = {}
        for key, value in _read_arrays(f["optimizer"], path):
            param, _, slot = key.rpartition(".")
            slots.setdefault(param, {})[slot] = value
        out["optimizer"] = {"type": config.pop("type"), "config": config,
                            "step": _int_attr(f, "optimizer", "step", path, 0), "state": slots}
    if "train" in f:
        epoch, step = (_int_attr(f, "train", name, path, -1) for name in ("epoch", "step"))
        out["epoch"] = None if epoch < 0 else epoch
        out["step"] = None if step < 0 else step
        out["history"] = _json_attr(f, "train", "history", path)
        out["state"] = _json_attr(f, "train", "state", path)
        for name in ("history", "state"):
            if out[name] is not None and not isinstance(out[name], dict):
                raise CheckpointError(f"{path}: train/{name}: expected an object or null, got "
                                      f"{shorten(out[name])}")
    return out


def _model_config(f: Any, path: Any) -> dict[str, Any]:
    """model/config, checked to be {"layers": [{"type": str, "config": {...}}, ...]}."""
    config = _json_attr(f, "model", "config", path)
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list) or not all(
            isinstance(e, dict) and isinstance(e.get("type"), str)
            and isinstance(e.get("config"), dict) for e in layers):
        raise CheckpointError(f"{path}: model/config: expected {{\"layers\": [{{\"type\": ..., "
                              f"\"config\": {{...}}}}, ...]}}, got {shorten(config)}")
    return config


def _int_attr(f: Any, where: str, name: str, path: Any, default: int) -> int:
    value = f[where].attrs.get(name, default)
    number = as_int(value)
    if number is None:
        raise CheckpointError(f"{path}: {where}/{name}: expected an integer, got "
                              f"{shorten(value)}")
    return number


def load_checkpoint(path: str | os.PathLike, model: Model, optimizer: Any = None, *,
                    loader: Any = None, convert_dtype: bool = False,
                    restore_rng: bool = True) -> CheckpointInfo:
    """Restore ``model`` (and the optimizer, the loader's position and the global generator)
    from ``path``, strictly.

    ``restore_rng=False`` leaves the generator of :func:`anyarray_nn.seed` alone (it is
    restored by default, for an exact resume). The layers' own generators (Dropout masks) are
    part of the model and are always restored.

    Every parameter of the model must be in the file with its shape, and the file may hold no
    other; dtypes must match unless ``convert_dtype=True`` (e.g. float64 into float32).
    Arrays go to the model's backend, whichever backend wrote them. Nothing is assigned
    until everything has been checked. Returns a :class:`CheckpointInfo`.

    A ``.safetensors`` file (:func:`anyarray_nn.save_weights`, or a PyTorch ``state_dict``
    saved with safetensors, see :mod:`anyarray_nn.weights`) holds weights only: it restores
    the model, and asking it for an optimizer or a loader is an error.
    """
    from . import weights
    if weights.is_weights_file(path):
        data = _weights_as_checkpoint(path)
    elif distributed.is_distributed(model):
        data = _read_on_rank_0(path)
    else:
        data = read_checkpoint(path)
    return _restore(data, path, model, optimizer, loader=loader,
                    convert_dtype=convert_dtype, restore_rng=restore_rng)


def _weights_as_checkpoint(path: Any) -> dict[str, Any]:
    """A safetensors file's arrays in the shape :func:`read_checkpoint` returns: weights, no
    optimizer, loader, history or generators (every rank reads the file itself)."""
    from . import weights
    arrays, layers, source = weights.read_weights(path)
    return {"params": arrays, "buffers": {}, "optimizer": None, "state": None,
            "history": None, "format_version": 0, "created": source, "epoch": None,
            "step": None, "model_config": {"layers": [{"config": {"name": name}, "type": kind}
                                                      for name, kind in layers]}}


# What rank 0's failure to read is raised as on every rank (anything else: OSError).
_FAILURES = {"FileNotFoundError": FileNotFoundError, "CheckpointError": CheckpointError}


def _read_on_rank_0(path: Any) -> dict[str, Any]:
    """read_checkpoint for a model trained on several ranks, called on every rank: rank 0
    reads and verifies the file once and sends its bytes to the others, which parse them in
    memory. Rank 0's error is raised on every rank (``FileNotFoundError``,
    :class:`CheckpointError` or ``OSError``, with rank 0's message)."""
    message = b""
    if distributed.is_main():
        try:
            message = b"I" + _verified_image(pathlib.Path(path))
        except (OSError, CheckpointError) as exc:
            message = f"E{type(exc).__name__}:{exc}".encode()
    sent = distributed.allgather_bytes(message)[0]
    if sent[:1] == b"E":
        kind, _, text = sent[1:].decode(errors="replace").partition(":")
        raise _FAILURES.get(kind, OSError)(text)
    return _parse(sent[1:], pathlib.Path(path))


def _mismatches(data: dict[str, Any], model: Model, convert_dtype: bool) -> list[str]:
    """How the stored arrays differ from the model's parameters and buffers (keys, shapes,
    dtypes), as phrases for an error; empty when they match."""
    params = {**model.params(), **model.buffers()}
    stored = {**data["params"], **data["buffers"]}
    missing = sorted(set(params) - set(stored))
    unexpected = sorted(set(stored) - set(params))
    problems = [f"missing in the file: {', '.join(missing)}"] if missing else []
    if unexpected:
        problems.append(f"not in the model: {', '.join(unexpected)}")
    for key in sorted(set(params) & set(stored)):
        want, got = params[key], stored[key]
        if tuple(want.shape) != got.shape:
            problems.append(f"{key}: the model has shape {tuple(want.shape)}, the file "
                            f"{got.shape}")
        elif _backend.dtype_name(want.dtype) != str(got.dtype) and not convert_dtype:
            problems.append(f"{key}: the model is {_backend.dtype_name(want.dtype)}, the file "
                            f"{got.dtype} (pass convert_dtype=True to cast)")
    return problems


def _restore(data: dict[str, Any], path: Any, model: Model, optimizer: Any, *,
             loader: Any, convert_dtype: bool, restore_rng: bool) -> CheckpointInfo:
    """load_checkpoint's work on what :func:`read_checkpoint` returned."""
    problems = _mismatches(data, model, convert_dtype)
    if problems:
        raise CheckpointError(f"{path}: does not match the model: " + "; ".join(problems) +
                              ". If the architecture changed on purpose, use warm_start().")
    params = {**model.params(), **model.buffers()}
    stored = {**data["params"], **data["buffers"]}
    if optimizer is not None and data["optimizer"] is None:
        raise CheckpointError(f"{path}: holds no optimizer state (/optimizer is missing)")
    state = data["state"] or {}
    ranks = state.get("ranks")
    if isinstance(ranks, list) and len(ranks) == distributed.world_size() > 1:
        state = ranks[distributed.rank()]  # this rank's generators and loader position
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: train/state: the state of rank "
                                  f"{distributed.rank()} is not a dict")
    if loader is not None and not state.get("loader"):
        raise CheckpointError(f"{path}: holds no data loader position (train/state)")
    try:
        history = History.from_dict(data["history"]) if data["history"] else None
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: train/history cannot be read: {exc}") from None
    new_params = {key: _backend.asarray_like(stored[key], value) for key, value in params.items()}
    # Everything is restored or nothing: a failure in any part puts every part back.
    undo = _snapshot(model, optimizer, loader)
    part = "optimizer state"
    try:
        if optimizer is not None:
            optimizer.load_state_dict(data["optimizer"])
        model._put_arrays(new_params)
        part = "train/state (the data loader's position)"
        if loader is not None:
            loader.load_state_dict(state["loader"])
        part = "random generators"
        _restore_generators(model, state, restore_rng)
    except Exception as exc:
        undo()
        raise CheckpointError(f"{path}: {part}: {exc}; the model, optimizer and loader were "
                              f"left as they were") from None
    return CheckpointInfo(pathlib.Path(path), data["format_version"], data["created"],
                          data["epoch"], data["step"], history)


def _layer_generators(model: Model) -> dict[str, Any]:
    """The layers' own generators (dropout masks), by layer name."""
    return {str(layer.name): layer.rng for layer in model if hasattr(layer, "rng")}


def _restore_generators(model: Model, state: dict[str, Any], global_too: bool) -> None:
    """Put back the layers' generators and, with ``global_too``, the global one; a bad state
    is an error naming the generator and what the file holds."""
    targets = [(f"layer_rngs/{name}", generator, rng_state)
               for name, generator in _layer_generators(model).items()
               if (rng_state := (state.get("layer_rngs") or {}).get(name)) is not None]
    if global_too and state.get("global_rng"):
        targets.append(("global_rng", _backend.host_rng(), state["global_rng"]))
    for key, generator, rng_state in targets:
        try:
            generator.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            held = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
            raise ValueError(f"train/state/{key}: expected a {type(generator.bit_generator).__name__}"
                             f" generator state, the file holds "
                             f"{shorten(held if held is not None else rng_state)} ({exc})") from None


def _snapshot(model: Model, optimizer: Any, loader: Any) -> Any:
    """A function that puts back what :func:`load_checkpoint` may change."""
    arrays = {layer: (dict(layer.params), dict(layer.buffers), layer.grads)
              for layer in model.layers}
    optimizer_attrs = dict(vars(optimizer)) if optimizer is not None else None
    loader_state = loader.state_dict() if loader is not None else None
    generators = [(g.bit_generator, g.bit_generator.state)
                  for g in [_backend.host_rng(), *_layer_generators(model).values()]]

    def undo() -> None:
        for layer, (params, buffers, grads) in arrays.items():
            layer.params.update(params)  # in place: DataParallel's copies share these dicts
            layer.buffers.update(buffers)
            layer.grads = grads
        if optimizer is not None:
            vars(optimizer).clear()
            vars(optimizer).update(optimizer_attrs)
        if loader is not None:
            loader.load_state_dict(loader_state)
        for bit_generator, generator_state in generators:
            bit_generator.state = generator_state
    return undo


MAX_PROBE_ELEMENTS = 1 << 25
"""The most elements one array of a shape probe may have when ``load_model`` builds a graph
model: 33.5 million (128 MiB in float32) for one sample, eight times what a 3x3 convolution
on 64 channels of 224 x 224 needs. A larger model is built in code and its weights loaded
with ``load_checkpoint``."""


def load_model(path: str | os.PathLike, *, backend: Any = None,
               dtype: str | None = None) -> Model:
    """Rebuild the model stored in ``path`` from its JSON architecture and load its weights.

    Only registered layer types can be built; a type name in the file selects one of them and
    nothing else. ``backend`` defaults to the active one; ``dtype`` to the stored one.
    """
    data = read_checkpoint(path)
    stored_dtype = next((str(v.dtype) for v in data["params"].values()), "float32")
    config, dtype_used = data["model_config"], dtype or stored_dtype
    # Stand-ins first: their shapes are compared with the stored arrays before anything is
    # allocated, so a config declaring a huge layer costs nothing (the arrays are bounded
    # by the file's size, which reading checked).
    try:
        with shapes_only():
            skeleton = model_from_config(config, dtype=dtype_used,
                                         rng=np.random.default_rng(0))
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{path}: model/config cannot be rebuilt: {exc}") from None
    problems = _mismatches(data, skeleton, convert_dtype=True)
    if problems:
        raise CheckpointError(f"{path}: model/config does not match the stored arrays: " +
                              "; ".join(problems))
    try:
        # The stored weights replace the initial ones at once: draw those from a private
        # generator so that rebuilding leaves the global one (anyarray_nn.seed) untouched.
        # A graph's layers find their output shapes by a forward pass on one zero sample;
        # bounded, so that no declared input size or padding can exhaust memory or time.
        with bounded_probes(MAX_PROBE_ELEMENTS):
            model = model_from_config(config, backend=backend, dtype=dtype_used,
                                      rng=np.random.default_rng(0))
    except (KeyError, TypeError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"{path}: model/config cannot be rebuilt: {exc}") from None
    _restore(data, path, model, None, loader=None, convert_dtype=dtype is not None,
             restore_rng=False)
    return model


# --- warm starts ----------------------------------------------------------------------------

class WarmStartError(CheckpointError):
    """A strict warm start that would have loaded only part of the model or of the file."""


@dataclasses.dataclass
class WarmStartReport:
    """What a warm start did, key by key.

    ``loaded``: (file key, model key) pairs copied whole. ``resized``: (file key, model key,
    file shape, model shape) copied as their overlapping block. ``skipped``: (file key, model
    key, reason) matched but not copied. ``missing``: model keys that kept their values.
    ``unexpected``: file keys no model parameter matched.
    """

    loaded: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    resized: list[tuple[str, str, tuple, tuple]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model parameter was loaded whole and every file key was used."""
        return not (self.resized or self.skipped or self.missing or self.unexpected)

    def __str__(self) -> str:
        def pair(a: str, b: str) -> str:
            return a if a == b else f"{a} -> {b}"

        lines = [f"loaded    {len(self.loaded):3d}: " + ", ".join(pair(a, b) for a, b in self.loaded)]
        lines.append(f"resized   {len(self.resized):3d}: " + ", ".join(
            f"{pair(a, b)} {s} -> {t}" for a, b, s, t in self.resized))
        lines.append(f"skipped   {len(self.skipped):3d}: " + ", ".join(
            f"{pair(a, b)} ({why})" for a, b, why in self.skipped))
        lines.append(f"missing   {len(self.missing):3d}: " + ", ".join(self.missing))
        lines.append(f"unexpected {len(self.unexpected):2d}: " + ", ".join(self.unexpected))
        return "\n".join(line.rstrip(": ") for line in lines)


def warm_start(model: Model, path: str | os.PathLike, *, by_position: bool = False,
               resize: bool = False, strict: bool = True,
               print_report: bool = False) -> WarmStartReport:
    """Load what fits from a checkpoint (or a ``.safetensors`` file: ours, or a PyTorch
    ``state_dict``; see :mod:`anyarray_nn.weights`) into ``model``, possibly of another
    architecture.

    Layers are matched by name, then (``by_position=True``) the remaining ones by their order
    among layers of the same type. Parameters of the same shape load; others are skipped, or
    with ``resize=True`` their overlapping block is copied (e.g. a dense layer with more
    outputs keeps the old rows). Arrays are cast to the model's backend and dtype.

    Strict by default: unless everything matches, nothing is loaded and
    :class:`WarmStartError` shows the report; pass ``strict=False`` to load the part that
    fits. Returns the :class:`WarmStartReport` (printed with ``print_report=True``).
    """
    from . import weights
    data = _weights_as_checkpoint(path) if weights.is_weights_file(path) else read_checkpoint(path)
    file_layers = [(e["config"].get("name"), e["type"]) for e in data["model_config"]["layers"]]
    # a PyTorch file says "BatchNorm" for either of ours (its arrays are alike)
    kind = (lambda t: "BatchNorm" if t.startswith("BatchNorm") else t)
    pairs = _match_layers([(n, kind(t)) for n, t in file_layers],
                          [(str(layer.name), kind(layer.type_name)) for layer in model],
                          by_position)
    params = {**model.params(), **model.buffers()}
    stored = {**data["params"], **data["buffers"]}
    report = WarmStartReport()
    updates: dict[str, Any] = {}
    used: set[str] = set()
    for file_name, model_name in pairs:
        layer = model[model_name]
        for pname, current in {**layer.params, **layer.buffers}.items():
            key, file_key = f"{model_name}.{pname}", f"{file_name}.{pname}"
            if file_key not in stored:
                continue
            used.add(file_key)
            source = stored[file_key]
            if source.shape == tuple(current.shape):
                updates[key] = source
                report.loaded.append((file_key, key))
            elif resize and source.ndim == current.ndim:
                block = tuple(slice(0, min(a, b)) for a, b in zip(source.shape, current.shape))
                merged = np.array(_backend.to_host(current), copy=True)  # the model's dtype
                merged[block] = source[block]
                updates[key] = merged
                report.resized.append((file_key, key, source.shape, tuple(current.shape)))
            else:
                report.skipped.append((file_key, key, f"shape {source.shape} in the file, "
                                                      f"{tuple(current.shape)} in the model"))
    report.missing = [k for k in params if k not in updates]
    report.unexpected = [k for k in stored if k not in used]
    if strict and not report.complete:
        raise WarmStartError(f"{path}: a strict warm start loads all or nothing, and this one "
                             f"would be partial (pass strict=False to load what fits):\n{report}")
    model._put_arrays({k: _backend.asarray_like(v, params[k]) for k, v in updates.items()})
    if print_report:
        print(report)
    return report


def _match_layers(file_layers: list[tuple[str, str]], model_layers: list[tuple[str, str]],
                  by_position: bool) -> list[tuple[str, str]]:
    """(file layer, model layer) name pairs: same name and type first, then by position."""
    model_types = dict(model_layers)
    pairs = [(name, name) for name, kind in file_layers if model_types.get(name) == kind]
    if by_position:
        taken = {name for name, _ in pairs}
        for kind in dict.fromkeys(k for _, k in model_layers):
            rest_file = [n for n, k in file_layers if k == kind and n not in taken]
            rest_model = [n for n, k in model_layers if k == kind and n not in taken]
            pairs += list(zip(rest_file, rest_model))
    return pairs


# --- periodic checkpoints -----------------------------------------------------------------

class CheckpointEvery(Every):
    """A ``fit`` callback: save a checkpoint every ``n`` epochs (or iterations, with
    ``per="iteration"``) into ``folder`` as ``ckpt-<step>.h5``, keeping the last ``keep``.

    Pass the training ``loader`` so that its position in the data order is saved too.
    Checkpoints taken at the end of an epoch resume exactly (docs/checkpoints.md).

    What it writes is recorded in ``folder/checkpoints.json`` (the file names and their
    digests, oldest first), and only files recorded there and unchanged since are ever
    deleted: a file of yours in the folder, whatever its name, is never touched, nor
    overwritten (a save whose name is taken by a file it did not write is an error).
    """

    def __init__(self, folder: str | os.PathLike, n: int = 1, *, per: str = "epoch",
                 keep: int = 3, loader: Any = None) -> None:
        if as_int(keep) is None or keep < 1:
            raise ValueError(f"CheckpointEvery: expected keep >= 1, got {keep!r}")
        super().__init__(n, self.save, per=per)  # type: ignore[arg-type]  # returns the path too
        self.folder, self.keep, self.loader = pathlib.Path(folder), keep, loader

    def save(self, state: Any) -> pathlib.Path:
        """Write the checkpoint of ``state`` and delete the oldest it wrote beyond ``keep``."""
        target = self.folder / f"ckpt-{state.step:09d}.h5"
        written = _read_manifest(self.folder)
        found = _digest_of(target)  # None for no file, a folder, a link or a foreign file
        if (target.exists() or target.is_symlink()) and (
                found is None or found != written.get(target.name)):
            raise CheckpointError(f"{target}: exists and was not written by CheckpointEvery "
                                  f"(not recorded in {_MANIFEST}, or changed since); move it "
                                  f"away or save into another folder. Nothing was overwritten")
        # epoch counts the epochs completed, as the history does (an iteration checkpoint on
        # the last step of an epoch comes before that epoch's summary).
        save_checkpoint(target, state.model, state.optimizer,
                        epoch=len(state.history.epochs), step=state.step,
                        history=state.history, loader=self.loader)
        written.pop(target.name, None)
        written[target.name] = cast(str, _digest_of(target))  # newest last; just sealed
        old = list(written)[:-self.keep]
        for name in old:
            _remove_if_unchanged(self.folder / name, written.pop(name))
        _write_manifest(self.folder, written)
        return target


_MANIFEST = "checkpoints.json"
_MANIFEST_FORMAT = "anyarray_nn CheckpointEvery"


def _digest_of(path: pathlib.Path) -> str | None:
    """The SHA-256 recorded in the integrity header of the regular file at ``path``, or None
    (no such file, a folder or a link, no header)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        with open(path, "rb") as f:
            match = _HEADER_PATTERN.fullmatch(f.read(HEADER_SIZE))
    except OSError:
        return None
    return match[1].decode("ascii") if match else None


def _remove_if_unchanged(path: pathlib.Path, digest: str) -> None:
    """Delete ``path`` if it is still the checkpoint with ``digest`` that was recorded."""
    if _digest_of(path) == digest:
        path.unlink()
    elif path.exists() or path.is_symlink():
        logger.warning("%s: changed since CheckpointEvery wrote it; kept, and no longer "
                       "counted among its checkpoints", path)


def _read_manifest(folder: pathlib.Path) -> dict[str, str]:
    """{file name: digest} of the checkpoints CheckpointEvery wrote in ``folder``, oldest
    first; empty when there is no record. A file of that name that is not such a record is
    a CheckpointError: it is not ours to overwrite."""
    path = folder / _MANIFEST
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        record = exc
    files = record.get("files") if isinstance(record, dict) else None
    if not (isinstance(record, dict) and record.get("format") == _MANIFEST_FORMAT
            and isinstance(files, list) and all(
                isinstance(e, dict) and isinstance(e.get("name"), str)
                and re.fullmatch(r"ckpt-[0-9]+\.h5", e["name"])
                and isinstance(e.get("sha256"), str) for e in files)) or path.is_symlink():
        raise CheckpointError(f"{path}: not a record of the checkpoints CheckpointEvery wrote "
                              f"(got {shorten(record)}); move it away or save into another "
                              f"folder. Nothing was deleted or overwritten")
    return {e["name"]: e["sha256"] for e in files}


def _write_manifest(folder: pathlib.Path, written: dict[str, str]) -> None:
    record = {"format": _MANIFEST_FORMAT, "version": 1,
              "files": [{"name": name, "sha256": digest} for name, digest in written.items()]}
    write_atomically(folder / _MANIFEST, [json.dumps(record, indent=1).encode("utf-8")],
                     suffix=".json-tmp", magic=b"{")


def latest_checkpoint(folder: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint :class:`CheckpointEvery` wrote last in ``folder`` and that is still
    there unchanged, or None.

    A folder written by an older version (no ``checkpoints.json``) falls back to the
    newest file named ``ckpt-<9 digits>.h5`` by write time.
    """
    folder = pathlib.Path(folder)
    try:
        written = _read_manifest(folder)
    except CheckpointError as exc:
        logger.warning("%s; looking for ckpt-<step>.h5 files by name instead", exc)
        written = {}
    else:
        if written:
            for name, digest in reversed(written.items()):
                if _digest_of(folder / name) == digest:
                    return folder / name
            return None
    found = sorted((p for p in folder.glob("ckpt-*.h5")
                    if re.fullmatch(r"ckpt-[0-9]{9}\.h5", p.name) and p.is_file()),
                   key=lambda p: (p.stat().st_mtime_ns, p.name))
    return found[-1] if found else None
