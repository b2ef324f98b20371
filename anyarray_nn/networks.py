"""The course networks as ready-made constructors (used by examples, tests and benchmarks)."""

from __future__ import annotations

from typing import Any

from .layers import BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
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


def cifar10_bn_net(**kw: Any) -> Sequential:
    """The larger CIFAR-10 network with batch normalization after every convolution and the
    hidden dense layer, and dropout before each dense layer (the strong recipe)."""
    layers = []
    channels = 3
    for i, width in enumerate((32, 64, 128), start=1):
        layers += [Conv2D(channels, width, 3, padding=1, bias=False, name=f"conv{i}", **kw),
                   BatchNorm2D(width, name=f"bn{i}", **kw), ReLU(), MaxPool2D(2)]
        channels = width
    rng = kw.get("rng")
    return Sequential(layers + [
        Flatten(), Dropout(0.25, name="drop1", rng=rng),
        Dense(128 * 4 * 4, 256, bias=False, name="fc1", **kw), BatchNorm1D(256, name="bn4", **kw),
        ReLU(), Dropout(0.5, name="drop2", rng=rng), Dense(256, 10, name="fc2", **kw)])


NETWORKS = {"mnist": mnist_net, "cifar10": cifar10_net, "cifar10_large": cifar10_large_net}
