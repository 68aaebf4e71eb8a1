"""Kernel parity check: every op x dtype x layout x activation against a float64 reference
(and, in every dtype x layout, the ops with ``residual=`` and rgb_tail, G's last pass).

    python -m bridgegan.kernels.parity [--device cpu|cuda] [--impl triton|torch] [--quick] \\
        [--json FILE]
    bridgegan parity --ops

For each row the inputs are drawn fresh (seeded), the op runs in the storage dtype, and
the float64 reference is computed from the same inputs upcast to float64. Reported: max
abs error, relative error ||out - ref|| / ||ref||, the tolerance on the relative error
(design.md's single-op row, ``numerics.TOLERANCES``), the seconds of the call (the first
one: it includes compiling the kernel) and PASS/FAIL (a NaN/Inf where the reference is
finite always fails). Exit status 1 when any row fails.

Which implementation is checked: on a CUDA device the Triton kernels; on the CPU the
Triton kernels in the interpreter when TRITON_INTERPRET=1 is set (before the kernels are
first used), otherwise the torch path only (said so in the output: the Triton
path needs a GPU or TRITON_INTERPRET=1). CPU shapes are tiny (the interpreter is slow);
GPU shapes are the generator's real SPADE shapes at batch 64.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..argtypes import add_device, output_file
from ..devices import check_device
from ..exits import end, stopped_status
from ..files import RowsFile
from ..numerics import SHORT_NAMES, dtype_name, errors, float64_call, same_nonfinite, tolerance
from ..timing import time_calls
from ..warning_filters import Silenced
from . import norm_act
from .layout import add_upsampled
from .norm_act import plan_launch
from .tail import rgb_tail

PARITY_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # storage dtypes checked
# "+bias": with spade_modulate's (2C,) gamma/beta convolution bias, checked here in the merged
# form the engine runs ("spade_modulate+bias", the separate form, launches the same kernel;
# make_inputs and call take it too, and the tests check it).
OPS = ("spade_modulate", "spade_modulate[2C]", "spade_modulate[2C]+bias", "instance_norm_act")
LAYOUTS = ("nchw", "channels_last")
# numpy's note on NaN inputs, under the Triton interpreter (the NaN rows' own inputs)
_NUMPY_NAN = Silenced((RuntimeWarning, "invalid value encountered", ""))
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

# (shape, config, mode): "full" = every dtype x layout x activation; "grid" = every dtype x
# layout, the activation cycling over rows; "light" = both layouts, dtype and activation
# cycling. Fewer combinations on the odd shapes keep the number of kernel compilations
# (the cost on a fresh GPU machine, ~0.15 s each on the H100) down: GPU parity ran in ~30 s
# there (2026-11-26, before the +bias, residual and tail rows). "+bias" rows are "light" in
# every case: the bias is a per-channel add, orthogonal to the dtype and activation code
# that the unbiased rows cover in full.
CPU_CASES = [
    ((2, 3, 7, 5), None, "full"),                                       # fused path, odd H*W
    ((2, 4, 9, 9), {"max_fused": 16, "target_programs": 4}, "grid"),    # split path forced
]
GPU_CASES = [
    ((64, 32, 128, 128), None, "full"),   # hottest SPADE layer (channels_last: split path)
    ((64, 256, 16, 16), None, "grid"),    # middle block: several planes per program
    ((2, 8, 256, 256), None, "grid"),     # large planes: split path in both layouts
    ((3, 5, 7, 5), None, "light"),        # odd sizes
    ((3, 5, 7, 5), {"max_fused": 16, "target_programs": 16}, "light"),  # split, several chunks
    ((3, 4, 1, 1), None, "light"),        # H*W = 1
    ((1, 17, 3, 3), None, "light"),       # N = 1, C = 17 (partial channel block)
    ((1, 1, 7, 5), None, "light"),        # C = 1
]


def make_inputs(op, shape, dtype, layout, device, gen, x_scale=1.0, shift=0.0):
    """x and the other inputs of ``op`` (one of OPS, or "spade_modulate+bias"): gamma, beta,
    bias / weight, bias, drawn from ``gen`` on the device in ``layout``: x ~ x_scale * N(0, 1),
    maps and spade_modulate's bias (x's dtype) ~ 0.5 * N(0, 1), each plus ``shift``."""
    n, c, h, w = shape
    fmt = FORMATS[layout]

    def randn(*size, scale=1.0):  # drawn on the device: fast for the big GPU shapes
        t = scale * torch.randn(*size, generator=gen, device=device) + shift
        return t.to(dtype).contiguous(memory_format=fmt)

    x = randn(n, c, h, w, scale=x_scale)
    if op.startswith("spade_modulate[2C]"):
        kw = dict(gamma=randn(n, 2 * c, h, w, scale=0.5))
    elif op.startswith("spade_modulate"):
        kw = dict(gamma=randn(n, c, h, w, scale=0.5), beta=randn(n, c, h, w, scale=0.5))
    else:
        kw = dict(weight=1 + 0.5 * torch.randn(c, generator=gen, device=device),
                  bias=0.5 * torch.randn(c, generator=gen, device=device))
    if op.endswith("+bias"):
        kw["bias"] = (0.5 * torch.randn(2 * c, generator=gen, device=device) + shift).to(dtype)
    return x, kw


def call(op, x, kw, **opts):
    """Run ``op`` (one of OPS) on make_inputs' tensors; ``opts`` go to the kernel function."""
    if op.startswith("spade_modulate"):
        return norm_act.spade_modulate(x, kw["gamma"], kw.get("beta"), bias=kw.get("bias"),
                                       **opts)
    return norm_act.instance_norm_act(x, kw.get("weight"), kw.get("bias"), **opts)


def reference64(op, x, kw, act="none", **opts):
    """The op's torch reference on the inputs upcast to float64."""
    return float64_call(call, op, x, kw, act=act, impl="torch", **opts)


def _row(op, dtype, layout, act, shape, impl, path, out, ref, device, seconds, ok=True):
    """One table row: the errors of ``out`` against ``ref`` and the verdict (``ok`` holds
    the row's other conditions)."""
    max_abs, rel = errors(out, ref)
    tol = tolerance(dtype).op_rel
    return dict(op=op, dtype=SHORT_NAMES[dtype_name(dtype)], layout=layout,
                act=act, shape="x".join(map(str, shape)), impl=impl, path=path, max_abs=max_abs,
                rel_err=rel, tol=tol, ok=bool(ok and rel <= tol), device=str(device),
                seconds=seconds)


def _print_row(row, note=""):
    print(f"{row['op']:<38} {row['dtype']:<5} {row['layout']:<13} {row['act']:<10} "
          f"{row['shape']:<18} {row['impl'] + '/' + row['path']:<13} {row['max_abs']:9.2e} "
          f"{row['rel_err']:9.2e} {row['tol']:7.0e}  {'PASS' if row['ok'] else 'FAIL'}" + note)


def _nan_rows(device, impl, gen):
    """NaN/Inf in x poison exactly their planes, NaN/Inf in gamma/beta their element,
    like the reference; checked on both kernel paths."""
    rows = []
    shape = (2, 3, 7, 5)
    for dtype in PARITY_DTYPES:
        for layout in LAYOUTS:
            for config in (None, {"max_fused": 16, "target_programs": 16}):
                x, kw = make_inputs("spade_modulate", shape, dtype, layout, device, gen)
                x[0, 1, 2, 3] = float("nan")
                x[1, 0, 0, 0] = float("inf")
                kw["gamma"][0, 0, 1, 1] = float("nan")
                kw["beta"][1, 2, 3, 2] = float("-inf")
                with _NUMPY_NAN():  # numpy under the interpreter
                    out = call("spade_modulate", x, kw, act="relu", impl=impl, config=config)
                ref = reference64("spade_modulate", x, kw, "relu")
                same = same_nonfinite(out, ref)
                path = "torch" if impl == "torch" else ("split" if config else "fused")
                row = _row("spade_modulate[nan]", dtype, layout, "relu", shape, impl, path, out,
                           ref, device, 0.0, ok=same)
                rows.append(row)
                _print_row(row, "" if same else "  (NaN/Inf pattern differs from the reference)")
    return rows


# residual=: (op, x shape, residual size, config): an up block's hand-over to the next
# block's norm (half-size residual) at the paper model's 64 px layer, and a full-size
# residual on the split path; each in every dtype x layout
RESIDUAL_CASES = {
    "cpu": [("spade_modulate[2C]+bias", (2, 3, 6, 10), "half", None),
            ("instance_norm_act", (2, 3, 7, 5), "full", {"max_fused": 16, "target_programs": 4})],
    "cuda": [("spade_modulate[2C]+bias", (64, 64, 64, 64), "half", None),
             ("instance_norm_act", (3, 5, 7, 5), "full", {"max_fused": 16, "target_programs": 16})]}


def _residual_rows(device, impl, gen):
    """The ops on x + up(residual) against float64, and the stored sum against its float64
    value at the same tolerance."""
    rows = []
    for op, shape, size, config in RESIDUAL_CASES[device.type if device.type == "cuda" else "cpu"]:
        n, c, h, w = shape
        r_shape = (n, c, h // 2, w // 2) if size == "half" else shape
        for dtype in PARITY_DTYPES:
            for layout in LAYOUTS:
                x, kw = make_inputs(op, shape, dtype, layout, device, gen)
                r = make_inputs(op, r_shape, dtype, layout, device, gen)[0]
                outs = []
                [secs] = time_calls(lambda: outs.append(call(
                    op, x, kw, act="relu", impl=impl, config=config, residual=r)), device)
                out, total = outs[0]
                sum_rel = errors(total, add_upsampled(x.double(), r.double()))[1]
                fmt = FORMATS[layout]
                ok = (sum_rel <= tolerance(dtype).op_rel and out.dtype == total.dtype == dtype
                      and out.is_contiguous(memory_format=fmt)
                      and total.is_contiguous(memory_format=fmt))
                path = "torch" if impl == "torch" else plan_launch(
                    n, c, h * w, layout == "channels_last", config).path
                row = _row(f"{op}+residual[{size}]", dtype, layout, "relu", shape, impl, path,
                           out, reference64(op, total, kw, "relu"), device, secs, ok=ok)
                rows.append(row)
                _print_row(row, "" if ok else f"  (sum rel err {sum_rel:.1e} or format)")
    return rows


# rgb_tail: (h shape, shortcut): the paper model's last layer at batch 64 on the GPU, an
# odd size with a full-size shortcut; each in every dtype x layout
TAIL_CASES = {"cpu": [((2, 5, 6, 10), "half")],
              "cuda": [((64, 32, 128, 128), "half"), ((3, 5, 7, 9), "full")]}


def _tail_rows(device, impl, gen):
    """rgb_tail (G's last residual sum, ReLU, to_rgb, tanh) against its float64 torch path."""
    rows = []
    for shape, shortcut in TAIL_CASES[device.type if device.type == "cuda" else "cpu"]:
        n, c, h, w = shape
        sc_shape = (n, c, h // 2, w // 2) if shortcut == "half" else shape
        for dtype in PARITY_DTYPES:
            for layout in LAYOUTS:
                fmt = FORMATS[layout]
                x, s = (torch.randn(*t, generator=gen, device=device).to(dtype).contiguous(
                    memory_format=fmt) for t in (shape, sc_shape))
                weight = torch.randn(3, c, 1, 1, generator=gen, device=device) / c ** 0.5
                weight = weight.to(dtype)
                bias = torch.randn(3, generator=gen, device=device).to(dtype)
                outs = []
                [secs] = time_calls(lambda: outs.append(rgb_tail(x, weight, bias, s, impl=impl)),
                                    device)
                ref = float64_call(rgb_tail, x, weight, bias, s, impl="torch")
                fmt_ok = outs[0].dtype == dtype and outs[0].is_contiguous(memory_format=fmt)
                row = _row("rgb_tail", dtype, layout, "tanh", shape, impl,
                           "fused" if impl == "triton" else "torch", outs[0], ref, device, secs,
                           ok=fmt_ok and same_nonfinite(outs[0], ref))
                rows.append(row)
                _print_row(row)
    return rows


def _default_impl(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if norm_act.triton_available():
            return "triton", "Triton kernels on CUDA"
        return "torch", "triton does not import: checking the torch path only"
    if norm_act.triton_interpreted():
        return "triton", "Triton kernels in the CPU interpreter (TRITON_INTERPRET=1)"
    return "torch", ("checking the torch path only: the Triton path needs a GPU or "
                   "TRITON_INTERPRET=1 (set before the kernels are first used)")


def _cases(cases):
    """(op, shape, config, dtype, layout, act) of each table row, by the cases' modes (the
    comment above CPU_CASES says what each covers; every "+bias" op's rows are "light")."""
    acts, dtypes, i = norm_act.ACTS, PARITY_DTYPES, 0
    for k, (shape, config, case_mode) in enumerate(cases):
        for op in OPS:
            mode = "light" if op.endswith("+bias") else case_mode
            for dtype in dtypes:
                if mode == "light" and dtype != dtypes[(k + OPS.index(op)) % len(dtypes)]:
                    continue
                for layout in LAYOUTS:
                    case_acts = acts if mode == "full" else (acts[i % len(acts)],)
                    i += 1
                    for act in case_acts:
                        yield op, shape, config, dtype, layout, act


def check_ops(device=None, quick=False, impl=None, written=None) -> list[dict]:
    """Run the parity table; returns one dict per row (see the module docstring).
    ``written``: the JSON file of the rows (``files.RowsFile``: the rows so far in
    ``written.partial`` after each row of the table and each group of special rows,
    ``written`` once all are in)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(str(device), "device")
    device = torch.device(device)
    chosen, note = _default_impl(device)
    impl = impl or chosen
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if quick:
        cases = cases[:1]
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(f"bridgegan kernel parity on {device}{name}: {note}")
    print(f"{'op':<38} {'dtype':<5} {'layout':<13} {'act':<10} {'shape':<18} {'impl/path':<13} "
          f"{'max_abs':>9} {'rel_err':>9} {'tol':>7}  result")
    rows, report = [], RowsFile(written)
    gen = torch.Generator(device=device).manual_seed(1234)
    for op, shape, config, dtype, layout, act in _cases(cases):
        x, kw = make_inputs(op, shape, dtype, layout, device, gen)
        outs = []
        [secs] = time_calls(lambda: outs.append(call(op, x, kw, act=act, impl=impl,
                                                     config=config)), device)
        out = outs[0]
        path = "torch"
        if impl == "triton":
            n, c, h, w = shape
            path = plan_launch(n, c, h * w, layout == "channels_last" and c > 1 and h * w > 1,
                               config).path
        fmt_ok = out.dtype == x.dtype and out.is_contiguous(memory_format=FORMATS[layout])
        row = _row(op, dtype, layout, act, shape, impl, path, out, reference64(op, x, kw, act),
                   device, secs, ok=fmt_ok)
        rows.append(row)
        _print_row(row)
        report.save(rows)
    for special in (_nan_rows, _residual_rows, _tail_rows):
        rows += special(device, impl, gen)
        report.save(rows)
    report.done(rows)
    bad = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - bad}/{len(rows)} rows pass" + (f", {bad} FAIL" if bad else ""))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridgegan.kernels.parity",
                                description="Check the fused kernels against a float64 reference.")
    add_device(p, default=None)
    p.add_argument("--impl", choices=("triton", "torch"), default=None,
                   help="implementation to check (default: triton where it can run, else torch)")
    p.add_argument("--quick", action="store_true", help="first shape only")
    p.add_argument("--json", default=None, type=output_file,
                   help="also write the rows to this JSON file (in an existing folder)")
    args = p.parse_args(argv)
    try:
        return run_ops(args.device, args.impl, args.quick, args.json)
    except (RuntimeError, ValueError) as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2


def run_ops(device=None, impl=None, quick=False, json=None) -> int:
    """The table (``check_ops``) as a command: its status, 1 when a row fails."""
    rows = check_ops(device=device, quick=quick, impl=impl, written=json)
    if json:
        print(f"wrote {json}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":  # a Ctrl-C or SIGTERM: one line, as the bridgegan command
    end(stopped_status("parity", main))
