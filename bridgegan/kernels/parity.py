"""Kernel parity check: every op x dtype x layout x activation against a float64 reference.

    python -m bridgegan.kernels.parity [--device cpu|cuda] [--quick] [--json FILE]
    bridgegan parity --ops

For each row the inputs are drawn fresh (seeded), the op runs in the storage dtype, and
the float64 reference is computed from the same inputs upcast to float64. Reported: max
abs error, relative error ||out - ref|| / ||ref||, the tolerance on the relative error
(design.md: fp32 1e-5, fp16 2e-3, bf16 1e-2) and PASS/FAIL (a NaN/Inf where the
reference is finite always fails). Exit status 1 when any row fails.

Which implementation is checked: on a CUDA device the Triton kernels; on the CPU the
Triton kernels in the interpreter when TRITON_INTERPRET=1 is set (before the kernels are
first used), otherwise the torch reference path only (said so in the output: the Triton
path needs a GPU or TRITON_INTERPRET=1). CPU shapes are tiny (the interpreter is slow);
GPU shapes are the generator's real SPADE shapes at batch 64.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch

from . import norm_act
from .norm_act import _reference, plan_launch

TOLERANCES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
OPS = ("spade_modulate", "spade_modulate[2C]", "instance_norm_act")
LAYOUTS = ("nchw", "channels_last")

# (shape, config, mode): "full" = every dtype x layout x activation; "grid" = every dtype x
# layout, the activation cycling over rows; "light" = both layouts, dtype and activation
# cycling. Fewer combinations on the odd shapes keep the number of kernel compilations
# (the cost on a fresh GPU machine, ~0.15 s each) down: GPU parity runs in ~30 s.
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


def _make_inputs(op, shape, dtype, layout, device, gen):
    n, c, h, w = shape

    def randn(*size, scale=1.0):  # drawn on the device: fast for the big GPU shapes
        return (scale * torch.randn(*size, generator=gen, device=device)).to(dtype)

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = randn(n, c, h, w).contiguous(memory_format=fmt)
    kw = {}
    if op == "spade_modulate":
        kw["gamma"] = randn(n, c, h, w, scale=0.5).contiguous(memory_format=fmt)
        kw["beta"] = randn(n, c, h, w, scale=0.5).contiguous(memory_format=fmt)
    elif op == "spade_modulate[2C]":
        kw["gamma"] = randn(n, 2 * c, h, w, scale=0.5).contiguous(memory_format=fmt)
    else:
        kw["weight"] = 1 + 0.5 * torch.randn(c, generator=gen, device=device)
        kw["bias"] = 0.5 * torch.randn(c, generator=gen, device=device)
    return x, kw


def _call(op, x, kw, act, impl, config):
    if op.startswith("spade_modulate"):
        return norm_act.spade_modulate(x, kw["gamma"], kw.get("beta"), act=act, impl=impl,
                                       config=config)
    return norm_act.instance_norm_act(x, kw["weight"], kw["bias"], act=act, impl=impl,
                                      config=config)


def _ref64(x, kw, act):
    up = {k: v.double() for k, v in kw.items()}
    return _reference(x.double(), up.get("gamma"), up.get("beta"), up.get("weight"),
                      up.get("bias"), act, 1e-5, 0.2)


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, ||out - ref|| / ||ref||); inf when out is non-finite where ref is not."""
    o, r = out.double(), ref.double()
    if bool((~torch.isfinite(o) & torch.isfinite(r)).any()):
        return float("inf"), float("inf")
    diff = torch.where(torch.isfinite(r), o - r, torch.zeros_like(r))
    max_abs = diff.abs().max().item() if diff.numel() else 0.0
    denom = r[torch.isfinite(r)].norm().item()
    rel = diff.norm().item() / denom if denom > 0 else diff.norm().item()
    return max_abs, rel


def _nan_rows(device, impl, gen, verbose):
    """NaN/Inf in x poison exactly their planes, NaN/Inf in gamma/beta their element,
    like the reference; checked on both kernel paths."""
    rows = []
    shape = (2, 3, 7, 5)
    for dtype in TOLERANCES:
        for layout in LAYOUTS:
            for config in (None, {"max_fused": 16, "target_programs": 16}):
                x, kw = _make_inputs("spade_modulate", shape, dtype, layout, device, gen)
                x[0, 1, 2, 3] = float("nan")
                x[1, 0, 0, 0] = float("inf")
                kw["gamma"][0, 0, 1, 1] = float("nan")
                kw["beta"][1, 2, 3, 2] = float("-inf")
                with warnings.catch_warnings():  # numpy under the interpreter
                    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
                    out = _call("spade_modulate", x, kw, "relu", impl, config)
                ref = _ref64(x, kw, "relu")
                same = bool(torch.equal(torch.isnan(out.double()), torch.isnan(ref))
                            and torch.equal(torch.isinf(out.double()), torch.isinf(ref)))
                max_abs, rel = compare(out, ref)
                tol = TOLERANCES[dtype]
                ok = same and rel <= tol
                path = "ref" if impl == "ref" else ("split" if config else "fused")
                row = dict(op="spade_modulate[nan]", dtype=DTYPE_NAMES[dtype], layout=layout,
                           act="relu", shape="x".join(map(str, shape)), impl=impl, path=path,
                           max_abs=max_abs, rel_err=rel, tol=tol, ok=ok, device=str(device),
                           seconds=0.0)
                rows.append(row)
                if verbose:
                    print(f"{row['op']:<20} {row['dtype']:<5} {layout:<13} {'relu':<10} "
                          f"{row['shape']:<18} {impl + '/' + path:<13} {max_abs:9.2e} {rel:9.2e} "
                          f"{tol:7.0e}  {'PASS' if ok else 'FAIL'}"
                          + ("" if same else "  (NaN/Inf pattern differs from the reference)"))
    return rows


def _default_impl(device: torch.device) -> tuple[str, str]:
    if device.type == "cuda":
        if norm_act.triton_available():
            return "triton", "Triton kernels on CUDA"
        return "ref", "triton does not import: checking the torch reference path only"
    if norm_act.triton_interpreted():
        return "triton", "Triton kernels in the CPU interpreter (TRITON_INTERPRET=1)"
    return "ref", ("checking the torch reference path only: the Triton path needs a GPU or "
                   "TRITON_INTERPRET=1 (set before the kernels are first used)")


def run_parity(device=None, verbose=True, quick=False, impl=None) -> list[dict]:
    """Run the parity table; returns one dict per row (see the module docstring)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    chosen, note = _default_impl(device)
    impl = impl or chosen
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    if quick:
        cases = cases[:1]
    if verbose:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"bridgegan kernel parity on {device} ({name}): {note}")
        print(f"{'op':<20} {'dtype':<5} {'layout':<13} {'act':<10} {'shape':<18} {'impl/path':<13} "
              f"{'max_abs':>9} {'rel_err':>9} {'tol':>7}  result")
    rows = []
    gen = torch.Generator(device=device).manual_seed(1234)
    acts = norm_act.ACTS
    dtypes = list(TOLERANCES)
    i = 0
    for k, (shape, config, mode) in enumerate(cases):
        for op in OPS:
            for dtype in dtypes:
                if mode == "light" and dtype != dtypes[(k + OPS.index(op)) % len(dtypes)]:
                    continue
                for layout in LAYOUTS:
                    case_acts = acts if mode == "full" else (acts[i % len(acts)],)
                    i += 1
                    for act in case_acts:
                        x, kw = _make_inputs(op, shape, dtype, layout, device, gen)
                        t0 = time.perf_counter()
                        out = _call(op, x, kw, act, impl, config)
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        secs = time.perf_counter() - t0
                        max_abs, rel = compare(out, _ref64(x, kw, act))
                        tol = TOLERANCES[dtype]
                        ok = rel <= tol and out.dtype == x.dtype and (
                            out.is_contiguous(memory_format=torch.channels_last)
                            if layout == "channels_last" else out.is_contiguous())
                        path = "ref"
                        if impl == "triton":
                            n, c, h, w = shape
                            path = plan_launch(n, c, h * w, layout == "channels_last" and c > 1
                                               and h * w > 1, config).path
                        row = dict(op=op, dtype=DTYPE_NAMES[dtype], layout=layout, act=act,
                                   shape="x".join(map(str, shape)), impl=impl, path=path,
                                   max_abs=max_abs, rel_err=rel, tol=tol, ok=bool(ok),
                                   device=str(device), seconds=secs)
                        rows.append(row)
                        if verbose:
                            print(f"{op:<20} {row['dtype']:<5} {layout:<13} {act:<10} "
                                  f"{row['shape']:<18} {impl + '/' + path:<13} {max_abs:9.2e} "
                                  f"{rel:9.2e} {tol:7.0e}  {'PASS' if ok else 'FAIL'}")
    rows += _nan_rows(device, impl, gen, verbose)
    if verbose:
        bad = sum(not r["ok"] for r in rows)
        print(f"{len(rows) - bad}/{len(rows)} rows pass" + (f", {bad} FAIL" if bad else ""))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridgegan.kernels.parity",
                                description="Check the fused kernels against a float64 reference.")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--impl", choices=("triton", "ref"), default=None,
                   help="implementation to check (default: triton where it can run, else ref)")
    p.add_argument("--quick", action="store_true", help="first shape only")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    try:
        rows = run_parity(device=args.device, verbose=True, quick=args.quick, impl=args.impl)
    except (RuntimeError, ValueError) as exc:
        print(f"parity: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
