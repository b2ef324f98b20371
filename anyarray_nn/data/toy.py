"""Small generated data sets for examples and tests."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..backend import host_rng
from ..errors import as_int


def make_circles(n_samples: int = 1000, *, noise: float = 0.1, factor: float = 0.5,
                 seed: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles: class 0 on radius 1, class 1 on radius ``factor``.

    Returns ``(x, y)``: float64 points of shape (n_samples, 2) with Gaussian ``noise`` added,
    and int64 labels, shuffled. ``seed`` (an int or NumPy Generator) makes it reproducible.
    Not linearly separable: a classic first test for a hidden layer.
    """
    n_samples = _count(n_samples, "make_circles", "n_samples", 2)
    _check_noise("make_circles", noise)
    if not 0 < factor < 1:
        raise ValueError(f"make_circles: expected 0 < factor < 1, got {factor!r}")
    rng = host_rng(seed)
    n_outer = n_samples // 2
    angles = rng.uniform(0.0, 2.0 * np.pi, n_samples)
    radius = np.where(np.arange(n_samples) < n_outer, 1.0, factor)
    x = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    x += rng.normal(0.0, noise, x.shape)
    y = (np.arange(n_samples) >= n_outer).astype(np.int64)
    order = rng.permutation(n_samples)
    return x[order], y[order]


def _check_noise(caller: str, noise: Any) -> None:
    if not (isinstance(noise, numbers.Real) and float(noise) >= 0):  # also rejects NaN
        raise ValueError(f"{caller}: expected noise >= 0, got {noise!r}")


def _count(value: Any, caller: str, what: str, low: int, bound: str = "") -> int:
    """``value`` as a Python int >= ``low`` (NumPy integers too, not bool), else a ValueError
    saying ``what >= bound`` (``bound`` defaults to ``low``)."""
    number = as_int(value)
    if number is not None and number >= low:
        return number
    raise ValueError(f"{caller}: expected {what} >= {bound or low}, got {value!r}")


def make_moons(n_samples: int = 1000, *, noise: float = 0.1,
               seed: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles ("moons"): class 0 arches up, class 1 arches down.

    Class 0 lies on the upper half of the unit circle around (0, 0); class 1 on the lower
    half of the unit circle around (1, 0.5), so each moon reaches into the other's hollow.
    Returns ``(x, y)``: float64 points of shape (n_samples, 2) with Gaussian ``noise`` added,
    and int64 labels (``n_samples // 2`` of class 0, the rest class 1), shuffled. ``seed``
    (an int or NumPy Generator) makes it reproducible. No straight line separates the moons.
    """
    n_samples = _count(n_samples, "make_moons", "n_samples", 2)
    _check_noise("make_moons", noise)
    rng = host_rng(seed)
    n_upper = n_samples // 2
    upper = np.arange(n_samples) < n_upper
    angles = rng.uniform(0.0, np.pi, n_samples)
    # the lower moon is the upper one turned over (cos, sin -> -cos, -sin) and moved by (1, 0.5)
    sign = np.where(upper, 1.0, -1.0)
    x = np.stack([sign * np.cos(angles) + np.where(upper, 0.0, 1.0),
                  sign * np.sin(angles) + np.where(upper, 0.0, 0.5)], axis=1)
    x += rng.normal(0.0, noise, x.shape)
    y = (~upper).astype(np.int64)
    order = rng.permutation(n_samples)
    return x[order], y[order]


def make_spirals(n_samples: int = 1000, *, classes: int = 3, noise: float = 0.2,
                 seed: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved spiral arms, one class per arm: the classic CS231n spiral data.

    Along each arm the radius grows evenly from 0 to 1 while the angle turns through 4
    radians; arm ``k`` is rotated by ``2 pi k / classes`` so the arms are evenly spaced.
    ``noise`` is the standard deviation of Gaussian noise on the angle (in radians), which
    blurs the arms most where they are far apart, near the rim. Returns ``(x, y)``: float64
    points of shape (n_samples, 2) and int64 labels ``0 .. classes-1``, shuffled; the class
    sizes differ by at most one. ``seed`` (an int or NumPy Generator) makes it reproducible.
    A linear classifier gets only about half of the three-arm set right; a small MLP nearly all.
    """
    classes = _count(classes, "make_spirals", "classes", 2)
    n_samples = _count(n_samples, "make_spirals", "n_samples", classes,
                       f"classes ({classes}) so every arm has a point")
    _check_noise("make_spirals", noise)
    rng = host_rng(seed)
    # class k gets the samples i with i % classes == k: sizes differ by at most one
    y = np.arange(n_samples) % classes
    # position along the arm, 0 at the centre and 1 at the rim, evenly spaced in each class
    sizes = np.bincount(y, minlength=classes)
    rank = np.arange(n_samples) // classes
    t = rank / np.maximum(sizes[y] - 1, 1)
    angles = 4.0 * t + 2.0 * np.pi * y / classes + rng.normal(0.0, noise, n_samples)
    x = np.stack([t * np.sin(angles), t * np.cos(angles)], axis=1)
    order = rng.permutation(n_samples)
    return x[order], y[order].astype(np.int64)
