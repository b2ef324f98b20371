"""One experiment on real data, shared by the MNIST and CIFAR-10 examples: load, split,
standardize, train with validation, evaluate on the test set, print the course-style report."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import click
import numpy as np

import anyarray_nn as ann
from anyarray_nn import distributed, metrics, train
from anyarray_nn._threads import cpu_count
from anyarray_nn._atomic import unwritable_folder
from anyarray_nn.data import DataFormatError
from anyarray_nn.data.pipeline import (DataLoader, Standardize, reflected_indices,
                                       train_val_split)


def backend_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--backend`` that can run here, or a usage error naming the option."""
    if value is not None and value != "all":
        try:
            ann.get_backend(value)
        except ann.BackendError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
    return value


def learning_rate_option(ctx: click.Context, param: click.Parameter, value: float | None
                         ) -> float | None:
    """A finite ``--lr`` > 0 (click's FloatRange lets nan and inf through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"expected a finite number > 0, got {value}", ctx, param)
    return value


def common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command-line options every real-data example shares."""
    from .. import __version__
    spec = command.__globals__.get("__spec__")  # run with -m, the module is "__main__"
    module = spec.name if spec is not None else command.__module__
    options = [
        click.version_option(__version__, prog_name=f"python -m {module}"),
        click.option("--data", type=click.Path(file_okay=False), default=None,
                     help="Folder with the data files (default: $ANYARRAY_NN_DATA)."),
        click.option("--backend", default=None, callback=backend_option,
                     help="numpy, torch, cupy, ... (default: the active one)"),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--limit", type=click.IntRange(min=100), default=None,
                     help="Use only the first N training images, of which 10% are held out "
                          "for validation as usual (a quick run)."),
        click.option("--save", type=click.Path(dir_okay=False), default=None,
                     help="Write the trained model to this HDF5 checkpoint "
                          "(see docs/checkpoints.md)."),
        click.option("--report", type=click.Path(file_okay=False), default=None,
                     help="Write figures and a Markdown report into this folder "
                          "(needs matplotlib: the plot extra)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace an existing --save file or --report folder (refused "
                          "otherwise, so that no earlier result is lost)."),
        click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Train on this many MPI ranks, each on its part of every batch "
                          "(0: one per core): the command starts itself again under "
                          "mpiexec (the mpi extra). Started by mpiexec, it uses its ranks."),
        click.option("--progress/--no-progress", default=True, show_default=True),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run(name: str, load: Callable[[Any, str], tuple[np.ndarray, np.ndarray]], *,
        build: Callable[..., Any], data: str | None, backend: str | None,
        epochs: int, batch_size: int, lr: float, weight_decay: float,
        augment: Sequence[Any] = (), class_names: Sequence[str] | None = None,
        seed: int = 0, progress: bool = True, val_fraction: float = 0.1,
        limit: int | None = None, save: str | None = None,
        report: str | None = None, workers: int = 1, overwrite: bool = False,
        label_smoothing: float = 0.0, nesterov: bool = False, warmup_epochs: int = 0,
        lr_per: str = "epoch", test_views: str = "plain", momentum: float = 0.9,
        lr_scale: dict[str, float] | None = None, no_decay: tuple[str, ...] = (),
        prepare: Callable[[Any, np.ndarray], None] | None = None,
        lookahead: bool = False, lr_points: Sequence[tuple[float, float]] | None = None
        ) -> dict[str, Any]:
    """Train ``build()`` on a data set and print the report; returns the numbers as a dict.

    SGD with ``momentum`` (PyTorch's form, or Nesterov's with ``nesterov``), ``lr_scale`` and
    ``no_decay`` as the optimizers take them, and a cosine learning-rate decay over the
    epochs, updated every epoch or every step (``lr_per`` "iteration"), after a linear
    warm-up over ``warmup_epochs`` (or, with ``lr_points``, a piecewise linear schedule
    through (fraction of training, factor) points, per step); cross-entropy with
    ``label_smoothing``; ``lookahead`` adds :class:`anyarray_nn.train.Lookahead`. ``test_views`` averages the test logits over
    views of each image: "plain" (none), "flip" (the image and its mirror image) or
    "flip_translate" (also both shifted by one pixel each way); validation uses the plain
    model. ``prepare(model, images)`` is called once before training with up to 5,000
    standardized training images (host), e.g. to set a whitening layer.
    The validation split is taken from the training set (``val_fraction`` 0: none, training
    on all of it), standardization from the rest.
    ``limit`` trains on the first ``limit`` training examples (a quick smoke run); ``save``
    writes the trained model, optimizer and history to an HDF5 checkpoint at that path;
    ``report`` writes figures and a Markdown summary there. ``workers`` != 1 trains on that
    many MPI ranks (0: one per core; see :func:`launch_ranks`); a run started by ``mpiexec``
    trains on its ranks (:mod:`anyarray_nn.distributed`: the batch norms per rank, rank 0
    printing and writing). Output paths are checked before anything is loaded; existing ones
    are replaced only with ``overwrite``.
    """
    wall = time.perf_counter()
    ranks = distributed.world_size()
    if ranks == 1 and workers != 1:
        launch_ranks(workers or cpu_count())  # the same command on the ranks; exits
    if workers not in (1, 0, ranks):
        raise click.UsageError(f"--workers {workers}: this run was started on {ranks} MPI "
                               f"ranks; give --workers {ranks}, or 1")
    say = print if distributed.is_main() else _silent
    _check_outputs(save, report, overwrite)
    ann.tune_malloc()  # this process only trains: keep its temporaries' pages (logged)
    be = ann.get_backend(backend)
    x, y = _load(load, data, "train")
    x_test, y_test = _load(load, data, "test")
    if limit is not None:
        if limit > len(x):
            raise click.BadParameter(f"expected at most the {len(x):,} training images there "
                                     f"are, got {limit:,}", param_hint="'--limit'")
        x, y = x[:limit], y[:limit]
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    if val_fraction:
        x_train, y_train, x_val, y_val = train_val_split(x, y, val_fraction, seed=seed)
    else:
        x_train, y_train, x_val, y_val = x, y, None, None
    standardize = Standardize.fit(x_train, scale=1 / 255)
    model: Any = build(rng=seed, backend=be.name)
    if prepare is not None:
        prepare(model, standardize(x_train[:5000].astype(np.float64)))
    # Batch normalization cannot train on one image (per rank, on several ranks): drop a
    # last batch that would leave a rank one.
    last = len(x_train) % batch_size
    drop_last = 0 < last < 2 * ranks and any(
        layer.type_name.startswith("BatchNorm") for layer in model)
    if drop_last:
        say(f"note: {len(x_train):,} training images leave a last batch of {last} "
            f"({'per' if ranks == 1 else 'over'} {ranks} rank{'s' * (ranks > 1)}), which batch "
            f"normalization cannot train on; it is left out of each epoch")
    shard = distributed.shard() if ranks > 1 else None
    train_loader = DataLoader(x_train, y_train, batch_size, seed=seed, backend=be.name,
                              preprocess=standardize, augment=augment, drop_last=drop_last,
                              shard=shard)
    evaluation: dict[str, Any] = dict(batch_size=500, shuffle=False, backend=be.name,
                                      preprocess=standardize, train=False, shard=shard)
    val_loader = (None if x_val is None or y_val is None
                  else DataLoader(x_val, y_val, **evaluation))
    test_loader = DataLoader(x_test, y_test, **evaluation)

    model.summary(print_fn=say)
    if ranks > 1:
        model = distributed.DistributedDataParallel(model)
    used_workers = ranks
    loss_fn = ann.losses.SoftmaxCrossEntropy(label_smoothing=label_smoothing)
    opt = ann.optim.SGD(model, lr=lr, momentum=momentum, weight_decay=weight_decay,
                        form="nesterov" if nesterov else "classic", lr_scale=lr_scale,
                        no_decay=no_decay)
    per_epoch = 1 if lr_per == "epoch" else len(train_loader)  # schedule steps in an epoch
    total = epochs * per_epoch
    if lr_points:
        schedule = ann.schedules.piecewise_linear(lr, [(f * total, v) for f, v in lr_points])
    else:
        schedule = ann.schedules.cosine(lr, total)
        if warmup_epochs:
            schedule = ann.schedules.warmup(schedule, warmup_epochs * per_epoch)
    evaluated = {"plain": model, "flip": FlipAveraged(model),
                 "flip_translate": FlipTranslateAveraged(model)}[test_views]
    callbacks: list[train.Callback] = [train.LearningRateSchedule(schedule, per=lr_per)]
    if lookahead:
        callbacks.append(train.Lookahead(epochs * len(train_loader)))
    history = train.fit(model, loss_fn, opt, train_loader, epochs=epochs, val_loader=val_loader,
                        callbacks=callbacks, progress=progress)
    if save:
        ann.save_checkpoint(save, model, opt, epoch=len(history.epochs),
                            step=len(history.iterations), history=history, loader=train_loader)
    test = train.evaluate(evaluated, loss_fn, test_loader)
    train_seconds = sum(e["seconds"] for e in history.epochs)
    cm = metrics.confusion_matrix(test.labels, test.predictions, len(class_names or []) or None)

    split = f", batch split over {used_workers} MPI ranks" if used_workers > 1 else ""
    say(f"\n{name} on {be.name}: {epochs} epochs, batch {batch_size}{split}")
    for e in history.epochs:
        val = f"  val acc {e['val_accuracy']:.4f}" if "val_accuracy" in e else ""
        say(f"  epoch {e['epoch']:2d}  loss {e['loss']:.4f}  train acc {e['accuracy']:.4f}"
              f"{val}  {e['images_per_second']:.0f} img/s")
    say(f"\nconfusion matrix (rows: true class, columns: predicted)\n"
          f"{metrics.format_confusion_matrix(cm, class_names)}\n")
    say(metrics.classification_report(test.labels, test.predictions, class_names))
    images_per_second = len(x_train) * epochs / train_seconds
    summary = {"experiment": name, "backend": be.name, "epochs": epochs,
               "batch_size": batch_size, "workers": used_workers,
               "test_accuracy": test.accuracy,
               "test_loss": test.loss, "val_accuracy": history.epochs[-1].get("val_accuracy"),
               "train_seconds": train_seconds, "images_per_second": images_per_second,
               "wall_seconds": time.perf_counter() - wall, "parameters": model.num_params()}
    say(f"\ntest accuracy {test.accuracy:.4f}  ({images_per_second:.0f} img/s training, "
          f"{train_seconds:.0f} s training, {summary['wall_seconds']:.0f} s wall)")
    say("summary " + json.dumps(summary))
    if report and distributed.is_main():
        from anyarray_nn import plots
        path = plots.write_report(report, title=name, model=model, history=history, test=test,
                                  test_images=x_test, class_names=class_names, summary=summary,
                                  preprocess=standardize)
        say(f"report: {path}")
    return summary


def _silent(*args: Any, **kwargs: Any) -> None:
    """What the ranks other than rank 0 print: nothing."""


def launch_ranks(count: int) -> None:
    """Run this command again on ``count`` MPI ranks (``mpiexec -n count python -m <this
    module> <the same arguments>``), say so, and exit with its status; a usage error naming
    ``--workers`` where MPI is not installed."""
    launcher = distributed.mpiexec()
    main = sys.modules["__main__"]
    module = getattr(getattr(main, "__spec__", None), "name", None)
    if launcher is None:
        raise click.UsageError(f"--workers {count}: training on several ranks runs over MPI, "
                               f"which is not installed here: pip install 'anyarray_nn[mpi]' "
                               f"(mpi4py and MPICH's mpiexec)")
    if module is None:
        raise click.UsageError(f"--workers {count}: start the example as python -m "
                               f"anyarray_nn.examples.<name>, or under mpiexec -n {count}")
    command = [launcher, "-n", str(count), sys.executable, "-m", module, *sys.argv[1:]]
    print("running: " + " ".join(command), flush=True)
    raise SystemExit(subprocess.call(command))


class FlipAveraged:
    """Test-time augmentation: ``model``'s logits averaged over each image and its mirror
    image (evaluation only)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def forward(self, x: Any, *, train: bool = False) -> Any:
        xp = ann.backend.namespace(x)
        return 0.5 * (self.model.forward(x, train=train)
                      + self.model.forward(xp.flip(x, axis=3), train=train))


class FlipTranslateAveraged(FlipAveraged):
    """Test-time augmentation over six views: half the weight on the image and its mirror
    image (:class:`FlipAveraged`), a quarter on both shifted one pixel down and right, a
    quarter on both shifted one pixel up and left (edges reflected, evaluation only)."""

    def forward(self, x: Any, *, train: bool = False) -> Any:
        xp, where = ann.backend.namespace(x), ann.backend.backend_name_of(x)
        h, w = x.shape[2], x.shape[3]
        views = 0.5 * super().forward(x, train=train)
        for start in (0, 2):  # the first and the last n rows of the 1-pixel reflected pad
            rows, cols = (ann.asarray(reflected_indices(n, 1)[start:start + n], backend=where)
                          for n in (h, w))
            moved = xp.take(xp.take(x, rows, axis=2), cols, axis=3)
            views = views + 0.25 * super().forward(moved, train=train)
        return views


def _check_outputs(save: str | None, report: str | None, overwrite: bool) -> None:
    """Refuse output paths that cannot be written, or that hold an earlier result (unless
    ``overwrite``), before any data is loaded: a long run must not fail at its end."""
    outputs = [(option, path) for option, path in (("--save", save), ("--report", report))
               if path]
    for option, path in outputs:
        problem = unwritable_folder(path)
        if problem:
            raise click.BadParameter(problem, param_hint=f"'{option}'")
        if pathlib.Path(path).exists() and not overwrite:
            raise click.BadParameter(f"{path!r} exists (an earlier result?); pass --overwrite "
                                     f"to replace it", param_hint=f"'{option}'")
    if save and report and pathlib.Path(save).resolve() == pathlib.Path(report).resolve():
        raise click.UsageError(f"--save and --report name the same path {save!r}")
    if report and importlib.util.find_spec("matplotlib") is None:
        raise click.BadParameter("needs matplotlib: pip install 'anyarray_nn[plot]'",
                                 param_hint="'--report'")


def _load(load: Callable[[Any, str], Any], data: str | None, split: str) -> Any:
    """``load(data, split)``; a missing or damaged data set is an error naming --data, not a
    traceback."""
    try:
        return load(data, split)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint="'--data'") from None
    except DataFormatError as exc:
        raise click.ClickException(str(exc)) from None
