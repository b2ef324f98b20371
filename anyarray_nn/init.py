"""Weight initializers.

Each initializer draws on the host in float64 from a seeded NumPy generator; the layer then
casts and moves the result. The same seed therefore gives bit-identical initial weights on
every backend.

Names accepted wherever a layer takes ``init=``::

    "he" / "he_normal"               normal, std = sqrt(2 / fan_in)  (ReLU networks)
    "he_uniform"                     uniform on +-sqrt(6 / fan_in)
    "glorot" / "glorot_uniform"      uniform on +-sqrt(6 / (fan_in + fan_out))  (tanh, sigmoid)
    "glorot_normal"                  normal, std = sqrt(2 / (fan_in + fan_out))
    "normal"                         the course's scaled normal: 0.01 * N(0, 1); see normal()
    "uniform"                        uniform on +-1 / sqrt(fan_in) (PyTorch's Linear, Conv2d)
    "identity"                       "uniform", then the first min(out, in) outputs set to
                                     pass their own input through (PyTorch's dirac_ on them);
                                     for convolutions with odd kernels, the centre tap
    "zeros" / "ones"                 all zeros / all ones

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


def uniform(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on [-1 / sqrt(fan_in), 1 / sqrt(fan_in)] (what PyTorch's Linear and Conv2d draw)."""
    limit = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-limit, limit, shape)


def identity(shape: tuple, fan_in: int, fan_out: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`uniform`, then output ``i < min(out, in)`` copies input ``i``: a dense weight
    (out, in) gets ``W[i, i] = 1``, a convolution weight (out, in, kh, kw) with odd kh and kw
    the centre tap ``W[i, i, kh // 2, kw // 2] = 1``, and the rest of those rows 0. A deep
    stack so initialized starts close to passing its input through (it trains fast under
    batch normalization)."""
    if len(shape) not in (2, 4) or (len(shape) == 4 and not (shape[2] % 2 and shape[3] % 2)):
        raise ValueError(f"identity initializer: expected a dense weight (out, in) or a "
                         f"convolution weight (out, in, kh, kw) with odd kh and kw, got shape "
                         f"{tuple(shape)}")
    w = uniform(shape, fan_in, fan_out, rng)
    n = min(shape[0], shape[1])
    w[:n] = 0.0
    centre = (shape[2] // 2, shape[3] // 2) if len(shape) == 4 else ()
    w[(np.arange(n), np.arange(n)) + centre] = 1.0
    return w


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
    "uniform": uniform,
    "identity": identity,
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


def patch_whitening(images: np.ndarray, kernel_size: int = 2, eps: float = 5e-4) -> np.ndarray:
    """Convolution weights that whiten the ``kernel_size`` x ``kernel_size`` patches of
    ``images`` (host array (N, C, H, W), already standardized), for a first layer that is
    then kept fixed.

    With P the patches as vectors of length d = C k k, their second moment
    S = mean(p p^T) = V diag(lambda) V^T; filter i is the eigenvector v_i / sqrt(lambda_i + eps),
    largest eigenvalue first, so the d outputs are uncorrelated with variance
    lambda_i / (lambda_i + eps) (1 for every direction that varies well above ``eps``). The
    d filters and their negatives are returned, shape (2 d, C, k, k), so that a ReLU or GELU
    after the layer keeps both signs. S is summed shift by shift, never holding the patches.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or min(x.shape[2:]) < kernel_size or len(x) == 0:
        raise ValueError(f"patch_whitening: expected images (N >= 1, C, H, W) with H and W >= "
                         f"{kernel_size}, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("patch_whitening: the images hold NaN or infinite values")
    n, c, h, w = x.shape
    k = kernel_size
    oh, ow = h - k + 1, w - k + 1
    shifts = [(i, j) for i in range(k) for j in range(k)]
    # view[s]: channel values at patch offset s, for every patch position: (C, N * oh * ow)
    view = [np.moveaxis(x[:, :, i:i + oh, j:j + ow], 1, 0).reshape(c, -1) for i, j in shifts]
    count = view[0].shape[1]
    d = c * k * k
    moment = np.empty((c, k * k, c, k * k))  # index (channel, offset) as a weight (C, k, k)
    for a, va in enumerate(view):
        for b, vb in enumerate(view):
            moment[:, a, :, b] = va @ vb.T / count
    values, vectors = np.linalg.eigh(moment.reshape(d, d))
    values, vectors = values[::-1], vectors[:, ::-1]  # largest first
    filters = (vectors / np.sqrt(np.maximum(values, 0.0) + eps)).T.reshape(d, c, k, k)
    return np.concatenate([filters, -filters])
