"""Weight initializers.

Each initializer draws on the host in float64 from a seeded NumPy generator; the layer then
casts and moves the result. The same seed therefore gives bit-identical initial weights on
every backend.

Names accepted wherever a layer takes ``init=``:

``"he"`` / ``"he_normal"``     normal, std = sqrt(2 / fan_in)        (ReLU networks)
``"he_uniform"``              uniform on +-sqrt(6 / fan_in)
``"glorot"`` / ``"glorot_uniform"``  uniform on +-sqrt(6 / (fan_in + fan_out))  (tanh, sigmoid)
``"glorot_normal"``           normal, std = sqrt(2 / (fan_in + fan_out))
``"normal"``                  the course's scaled normal: 0.01 * N(0, 1); see :func:`normal`
``"zeros"`` / ``"ones"``      all zeros / all ones

A callable ``f(shape, fan_in, fan_out, rng) -> numpy.ndarray`` is accepted too.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np

Initializer = Callable[[tuple, int, int, np.random.Generator], np.ndarray]


def he_normal(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Normal with std sqrt(2 / fan_in) (He et al., 2015)."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def he_uniform(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on [-sqrt(6 / fan_in), sqrt(6 / fan_in)]."""
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def glorot_uniform(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on +-sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio, 2010)."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Normal with std sqrt(2 / (fan_in + fan_out))."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def zeros(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """All zeros (the usual bias initializer)."""
    return np.zeros(shape)


def ones(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """All ones (batch normalization's scale)."""
    return np.ones(shape)


def normal(std: float = 0.01) -> Initializer:
    """The scaled normal ``std * N(0, 1)``, as in the course framework (std 0.01 by default)."""
    if not std > 0:
        raise ValueError(f"normal initializer: expected std > 0, got {std}")

    def scaled_normal(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal(shape) * std

    scaled_normal.__name__ = f"normal({std})"
    return scaled_normal


INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "normal": normal(0.01),
    "zeros": zeros,
    "ones": ones,
}


def get_initializer(spec: Union[str, Initializer]) -> Initializer:
    """Resolve an initializer name (see the module docstring) or pass a callable through."""
    if callable(spec):
        return spec
    try:
        return INITIALIZERS[spec]
    except (KeyError, TypeError):
        raise ValueError(f"unknown initializer {spec!r}; expected one of "
                         f"{', '.join(INITIALIZERS)} or a callable") from None
