"""Conv hot path and training steps, ours (NumPy backend) against PyTorch CPU, in one process.

    python bench/hotpath.py [--batch 16 --batch 64] [--repeats 15] [--json out.json]

Every row is the median over ``repeats`` timed runs after warm-up, ours and PyTorch's
interleaved so that both see the same machine load. Ratios are PyTorch time / our time
(above 1: we are faster). This script becomes a suite of ``anyarray-bench`` (issue 4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc

import numpy as np

import anyarray_nn as ann
from anyarray_nn import functional as F
from anyarray_nn.networks import NETWORKS

INPUTS = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar10_large": (3, 32, 32)}


def timeit(fn, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


SPREAD: dict[str, tuple[float, float]] = {}


def side_by_side(ours, theirs, repeats: int, blocks: int = 5) -> tuple[float, float]:
    """Median seconds of two callables, timed in alternating blocks with warm-up each.

    Blocks rather than single alternating calls: PyTorch's OpenMP threads keep spinning for
    a while after each call, and on two cores that would bill PyTorch's idle threads to our
    kernels (measured: single-call alternation doubled both sides' times). The interquartile
    ranges of the last comparison are left in SPREAD for the report.
    """
    a, b = [], []
    per_block = max(1, repeats // blocks)
    for _ in range(blocks):
        a += timeit(ours, per_block, warmup=2)
        b += timeit(theirs, per_block, warmup=2)
    for label, values in (("ours", a), ("torch", b)):
        q = statistics.quantiles(values, n=4)
        SPREAD[label] = (q[0], q[2])
    return statistics.median(a), statistics.median(b)


def torch_net(name: str, model: ann.Sequential, torch):
    """The same architecture as a torch.nn.Sequential with the same initial weights."""
    nn = torch.nn
    mods = []
    for layer in model:
        t = layer.type_name
        if t == "Conv2D":
            m = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          stride=layer.stride, padding=layer.padding[0::2] if not isinstance(layer.padding, str) else layer.padding)
        elif t == "Dense":
            m = nn.Linear(layer.in_features, layer.out_features)
        elif t == "ReLU":
            m = nn.ReLU()
        elif t == "MaxPool2D":
            m = nn.MaxPool2d(layer.kernel_size, layer.stride)
        elif t == "Flatten":
            m = nn.Flatten()
        else:
            raise ValueError(t)
        if layer.params:
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(ann.to_host(layer.params["W"])))
                m.bias.copy_(torch.from_numpy(ann.to_host(layer.params["b"])))
        mods.append(m)
    return nn.Sequential(*mods)


def train_step_rows(batches, repeats, torch, backend="numpy"):
    rows = []
    for name, build in NETWORKS.items():
        for n in batches:
            rng = np.random.default_rng(0)
            x_host = rng.standard_normal((n, *INPUTS[name])).astype(np.float32)
            y_host = rng.integers(0, 10, n)
            x, y = ann.asarray(x_host, backend=backend), ann.asarray(y_host, backend=backend)
            model = build(rng=0, backend=backend)
            loss_fn = ann.losses.SoftmaxCrossEntropy()
            opt = ann.optim.SGD(model, lr=1e-3, momentum=0.9, weight_decay=1e-3, form="classic")

            def ours():
                loss_fn.forward(model.forward(x, train=True), y)
                model.backward(loss_fn.backward())
                opt.step()

            tmodel = torch_net(name, model, torch)
            topt = torch.optim.SGD(tmodel.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)
            tx, ty = torch.from_numpy(x_host), torch.from_numpy(y_host)

            def theirs():
                topt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
                topt.step()

            t_ours, t_theirs = side_by_side(ours, theirs, repeats)
            spread = {k: [v * 1e3 for v in SPREAD[k]] for k in SPREAD}
            tracemalloc.start()  # sees NumPy's allocations only
            ours()
            peak = tracemalloc.get_traced_memory()[1] if backend == "numpy" else float("nan")
            tracemalloc.stop()
            rows.append({"case": f"train_step/{name}", "backend": backend, "batch": n,
                         "ours_ms": t_ours * 1e3,
                         "torch_ms": t_theirs * 1e3, "ratio": t_theirs / t_ours,
                         "ours_img_s": n / t_ours, "torch_img_s": n / t_theirs,
                         "ours_peak_mb": peak / 2**20, "iqr_ms": spread})
    return rows


def conv_rows(batches, repeats, torch):
    rows = []
    seen = set()
    for name, build in NETWORKS.items():
        model = build(rng=0)
        shape = INPUTS[name]
        c, h, w = shape
        for layer in model:
            if layer.type_name == "MaxPool2D":
                h, w = h // 2, w // 2
            if layer.type_name != "Conv2D":
                continue
            key = (layer.in_channels, layer.out_channels, layer.kernel_size, h, w)
            if key in seen:
                continue
            seen.add(key)
            for n in batches:
                rows += conv_case(layer, n, h, w, repeats, torch)
    return rows


def conv_case(layer, n, h, w, repeats, torch):
    rng = np.random.default_rng(0)
    ci, co, (kh, kw) = layer.in_channels, layer.out_channels, layer.kernel_size
    pad = layer.padding[0]
    x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
    wt = rng.standard_normal((co, ci, kh, kw)).astype(np.float32)
    b = np.zeros(co, np.float32)
    y, patches = F.conv._conv2d_forward_with_patches(x, wt, b, 1, pad, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, wt, b, np.ascontiguousarray(dy)))
    flops = 2 * n * co * ci * kh * kw * y.shape[2] * y.shape[3]
    label = f"conv{kh}x{kw} {ci}->{co} {h}x{w}"
    aten = torch.ops.aten.convolution_backward

    def t_dx():
        aten(tdy, tx, tw, [co], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, False, False])

    def t_dw():
        aten(tdy, tx, tw, [co], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [False, True, True])

    xp = ann.backend.namespace(x)
    pieces = {  # each piece exactly as the Conv2D layer runs it
        "forward": (lambda: F.conv._conv2d_forward_with_patches(x, wt, b, 1, pad, 1),
                    lambda: torch.nn.functional.conv2d(tx, tw, tb, padding=pad)),
        "dX": (lambda: F.conv._conv2d_input_gradient(xp, dy, wt, (h, w), (pad,) * 4, (1, 1), (1, 1)),
               t_dx),
        "dW": (lambda: F.conv2d_backward(x, wt, dy, 1, pad, 1, patches=patches, input_grad=False), t_dw),
    }
    rows = []
    for piece, (ours, theirs) in pieces.items():
        with torch.no_grad():
            t_ours, t_theirs = side_by_side(ours, theirs, repeats)
        lowering = F.conv._lowering(co if piece == "dX" else ci, kh, (1, 1))
        rows.append({"case": f"{label} {piece}", "batch": n, "lowering": lowering,
                     "iqr_ms": {k: [v * 1e3 for v in SPREAD[k]] for k in SPREAD},
                     "ours_ms": t_ours * 1e3,
                     "torch_ms": t_theirs * 1e3, "ratio": t_theirs / t_ours,
                     "ours_gflops": flops / t_ours / 1e9, "torch_gflops": flops / t_theirs / 1e9})
    return rows


def sgemm_gflops(repeats: int = 10) -> float:
    """The machine's float32 GEMM rate through NumPy's BLAS (2048^3, both threads)."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    t = statistics.median(timeit(lambda: a @ a, repeats))
    return 2 * 2048**3 / t / 1e9


def sgemm_gflops_with(coretype: str) -> float | None:
    """The same figure in a fresh process with OPENBLAS_CORETYPE forced (e.g. "Haswell")."""
    import subprocess
    code = "import bench.hotpath as h; print(h.sgemm_gflops())"
    env = dict(os.environ, OPENBLAS_CORETYPE=coretype, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return float(out.stdout.strip()) if out.returncode == 0 else None


def environment(torch) -> dict:
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "torch_threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import threadpoolctl
        info["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                        for d in threadpoolctl.threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        info["blas"] = None
    return info


def describe(row: dict, env: dict) -> str:
    """The row's extra columns: GFLOP/s for a kernel, throughput, memory and spread for a step."""
    if "ours_gflops" in row:
        share = row["ours_gflops"] / env["sgemm_gflops"]
        return (f"{row['ours_gflops']:6.1f} vs {row['torch_gflops']:6.1f} GFLOP/s "
                f"({share:4.0%} of sgemm)")
    peak = "n/a" if math.isnan(row["ours_peak_mb"]) else f"{row['ours_peak_mb']:.1f} MB"
    ours, theirs = row["iqr_ms"]["ours"], row["iqr_ms"]["torch"]
    return (f"{row['ours_img_s']:7.0f} vs {row['torch_img_s']:7.0f} img/s  peak {peak}  "
            f"IQR ours {ours[0]:.1f}-{ours[1]:.1f} torch {theirs[0]:.1f}-{theirs[1]:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--only", choices=["conv", "train"], default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "torch"],
                        help="backend our kernels run on in the training steps")
    args = parser.parse_args()
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    batches = args.batch or [16, 64]
    env = environment(torch)
    env["sgemm_gflops"] = sgemm_gflops()
    env["sgemm_gflops_haswell_kernels"] = sgemm_gflops_with("Haswell")
    print(json.dumps(env))
    rows = []
    if args.only in (None, "conv"):
        rows += conv_rows(batches, args.repeats, torch)
    if args.only in (None, "train"):
        rows += train_step_rows(batches, args.repeats, torch, args.backend)
    for r in rows:
        print(f"{r['case']:34s} b={r['batch']:<4d} ours {r['ours_ms']:8.2f} ms  torch "
              f"{r['torch_ms']:8.2f} ms  ratio {r['ratio']:5.2f}  {describe(r, env)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
