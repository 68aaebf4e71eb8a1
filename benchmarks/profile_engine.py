#!/usr/bin/env python
"""Where a translation's time goes: a torch.profiler kernel table per variant and batch,
the kernels (CUDA) or ops (CPU) per forward, and the time of each engine stage.

    python benchmarks/profile_engine.py OUTDIR [--device cuda] [--batches 1,64] \\
        [--variants reference:fp16,triton:fp16:cl] [--resolution 128] [--calls 5] [--top 15]

Variants are the bench's (backend:dtype[:cl][:-REWRITE ...]; no CUDA graphs, whose replays
hide the kernels). The default profiles the reference, the engine without the rewrites of
GPU round 2 that can be turned off (transposed_up, kernel_bias, fold_labels, fused_relu,
fused_tail, fused_residual, shortcut_bias: the "before" table; the broadcast shortcut add and
the kernels' own changes stay) and the engine. For each variant and batch: label-based
translations of seeded random images (paper widths at --resolution) under torch.profiler,
then each stage (trunk, encode, map, decode) timed alone with ``bridgegan.timing``, TF32 off
as in the bench. Writes OUTDIR/profile.csv (one row per
kernel / stage / summary, each with the variant's backend and dtype, the batch and
resolution, and the bench's environment columns: device, torch, triton, commit, date;
stages with their p20 and p80) and OUTDIR/profile.md (the top kernels and
the stage times), and prints the markdown.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridgegan.engine import Engine  # noqa: E402
from bridgegan.engine.backends.base import BackendUnavailable  # noqa: E402
from bridgegan.engine.variants import parse_variants  # noqa: E402
from bridgegan.engine.machine import environment  # noqa: E402
from bridgegan.engine.parity import parity_inputs  # noqa: E402
from bridgegan.files import write_file_atomic  # noqa: E402
from bridgegan.torch_flags import no_tf32  # noqa: E402
from bridgegan.reference import BridgeGAN, BridgeGANConfig  # noqa: E402
from bridgegan.timing import p50_p20_p80, synchronize, time_calls  # noqa: E402

DEFAULT_VARIANTS = ("reference:fp16,triton:fp16:cl:-transposed_up:-kernel_bias:-fold_labels:"
                    "-fused_relu:-fused_tail:-fused_residual:-shortcut_bias,"
                    "triton:fp16:cl")
# us_per_forward: a kernel's profiled time, a stage's p50 (with its p20 and p80)
FIELDS = ("variant", "backend", "dtype", "batch", "resolution", "kind", "name",
          "calls_per_forward", "us_per_forward", "p20_us", "p80_us", "share",
          "device", "torch", "triton", "commit", "date")


def _self_us(evt, cuda: bool) -> float:
    """Self time of a profiler average in microseconds: on the device for CUDA kernels,
    on the CPU for ops."""
    if cuda:  # self_cuda_time_total: torch before 2.4 (FunctionEventAvg has no such
        # attribute since); a 0 must not fall through to it
        us = getattr(evt, "self_device_time_total", None)
        return evt.self_cuda_time_total if us is None else us
    return evt.self_cpu_time_total


def kernel_rows(eng: Engine, variant: str, batch: int, calls: int) -> list[dict]:
    """The profiled kernels (CUDA) or ops (CPU) of ``calls`` translations, per forward."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    x, ys, noise = parity_inputs(eng.config, batch, seed=0)
    cuda = eng.device.type == "cuda"
    for _ in range(2):  # warm-up: kernels compiled, caches filled
        eng.translate(x, 1 - ys, noise=noise, source=ys)
    synchronize(eng.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            eng.translate(x, 1 - ys, noise=noise, source=ys)
        synchronize(eng.device)
    events = [e for e in prof.key_averages()
              if (e.device_type == DeviceType.CUDA if cuda else e.device_type == DeviceType.CPU)
              and _self_us(e, cuda) > 0]
    total = sum(_self_us(e, cuda) for e in events)
    rows = [dict(variant=variant, batch=batch, kind="kernel", name=e.key,
                 calls_per_forward=e.count / calls, us_per_forward=_self_us(e, cuda) / calls,
                 share=_self_us(e, cuda) / total) for e in events]
    rows.sort(key=lambda r: -r["us_per_forward"])
    rows.append(dict(variant=variant, batch=batch, kind="summary",
                     name="kernels per forward" if cuda else "ops per forward (nested included)",
                     calls_per_forward=sum(e.count for e in events) / calls,
                     us_per_forward=total / calls, share=1.0))
    return rows


def stage_rows(eng: Engine, variant: str, batch: int, reps: int) -> list[dict]:
    """p50 (p20, p80) time of each stage called alone on the engine's own inputs (a label
    edit)."""
    x, ys, noise = parity_inputs(eng.config, batch, seed=0)
    st = eng.stages
    xc, d, r = (eng._cast(t) for t in (x, 1 - 2 * ys, noise))
    with torch.no_grad():
        h, s = st.trunk(xc), st.encode(xc, -d) + st.map(r, d)
        calls = {"trunk": lambda: st.trunk(xc), "encode": lambda: st.encode(xc, -d),
                 "map": lambda: st.map(r, d), "decode": lambda: st.decode(h, s)}
        times = {k: [t * 1e6 for t in p50_p20_p80(time_calls(fn, eng.device, warmup=1,
                                                              reps=reps))]
                 for k, fn in calls.items()}
    total = sum(p50 for p50, _, _ in times.values())
    return [dict(variant=variant, batch=batch, kind="stage", name=k, calls_per_forward=1,
                 us_per_forward=p50, p20_us=p20, p80_us=p80, share=p50 / total)
            for k, (p50, p20, p80) in times.items()]


def markdown(rows: list[dict], top: int, title: str) -> str:
    out = [f"# Engine profile: {title}", ""]
    for key in dict.fromkeys((r["variant"], r["batch"]) for r in rows):
        mine = [r for r in rows if (r["variant"], r["batch"]) == key]
        summary = next(r for r in mine if r["kind"] == "summary")
        stages = ", ".join(f"{r['name']} {r['us_per_forward']:.0f} us" for r in mine
                           if r["kind"] == "stage")
        out += [f"## {key[0]}, batch {key[1]}", "",
                f"{summary['name']}: {summary['calls_per_forward']:.0f}; profiled time per "
                f"forward {summary['us_per_forward']:.0f} us. Stages alone (p50): {stages}.", "",
                f"| {summary['name'].split()[0][:-1]} | calls / forward | us / forward | share |",
                "| --- | ---: | ---: | ---: |"]
        out += [f"| `{r['name'][:80]}` | {r['calls_per_forward']:.1f} | "
                f"{r['us_per_forward']:.1f} | {r['share']:.1%} |"
                for r in [r for r in mine if r["kind"] == "kernel"][:top]]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma list of backend:dtype[:cl][:-REWRITE ...] (default: %(default)s)")
    p.add_argument("--batches", default="1,64", help="comma list (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--calls", type=int, default=5, help="profiled translations per row")
    p.add_argument("--top", type=int, default=15, help="kernels listed per table")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = BridgeGAN(BridgeGANConfig.preset(args.resolution)).eval()
    device = torch.device(args.device)
    env = environment(device)
    variants = parse_variants(args.variants)
    engines = []  # all built first: a backend this device lacks fails before any profiling
    for v in variants:
        if v.cuda_graphs:
            raise SystemExit(f"variant {v.name!r}: profile without :graphs (replays hide kernels)")
        try:
            engines.append(v.engine(model, device))
        except (ValueError, BackendUnavailable) as exc:
            raise SystemExit(f"profile_engine: variant {v.name!r}: {exc}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{env['device']}, {args.resolution}x{args.resolution}, torch {env['torch']}"
    rows = []
    for v, eng in zip(variants, engines):
        for batch in (int(b) for b in args.batches.split(",")):
            print(f"profiling {v.name} batch {batch}", file=sys.stderr, flush=True)
            with no_tf32():  # as the bench times it: a float32 row is float32, not TF32
                rows += [dict(r, backend=v.backend, dtype=v.resolved_dtype(device),
                              resolution=args.resolution, **env) for r in
                         kernel_rows(eng, v.name, batch, args.calls)
                         + stage_rows(eng, v.name, batch, max(args.calls, 3))]
            # written after every (variant, batch): a run stopped by a time limit keeps
            # what it profiled
            buf = io.StringIO()
            writer = csv.DictWriter(buf, FIELDS)
            writer.writeheader()
            writer.writerows(rows)
            write_file_atomic(args.out / "profile.csv", buf.getvalue().encode())
            write_file_atomic(args.out / "profile.md", markdown(rows, args.top, title).encode())
    print(markdown(rows, args.top, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
