"""CIFAR-10 with the course baseline network or an improved one.

    python -m anyarray_nn.examples.cifar10 --network baseline --data DIR
    python -m anyarray_nn.examples.cifar10 --network improved --data DIR

The improved network is the larger CIFAR-10 network of the benchmarks (3x3 convolutions
3->32->64->128 with pooling, dense 2048->256->10) trained with random crops and horizontal
flips. The strong recipe adds batch normalization and dropout (networks.cifar10_bn_net) and
doubles the learning rate. Recorded results: docs/training.md.
"""

from __future__ import annotations

import click

from anyarray_nn.data import CIFAR10_CLASSES, load_cifar10
from anyarray_nn.data.pipeline import RandomCrop, RandomFlip
from anyarray_nn.networks import cifar10_bn_net, cifar10_large_net, cifar10_net

from . import experiment

NETWORKS = {
    # network: (constructor, augmentation, epochs, learning rate, weight decay)
    "baseline": (cifar10_net, (), 10, 0.02, 5e-4),
    "improved": (cifar10_large_net, (RandomCrop(4), RandomFlip()), 20, 0.05, 5e-4),
    "strong": (cifar10_bn_net, (RandomCrop(4), RandomFlip()), 15, 0.1, 5e-4),
}


@click.command()
@click.option("--network", type=click.Choice(sorted(NETWORKS)), default="baseline",
              show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Default: 10 (baseline), 20 (improved), 15 (strong).")
@click.option("--lr", type=float, default=None, callback=experiment.learning_rate_option,
              help="Initial learning rate, decayed along a cosine. Default: 0.02, 0.05, 0.1.")
@experiment.common_options
def main(network, data, backend, epochs, batch_size, lr, seed, limit, save, report,
         overwrite, workers, progress) -> None:
    """Train a CIFAR-10 network and report its test accuracy."""
    build, augment, default_epochs, default_lr, weight_decay = NETWORKS[network]
    experiment.run(f"CIFAR-10, {network} network", load_cifar10, build=build, data=data,
                   backend=backend, epochs=epochs or default_epochs, batch_size=batch_size,
                   lr=lr or default_lr, weight_decay=weight_decay, augment=augment,
                   class_names=CIFAR10_CLASSES, seed=seed, progress=progress, limit=limit,
                   save=save, report=report, workers=workers, overwrite=overwrite)


if __name__ == "__main__":
    main()
