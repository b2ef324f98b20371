"""Which of PyTorch's own OpInfo test inputs anyarray_nn's functional kernels support.

PyTorch ships its operator test database (``OpInfo``) in the wheel. For every OpInfo of an
operation we implement (conv2d, max/avg/adaptive pooling, linear, cross_entropy, mse_loss,
batch/layer/group norm, softmax, log_softmax, one_hot, the activations, dropout), this
script takes every sample input at float64 on CPU (int64 for one_hot), runs torch's op on it,
maps the sample to our ``anyarray_nn.functional`` call (arguments bound by torch's positional
order and names, tensors passed as NumPy arrays via ``.numpy()``) and classifies it:

- ``agrees``: our forward output equals torch's within rtol 1e-6 / atol 1e-8 (NaNs equal),
  same shape and dtype, including the indices where ``return_indices`` asks for them;
- ``differs``: a result that does not match (a bug; printed in detail);
- ``refused``: our code raised a ValueError (``InputError`` and its subclasses) with a
  message; the distinct messages are listed with counts (a ValueError raised inside NumPy
  rather than by our own checks is marked so: an unhandled edge case, not a deliberate
  refusal). Samples that cannot be mapped at
  all (a torch-only argument such as ``size_average`` or a ``dtype`` other than the
  input's) count as ``refused (not mappable)`` with the reason;
- ``crash``: any other exception from our code (a bug; printed).

Mappings worth knowing: ``batch_norm`` with ``training=False`` goes through
``batchnorm_inference`` and with ``training=True`` through ``batchnorm_forward`` (its ``y``
is compared; torch's running-statistics update is not); a missing weight/bias is passed as
ones/zeros. ``dropout`` is compared only where deterministic: ``training=False`` (identity,
our kernel called with an all-ones mask and p=0) and ``p=0``; for ``0 < p`` in training,
the mask torch drew is read back from its output (``y != 0`` where ``x != 0``) and our
kernel is given that mask and p, so the scaling is compared. Samples on which torch itself
raises are counted as ``torch raised`` and not classified.

Run: ``python bench/opinfo_coverage.py`` (needs the ``expecttest`` package, which
``torch.testing._internal`` imports). It prints the report and writes the same text to
``bench/results/opinfo-coverage.txt``. Takes about 10 s on 2 cores (1,676 samples, most of
them max_pool2d's). ``nn.functional.softmax``/``log_softmax`` are aliases of the ``softmax``
and ``log_softmax`` OpInfos in this op_db, so they have no rows of their own; variants with
no float64 CPU samples (``silu (complex)``, ``batch_norm (without_cudnn)``) are listed as
skipped. torch.nn's ``module_db`` is not covered.
"""

from __future__ import annotations

import collections
import os
import sys
import traceback
import warnings

import numpy as np
import torch

import anyarray_nn.functional as F

RTOL, ATOL = 1e-6, 1e-8
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "opinfo-coverage.txt")

# torch's parameter names in positional order, per OpInfo name.
PARAMS = {
    "nn.functional.conv2d": ["input", "weight", "bias", "stride", "padding", "dilation", "groups"],
    "nn.functional.max_pool2d": ["input", "kernel_size", "stride", "padding", "dilation",
                                 "ceil_mode", "return_indices"],
    "nn.functional.avg_pool2d": ["input", "kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad", "divisor_override"],
    "nn.functional.adaptive_avg_pool2d": ["input", "output_size"],
    "nn.functional.adaptive_max_pool2d": ["input", "output_size", "return_indices"],
    "nn.functional.linear": ["input", "weight", "bias"],
    "nn.functional.cross_entropy": ["input", "target", "weight", "size_average", "ignore_index",
                                    "reduce", "reduction", "label_smoothing"],
    "nn.functional.mse_loss": ["input", "target", "size_average", "reduce", "reduction", "weight"],
    "nn.functional.batch_norm": ["input", "running_mean", "running_var", "weight", "bias",
                                 "training", "momentum", "eps"],
    "nn.functional.layer_norm": ["input", "normalized_shape", "weight", "bias", "eps"],
    "nn.functional.group_norm": ["input", "num_groups", "weight", "bias", "eps"],
    "softmax": ["input", "dim", "dtype"],
    "log_softmax": ["input", "dim", "dtype"],
    "nn.functional.softmax": ["input", "dim", "_stacklevel", "dtype"],
    "nn.functional.log_softmax": ["input", "dim", "_stacklevel", "dtype"],
    "nn.functional.one_hot": ["input", "num_classes"],
    "nn.functional.relu": ["input", "inplace"],
    "nn.functional.gelu": ["input", "approximate"],
    "nn.functional.silu": ["input", "inplace"],
    "nn.functional.leaky_relu": ["input", "negative_slope", "inplace"],
    "tanh": ["input"],
    "sigmoid": ["input"],
    "nn.functional.dropout": ["input", "p", "training", "inplace"],
}

# Default values of torch's optional parameters (for binding).
DEFAULTS = {"size_average": None, "reduce": None, "inplace": False, "_stacklevel": 3,
            "dtype": None}


class NotMappable(Exception):
    """The sample has no equivalent call of ours (the message says why)."""


def _np(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().numpy()
    return v


def _require_default(a, *names):
    for n in names:
        if n in a and a[n] is not DEFAULTS.get(n) and a[n] != DEFAULTS.get(n):
            raise NotMappable(f"{n}={a[n]!r} (torch-only argument)")


def _no_dtype_change(a):
    dt = a.get("dtype")
    if dt is not None:
        if not isinstance(dt, torch.dtype) or dt != a["input"].dtype:
            raise NotMappable(f"dtype={dt} differs from the input's {a['input'].dtype}")
        del a["dtype"]  # the input's own dtype: nothing to change


def ours(name, a, torch_out):
    """Our call for the bound torch arguments ``a`` (tensors already NumPy)."""
    x = a["input"]
    g = a.get
    if name == "nn.functional.conv2d":
        return F.conv2d_forward(x, a["weight"], g("bias"), g("stride", 1), g("padding", 0),
                                g("dilation", 1), g("groups", 1))
    if name == "nn.functional.max_pool2d":
        return F.maxpool2d_forward(x, a["kernel_size"], g("stride"), g("padding", 0),
                                   g("dilation", 1), g("ceil_mode", False),
                                   g("return_indices", False))
    if name == "nn.functional.avg_pool2d":
        return F.avgpool2d_forward(x, a["kernel_size"], g("stride"), g("padding", 0),
                                   g("ceil_mode", False), g("count_include_pad", True),
                                   g("divisor_override"))
    if name == "nn.functional.adaptive_avg_pool2d":
        return F.adaptive_avgpool2d_forward(x, a["output_size"])
    if name == "nn.functional.adaptive_max_pool2d":
        return F.adaptive_maxpool2d_forward(x, a["output_size"], g("return_indices", False))
    if name == "nn.functional.linear":
        return F.dense_forward(x, a["weight"], g("bias"))
    if name == "nn.functional.cross_entropy":
        _require_default(a, "size_average", "reduce")
        return F.cross_entropy_forward(x, a["target"], g("weight"), g("ignore_index", -100),
                                       g("reduction", "mean"), g("label_smoothing", 0.0))
    if name == "nn.functional.mse_loss":
        _require_default(a, "size_average", "reduce")
        if g("weight") is not None:
            raise NotMappable("weight= (torch-only argument)")
        return F.mse_forward(x, a["target"], g("reduction", "mean"))
    if name == "nn.functional.batch_norm":
        rm = g("running_mean")
        c = rm.shape[0] if rm is not None else (x.shape[1] if x.ndim > 1 else 1)
        w = g("weight")
        b = g("bias")
        w = np.ones(c, x.dtype) if w is None else w
        b = np.zeros(c, x.dtype) if b is None else b
        eps = g("eps", 1e-5)
        if g("training", False):
            return F.batchnorm_forward(x, w, b, eps)[0]
        return F.batchnorm_inference(x, w, b, a["running_mean"], a["running_var"], eps)
    if name == "nn.functional.layer_norm":
        return F.layernorm_forward(x, a["normalized_shape"], g("weight"), g("bias"),
                                   g("eps", 1e-5))
    if name == "nn.functional.group_norm":
        return F.groupnorm_forward(x, a["num_groups"], g("weight"), g("bias"), g("eps", 1e-5))
    if name in ("softmax", "nn.functional.softmax", "log_softmax", "nn.functional.log_softmax"):
        if g("dim") is None:
            raise NotMappable("dim=None (torch's implicit dim)")
        fn = F.log_softmax_forward if "log" in name else F.softmax_forward
        return fn(x, a["dim"])
    if name == "nn.functional.one_hot":
        return F.one_hot(x, g("num_classes", -1))
    if name == "nn.functional.relu":
        return F.relu_forward(x)
    if name == "nn.functional.gelu":
        return F.gelu_forward(x, g("approximate", "none"))
    if name == "nn.functional.silu":
        return F.silu_forward(x)
    if name == "nn.functional.leaky_relu":
        return F.leaky_relu_forward(x, g("negative_slope", 0.01))
    if name == "tanh":
        return F.tanh_forward(x)
    if name == "sigmoid":
        return F.sigmoid_forward(x)
    if name == "nn.functional.dropout":
        p, training = g("p", 0.5), g("training", True)
        if not training:
            return F.dropout_forward(x, np.ones_like(x), 0.0)
        if p == 0:
            return F.dropout_forward(x, np.ones_like(x), p)
        # torch's own draw, read back from its output (unambiguous where x != 0).
        y = torch_out.detach().numpy()
        mask = ((y != 0) | (x == 0)).astype(x.dtype) if p < 1 else np.zeros_like(x)
        return F.dropout_forward(x, mask, p)
    raise NotMappable(f"no mapping for {name}")


def bind(name, sample):
    params = PARAMS[name]
    args = [sample.input, *sample.args]
    if len(args) > len(params):
        raise NotMappable(f"{len(args)} positional arguments")
    a = dict(zip(params, args))
    for k, v in sample.kwargs.items():
        if k not in params:
            raise NotMappable(f"keyword {k}= (torch-only argument)")
        a[k] = v
    if not isinstance(a["input"], torch.Tensor):
        raise NotMappable(f"input of type {type(a['input']).__name__}")
    if "dtype" in a:
        _no_dtype_change(a)  # checked on torch dtypes, before the tensors become NumPy
    return a


def compare(mine, ref):
    """None if ``mine`` matches torch's ``ref``, else a description of the difference."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(mine, (tuple, list)) or len(mine) != len(ref):
            return f"expected a tuple of {len(ref)}, got {type(mine).__name__}"
        for i, (m, r) in enumerate(zip(mine, ref)):
            d = compare(m, r)
            if d:
                return f"[{i}] {d}"
        return None
    r = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    if isinstance(mine, (tuple, list)):
        return f"got a tuple of {len(mine)}, expected one array"
    m = np.asarray(mine)
    if m.shape != r.shape:
        return f"shape {m.shape} vs torch {r.shape}"
    if m.dtype != r.dtype:
        return f"dtype {m.dtype} vs torch {r.dtype}"
    if r.dtype.kind in "iub":
        if not np.array_equal(m, r):
            bad = np.argwhere(m != r)
            return f"{len(bad)} of {r.size} values differ, first at {tuple(bad[0])}: " \
                   f"{m[tuple(bad[0])]} vs torch {r[tuple(bad[0])]}"
        return None
    ok = np.isclose(m, r, rtol=RTOL, atol=ATOL, equal_nan=True)
    if not ok.all():
        bad = np.argwhere(~ok)
        i = tuple(bad[0])
        err = np.nanmax(np.abs(m - r)) if m.size else 0.0
        return f"{len(bad)} of {r.size} values differ (max |diff| {err:.3g}), first at " \
               f"{i}: {m[i]!r} vs torch {r[i]!r}"
    return None


def describe(sample):
    def d(v):
        if isinstance(v, torch.Tensor):
            return f"tensor{tuple(v.shape)}:{str(v.dtype).replace('torch.', '')}"
        return repr(v)
    args = ", ".join([d(sample.input), *map(d, sample.args)]
                     + [f"{k}={d(v)}" for k, v in sample.kwargs.items()])
    return f"({args})"


def clone(v):
    return v.detach().clone() if isinstance(v, torch.Tensor) else v


def main():
    from torch.testing._internal.common_methods_invocations import op_db

    torch.manual_seed(0)
    lines = []
    out = lines.append
    counts = collections.OrderedDict()
    refusals = collections.Counter()
    details = []
    ops = [op for op in op_db if op.name in PARAMS]
    for op in ops:
        key = op.name + (f" ({op.variant_test_name})" if op.variant_test_name else "")
        dtype = torch.int64 if op.name == "nn.functional.one_hot" else torch.float64
        c = counts.setdefault(key, collections.Counter())
        if dtype not in op.supported_dtypes("cpu"):
            c["skipped (no float64 on CPU)"] += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            samples = list(op.sample_inputs("cpu", dtype, requires_grad=False))
        for s in samples:
            c["samples"] += 1
            torch.manual_seed(1234)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ref = op(clone(s.input), *map(clone, s.args),
                             **{k: clone(v) for k, v in s.kwargs.items()})
            except Exception:  # noqa: BLE001
                c["torch raised"] += 1
                continue
            try:
                a = bind(op.name, s)
                a = {k: _np(v) for k, v in a.items()}
            except NotMappable as e:
                c["refused"] += 1
                refusals[f"{op.name}: not mappable: {e}"] += 1
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mine = ours(op.name, a, ref)
            except NotMappable as e:
                c["refused"] += 1
                refusals[f"{op.name}: not mappable: {e}"] += 1
                continue
            except ValueError as e:
                msg = str(e).strip()
                if msg:
                    c["refused"] += 1
                    origin = os.path.basename(traceback.extract_tb(e.__traceback__)[-1].filename)
                    where = "" if "anyarray_nn" in str(traceback.extract_tb(e.__traceback__)[-1]
                                                           .filename) else \
                        f" [raised inside {origin}, not by our checks]"
                    refusals[f"{op.name}: {type(e).__name__}: {msg}{where}"] += 1
                else:
                    c["crash"] += 1
                    details.append(("crash", key, describe(s), f"{type(e).__name__} (no message)"))
                continue
            except Exception as e:  # noqa: BLE001
                c["crash"] += 1
                tb = traceback.extract_tb(e.__traceback__)[-1]
                details.append(("crash", key, describe(s),
                                f"{type(e).__name__}: {e} [at {os.path.basename(tb.filename)}:"
                                f"{tb.lineno}]"))
                continue
            d = compare(mine, ref)
            if d is None:
                c["agrees"] += 1
            else:
                c["differs"] += 1
                details.append(("differs", key, describe(s), d))

    cols = ["samples", "agrees", "refused", "differs", "crash", "torch raised"]
    w = max(len(k) for k in counts) + 2
    out(f"OpInfo coverage of anyarray_nn.functional (torch {torch.__version__}, CPU, float64;"
        f" rtol {RTOL:g}, atol {ATOL:g})")
    out("")
    out("op".ljust(w) + "".join(h.rjust(9 if h != "torch raised" else 14) for h in cols))
    tot = collections.Counter()
    for k, c in counts.items():
        if c.get("skipped (no float64 on CPU)"):
            out(k.ljust(w) + "   skipped: no float64 samples on CPU")
            continue
        out(k.ljust(w) + "".join(str(c[h]).rjust(9 if h != "torch raised" else 14)
                                 for h in cols))
        tot.update(c)
    out("TOTAL".ljust(w) + "".join(str(tot[h]).rjust(9 if h != "torch raised" else 14)
                                   for h in cols))
    out("")
    for kind in ("differs", "crash"):
        rows = [d for d in details if d[0] == kind]
        out(f"{kind.upper()} ({len(rows)}):" + ("" if rows else " none"))
        for _, key, sample, why in rows:
            out(f"  {key} {sample}")
            out(f"      -> {why}")
        out("")
    out(f"REFUSALS ({sum(refusals.values())} samples, {len(refusals)} distinct messages):")
    for msg, n in refusals.most_common():
        out(f"  {n:5d}  {msg}")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
