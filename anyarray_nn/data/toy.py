"""Small generated data sets for examples and tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import host_rng


def make_circles(n_samples: int = 1000, *, noise: float = 0.1, factor: float = 0.5,
                 seed: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles: class 0 on radius 1, class 1 on radius ``factor``.

    Returns ``(x, y)``: float64 points of shape (n_samples, 2) with Gaussian ``noise`` added,
    and int64 labels, shuffled. ``seed`` (an int or NumPy Generator) makes it reproducible.
    Not linearly separable: a classic first test for a hidden layer.
    """
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"make_circles: expected n_samples >= 2, got {n_samples!r}")
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
