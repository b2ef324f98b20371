"""The course networks as ready-made constructors (used by examples, tests and benchmarks)."""

from __future__ import annotations

from typing import Any, Callable

from .layers import (GELU, Add, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                     GlobalAvgPool2D, MaxPool2D, ReLU, Scale)
from .model import Input, Model, Sequential


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


def cifar10_resnet(widths: tuple[int, int, int] = (64, 128, 256), **kw: Any) -> Model:
    """A residual CIFAR-10 network (ResNet-style), 1.95 million parameters at the default
    ``widths``, for (N, 3, 32, 32) input; about 115 million multiply-adds per image.

    A stem (conv 3x3 3->32, batch norm, ReLU), then three stages, each a convolution to the
    stage's width, max-pool 2, batch norm and ReLU, followed by a residual block: two
    conv-batch-norm pairs with a ReLU between, added to the block's input, then a ReLU.
    The stages run at 32, 16 and 8 pixels, ending at 4x4; a global average pool and a dense
    layer give the 10 logits. Convolutions have no bias (batch norm follows each).
    """
    image = Input((3, 32, 32), name="image")
    h = _conv_bn(image, 3, 32, "stem", kw, relu=True)
    channels = 32
    for i, width in enumerate(widths, start=1):
        h = Conv2D(channels, width, 3, padding=1, bias=False, name=f"conv{i}", **kw)(h)
        h = ReLU(name=f"relu{i}")(BatchNorm2D(width, name=f"bn{i}", **kw)(
            MaxPool2D(2, name=f"pool{i}")(h)))
        block = _conv_bn(h, width, width, f"res{i}a", kw, relu=True)
        block = _conv_bn(block, width, width, f"res{i}b", kw, relu=False)
        h = ReLU(name=f"res{i}_relu")(Add(name=f"res{i}_add")([block, h]))
        channels = width
    logits = Dense(channels, 10, name="fc", **kw)(GlobalAvgPool2D(name="pool")(h))
    return Model(image, logits)


def _conv_bn(x: Any, cin: int, cout: int, name: str, kw: dict[str, Any], relu: bool) -> Any:
    """conv 3x3 (no bias), batch norm, and a ReLU if ``relu``, on node ``x``."""
    h = Conv2D(cin, cout, 3, padding=1, bias=False, name=f"{name}_conv", **kw)(x)
    h = BatchNorm2D(cout, name=f"{name}_bn", **kw)(h)
    return ReLU(name=f"{name}_relu")(h) if relu else h


def cifar10_fast(widths: tuple[int, int, int] = (64, 256, 256), **kw: Any) -> Model:
    """The fast CIFAR-10 network of the 94% recipe, for (N, 3, 32, 32) input: 1.97 million
    parameters at the default ``widths``, about 0.3 billion multiply-adds per image.

    A 2x2 convolution 3->24 without padding named ``"whiten"`` (meant to be set by
    :func:`anyarray_nn.init.patch_whitening` and frozen; 24 = 2 x 12 patch directions), GELU,
    then three blocks at 31, 15 and 7 pixels: conv 3x3 to the block's width, max-pool 2, batch
    norm, GELU, conv 3x3, batch norm, GELU. A max-pool 3 leaves one pixel; a dense layer
    without bias and a fixed factor 1/9 give the 10 logits. Convolutions start from the
    ``"identity"`` initializer; batch norms keep 0.6 of their running statistics per step
    (momentum 0.4). The GELUs use the tanh form (the exact one costs far more here, see
    docs/layers.md). The network follows the public airbench94 design (K. Jordan, 2024).
    """
    image = Input((3, 32, 32), name="image")
    h = GELU("tanh", name="whiten_gelu")(Conv2D(3, 24, 2, name="whiten", **kw)(image))
    channels = 24
    for i, width in enumerate(widths, start=1):
        h = Conv2D(channels, width, 3, padding=1, bias=False, init="identity",
                   name=f"conv{i}a", **kw)(h)
        h = MaxPool2D(2, name=f"pool{i}")(h)
        h = GELU("tanh", name=f"gelu{i}a")(BatchNorm2D(width, momentum=0.4, name=f"bn{i}a",
                                                       **kw)(h))
        h = Conv2D(width, width, 3, padding=1, bias=False, init="identity",
                   name=f"conv{i}b", **kw)(h)
        h = GELU("tanh", name=f"gelu{i}b")(BatchNorm2D(width, momentum=0.4, name=f"bn{i}b",
                                                       **kw)(h))
        channels = width
    h = Flatten(name="flatten")(MaxPool2D(3, name="pool")(h))
    logits = Scale(1 / 9, name="scale")(Dense(channels, 10, bias=False, init="uniform",
                                              name="fc", **kw)(h))
    return Model(image, logits)


NETWORKS: dict[str, Callable[..., Any]] = {"mnist": mnist_net, "cifar10": cifar10_net, "cifar10_large": cifar10_large_net,
            "cifar10_resnet": cifar10_resnet, "cifar10_fast": cifar10_fast}
