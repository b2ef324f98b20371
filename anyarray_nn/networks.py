"""The course networks as ready-made constructors (used by examples, tests and benchmarks)."""

from __future__ import annotations

from typing import Any

from .layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .model import Sequential


def mnist_net(**kw: Any) -> Sequential:
    """The course MNIST network, 14,682 parameters, for (N, 1, 28, 28) input.

    conv 5x5 1->16 pad 2, ReLU, max-pool 2, conv 5x5 16->16 pad 2, ReLU, max-pool 2,
    dense 784->10. ``kw`` (backend, dtype, rng) goes to every layer with parameters.
    """
    return Sequential([
        Conv2D(1, 16, 5, padding=2, name="conv1", **kw), ReLU(), MaxPool2D(2),
        Conv2D(16, 16, 5, padding=2, name="conv2", **kw), ReLU(), MaxPool2D(2),
        Flatten(), Dense(16 * 7 * 7, 10, name="fc", **kw),
    ])


def cifar10_net(**kw: Any) -> Sequential:
    """The course CIFAR-10 baseline for (N, 3, 32, 32) input.

    conv 5x5 3->16 pad 2, ReLU, max-pool 2, conv 5x5 16->16 pad 2, ReLU, dense 4096->10.
    """
    return Sequential([
        Conv2D(3, 16, 5, padding=2, name="conv1", **kw), ReLU(), MaxPool2D(2),
        Conv2D(16, 16, 5, padding=2, name="conv2", **kw), ReLU(),
        Flatten(), Dense(16 * 16 * 16, 10, name="fc", **kw),
    ])


def cifar10_large_net(**kw: Any) -> Sequential:
    """A larger CIFAR-10 network: 3x3 convs 3->32->64->128, each with ReLU and max-pool 2,
    then dense 2048->256, ReLU, dense 256->10."""
    return Sequential([
        Conv2D(3, 32, 3, padding=1, name="conv1", **kw), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1, name="conv2", **kw), ReLU(), MaxPool2D(2),
        Conv2D(64, 128, 3, padding=1, name="conv3", **kw), ReLU(), MaxPool2D(2),
        Flatten(), Dense(128 * 4 * 4, 256, name="fc1", **kw), ReLU(),
        Dense(256, 10, name="fc2", **kw),
    ])


NETWORKS = {"mnist": mnist_net, "cifar10": cifar10_net, "cifar10_large": cifar10_large_net}
