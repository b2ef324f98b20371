"""The course MNIST network on the real MNIST data.

    python -m anyarray_nn.examples.mnist --data DIR      # or set ANYARRAY_NN_DATA

Prints the per-epoch progress, the test confusion matrix, the per-class precision and recall,
the test accuracy, images per second and the wall time. Recorded results: docs/training.md.
"""

from __future__ import annotations

import click

from anyarray_nn.data import load_mnist
from anyarray_nn.networks import mnist_net

from . import experiment


@click.command()
@click.option("--epochs", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--lr", type=float, default=0.01, show_default=True,
              callback=experiment.learning_rate_option)
@experiment.common_options
def main(data, backend, epochs, batch_size, lr, seed, limit, save, report, overwrite,
         workers, progress) -> None:
    """Train the course MNIST network (14,682 parameters) and report its test accuracy."""
    experiment.run("MNIST, course network", load_mnist, build=mnist_net, data=data,
                   backend=backend, epochs=epochs, batch_size=batch_size, lr=lr,
                   weight_decay=5e-4, class_names=[str(d) for d in range(10)], seed=seed,
                   progress=progress, limit=limit, save=save, report=report,
                   workers=workers, overwrite=overwrite)


if __name__ == "__main__":
    main()
