"""Turning benchmark results into tables, comparisons and a figure."""

from __future__ import annotations

import json
import math
import os
import pathlib
import textwrap
from typing import Any

from .._atomic import write_atomically
from ..errors import shorten
from .harness import SCHEMA, busy_cores

PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "eps", "ps")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def gflop(flops: float | None) -> str:
    """A FLOP count in GFLOP with three decimals, or three significant digits below 0.1."""
    if not flops:
        return "-"
    value = flops / 1e9
    return f"{value:.3f}" if value >= 0.1 else f"{value:.3g}"


def _text_table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])


def _ratio(row: dict[str, Any]) -> str:
    """The ratio to PyTorch, with "?" where the row's times (or the reference's) are in doubt."""
    text = _fmt(row["ratio_to_reference"], ".2f")
    return text + "?" if row.get("doubts") and row["ratio_to_reference"] is not None else text


def table(result: dict[str, Any]) -> str:
    """The rows of one run as an aligned text table, with the GEMM peaks and skips."""
    header = ["case", "batch", "backend", "shape", "GFLOP", "median ms", "IQR ms", "GFLOP/s",
              "vs PyTorch", "x GEMM", "img/s", "peak MB"]
    rows = []
    for r in result["rows"]:
        rows.append([
            r["case"], str(r["batch"]), r["backend"], r["shape"],
            gflop(r["flops"]),
            _fmt(r["median_s"] * 1e3, ".3f"),
            f"{r['q1_s'] * 1e3:.3f}-{r['q3_s'] * 1e3:.3f}",
            _fmt(r["gflops"], ".1f"),
            _ratio(r),
            _fmt(r["peak_fraction"], ".2f"),
            _fmt(r.get("images_per_s"), ".0f"),
            _fmt(r.get("peak_memory_mb"), ".1f"),
        ])
    text = _text_table(header, rows, right={1, 4, 5, 6, 7, 8, 9, 10, 11})
    peaks = ", ".join(f"{device} {gflops:.0f} GFLOP/s"
                      for device, gflops in result.get("gemm_peak_gflops", {}).items())
    notes = [f"GEMM rate measured in this run ({result['settings']['dtype']}): {peaks or '-'}",
             "x GEMM: the row's GFLOP/s over that rate (the FLOPs of the plain algorithm: a "
             "Winograd or direct kernel that does fewer can exceed 1)"]
    notes += blas_notes(result["environment"])
    notes += [f"skipped {s['backend']}: {s['reason']}" for s in result.get("skipped", [])]
    return text + "\n\n" + "\n".join(notes + trust_notes(result))


LEGEND = ["vs PyTorch: PyTorch's median time / ours (above 1: faster than PyTorch); backend "
          "'torch' is our kernels on PyTorch tensors, 'pytorch' PyTorch itself (the reference)"]
SUMMARY_WIDTH = 120


def summary(result: dict[str, Any]) -> str:
    """A few lines that fit in 120 columns: for the training steps, one line per network,
    way of running and backend, with images/s and the ratio to PyTorch at each batch size;
    for the kernel suites, one line per suite and backend, the geometric mean of the ratios.
    A ratio in doubt ends in "?" (see :func:`trust_notes`)."""
    rows = result["rows"]
    steps = [r for r in rows if r["suite"] == "train" and not r["backend"].startswith("pytorch")]
    lines = []
    if steps:
        batches = sorted({r["batch"] for r in steps})
        lines.append("training steps: images/s (PyTorch's time / ours; above 1 is faster)")
        header = f"{'network':<30}{'backend':<18}" + "".join(f"{f'batch {b}':>18}"
                                                             for b in batches)
        lines.append(header)
        groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
        for r in steps:
            groups.setdefault((r["layer"], r["piece"], r["backend"]), {})[r["batch"]] = r
        for (network, piece, backend), by_batch in groups.items():
            mode = {"step": "", "step-threads": ", threads"}.get(piece, f", {piece[5:]}")
            cells = []
            for b in batches:
                r = by_batch.get(b)
                cells.append("-" if r is None else
                             f"{r['images_per_s']:,.0f} ({_ratio(r)})")
            lines.append(f"{(network + mode)[:29]:<30}{backend[:17]:<18}"
                         + "".join(f"{c:>18}" for c in cells))
    kernels = [r for r in rows if r["suite"] != "train" and not r["backend"].startswith("pytorch")]
    by_suite: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in kernels:
        by_suite.setdefault((r["suite"], r["backend"]), []).append(r)
    if by_suite:
        lines.append("kernels: geometric means over the rows of PyTorch's time / ours (above "
                     "1 is faster), else of GFLOP/s")
        for (suite, backend), group in by_suite.items():
            ratios = [r["ratio_to_reference"] for r in group if r["ratio_to_reference"]]
            rates = [r["gflops"] for r in group if r.get("gflops")]
            figure = (f"{_geometric_mean(ratios):5.2f} x PyTorch" if ratios else
                      f"{_geometric_mean(rates):7.1f} GFLOP/s" if rates else "timed")
            doubted = sum(bool(r.get("doubts")) for r in group)
            lines.append(f"  {suite:<6} {backend:<18} {figure} over {len(group)} rows"
                         + (f" ({doubted} in doubt)" if doubted else ""))
    legend = LEGEND if any(r.get("ratio_to_reference") for r in rows) else []
    notes = [textwrap.fill(note, SUMMARY_WIDTH, subsequent_indent="  ")
             for note in legend + trust_notes(result)]
    return "\n".join(lines + notes)


def _geometric_mean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def trust_notes(result: dict[str, Any]) -> list[str]:
    """What makes this run's figures doubtful, if anything, and how to measure again."""
    notes = []
    load = result["environment"].get("load_before")
    cores = result["environment"].get("cpu_count") or 1
    if load is not None and busy_cores(load, cores):
        notes.append(f"WARNING: the machine was busy when the run began (load average "
                     f"{load:.2f} on {cores} cores): other processes shared the cores, so "
                     f"every figure here may be off; measure again when it is quiet")
    doubted = [r for r in result["rows"] if r.get("doubts")]
    if doubted:
        reasons = sorted({d for r in doubted for d in r["doubts"]})
        cases = sorted({r["case"] for r in doubted})
        notes.append(f"WARNING: {len(doubted)} of {len(result['rows'])} rows are in doubt "
                     f"(ratio marked ?): {', '.join(reasons)}")
        again = " ".join(f"-c '{c}'" for c in cases[:4]) + (" ..." if len(cases) > 4 else "")
        notes.append(f"  to measure them again: anyarray-bench {again} --repeats 30")
    return notes


def blas_notes(env: dict[str, Any]) -> list[str]:
    """The BLAS configuration of a run, and the OpenBLAS figure with the other kernels."""
    notes = []
    for pool in env.get("thread_pools") or []:
        if pool.get("user_api") == "blas":
            notes.append(f"BLAS: {pool.get('internal_api')} {pool.get('version')}, "
                         f"{pool.get('architecture')} kernels, {pool.get('num_threads')} threads"
                         f" (OPENBLAS_CORETYPE={env.get('env', {}).get('OPENBLAS_CORETYPE', 'unset')})")
    if "malloc_tuned" in env:
        notes.append("malloc: " + ("freed memory kept for reuse (anyarray_nn/_allocator.py)"
                                   if env["malloc_tuned"] else "glibc's defaults or the user's"))
    other = env.get("openblas_alternative")
    if other:
        notes.append(f"NumPy sgemm with OPENBLAS_CORETYPE {other['OPENBLAS_CORETYPE']}: "
                     f"{other['numpy_sgemm_gflops']:.0f} GFLOP/s (a fresh process)")
    return notes


def save(result: dict[str, Any], path: str) -> None:
    """Write a result as JSON to ``path``, whole or not at all (a temporary file renamed into
    place), in the form :func:`load` reads back; OSError if it cannot be written. A symbolic
    link at ``path`` is kept: the file it points to is replaced."""
    text = json.dumps(result, indent=1, allow_nan=False)  # NaN is not JSON: load refuses it
    write_atomically(pathlib.Path(os.path.realpath(path)), [text.encode("utf-8")],
                     suffix=".json-tmp", magic=b"{")


MAX_RESULT_BYTES = 256 * 2**20  # a run of every case at many batch sizes is a few MB
# No timed call takes less than a nanosecond; the bounds keep every ratio finite.
MIN_SECONDS, MAX_SECONDS = 1e-9, 1e6


def _text(value: Any) -> str | None:
    ok = isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()
    return None if ok else "a non-empty printable string of at most 200 characters"


def _batch(value: Any) -> str | None:
    ok = type(value) is int and value >= 1  # not bool, not 2.0
    return None if ok else "a positive integer"


def _seconds(value: Any) -> str | None:
    ok = (type(value) in (int, float) and math.isfinite(value)
          and MIN_SECONDS <= value <= MAX_SECONDS)
    return None if ok else (f"a positive finite number of seconds, from {MIN_SECONDS:g} to "
                            f"{MAX_SECONDS:g}")


# What compare reads of each row, and what each must be.
ROW_FIELDS = {"case": _text, "batch": _batch, "backend": _text, "dtype": _text,
              "median_s": _seconds}


def _no_constants(name: str) -> Any:
    raise ValueError(f"expected finite numbers, got {name}, which is not JSON")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"expected finite numbers, got {literal}, beyond a float's range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):  # json.load would keep the last silently
        seen: set[str] = set()
        for key, _ in pairs:  # the first key met a second time
            if key in seen:
                raise ValueError(f"expected each key once in an object, got {key!r} more "
                                 f"than once")
            seen.add(key)
    return result


def load(path: str) -> dict[str, Any]:
    """Read a result written by ``--json`` and check everything :func:`compare` uses.

    Anything else is a ValueError that names the file and what is wrong, e.g.
    ``new.json: rows[3].median_s: expected a positive finite number of seconds, from 1e-09 to
    1e+06, got 0``: a file that cannot be read, is too large, is not UTF-8 text or not JSON
    (NaN and Infinity are not), an object with a key twice, a schema other than
    ``anyarray-bench/1``, rows that are not a list of objects, a row's case, batch, backend,
    dtype or median_s missing or of the wrong type or range, or two rows for the same case,
    batch size, backend and dtype.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_RESULT_BYTES:
        raise ValueError(f"{path}: expected a result of at most {MAX_RESULT_BYTES} bytes, got "
                         f"a larger file")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is fine
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: expected UTF-8 text, got the byte 0x{data[exc.start]:02x} "
                         f"at offset {exc.start}") from None
    try:
        result = json.loads(text, parse_constant=_no_constants, parse_float=_finite,
                            object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError(f"{path}: expected a result, got JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError included: it says where
        raise ValueError(f"{path}: not a valid JSON result: {exc}") from None
    _check(result, path)
    return result


def _check(result: Any, path: str) -> None:
    """Raise a ValueError naming ``path`` and the field for anything compare cannot use."""
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object with schema {SCHEMA!r}, got "
                         f"{shorten(result, 60)}")
    if result.get("schema") != SCHEMA:
        found = shorten(result["schema"], 60) if "schema" in result else "no schema"
        raise ValueError(f"{path}: schema: expected {SCHEMA!r}, got {found}")
    rows = result.get("rows")
    if not isinstance(rows, list):
        found = shorten(rows, 60) if "rows" in result else "no rows"
        raise ValueError(f"{path}: rows: expected a list, got {found}")
    first_of: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: rows[{i}]: expected an object, got {shorten(row, 60)}")
        for field, expected in ROW_FIELDS.items():
            if field not in row:
                raise ValueError(f"{path}: rows[{i}].{field}: missing (a row needs "
                                 f"{', '.join(ROW_FIELDS)})")
            problem = expected(row[field])
            if problem:
                raise ValueError(f"{path}: rows[{i}].{field}: expected {problem}, got "
                                 f"{shorten(row[field], 60)}")
        key = _key(row)
        if key in first_of:
            raise ValueError(f"{path}: rows[{i}]: expected one row per case, batch size, "
                             f"backend and dtype, got {shorten(key, 120)} again (as in "
                             f"rows[{first_of[key]}])")
        first_of[key] = i


def _key(row: dict[str, Any]) -> tuple:
    return row["case"], row["batch"], row["backend"], row["dtype"]


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """Rows present in both runs, with B's speed relative to A's (A time / B time)."""
    first = {_key(r): r for r in a["rows"]}
    rows = []
    for r in b["rows"]:
        if _key(r) not in first:
            continue
        old = first[_key(r)]
        rows.append([r["case"], str(r["batch"]), r["backend"], r["dtype"],
                     f"{old['median_s'] * 1e3:.3f}", f"{r['median_s'] * 1e3:.3f}",
                     f"{old['median_s'] / r['median_s']:.2f}"])
    if not rows:
        return "no rows in common (same case, batch size, backend and dtype)"
    header = ["case", "batch", "backend", "dtype", f"{a_name} ms", f"{b_name} ms",
              f"speed-up {b_name} vs {a_name}"]
    return _text_table(header, rows, right={1, 4, 5, 6})


def bars(rows: list[dict[str, Any]], batch: int, backend: str, cases: list[str]
         ) -> list[tuple[int, float]]:
    """(position in ``cases``, GFLOP/s) of the cases ``backend`` ran at ``batch``: a case it
    did not run gets no bar rather than a bar of height 0."""
    values = {r["case"]: r["gflops"] for r in rows if r["batch"] == batch and r["backend"] == backend}
    return [(i, values[case]) for i, case in enumerate(cases) if case in values]


def plot(result: dict[str, Any], path: str) -> bool:
    """A bar chart of GFLOP/s per case and backend (one panel per batch size) saved to path.

    Returns False, writing nothing, when no row has a GFLOP/s figure (pooling rows have none).
    """
    rows = [r for r in result["rows"] if r["gflops"] is not None]
    if not rows:
        return False
    from ..plots import new_figure
    batches = sorted({r["batch"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig = new_figure("plotting", figsize=(max(8, 0.45 * len(cases) * len(backends)),
                                          3.2 * len(batches)))
    axes = fig.subplots(len(batches), 1, squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, batch in zip(axes[:, 0], batches):
        for j, backend in enumerate(backends):
            shown = bars(rows, batch, backend, cases)
            ax.bar([i + j * width for i, _ in shown], [v for _, v in shown], width, label=backend)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("GFLOP/s")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
