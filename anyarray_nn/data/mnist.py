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

from ._files import DataFormatError, data_root, find_first, open_member

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


def load_mnist(root: str | os.PathLike | None = None,
               split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load the MNIST training (60,000) or test (10,000) images and labels.

    ``root`` is the data folder (default: the ``ANYARRAY_NN_DATA`` environment variable);
    the four IDX files, as published (``.gz``), uncompressed or as ``.xz``, are looked for
    in ``root/mnist/``, ``root/`` and ``root/MNIST/raw/``. ``split`` is ``"train"`` or
    ``"test"``.

    Returns ``(images, labels)``: uint8 images of shape (N, 1, 28, 28) (NCHW with one
    channel, 0 = background, 255 = ink) and int64 labels of shape (N,) in 0..9.

    Raises :class:`FileNotFoundError` listing the places looked when a file is missing, and
    :class:`~anyarray_nn.data.DataFormatError` naming the file when one is truncated,
    corrupt or not an MNIST file.
    """
    if split not in SPLITS:
        raise ValueError(f"load_mnist: split must be one of {', '.join(map(repr, SPLITS))}, "
                         f"got {split!r}")
    root = data_root(root)
    hint = (f"MNIST needs {', '.join(n + '.gz' for pair in FILES.values() for n in pair)} "
            f"(or the same names uncompressed or .xz) in {root / 'mnist'}; "
            f"anyarray_nn.data.download can fetch them when online.")
    paths = [find_first(root, [f"{folder}/{name}" for folder in FOLDERS],
                        what=f"MNIST {split} file {name!r}", hint=hint)
             for name in FILES[split]]
    images = _parse_idx(open_member(paths[0]), paths[0], IMAGES_MAGIC, "image")
    labels = _parse_idx(open_member(paths[1]), paths[1], LABELS_MAGIC, "label")

    if images.shape[1:] != IMAGE_SIZE:
        raise DataFormatError(f"{paths[0]}: expected {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} images, "
                              f"the header says {images.shape[1]}x{images.shape[2]}")
    if len(images) != len(labels):
        raise DataFormatError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds "
                              f"{len(labels)} labels; expected the same count (mixed-up "
                              f"files from different splits?)")
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataFormatError(f"{paths[1]}: expected labels 0..{NUM_CLASSES - 1}, label {bad} "
                              f"is {labels[bad]}")
    # .copy(): frombuffer views the read-only bytes; callers may normalise in place.
    return images[:, None, :, :].copy(), labels.astype(np.int64)


def _parse_idx(data: bytes, path: pathlib.Path, magic: int, what: str) -> np.ndarray:
    """The uint8 array stored in IDX ``data`` (read from ``path``), after checking the header
    has the ``magic`` number and that the file holds exactly the bytes the header promises."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found is not None and found != magic:
        other = {IMAGES_MAGIC: "an image file", LABELS_MAGIC: "a label file"}.get(found)
        guess = f" ({other}: swapped file names?)" if other else ""
        raise DataFormatError(f"{path}: expected the IDX magic number 0x{magic:08X} of an MNIST "
                              f"{what} file, found 0x{found:08X}{guess}")
    if len(data) < header:
        raise DataFormatError(f"{path}: expected an IDX {what} file with a header of {header} "
                              f"bytes, but it holds only {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)  # Python ints: a forged header cannot wrap around
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has extra bytes"
        raise DataFormatError(
            f"{path}: the header promises {shape[0]} {what}s of shape {shape[1:] or '()'}, "
            f"i.e. {expected} bytes (decompressed), but the file holds {len(data)} bytes: it "
            f"is {state}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
