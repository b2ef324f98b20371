"""One experiment on real data, shared by the MNIST and CIFAR-10 examples: load, split,
standardize, train with validation, evaluate on the test set, print the course-style report."""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Sequence

import click
import numpy as np

import anyarray_nn as ann
from anyarray_nn import metrics, train
from anyarray_nn.data.pipeline import DataLoader, Standardize, train_val_split


def common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command-line options every real-data example shares."""
    options = [
        click.option("--data", type=click.Path(file_okay=False), default=None,
                     help="Folder with the data files (default: $ANYARRAY_NN_DATA)."),
        click.option("--backend", default=None,
                     help="numpy, torch, cupy, ... (default: the active one)"),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--limit", type=click.IntRange(min=100), default=None,
                     help="Train on the first N training images only (a quick run)."),
        click.option("--save", type=click.Path(dir_okay=False), default=None,
                     help="Write the trained model to this HDF5 checkpoint "
                          "(see docs/checkpoints.md)."),
        click.option("--report", type=click.Path(file_okay=False), default=None,
                     help="Write figures and a Markdown report into this folder "
                          "(needs matplotlib: the plot extra)."),
        click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Train with DataParallel: the batch split over this many workers, "
                          "helper processes on NumPy (0: one per core). Not for networks "
                          "with BatchNorm or Dropout."),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run(name: str, load: Callable[[Any, str], tuple[np.ndarray, np.ndarray]], *,
        build: Callable[..., ann.Sequential], data: str | None, backend: str | None,
        epochs: int, batch_size: int, lr: float, weight_decay: float,
        augment: Sequence[Any] = (), class_names: Sequence[str] | None = None,
        seed: int = 0, progress: bool = True, val_fraction: float = 0.1,
        limit: int | None = None, save: str | None = None,
        report: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Train ``build()`` on a data set and print the report; returns the numbers as a dict.

    SGD with momentum 0.9 (PyTorch's form) and a cosine learning-rate decay over the epochs;
    the validation split is taken from the training set, standardization from the rest.
    ``limit`` trains on the first ``limit`` training examples (a quick smoke run); ``save``
    writes the trained model, optimizer and history to an HDF5 checkpoint at that path;
    ``report`` writes figures and a Markdown summary there. ``workers`` != 1 trains through
    :class:`anyarray_nn.DataParallel` (0: one worker per core).
    """
    wall = time.perf_counter()
    be = ann.get_backend(backend)
    x, y = load(data, "train")
    x_test, y_test = load(data, "test")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    x_train, y_train, x_val, y_val = train_val_split(x, y, val_fraction, seed=seed)
    standardize = Standardize.fit(x_train, scale=1 / 255)
    train_loader = DataLoader(x_train, y_train, batch_size, seed=seed, backend=be.name,
                              preprocess=standardize, augment=augment)
    evaluation = dict(batch_size=500, shuffle=False, backend=be.name, preprocess=standardize,
                      train=False)
    val_loader = DataLoader(x_val, y_val, **evaluation)
    test_loader = DataLoader(x_test, y_test, **evaluation)

    model = build(rng=seed, backend=be.name)
    model.summary()
    if workers != 1:
        try:
            model = ann.DataParallel(model, workers or None)
        except ValueError as exc:
            raise click.UsageError(f"--workers {workers}: {exc}") from exc
    used_workers = getattr(model, "workers", 1)
    loss_fn = ann.losses.SoftmaxCrossEntropy()
    opt = ann.optim.SGD(model, lr=lr, momentum=0.9, weight_decay=weight_decay, form="classic")
    history = train.fit(model, loss_fn, opt, train_loader, epochs=epochs, val_loader=val_loader,
                        callbacks=[train.LearningRateSchedule(ann.schedules.cosine(lr, epochs))],
                        progress=progress)
    if save:
        ann.save_checkpoint(save, model, opt, epoch=len(history.epochs),
                            step=len(history.iterations), history=history, loader=train_loader)
    test = train.evaluate(model, loss_fn, test_loader)
    train_seconds = sum(e["seconds"] for e in history.epochs)
    cm = metrics.confusion_matrix(test.labels, test.predictions, len(class_names or []) or None)

    split = f", batch split over {used_workers} workers" if used_workers > 1 else ""
    print(f"\n{name} on {be.name}: {epochs} epochs, batch {batch_size}{split}")
    for e in history.epochs:
        print(f"  epoch {e['epoch']:2d}  loss {e['loss']:.4f}  train acc {e['accuracy']:.4f}  "
              f"val acc {e['val_accuracy']:.4f}  {e['images_per_second']:.0f} img/s")
    print(f"\nconfusion matrix (rows: true class, columns: predicted)\n"
          f"{metrics.format_confusion_matrix(cm, class_names)}\n")
    print(metrics.classification_report(test.labels, test.predictions, class_names))
    images_per_second = len(x_train) * epochs / train_seconds
    summary = {"experiment": name, "backend": be.name, "epochs": epochs,
               "batch_size": batch_size, "workers": used_workers,
               "test_accuracy": test.accuracy,
               "test_loss": test.loss, "val_accuracy": history.epochs[-1]["val_accuracy"],
               "train_seconds": train_seconds, "images_per_second": images_per_second,
               "wall_seconds": time.perf_counter() - wall, "parameters": model.num_params()}
    print(f"\ntest accuracy {test.accuracy:.4f}  ({images_per_second:.0f} img/s training, "
          f"{train_seconds:.0f} s training, {summary['wall_seconds']:.0f} s wall)")
    print("summary " + json.dumps(summary))
    if report:
        from anyarray_nn import plots
        path = plots.write_report(report, title=name, model=model, history=history, test=test,
                                  test_images=x_test, class_names=class_names, summary=summary,
                                  preprocess=standardize)
        print(f"report: {path}")
    return summary
