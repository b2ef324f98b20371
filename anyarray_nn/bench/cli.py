"""The ``anyarray-bench`` command.

    anyarray-bench                       # the default suite, every available backend
    anyarray-bench --quick               # a short run
    anyarray-bench -s conv -b numpy -n 64 --json conv.json
    anyarray-bench list                  # the cases
    anyarray-bench compare old.json new.json
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator

import click

from .. import __version__
from .. import backend as _backend
from .._atomic import unwritable_folder
from .._threads import cpu_count
from . import cases as _cases
from . import harness, memory, report

DEFAULT_BATCHES = (16, 64, 256)
OUR_BACKENDS = ("numpy", "torch", "torch:cuda", "cupy", "array_api_strict")
MAX_REPEATS = 1000  # a median over more runs is no steadier; 10**9 would never end
CORES = cpu_count()  # more threads than cores would time contention, not the kernels


def _available(name: str) -> str | None:
    """None when the backend can run here, else the reason it cannot."""
    try:
        _backend.get_backend(name)
        _backend.asarray([0.0], backend=name)  # a device past the last GPU fails only here
    except _backend.BackendError as exc:
        return str(exc).split(". ")[0]
    except Exception as exc:  # the library's own error, e.g. CUDA's invalid device ordinal
        return f"backend {name!r} cannot make an array here ({type(exc).__name__}: {exc})"
    return None


def _default_backends() -> list[str]:
    # array_api_strict proves portability, not speed: only on request.
    return [b for b in ("numpy", "torch", "cupy", "torch:cuda") if _available(b) is None]


def _references(backends: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The PyTorch references the chosen backends are compared with, and skipped ones."""
    refs: list[str] = []
    skipped: list[tuple[str, str]] = []
    if _available("torch") is not None:
        return refs, [("pytorch", "PyTorch is not installed: pip install 'anyarray_nn[reference]'")]
    devices = {harness.device_of(b) for b in backends}
    if "cpu" in devices:  # each row is compared with PyTorch on its own device only
        refs.append(harness.REFERENCE_CPU)
    if "cuda" in devices:
        if _available("torch:cuda") is None:
            refs.append(harness.REFERENCE_CUDA)
        else:
            skipped.append((harness.REFERENCE_CUDA, "PyTorch has no CUDA device here"))
    return refs, skipped


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Limit BLAS/OpenMP pools and PyTorch to ``count`` threads for the block."""
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits
    torch = sys.modules.get("torch")
    previous = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(count)
    try:
        with threadpool_limits(count):
            yield
    finally:
        if torch and previous:
            torch.set_num_threads(previous)


def _parse_backends(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
                    ) -> tuple[str, ...]:
    for value in values:  # a misspelt name is a usage error; a missing library is a skip
        try:
            _backend.check_backend_name(value)
        except _backend.BackendError as exc:
            raise click.BadParameter(f"{exc} Benchmarked: {', '.join(OUR_BACKENDS)}.",
                                     ctx, param) from None
    return values


def _check_output(ctx: click.Context, param: click.Parameter, value: str | None
                  ) -> str | None:
    """Refuse an output path that cannot be written before anything is timed."""
    if value is None:
        return None
    problem = unwritable_folder(value)
    if problem:
        raise click.BadParameter(problem, ctx, param)
    if os.path.exists(value) and not os.path.isfile(value):  # the JSON is renamed into place:
        raise click.BadParameter(                            # that would replace /dev/null
            f"{value!r} exists and is not a regular file (a device, a FIFO or a socket); "
            f"expected the path of a new or a regular file", ctx, param)
    if param.name == "plot_path":
        suffix = os.path.splitext(value)[1].lower().lstrip(".")
        formats = report.PLOT_FORMATS
        if suffix not in formats:
            raise click.BadParameter(f"expected a file name ending in one of "
                                     f"{', '.join('.' + f for f in formats)}, got {value!r}",
                                     ctx, param)
    return value


class ResultFile(click.Path):
    """A result file written by ``--json``: converted to (path, result), read and checked by
    ``report.load``, so a damaged file is a usage error that names the file and the field."""

    name = "result"

    def __init__(self) -> None:
        super().__init__(exists=True, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None,  # type: ignore[override]
                ctx: click.Context | None) -> tuple[str, dict[str, Any]]:
        path = str(super().convert(value, param, ctx))  # the file and what it holds
        try:
            return path, report.load(path)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="anyarray-bench")
@click.option("-b", "--backend", "backends", multiple=True, callback=_parse_backends,
              help="Backend for our kernels (repeatable): numpy, torch, torch:cuda, cupy, "
                   "array_api_strict. Default: every available one but array_api_strict.")
@click.option("-s", "--suite", "suites", multiple=True, type=click.Choice(_cases.SUITES),
              help="Suite (repeatable); default: all.")
@click.option("-c", "--case", "patterns", multiple=True, metavar="GLOB",
              help="Only cases whose name matches (repeatable), e.g. 'conv/*/dW'.")
@click.option("-n", "--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help=f"Batch size (repeatable); default: {', '.join(map(str, DEFAULT_BATCHES))}. "
                   f"Sizes whose arrays would not fit in memory are refused.")
@click.option("--dtype", type=click.Choice(_backend.DTYPES), default=_backend.DEFAULT_DTYPE,
              show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=CORES), default=None,
              help="Threads for BLAS and PyTorch, at most one per core (default: the "
                   "libraries' own setting).")
@click.option("--repeats", type=click.IntRange(min=1, max=MAX_REPEATS), default=None,
              help="Timed runs per case and backend, after warm-up.  [default: 10; 3 with "
                   "--quick]")
@click.option("--quick", is_flag=True,
              help="Batch 16 and 3 repeats (unless -n or --repeats say otherwise), one block: "
                   "a smoke run.")
@click.option("--portable", is_flag=True,
              help="Also time each backend that has fast paths (CuPy's CUDA kernels, NumPy's "
                   "numba kernels) with its portable kernels only, side by side: how far the "
                   "array API alone gets.")
@click.option("--reference/--no-reference", default=True, show_default=True,
              help="Time PyTorch itself on the same cases.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              callback=_check_output,
              help="Write the full result (rows and environment) to this file.")
@click.option("--full", is_flag=True,
              help="Print every row's figures after the summary (the default run prints the "
                   "summary only; --json always holds every row). A run of chosen cases (-c) "
                   "prints them anyway.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True),
              callback=_check_output,
              help="Draw GFLOP/s per case and backend to this PNG (needs matplotlib).")
@click.pass_context
def main(ctx: click.Context, backends: tuple[str, ...], suites: tuple[str, ...],
         patterns: tuple[str, ...], batches: tuple[int, ...], dtype: str, threads: int | None,
         repeats: int | None, quick: bool, portable: bool, reference: bool,
         json_path: str | None, full: bool,
         plot_path: str | None) -> None:
    """Benchmark anyarray_nn's conv, dense and pooling kernels and whole training steps
    against PyTorch, on every available backend. Run without a command to benchmark."""
    if ctx.invoked_subcommand is not None:
        return
    if json_path and plot_path and os.path.abspath(json_path) == os.path.abspath(plot_path):
        raise click.UsageError(f"--json and --plot name the same file {json_path!r}; the "
                               f"figure would overwrite the result")
    chosen = _chosen_cases(suites, patterns)
    skipped: list[tuple[str, str]] = []
    requested = list(backends) or _default_backends()
    if not backends:
        skipped += [(b, r) for b in ("cupy",) if (r := _available(b)) is not None]
    runnable = []
    for name in dict.fromkeys(requested):
        reason = _available(name)
        if reason is None:
            runnable.append(_backend.get_backend(name).name)
        else:
            skipped.append((name, reason))
    runnable = list(dict.fromkeys(runnable))  # torch and torch:cpu are one backend
    refs, ref_skips = _references(runnable) if reference and runnable else ([], [])
    skipped += ref_skips
    settings = harness.Settings(backends=runnable, references=refs,
                                batches=[16] if quick and not batches else
                                list(dict.fromkeys(batches or DEFAULT_BATCHES)),
                                dtype=dtype, repeats=repeats or (3 if quick else 10),
                                blocks=1 if quick else 2, threads=threads, portable=portable)
    if not runnable:  # reported, not a failure: the same command works on every machine
        result = harness.empty_result(settings)
    else:
        too_big = memory.refusal(chosen, settings)
        if too_big:  # before anything is built or timed
            raise click.BadParameter(too_big, ctx, param_hint="'-n' / '--batch'")
        with _threads(threads):
            result = harness.run(chosen, settings,
                                 progress=lambda s: click.echo(f"  {s}", err=True))
    result["skipped"] = [{"backend": b, "reason": r} for b, r in skipped]
    if not result["rows"]:
        click.echo("nothing measured: none of the requested backends can run here\n" +
                   "\n".join(f"skipped {s['backend']}: {s['reason']}"
                              for s in result["skipped"]))
    elif full or patterns:
        click.echo(report.table(result) + "\n\n" + report.summary(result))
    else:
        click.echo(report.summary(result) + "\n(every row: --full, or --json FILE)")
    if json_path:
        try:
            report.save(result, json_path)
        except (OSError, ValueError) as exc:  # the folder went away during the run, ...
            raise click.ClickException(f"could not write {json_path}: {exc} (the table above "
                                       f"holds the measurements)") from None
        click.echo(f"\nwrote {json_path}")
    if plot_path:
        try:
            drawn = report.plot(result, plot_path)
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {plot_path}" if drawn else
                   f"no row has a GFLOP/s figure (pooling has none): {plot_path} not written")


@main.command(name="list")
def list_cases() -> None:
    """Show the suites and cases, with their shapes at batch 64."""
    for case in _cases.all_cases():
        click.echo(f"{case.name:40s} {case.shape(64):32s} {report.gflop(case.flops(64)):>8s} GFLOP")


@main.command()
@click.argument("old", type=ResultFile())
@click.argument("new", type=ResultFile())
def compare(old: tuple[str, dict[str, Any]], new: tuple[str, dict[str, Any]]) -> None:
    """Compare two results written by --json: NEW's speed-up over OLD for each common row.
    Both files are checked first; a damaged one is an error naming the file and the field."""
    (old_path, a), (new_path, b) = old, new
    click.echo(report.compare(a, b, os.path.basename(old_path), os.path.basename(new_path)))


def _chosen_cases(suites: tuple[str, ...], patterns: tuple[str, ...]) -> list[_cases.Case]:
    """The cases of ``suites`` matching ``patterns``; a usage error for a pattern that
    matches none of them (a typo would otherwise drop its cases without a word)."""
    in_suites = _cases.select(_cases.all_cases(), suites)
    for pattern in patterns:
        if not _cases.select(in_suites, patterns=(pattern,)):
            raise click.BadParameter(
                f"{pattern!r} matches no case of suites {', '.join(suites or _cases.SUITES)}; "
                f"see 'anyarray-bench list'", param_hint="'-c' / '--case'")
    return _cases.select(in_suites, patterns=patterns)


def run_main(argv: list[str] | None = None) -> Any:
    """Entry point for ``python -m anyarray_nn.bench``."""
    return main.main(args=argv, prog_name="anyarray-bench")
