"""The data pipeline: split, standardize, shuffle, batch, move to the device, augment.

Data sets stay on the host as NumPy arrays (images as uint8: four times smaller than float32).
A :class:`DataLoader` cuts them into mini-batches in a seeded order and moves each batch to
the model's backend, where the preprocessing (scaling, standardization) and the augmentation
(random crop, flip) run in array-API code. Random choices (the order, crop offsets, flips) are
drawn on the host from the loader's seeded generator, so a run is reproducible and the same
batches come out on every backend.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .. import backend as _backend
from ..errors import as_int


def train_val_split(x: np.ndarray, y: np.ndarray, val_fraction: float = 0.1, *,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split host arrays into a training and a validation part, shuffled with ``seed``.

    Returns ``(x_train, y_train, x_val, y_val)``; the validation part has
    ``round(val_fraction * N)`` examples.
    """
    if len(x) != len(y):
        raise ValueError(f"train_val_split: x has {len(x)} examples but y has {len(y)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: expected 0 < val_fraction < 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(val_fraction * len(x)))
    if n_val == 0 or n_val == len(x):
        raise ValueError(f"train_val_split: val_fraction {val_fraction} of {len(x)} examples "
                         f"leaves one part empty")
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


class Standardize:
    """Scale, then subtract the mean and divide by the standard deviation of the training data.

    ``Standardize.fit(x_train)`` computes per-channel statistics for (N, C, H, W) images (per
    feature for (N, D) data) on the host; calling the object on a batch of any backend applies
    them there. ``scale`` (e.g. 1/255 for uint8 pixels) is applied first, in both places.
    Compute the statistics from the training data only, then use them for every split.

    A feature whose standard deviation is at most ``constant_rtol`` (float32's machine
    epsilon, about 1.2e-7) times the magnitude of its mean is constant: the differences are
    rounding noise in a float32 batch, and dividing by them would blow that noise up. ``fit``
    gives such a feature std 1, so it is only centred.
    """

    constant_rtol = float(np.finfo(np.float32).eps)

    def __init__(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray,
                 scale: float = 1.0) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError(f"Standardize: mean and std must be 1-D of equal length, got "
                             f"shapes {self.mean.shape} and {self.std.shape}")
        if not np.all(np.isfinite(self.mean)):
            raise ValueError(f"Standardize: mean must be finite, got {self.mean.tolist()} "
                             f"(NaN or infinity in the data it was computed from?)")
        if not np.all((self.std > 0) & np.isfinite(self.std)):
            raise ValueError(f"Standardize: std must be positive and finite, got "
                             f"{self.std.tolist()}")
        self.scale = float(scale)
        if not math.isfinite(self.scale) or self.scale == 0:
            raise ValueError(f"Standardize: expected a finite, non-zero scale, got {scale!r}")
        self._on: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    @classmethod
    def fit(cls, x: np.ndarray, scale: float = 1.0, chunk: int = 10_000) -> "Standardize":
        """Statistics of host data ``x`` (computed in float64, in chunks to bound memory).

        Two passes: the mean, then the mean squared deviation from it (the one-pass
        E[x^2] - E[x]^2 loses all precision for a feature far from zero). A constant feature
        gets std 1 (see :class:`Standardize`).
        """
        if x.ndim not in (2, 4):
            raise ValueError(f"Standardize.fit: expected (N, D) or (N, C, H, W) data, got "
                             f"shape {x.shape}")
        if len(x) == 0:
            raise ValueError(f"Standardize.fit: expected at least one example, got shape "
                             f"{x.shape}")
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        count = x.size // x.shape[1]
        _check_numbers(x, "Standardize.fit")

        def parts():
            for start in range(0, len(x), chunk):
                yield x[start:start + chunk].astype(np.float64) * scale

        with np.errstate(invalid="ignore", over="ignore"):   # checked right after
            mean = sum(part.sum(axis=axes) for part in parts()) / count
            centre = mean.reshape((1, -1) if x.ndim == 2 else (1, -1, 1, 1))
            squares = sum(((part - centre) ** 2).sum(axis=axes) for part in parts())
            std = np.sqrt(squares / count)
        bad = np.flatnonzero(~np.isfinite(mean) | ~np.isfinite(std))
        if bad.size:  # NaN or infinity in x would make every standardized batch NaN
            raise ValueError(f"Standardize.fit: {'feature' if x.ndim == 2 else 'channel'} "
                             f"{bad[0]} of x holds NaN or infinity (or values too large to "
                             f"sum); clean the data first")
        constant = std <= cls.constant_rtol * np.abs(mean)
        return cls(mean, np.where(constant, 1.0, std), scale)

    def __call__(self, x: Any) -> Any:
        """``(x * scale - mean) / std`` for a float batch ``x`` of shape (N, D) or
        (N, C, H, W), on ``x``'s backend."""
        xp = _backend.namespace(x)
        key = (_backend.backend_name_of(x), _backend.dtype_name(x.dtype), x.ndim)
        if key[1] not in _backend.DTYPES:
            raise ValueError(f"Standardize: expected a float32 or float64 batch, got dtype "
                             f"{key[1]}; convert it first (the DataLoader does), e.g. "
                             f"ann.asarray(x, dtype='float32')")
        if x.ndim not in (2, 4):
            raise ValueError(f"Standardize: expected (N, D) or (N, C, H, W) data, got shape "
                             f"{tuple(x.shape)}")
        if key not in self._on:  # move the statistics once per backend, dtype and layout
            shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
            self._on[key] = tuple(
                xp.reshape(_backend.asarray(v, backend=key[0], dtype=key[1]), shape)
                for v in (self.mean, self.std))
        mean, std = self._on[key]
        if x.shape[1] != mean.shape[1]:
            raise ValueError(f"Standardize: expected {mean.shape[1]} channels, got shape "
                             f"{tuple(x.shape)}")
        return (x * self.scale - mean) / std


def _image_batch_shape(x: Any, who: str) -> tuple[int, int, int, int]:
    """``x.shape`` of a batch of images; a ValueError names ``who`` and the shape otherwise."""
    if len(x.shape) != 4:
        raise ValueError(f"{who}: expected a batch of images (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    return tuple(x.shape)  # type: ignore[return-value]


class RandomCrop:
    """Pad each image by ``padding`` pixels, then crop back to its size at a random offset.

    ``padding_mode`` "zeros" pads with zeros, "reflect" mirrors the image at its edges
    without repeating the edge (torchvision's and ``numpy.pad``'s "reflect"; ``padding``
    must then be below the image's height and width). The offsets come from the loader's
    generator; the crop itself is two ``take_along_axis`` gathers on the device.
    """

    MODES = ("zeros", "reflect")

    def __init__(self, padding: int = 4, padding_mode: str = "zeros") -> None:
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 1:
            raise ValueError(f"RandomCrop: expected padding >= 1, got {padding!r}")
        if padding_mode not in self.MODES:
            raise ValueError(f"RandomCrop: expected padding_mode in {self.MODES}, got "
                             f"{padding_mode!r}")
        self.padding, self.padding_mode = padding, padding_mode

    def _pad(self, xp: Any, x: Any, n: int, c: int, h: int, w: int) -> Any:
        p = self.padding
        if self.padding_mode == "zeros":
            padded = xp.zeros((n, c, h + 2 * p, w + 2 * p), dtype=x.dtype, device=x.device)
            padded[:, :, p:p + h, p:p + w] = x
            return padded
        if p >= min(h, w):
            raise ValueError(f"RandomCrop: reflect padding {p} needs images larger than it, "
                             f"got {h}x{w}")
        where = _backend.backend_name_of(x)
        rows, cols = (_backend.asarray(reflected_indices(size, p), backend=where)
                      for size in (h, w))
        return xp.take(xp.take(x, rows, axis=2), cols, axis=3)

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        xp = _backend.namespace(x)
        n, c, h, w = _image_batch_shape(x, "RandomCrop")
        p = self.padding
        padded = self._pad(xp, x, n, c, h, w)
        top = rng.integers(0, 2 * p + 1, n)
        left = rng.integers(0, 2 * p + 1, n)
        rows = _backend.asarray(np.broadcast_to((top[:, None] + np.arange(h))[:, None, :, None],
                                                (n, c, h, w + 2 * p)).copy(),
                                backend=_backend.backend_name_of(x))
        cols = _backend.asarray(np.broadcast_to((left[:, None] + np.arange(w))[:, None, None, :],
                                                (n, c, h, w)).copy(),
                                backend=_backend.backend_name_of(x))
        return xp.take_along_axis(xp.take_along_axis(padded, rows, axis=2), cols, axis=3)


def reflected_indices(size: int, p: int) -> np.ndarray:
    """Source indices of an axis of ``size`` padded by ``p`` on each side, mirrored at the
    edges without repeating them (``numpy.pad``'s "reflect"): -1 reads 1, size reads
    size - 2."""
    index = np.abs(np.arange(-p, size + p))
    return np.where(index >= size, 2 * (size - 1) - index, index).astype(np.int64)


class RandomFlip:
    """Mirror each image left to right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomFlip: expected 0 <= p <= 1, got {p}")
        self.p = p

    def __call__(self, x: Any, rng: np.random.Generator) -> Any:
        xp = _backend.namespace(x)
        _image_batch_shape(x, "RandomFlip")
        flip = _backend.asarray(rng.random(x.shape[0]) < self.p,
                                backend=_backend.backend_name_of(x))
        return xp.where(flip[:, None, None, None], xp.flip(x, axis=3), x)


class AlternatingFlip:
    """Mirror a random half of the examples in one epoch and the other half in the next,
    alternating (the "alternating flip" of the airbench CIFAR-10 recipes, K. Jordan, 2024):
    every image is seen both ways within any two epochs, where independent coin flips leave
    a quarter of them the same way twice.

    Which half comes first is a hash of each example's index in the data set and ``seed``,
    so it needs no stored state and resumes exactly. A :class:`DataLoader` passes the
    indices and its epoch count (``per_example``); called without them it raises a
    ValueError.
    """

    per_example = True  # the DataLoader passes index= and epoch=

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**64:
            raise ValueError(f"AlternatingFlip: expected a seed from 0 to 2**64 - 1, got "
                             f"{seed!r}")
        self.seed = seed

    def first_half(self, index: np.ndarray) -> np.ndarray:
        """True for the examples at ``index`` that are mirrored in even epochs (the top bit
        of SplitMix64 of index + seed: a well-mixed, reproducible coin per example)."""
        z = np.asarray(index, dtype=np.uint64) + np.uint64(self.seed)
        with np.errstate(over="ignore"):  # the mixing wraps around on purpose
            z = z + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return ((z ^ (z >> np.uint64(31))) >> np.uint64(63)).astype(bool)

    def __call__(self, x: Any, rng: np.random.Generator, *, index: Any = None,
                 epoch: Any = None) -> Any:
        xp = _backend.namespace(x)
        n = _image_batch_shape(x, "AlternatingFlip")[0]
        if index is None or epoch is None:
            raise ValueError("AlternatingFlip: needs the examples' indices and the epoch "
                             "(index=, epoch=; a DataLoader passes them)")
        index = np.asarray(index)
        if index.shape != (n,) or index.dtype.kind not in "iu" or (index < 0).any():
            raise ValueError(f"AlternatingFlip: expected {n} example indices >= 0 for a "
                             f"batch of {n}, got {index.dtype} of shape {index.shape}")
        count = as_int(epoch)
        if count is None or count < 0:
            raise ValueError(f"AlternatingFlip: expected an epoch count >= 0, got {epoch!r}")
        flip = self.first_half(index) ^ bool(count % 2)
        flip = _backend.asarray(flip, backend=_backend.backend_name_of(x))
        return xp.where(flip[:, None, None, None], xp.flip(x, axis=3), x)


class DataLoader:
    """Mini-batches of host data, moved to a backend, preprocessed and (in training) augmented.

    ``x``/``y``: host arrays with the examples along axis 0. Each epoch visits every example
    once, in an order drawn from ``seed`` (``shuffle=False`` keeps the order). Batches come
    out as ``(x_batch, y_batch)`` on ``backend`` (default: the active one): ``x`` cast to
    ``dtype`` then passed through ``preprocess`` (e.g. a :class:`Standardize`), then, when
    ``augment`` is given and ``train`` is True, through each augmentation with the loader's
    generator; ``y`` as int64. ``drop_last`` drops a final smaller batch. An augmentation
    whose ``per_example`` attribute is true (:class:`AlternatingFlip`) is also given the
    batch's indices in ``x`` and the epoch count (``index=``, ``epoch=``).

    For a model with several inputs ``x`` is a tuple of host arrays (the batches' ``x`` then
    a tuple of device arrays, one per input; ``preprocess`` and ``augment`` take one array,
    so they are refused there); for several outputs ``y`` is a tuple of label arrays. (A
    list is one array's values, as before.)

    ``shard=(rank, world_size)`` (what :func:`anyarray_nn.distributed.shard` returns) makes
    this rank's loader of data parallel training: every rank draws the same order, the
    batches keep ``batch_size`` as their global size, and each rank gets its contiguous part
    of each global batch (sorted; sizes differing by one at most), so every example is seen
    once per epoch on exactly one rank. A last global batch with fewer examples than ranks
    joins the one before it (a rank never gets an empty batch; ``drop_last`` drops it
    instead). Augmentations then draw from a generator of each rank's own (from ``seed`` and
    the rank). The state (:meth:`state_dict`) records the number of ranks, and resumes on the
    same number only.

    ``x`` must hold numbers (booleans, integers or floats; a NaN or infinity in a batch is
    caught by training, which skips that step with a :class:`~anyarray_nn.errors.NonFiniteError`).
    ``y`` holds one class index per example: a 1-D array of integers >= 0, or of floats that
    are whole numbers (cast to int64). Anything else (negative or fractional values, one-hot
    rows, strings) raises a ValueError rather than being truncated or wrapped around.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int = 64, *,
                 shuffle: bool = True, seed: int = 0, backend: Any = None,
                 dtype: str = "float32", preprocess: Callable[[Any], Any] | None = None,
                 augment: Sequence[Callable[..., Any]] = (),
                 train: bool = True, drop_last: bool = False,
                 shard: tuple[int, int] | None = None) -> None:
        # A tuple holds one array per model input or output; a list is one array's values.
        self._several_x, self._several_y = isinstance(x, tuple), isinstance(y, tuple)
        xs = [a if isinstance(a, np.ndarray) else np.asarray(a)
              for a in (x if self._several_x else [x])]
        for i, a in enumerate(xs):
            _check_numbers(a, f"DataLoader: x[{i}]" if self._several_x else "DataLoader")
        ys = [_class_labels(labels) for labels in (y if self._several_y else [y])]
        if not xs or not ys:
            raise ValueError(f"DataLoader: expected at least one array in x and in y, got "
                             f"{len(xs)} and {len(ys)}")
        sizes = [len(a) for a in xs + ys]
        if len(set(sizes)) > 1:
            if len(sizes) == 2:
                raise ValueError(f"DataLoader: x has {sizes[0]} examples but y has {sizes[1]}")
            raise ValueError(f"DataLoader: every array of x and y needs one row per example; "
                             f"x has {sizes[:len(xs)]} and y {sizes[len(xs):]} rows")
        if self._several_x and (preprocess is not None or augment):
            raise ValueError(f"DataLoader: preprocess and augment take one array, and x has "
                             f"{len(xs)} (one per model input); preprocess the host arrays "
                             f"before, or write a loader that augments each input")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"DataLoader: expected batch_size >= 1, got {batch_size!r}")
        self.x = tuple(xs) if self._several_x else xs[0]
        self.y = tuple(ys) if self._several_y else ys[0]
        #: The number of examples (rows of each array of x and y).
        self.num_examples = sizes[0]
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.backend = _backend.get_backend(backend).name
        self.dtype, self.preprocess, self.augment, self.train = dtype, preprocess, augment, train
        self.rng = np.random.default_rng(seed)
        self.rank, self.world_size = _check_shard(shard, batch_size, self.num_examples, seed)
        # The order is drawn from self.rng on every rank alike; augmentations draw from a
        # generator of each rank's own, so that the ranks' orders never drift apart.
        self.augment_rng = (self.rng if self.world_size == 1
                            else np.random.default_rng([seed, self.rank]))
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch (global batches, when sharded)."""
        return len(self._bounds())

    def _bounds(self) -> list[tuple[int, int]]:
        """Each global batch's [start, stop) in the epoch's order."""
        n, size = self.num_examples, self.batch_size
        count = n // size if self.drop_last else math.ceil(n / size)
        bounds = [(i * size, min(n, (i + 1) * size)) for i in range(count)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < self.world_size:
            bounds[-2:] = [(bounds[-2][0], n)]  # too few to give every rank one: join
        return bounds

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        n = self.num_examples
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        self.epoch += 1
        for start, stop in self._bounds():
            index = np.sort(order[start:stop])
            count = len(index)  # this rank's contiguous part, sizes differing by one at most
            yield self.batch(index[count * self.rank // self.world_size:
                                   count * (self.rank + 1) // self.world_size])

    def batch(self, index: np.ndarray) -> tuple[Any, Any]:
        """The examples at ``index`` as a device batch (preprocessed, augmented in training)."""
        xs = [_backend.asarray(a[index], backend=self.backend, dtype=self.dtype)
              for a in (self.x if self._several_x else (self.x,))]
        ys = [_backend.asarray(labels[index], backend=self.backend)
              for labels in (self.y if self._several_y else (self.y,))]
        yb = tuple(ys) if self._several_y else ys[0]
        if self._several_x:  # preprocess and augment were refused
            return tuple(xs), yb
        xb = xs[0]
        if self.preprocess is not None:
            xb = self.preprocess(xb)
        if self.train:
            for transform in self.augment:
                if getattr(transform, "per_example", False):
                    xb = transform(xb, self.augment_rng, index=index, epoch=self.epoch)
                else:
                    xb = transform(xb, self.augment_rng)
        return xb, yb

    def state_dict(self) -> dict[str, Any]:
        """The position in the data order (the generator state and the epoch count; sharded
        over several ranks, also the number of ranks and the augmentations' generator)."""
        state = {"epoch": self.epoch, "rng": self.rng.bit_generator.state}
        if self.world_size > 1:
            state.update(world_size=self.world_size,
                         augment_rng=self.augment_rng.bit_generator.state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the data order from :meth:`state_dict` (for exact resume).

        The whole state is checked before anything changes: a bad one raises a ValueError
        naming what is wrong and leaves the loader as it was.
        """
        where = "DataLoader.load_state_dict"
        if not isinstance(state, dict):
            raise ValueError(f"{where}: expected a dict with 'epoch' and 'rng', got "
                             f"{type(state).__name__}")
        keys = ("epoch", "rng") + (("world_size", "augment_rng") if self.world_size > 1 else ())
        if state.get("world_size", 1) != self.world_size:
            raise ValueError(f"{where}: the state was saved by a loader sharded over "
                             f"{state.get('world_size', 1)!r} ranks and this one shards over "
                             f"{self.world_size}; resume on the same number of ranks")
        missing = [repr(key) for key in keys if key not in state]
        unexpected = [repr(key) for key in state if key not in keys]
        if missing or unexpected:
            raise ValueError(f"{where}: expected the keys {', '.join(map(repr, keys))}; missing "
                             f"{', '.join(missing) or 'none'}, unexpected "
                             f"{', '.join(unexpected) or 'none'}")
        epoch = as_int(state["epoch"])
        if epoch is None or epoch < 0:
            raise ValueError(f"{where}: expected 'epoch' to be an integer >= 0, got "
                             f"{state['epoch']!r}")
        generators = [("rng", self.rng)] + ([("augment_rng", self.augment_rng)]
                                            if self.world_size > 1 else [])
        for key, generator in generators:
            trial = type(generator.bit_generator)(0)  # a throwaway generator tries it first
            try:
                trial.state = state[key]
            except (TypeError, ValueError, KeyError, OverflowError) as exc:
                raise ValueError(f"{where}: {key!r} is not a {type(trial).__name__} generator "
                                 f"state ({type(exc).__name__}: {exc})") from None
        self.epoch = epoch
        for key, generator in generators:
            generator.bit_generator.state = state[key]


def _check_shard(shard: Any, batch_size: int, examples: int, seed: Any) -> tuple[int, int]:
    """``(rank, world_size)`` of a loader's ``shard`` ((0, 1) for None); a ValueError says
    what does not fit."""
    if shard is None:
        return 0, 1
    pair = tuple(shard) if isinstance(shard, (tuple, list)) else ()
    if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or not 0 <= pair[0] < pair[1]):
        raise ValueError(f"DataLoader: expected shard=(rank, world_size) with 0 <= rank < "
                         f"world_size (anyarray_nn.distributed.shard()), got {shard!r}")
    rank, size = pair
    if size > 1 and (batch_size < size or examples < size):
        raise ValueError(f"DataLoader: sharded over {size} ranks, every global batch needs "
                         f"at least one example per rank; got batch_size={batch_size} and "
                         f"{examples} examples")
    if size > 1 and not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"DataLoader: sharded over {size} ranks, seed must be an int >= 0 "
                         f"(each rank's augmentations draw from seed and rank), got {seed!r}")
    return rank, size


def _check_numbers(x: np.ndarray, who: str) -> None:
    """Raise a ValueError naming ``who`` unless ``x`` holds examples of numbers along axis 0
    (strings, objects or complex numbers would fail later, far from the cause)."""
    if x.ndim == 0 or x.dtype.kind not in "biuf":
        raise ValueError(f"{who}: expected x to hold examples of numbers (bool, integer or "
                         f"float) along axis 0, got {x.dtype} of shape {x.shape}")


def _class_labels(y: Any) -> np.ndarray:
    """``y`` as a 1-D int64 array of class indices; a ValueError names the shape, dtype or
    value when it is not one (floats are accepted when they are whole numbers)."""
    y = np.asarray(y)
    if y.ndim != 1:
        hint = "; for one-hot rows pass y.argmax(axis=1)" if y.ndim == 2 else ""
        raise ValueError(f"DataLoader: expected y of shape (N,) (one class index per "
                         f"example), got shape {y.shape}{hint}")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            raise ValueError(f"DataLoader: expected integer class labels, got {y.dtype} "
                             f"labels that are not whole numbers (e.g. y[{bad[0]}] = "
                             f"{y[bad[0]]})")
    elif y.dtype.kind not in "iub":
        raise ValueError(f"DataLoader: expected integer class labels, got {y.dtype} labels")
    if y.dtype.kind != "b":
        # Compared before the cast: a uint64 or a float from 2**63 on would wrap around.
        bad = np.flatnonzero((y < 0) | (y >= 2**63))
        if bad.size:
            raise ValueError(f"DataLoader: expected class indices from 0 to 2**63 - 1, got "
                             f"y[{bad[0]}] = {y[bad[0]]}")
    return y.astype(np.int64)
