"""MNIST: 70,000 handwritten digits, 28x28 grey levels, read from the original IDX files.

The IDX format is tiny, so it is parsed here directly. All integers are big-endian:

    images  magic 0x00000803 (2051)  count  rows  cols  then count*rows*cols uint8 pixels
    labels  magic 0x00000801 (2049)  count              then count uint8 labels 0..9

In the magic number, byte 2 is the element type (0x08: unsigned byte) and byte 3 the number
of dimensions, so the header is ``4 + 4 * ndim`` bytes long.
"""

from __future__ import annotations

import math
import os
import pathlib

import numpy as np

from ._files import (DataFormatError, data_root, find_first, read_exactly, read_header,
                     wants_download)

SPLITS = ("train", "test")
IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10

# The published file names; each may also carry .gz or .xz.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Where the files are looked for, relative to the data root: our layout, a flat folder, and
# torchvision's layout.
FOLDERS = ("mnist", ".", "MNIST/raw")

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# The most images a file may declare: MNIST has 60,000, the largest data set in its format
# (EMNIST ByClass) 697,932. A larger count is a forged header, refused before any reading.
MAX_COUNT = 1_000_000


def load_mnist(root: str | os.PathLike | None = None, split: str = "train", *,
               download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST training (60,000) or test (10,000) images and labels.

    ``root`` is the data folder (default: the ``ANYARRAY_NN_DATA`` environment variable,
    else the user's cache folder, see :func:`~anyarray_nn.data._files.data_root`);
    the four IDX files, as published (``.gz``), uncompressed or as ``.xz``, are looked for
    in ``root/mnist/``, ``root/`` and ``root/MNIST/raw/``. ``split`` is ``"train"`` or
    ``"test"``. ``download=True`` first fetches the files that are missing (or do not match
    their published checksums) into ``root/mnist/`` (:func:`anyarray_nn.data.download.download`;
    without a network, a ConnectionError says which files to put where).

    Returns ``(images, labels)``: uint8 images of shape (N, 1, 28, 28) (NCHW with one
    channel, 0 = background, 255 = ink) and int64 labels of shape (N,) in 0..9.

    Raises :class:`FileNotFoundError` listing the places looked when a file is missing, and
    :class:`~anyarray_nn.data.DataFormatError` naming the file when one is truncated,
    corrupt or not an MNIST file. Each header is checked before the data after it is read,
    and no more is decompressed than it declares: a header declaring more than its file can
    hold (a gzip file expands at most 1032 times, xz 8000 times) is refused up front.
    """
    if split not in SPLITS:
        raise ValueError(f"load_mnist: split must be one of {', '.join(map(repr, SPLITS))}, "
                         f"got {split!r}")
    root = data_root(root)
    if wants_download(download, "load_mnist"):
        from .download import download as fetch
        fetch("mnist", root)
    hint = (f"MNIST needs {', '.join(n + '.gz' for pair in FILES.values() for n in pair)} "
            f"(or the same names uncompressed or .xz) in {root / 'mnist'}; "
            f"anyarray_nn.data.download can fetch them when online.")
    paths = [find_first(root, [f"{folder}/{name}" for folder in FOLDERS],
                        what=f"MNIST {split} file {name!r}", hint=hint)
             for name in FILES[split]]
    # Both headers first, so that mismatched files fail before anything is decompressed; then
    # the labels, whose count the images must match, then the images: each read stops at the
    # size its header declares.
    image_shape = _read_idx_header(paths[0], IMAGES_MAGIC, "image")
    label_shape = _read_idx_header(paths[1], LABELS_MAGIC, "label")
    if image_shape[1:] != IMAGE_SIZE:
        raise DataFormatError(f"{paths[0]}: expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images, "
                              f"the header says {image_shape[1]}x{image_shape[2]}")
    if image_shape[0] > MAX_COUNT:
        raise DataFormatError(f"{paths[0]}: expected at most {MAX_COUNT:,} images, the header "
                              f"says {image_shape[0]:,}")
    if image_shape[0] != label_shape[0]:
        raise DataFormatError(f"{paths[0]} holds {image_shape[0]} images but {paths[1]} holds "
                              f"{label_shape[0]} labels; expected the same count (mixed-up "
                              f"files from different splits?)")
    labels = _read_idx(paths[1], label_shape, LABELS_MAGIC, "label")
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataFormatError(f"{paths[1]}: expected labels 0..{NUM_CLASSES - 1}, label {bad} "
                              f"is {labels[bad]}")
    images = _read_idx(paths[0], image_shape, IMAGES_MAGIC, "image")
    return images[:, None, :, :], labels.astype(np.int64)


def _header(magic: int, shape: tuple[int, ...]) -> bytes:
    """The IDX header for ``magic`` and ``shape``: each as 4 big-endian bytes."""
    return b"".join(n.to_bytes(4, "big") for n in (magic, *shape))


def _read_idx_header(path: pathlib.Path, magic: int, what: str) -> tuple[int, ...]:
    """The shape the IDX header of ``path`` declares, after checking that it has the ``magic``
    number (element type unsigned byte, the right number of dimensions)."""
    ndim = magic & 0xFF
    size = 4 + 4 * ndim
    data = read_header(path, size)
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        other = {IMAGES_MAGIC: "an image file", LABELS_MAGIC: "a label file"}.get(found)
        guess = (f"{other}: swapped file names?" if other else
                 f"element type 0x{(found >> 8) & 0xFF:02X} with {found & 0xFF} dimensions, "
                 f"where MNIST {what}s are unsigned bytes (0x08) with {ndim}")
        raise DataFormatError(f"{path}: expected the IDX magic number 0x{magic:08X} of an MNIST "
                              f"{what} file, found 0x{found:08X} ({guess})")
    if len(data) < size:
        raise DataFormatError(f"{path}: expected an IDX {what} file with a header of {size} "
                              f"bytes, but it holds only {len(data)} bytes")
    return tuple(int.from_bytes(data[i:i + 4], "big") for i in range(4, size, 4))


def _read_idx(path: pathlib.Path, shape: tuple[int, ...], magic: int, what: str) -> np.ndarray:
    """The uint8 array of ``shape`` stored in the IDX file ``path``, whose header (``magic``,
    ``shape``) was checked: the file must hold exactly the bytes the header declares."""
    header = _header(magic, shape)
    promise = (f"the header promises {shape[0]} {what}{'' if shape[0] == 1 else 's'} of "
               f"shape {shape[1:] or '()'}")
    # Python ints: a forged header cannot wrap around.
    data = read_exactly(path, len(header) + math.prod(shape), promise)
    if data[:len(header)].tobytes() != header:
        raise DataFormatError(f"{path}: its header changed while it was read; expected it to "
                              f"stay {header.hex()}, found {data[:len(header)].tobytes().hex()}")
    return data[len(header):].reshape(shape)  # a view of the fresh, writable buffer
