"""Turning benchmark results into tables, comparisons and a figure."""

from __future__ import annotations

import json
from typing import Any

from ..errors import shorten
from .harness import SCHEMA

PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "eps", "ps")
ROW_KEYS = ("case", "batch", "backend", "dtype", "median_s")


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


def table(result: dict[str, Any]) -> str:
    """The rows of one run as an aligned text table, with the GEMM peaks and skips."""
    header = ["case", "batch", "backend", "shape", "GFLOP", "median ms", "IQR ms", "GFLOP/s",
              "vs PyTorch", "% peak", "img/s", "peak MB"]
    rows = []
    for r in result["rows"]:
        rows.append([
            r["case"], str(r["batch"]), r["backend"], r["shape"],
            gflop(r["flops"]),
            _fmt(r["median_s"] * 1e3, ".3f"),
            f"{r['q1_s'] * 1e3:.3f}-{r['q3_s'] * 1e3:.3f}",
            _fmt(r["gflops"], ".1f"),
            _fmt(r["ratio_to_reference"], ".2f"),
            _fmt(r["peak_fraction"] and 100 * r["peak_fraction"], ".0f"),
            _fmt(r.get("images_per_s"), ".0f"),
            _fmt(r.get("peak_memory_mb"), ".1f"),
        ])
    text = _text_table(header, rows, right={1, 4, 5, 6, 7, 8, 9, 10, 11})
    peaks = ", ".join(f"{device} {gflops:.0f} GFLOP/s"
                      for device, gflops in result.get("gemm_peak_gflops", {}).items())
    notes = [f"GEMM peak measured in this run ({result['settings']['dtype']}): {peaks or '-'}",
             "vs PyTorch: PyTorch's median time / ours (above 1: faster than PyTorch)"]
    notes += blas_notes(result["environment"])
    notes += [f"skipped {s['backend']}: {s['reason']}" for s in result.get("skipped", [])]
    return text + "\n\n" + "\n".join(notes)


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


def load(path: str) -> dict[str, Any]:
    """Read a result written by ``--json``; a clear error for anything else."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise ValueError(f"{path}: not a readable benchmark result ({exc})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{path}: expected a result with schema {SCHEMA!r}, got {found!r}")
    rows = result.get("rows")
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected 'rows' to be a list, got {shorten(rows, 60)}")
    for i, row in enumerate(rows):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks {', '.join(map(repr, missing))}: "
                             f"{shorten(row, 60)}")
        median = row["median_s"]
        if isinstance(median, bool) or not isinstance(median, (int, float)) or not median > 0:
            raise ValueError(f"{path}: row {i} ({row['case']}): expected a positive "
                             f"'median_s', got {median!r}")
    return result


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """Rows present in both runs, with B's speed relative to A's (A time / B time)."""
    def key(r: dict[str, Any]) -> tuple:
        return r["case"], r["batch"], r["backend"], r["dtype"]

    first = {key(r): r for r in a["rows"]}
    rows = []
    for r in b["rows"]:
        if key(r) not in first:
            continue
        old = first[key(r)]
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
