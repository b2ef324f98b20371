"""Turning benchmark results into tables, comparisons and a figure."""

from __future__ import annotations

import json
from typing import Any

from .harness import SCHEMA


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


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
            _fmt(r["flops"] and r["flops"] / 1e9, ".3f"),
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
    other = env.get("openblas_alternative")
    if other:
        notes.append(f"NumPy sgemm with OPENBLAS_CORETYPE {other['OPENBLAS_CORETYPE']}: "
                     f"{other['numpy_sgemm_gflops']:.0f} GFLOP/s (a fresh process)")
    return notes


def load(path: str) -> dict[str, Any]:
    """Read a result written by ``--json``; a clear error for anything else."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable benchmark result ({exc})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        found = result.get("schema") if isinstance(result, dict) else type(result).__name__
        raise ValueError(f"{path}: expected a result with schema {SCHEMA!r}, got {found!r}")
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


def plot(result: dict[str, Any], path: str) -> None:
    """A bar chart of GFLOP/s per case and backend (one panel per batch size) saved to path."""
    from ..plots import pyplot
    plt = pyplot("plotting")
    rows = [r for r in result["rows"] if r["gflops"] is not None]
    batches = sorted({r["batch"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(len(batches), 1, figsize=(max(8, 0.45 * len(cases) * len(backends)),
                                                       3.2 * len(batches)), squeeze=False)
    width = 0.8 / max(1, len(backends))
    for ax, batch in zip(axes[:, 0], batches):
        for j, backend in enumerate(backends):
            values = {r["case"]: r["gflops"] for r in rows
                      if r["batch"] == batch and r["backend"] == backend}
            xs = [i + j * width for i in range(len(cases))]
            ax.bar(xs, [values.get(c, 0.0) for c in cases], width, label=backend)
        ax.set_title(f"batch {batch}")
        ax.set_ylabel("GFLOP/s")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
