"""Fetching MNIST and CIFAR-10 from their usual mirrors, and checking files against the
published checksums::

    from anyarray_nn.data.download import download, verify
    download("mnist", "~/data")      # ~/data/mnist/*.gz, then load_mnist("~/data")
    verify("mnist", "~/data")        # {"mnist/train-images-idx3-ubyte.gz": True, ...}

Each file goes to a temporary file next to its destination, is checked against its published
checksum, and only then renamed into place: an interrupted or corrupted download never leaves
a file under the real name. Without a network, :func:`download` fails within ``timeout``
seconds with a :class:`ConnectionError` that says which files to put where by hand.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import lzma
import os
import pathlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Any, NamedTuple

from .._atomic import new_temporary_file
from . import cifar10, mnist
from ._files import ENV_VAR, DataFormatError, data_root, with_suffixes

# Published checksums. MNIST: the four .gz files as distributed, and their contents.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# CIFAR-10: the binary tarball, and the batch files inside it (uncompressed contents).
CIFAR10_TARBALL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_BIN_SHA256 = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
}


class Remote(NamedTuple):
    """What :func:`download` fetches for one data set."""

    folder: str                          # destination, relative to the data root
    files: dict[str, tuple[str, str]]    # file name -> (hash algorithm, hex digest)
    note: str = ""                       # added to the offline help


DATASETS = {
    "mnist": Remote("mnist", {name: ("sha256", digest) for name, digest in MNIST_SHA256.items()}),
    "cifar10": Remote("cifar-10", {cifar10.BIN_TARBALL: ("md5", CIFAR10_TARBALL_MD5)},
                      note=f"(or the unpacked {cifar10.BIN_FOLDER}/ folder with its six .bin "
                           f"files, in the same place)"),
}

# Base URLs, tried in order; a file's URL is the base followed by its name.
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"],
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
}

_CHUNK = 1 << 20
# No published file is larger than the CIFAR-10 tarball (about 163 MiB), and none decompresses
# to more than MNIST's training images (47,040,016 bytes): a mirror sending more, or a local
# file unpacking to more, cannot match a checksum, so reading stops there.
MAX_DOWNLOAD_BYTES = 256 << 20
MAX_UNPACKED_BYTES = 16 + 60_000 * 28 * 28


def download(name: str, root: str | os.PathLike | None = None, *,
             timeout: float = 10.0) -> list[pathlib.Path]:
    """Download the data set ``name`` (``"mnist"`` or ``"cifar10"``) under the data root.

    ``root`` defaults to the ``ANYARRAY_NN_DATA`` environment variable. MNIST goes to
    ``root/mnist/`` (the four ``.gz`` files), CIFAR-10 to ``root/cifar-10/`` (the binary
    tarball, read by :func:`~anyarray_nn.data.load_cifar10` without unpacking). Files
    already present with the right checksum are kept. Returns the paths of the files.

    ``timeout`` (seconds) bounds each attempt to reach a server. When every mirror fails
    (no network), raises :class:`ConnectionError` naming the files to put where by hand;
    a download whose checksum does not match is deleted and raises
    :class:`~anyarray_nn.data.DataFormatError`.
    """
    remote = _remote(name)
    root = data_root(root)
    folder = root / remote.folder
    paths = []
    for filename, (algorithm, digest) in remote.files.items():
        target = folder / filename
        if not (target.is_file() and _file_digest(target, algorithm) == digest):
            folder.mkdir(parents=True, exist_ok=True)
            _fetch(name, root, target, algorithm, digest, timeout)
        paths.append(target)
    return paths


def verify(name: str, root: str | os.PathLike | None = None) -> dict[str, bool]:
    """Check the files of data set ``name`` found under the data root against the published
    checksums.

    Returns ``{path relative to root: matches}`` for every file present, in the places the
    loader looks: for MNIST the ``.gz`` files themselves (sha256), and uncompressed or
    ``.xz`` files by their decompressed contents; for CIFAR-10 the binary tarball (md5) and
    the ``.bin`` batch files by their decompressed contents (sha256). A file that cannot be
    read or decompressed counts as not matching. An empty dict means nothing was found.
    """
    _remote(name)
    root = data_root(root)
    expected: list[tuple[pathlib.Path, str, str, bool]] = []  # path, algorithm, digest, unpack
    if name == "mnist":
        for folder in mnist.FOLDERS:
            for raw, digest in MNIST_RAW_SHA256.items():
                base = root / folder / raw
                expected += [(base, "sha256", digest, False),
                             (base.with_name(raw + ".gz"), "sha256", MNIST_SHA256[raw + ".gz"],
                              False),
                             (base.with_name(raw + ".xz"), "sha256", digest, True)]
    else:
        places = [root / "cifar-10" / cifar10.BIN_FOLDER, root / cifar10.BIN_FOLDER, root]
        for place in places:
            for batch, digest in CIFAR10_BIN_SHA256.items():
                expected += [(path, "sha256", digest, path.name != batch)
                             for path in with_suffixes(place / batch)]
        expected += [(tarball, "md5", CIFAR10_TARBALL_MD5, False)
                     for tarball in (root / cifar10.BIN_TARBALL,
                                     root / "cifar-10" / cifar10.BIN_TARBALL)]
    return {path.relative_to(root).as_posix(): _file_digest(path, algorithm, unpack) == digest
            for path, algorithm, digest, unpack in expected if path.is_file()}


def _remote(name: str) -> Remote:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of "
                         f"{', '.join(map(repr, DATASETS))}")
    return DATASETS[name]


def _file_digest(path: pathlib.Path, algorithm: str, unpack: bool = False) -> str | None:
    """The hex digest of the file (of its decompressed contents when ``unpack``), or ``None``
    when it cannot be read or unpacks to more than any published file
    (:data:`MAX_UNPACKED_BYTES`; decompression stops there)."""
    opener: Any = ({".gz": gzip.open, ".xz": lzma.open}.get(path.suffix, open) if unpack
                   else open)
    digest = hashlib.new(algorithm)
    size = 0
    try:
        with opener(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                size += len(chunk)
                if unpack and size > MAX_UNPACKED_BYTES:
                    return None
                digest.update(chunk)
    except (EOFError, OSError, lzma.LZMAError, zlib.error):
        return None
    return digest.hexdigest()


_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)  # URLError is an OSError


def _fetch(name: str, root: pathlib.Path, target: pathlib.Path, algorithm: str, digest: str,
           timeout: float) -> None:
    """Download ``target.name`` into a temporary file next to ``target`` from the first mirror
    whose copy is whole and has the published digest, then rename it to ``target``."""
    failures, mismatches = [], []
    temporary = new_temporary_file(target.parent, target.name)
    try:
        with open(temporary, "wb") as out:
            for base in MIRRORS[name]:
                url = base + target.name
                out.seek(0)
                out.truncate()                  # drop what a failed mirror left
                try:
                    actual = _copy_url(url, out, algorithm, timeout)
                except _NETWORK_ERRORS as exc:
                    failures.append(f"  {url}: {exc}")
                    continue
                if actual == digest:
                    break
                mismatches.append(f"  {url}: expected {algorithm} {digest}, the download has "
                                  f"{actual}")
            else:
                if mismatches:
                    raise DataFormatError(
                        f"could not download {target.name}: no mirror had the published file "
                        f"(a broken mirror or a changed file); the downloads were deleted\n"
                        + "\n".join(mismatches + failures))
                raise ConnectionError(_offline_help(name, root, failures))
        os.replace(temporary, target)           # atomic: the real name appears only when whole
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _copy_url(url: str, out, algorithm: str, timeout: float) -> str:
    """Copy the body of ``url`` to ``out``; return its hex digest. A body shorter than the
    server's Content-Length (a closed connection), or longer than any published file
    (:data:`MAX_DOWNLOAD_BYTES`: a broken or hostile server filling the disk), raises
    ConnectionError."""
    host = urllib.parse.urlsplit(url).hostname
    if host:
        _resolve(host, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": "anyarray_nn"})
    digest = hashlib.new(algorithm)
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        while chunk := response.read(_CHUNK):
            received += len(chunk)
            if received > MAX_DOWNLOAD_BYTES:
                raise ConnectionError(f"the server sent more than {MAX_DOWNLOAD_BYTES:,} "
                                      f"bytes, more than any published file; stopped")
            digest.update(chunk)
            out.write(chunk)
    if length is not None and length.isdigit() and received != int(length):
        raise ConnectionError(f"truncated: received {received:,} of {int(length):,} bytes")
    return digest.hexdigest()


def _resolve(host: str, timeout: float) -> None:
    """Look ``host`` up, giving up after ``timeout`` seconds.

    urlopen's timeout covers connecting and reading but not the name lookup, which on a
    machine without a network can wait on an unreachable DNS server; so the lookup runs in a
    daemon thread first and is abandoned when it takes too long.
    """
    outcome: list[BaseException | None] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise TimeoutError(f"looking up {host} took more than {timeout} s")
    if outcome[0] is not None:
        raise outcome[0]


def _offline_help(name: str, root: pathlib.Path, failures: list[str]) -> str:
    remote = DATASETS[name]
    folder = root / remote.folder
    files = "\n".join(f"  {filename}   ({algorithm} {digest})"
                      for filename, (algorithm, digest) in remote.files.items())
    note = f"\n{remote.note}" if remote.note else ""
    return (f"could not download {name}: every mirror failed (is this machine offline?)\n"
            + "\n".join(failures)
            + f"\nTo install it by hand, copy these files into {folder}:\n{files}{note}\n"
              f"then pass root={str(root)!r} to the loader, or set the environment variable "
              f"{ENV_VAR}={root}.")
