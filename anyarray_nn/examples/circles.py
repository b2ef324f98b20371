"""Learn the two-circles toy set with a small tanh MLP: the first end-to-end example.

    python -m anyarray_nn.examples.circles --backend numpy

The training loop is written out by hand (forward, loss, backward, optimizer step) so that
every step of back-propagation is visible.
"""

from __future__ import annotations

import time

import click
import numpy as np

import anyarray_nn as ann

from .experiment import backend_option


def build_model(hidden: int = 16, *, backend: str | None = None, seed: int = 0) -> ann.Sequential:
    """2 -> hidden -> hidden -> 2 with tanh activations and Glorot initialisation."""
    rng = np.random.default_rng(seed)
    return ann.Sequential([
        ann.layers.Dense(2, hidden, init="glorot", name="d1", backend=backend, rng=rng),
        ann.layers.Tanh(),
        ann.layers.Dense(hidden, hidden, init="glorot", name="d2", backend=backend, rng=rng),
        ann.layers.Tanh(),
        ann.layers.Dense(hidden, 2, init="glorot", name="out", backend=backend, rng=rng),
    ])


def train_circles(backend: str = "numpy", *, epochs: int = 60, batch_size: int = 32,
                  lr: float = 0.01, seed: int = 0, verbose: bool = True) -> dict:
    """Train on 1,000 generated points, test on 1,000 others; return the accuracies and time."""
    be = ann.get_backend(backend)
    x_train, y_train = ann.data.make_circles(1000, noise=0.1, seed=seed)
    x_test, y_test = ann.data.make_circles(1000, noise=0.1, seed=seed + 1)
    model = build_model(backend=be.name, seed=seed)
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    opt = ann.optim.Adam(model, lr=lr)
    order_rng = np.random.default_rng(seed)
    xtr, ytr = be.asarray(x_train, dtype="float32"), be.asarray(y_train)

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = be.asarray(order_rng.permutation(len(y_train)))
        n = len(y_train)
        for i in range(0, n, batch_size):
            idx = order[i:min(i + batch_size, n)]  # out-of-range stops are not standard
            xb, yb = be.xp.take(xtr, idx, axis=0), be.xp.take(ytr, idx, axis=0)
            logits = model.forward(xb, train=True)
            loss = loss_fn.forward(logits, yb)
            model.backward(loss_fn.backward())
            opt.step()
        if verbose and (epoch % 10 == 0 or epoch == 1):
            print(f"epoch {epoch:3d}  last batch loss {float(loss):.4f}")
    seconds = time.perf_counter() - start

    result = {"backend": be.name, "epochs": epochs, "seconds": seconds,
              "train_accuracy": _accuracy(model, be, x_train, y_train),
              "test_accuracy": _accuracy(model, be, x_test, y_test)}
    if verbose:
        print(f"backend {be.name}: train accuracy {result['train_accuracy']:.3f}, "
              f"test accuracy {result['test_accuracy']:.3f}, {seconds:.1f} s")
    return result


def _accuracy(model: ann.Sequential, be: ann.Backend, x: np.ndarray, y: np.ndarray) -> float:
    predicted = ann.to_host(model.predict(be.asarray(x, dtype="float32")))
    return float(np.mean(predicted == y))


@click.command()
@click.version_option(ann.__version__, prog_name="anyarray-circles")
@click.option("--backend", default=None, callback=backend_option,
              help="Backend name (default: ANYARRAY_NN_BACKEND or numpy); 'all' runs every "
                   "available backend.")
@click.option("--epochs", default=60, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
def main(backend: str | None, epochs: int, seed: int) -> None:
    """Train a tanh MLP on the two-circles toy set and print its test accuracy."""
    names = ann.available_backends() if backend == "all" else [backend or ann.current_backend().name]
    for name in names:
        train_circles(name, epochs=epochs, seed=seed)


if __name__ == "__main__":
    main()
