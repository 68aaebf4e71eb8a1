#!/usr/bin/env python
"""Speed of the fused SPADE kernel at the generator's real shapes (128x128 images, batch 64),
and of the fused tail (rgb_tail) at G's last layer.

    python benchmarks/bench_kernels.py --out DIR            # GPU: fp16+bf16, NCHW+channels_last
    python benchmarks/bench_kernels.py --out DIR --parity   # GPU parity table first
    python benchmarks/bench_kernels.py --out DIR --sweep    # + launch-config sweep, every shape
    python benchmarks/bench_kernels.py --tune               # compare launch-config candidates
    python benchmarks/bench_kernels.py --dry-run --out DIR  # CPU, tiny shapes, torch impl (CI)

The 8 SPADE layers of G at 128x128 (spec section 3) normalise: middle block 256@16x16
(x2), up block 1 256@16 and 128@32, up block 2 128@32 and 64@64, up block 3 64@64 and
32@128 (the hottest). Each distinct shape is measured once; the "generator" rows sum
the 8 layers.

Backends per shape:
  triton  spade_modulate(x, gamma, beta, act="relu", impl="triton")
  triton+bias
          the same with bias= the (2C,) gamma/beta convolution bias, added in the kernel
          (what the engine runs with impl="triton": its gamma/beta convolutions drop their
          bias, ``kernel_bias``): its cost is the difference from the triton row
  triton+res
          spade_modulate(..., residual=r): the previous block's two branches summed by the
          kernel, which stores the sum and normalises it (``fused_residual``); ideal bytes
          count the residual read and the sum written (6 tensors' worth), and its
          speed-up is over eager+res
  eager   torch.relu(F.instance_norm(x) * (1 + gamma) + beta), same dtype (what a plain
          PyTorch SPADE layer does)
  eager+res
          s = x + r, then the eager layer on s (the unfused residual hand-over)
  torch   spade_modulate(..., impl="torch"): float32 upcast torch ops (what CPU / ONNX
          use)

rgb_tail (G's last residual sum, ReLU, to_rgb, tanh; one row per dtype and layout at
32@128 with its 32@64 shortcut, batch 64): the kernel against the plain ops (broadcast
add, ReLU, 1x1 convolution, tanh); ideal bytes = read h and the shortcut, write 3 channels.

Timing: bridgegan.timing (CUDA events, L2 cleared before every call, >= 100 ms of calls
after a warm-up, as triton.testing.do_bench does), median with p20/p80, and the inputs
are rotated over several buffer sets so no call reuses another's data.
Bytes model: ideal = read x, gamma, beta once + write out once = 4 * N*C*H*W * itemsize;
GB/s = ideal / time; share = GB/s over a device-to-device copy measured in the same run
(bytes read + written). Targets: first round >= 80% of copy bandwidth and >= 2.5x over
eager; round 2 (issue 14) >= 85% for the fused SPADE kernels in both layouts, >= 75% for
the channels_last norm kernels.

Derived rows, said so in their ``note``: a ``speedup_vs_eager`` row's p20 / p80 are the
eager p20 / p80 over this backend's (ratios of same-named percentiles of two separately
timed runs, a spread indication, not percentiles of the speed-up; p50 likewise); the
"generator" rows' p50 / p20 / p80 are the count-weighted sums of the layers' own
percentiles (an estimate of one pass over the 8 layers, not percentiles measured on one).

Every row: what, backend, dtype, layout, batch, resolution, channels, metric, unit, p50,
p20, p80, device, torch, triton, commit, date (+ path, ideal_bytes, note).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bridgegan.engine.machine import environment  # noqa: E402
from bridgegan.files import write_files_atomic  # noqa: E402
from bridgegan.kernels import norm_act, rgb_tail  # noqa: E402
from bridgegan.kernels.parity import FORMATS, LAYOUTS  # noqa: E402
from bridgegan.timing import copy_bandwidth, p50_p20_p80, time_calls  # noqa: E402

IMAGE_RES = 128
BATCH = 64
# (channels, spatial size) of every SPADE normalisation in G at 128x128, in order.
GEN_LAYERS = [(256, 16), (256, 16), (256, 16), (128, 32), (128, 32), (64, 64), (64, 64), (32, 128)]
BENCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FIELDS = ["what", "backend", "dtype", "layout", "batch", "resolution", "channels", "metric",
          "unit", "p50", "p20", "p80", "path", "ideal_bytes", "note", "device", "torch", "triton",
          "commit", "date"]
RATIO_NOTE = "eager's percentiles over this backend's, not percentiles of the speed-up"
SUM_NOTE = "the layers' own percentiles summed, not percentiles of one pass"
SWEEP = {  # launch-config variants tried with --sweep (fp16 only, every shape)
    "nchw": [{"fused_tile": 1024}, {"fused_tile": 2048}, {"fused_tile": 8192},
             {"fused_tile": 16384}, {"num_warps": 2}, {"num_warps": 4}, {"num_warps": 8},
             {"num_warps": 16}, {"path": "split"}, {"path": "split", "stats": "tiles"},
             # the statistics unshifted (prices the shift by each plane's first pixel)
             {"shift": False}, {"path": "split", "shift": False}],
    "channels_last": [{"fused_tile": 8192}, {"fused_tile": 16384}, {"num_warps": 4},
                      {"num_warps": 8}, {"num_warps": 16}, {"path": "split"},
                      {"path": "split", "target_programs": 2048},
                      {"path": "split", "split_tile": 2048}, {"path": "split", "split_tile": 8192},
                      {"path": "split", "block_c": 16}, {"path": "split", "num_warps": 4},
                      {"path": "split", "num_warps": 16},
                      {"max_fused": 32768, "block_c": 8}, {"max_fused": 65536, "block_c": 4},
                      # wider channel rows (128-256 contiguous bytes), issue 14 item 5
                      {"block_c": 64}, {"block_c": 128}, {"path": "split", "block_c": 64},
                      {"path": "split", "block_c": 128},
                      # the split path's statistics reduced per tile inside the loop (A/B)
                      {"path": "split", "stats": "tiles"},
                      {"shift": False}, {"path": "split", "shift": False}],
}


def _unique_layers():
    seen = {}
    for c, h in GEN_LAYERS:
        seen[(c, h)] = seen.get((c, h), 0) + 1
    return list(seen.items())


def _env():
    return environment(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _timing(device, quick):
    """time_calls settings. On the GPU about triton.testing.do_bench's budget (a warm-up,
    then >= 100 ms of calls, 40 ms when quick, the L2 flushed before each); on the CPU a
    few calls after one warm-up."""
    if device.type == "cuda":
        return dict(warmup=10 if quick else 25, reps=10, min_seconds=0.04 if quick else 0.1,
                    flush_l2=True)
    return dict(warmup=1, reps=3 if quick else 7)


def _ms(fn, device, timing):
    """(p50, p20, p80) milliseconds of ``fn()``."""
    return tuple(1e3 * t for t in p50_p20_p80(time_calls(fn, device, **timing)))


def _rotating(sets):
    """A callable-maker that feeds the next buffer set on every call."""
    state = {"i": 0}

    def wrap(fn):
        def call():
            s = sets[state["i"] % len(sets)]
            state["i"] += 1
            return fn(*s)
        return call
    return wrap


def _eager(x, g, b, _bias, _residual):
    return torch.relu(F.instance_norm(x, eps=1e-5) * (1 + g) + b)


def _eager_res(x, g, b, _bias, r):
    """A residual block's sum, then the next block's SPADE layer, as the plain ops."""
    s = x + r
    return torch.relu(F.instance_norm(s, eps=1e-5) * (1 + g) + b), s


TUNE = [  # (C, H, layout, configs) compared with --tune, interleaved, each timed twice
    (256, 16, "nchw", [{}, {"fused_tile": 1024}, {"fused_tile": 2048}, {"num_warps": 16},
                       {"fused_tile": 1024, "num_warps": 4}]),
    (128, 32, "nchw", [{}, {"fused_tile": 1024}, {"fused_tile": 2048}]),
    (256, 16, "channels_last", [{}, {"num_warps": 4}]),
    (64, 64, "channels_last", [{}, {"num_warps": 4}, {"split_tile": 2048}, {"block_c": 16}]),
    (32, 128, "channels_last", [{}, {"num_warps": 4}, {"split_tile": 2048}, {"block_c": 16},
                                {"block_c": 16, "num_warps": 4}]),
]


def tune(rounds=2):
    """Time launch-config candidates at the shapes listed in TUNE (GPU only)."""
    device = torch.device("cuda")
    timing = _timing(device, quick=False)
    gen = torch.Generator(device=device).manual_seed(0)
    for dname, dtype in BENCH_DTYPES.items():
        for c, h, layout, cfgs in TUNE:
            fmt = FORMATS[layout]
            sets = [tuple((s * torch.randn(BATCH, c, h, h, device=device, generator=gen)).to(
                dtype).contiguous(memory_format=fmt) for s in (1.0, 0.5, 0.5)) for _ in range(3)]
            rot = _rotating(sets)
            res = {i: [] for i in range(len(cfgs))}
            for _ in range(rounds):
                for i, cfg in enumerate(cfgs):
                    fn = rot(lambda x, g, b, cfg=cfg: norm_act.spade_modulate(
                        x, g, b, act="relu", impl="triton", config=cfg or None))
                    res[i].append(_ms(fn, device, timing)[0])
            for i, cfg in enumerate(cfgs):
                p = norm_act.plan_launch(BATCH, c, h * h, layout == "channels_last", cfg or None)
                print(f"tune {dname} {layout:<13} C={c:<3} {h:>3}: {str(cfg):<40} "
                      + " ".join(f"{t * 1e3:7.1f}" for t in res[i])
                      + f" us  {p.path}:bhw={p.block_hw},bc={p.block_c},w={p.num_warps}")


def _tail_eager(h, weight, bias, s):
    """G's tail as the plain ops: broadcast add, ReLU, 1x1 convolution (+ bias), tanh."""
    n, c, hl, wl = s.shape
    v = (h.view(n, c, hl, 2, wl, 2) + s.view(n, c, hl, 1, wl, 1)).reshape(h.shape)
    return torch.tanh(F.conv2d(F.relu(v), weight, bias))


def _tail_rows(device, batch, impl, dtypes, layouts, timing, copy_bw, base, gen, dry_run):
    """rgb_tail against the plain ops at G's last layer (32 channels at the image size, its
    shortcut at half size). Ideal bytes: read h and the shortcut once, write 3 channels."""
    c, h = (2, 8) if dry_run else (32, IMAGE_RES)
    rows = []
    for dname in dtypes:
        dtype = BENCH_DTYPES[dname]
        for layout in layouts:
            fmt = FORMATS[layout]
            x, sc = (torch.randn(batch, c, size, size, device=device, generator=gen).to(dtype)
                     .contiguous(memory_format=fmt) for size in (h, h // 2))
            weight = torch.randn(3, c, 1, 1, device=device, generator=gen).to(dtype) / c ** 0.5
            bias = torch.randn(3, device=device, generator=gen).to(dtype)
            ideal = (x.numel() + sc.numel() + batch * 3 * h * h) * x.element_size()
            times = {name: _ms(fn, device, timing) for name, fn in (
                ("triton", lambda: rgb_tail(x, weight, bias, sc, impl=impl)),
                ("eager", lambda: _tail_eager(x, weight, bias, sc)))}
            common = dict(base, what=f"rgb_tail C={c} {h}x{h}", dtype=dname, layout=layout,
                          resolution=h, channels=c, path="fused" if impl == "triton" else impl,
                          ideal_bytes=ideal)
            for name, (t50, t20, t80) in times.items():
                rows.append(dict(common, backend=name, metric="time", unit="ms", p50=t50,
                                 p20=t20, p80=t80))
                rows.append(dict(common, backend=name, metric="copy_bw_share", unit="%",
                                 **{k: 100 * ideal / t / 1e6 / copy_bw["p50"]
                                    for k, t in (("p50", t50), ("p20", t80), ("p80", t20))}))
            (t50, t20, t80), (e50, e20, e80) = times["triton"], times["eager"]
            rows.append(dict(common, backend="triton", metric="speedup_vs_eager", unit="x",
                             p50=e50 / t50, p20=e20 / t20, p80=e80 / t80, note=RATIO_NOTE))
            print(f"rgb_tail {dname} {layout:<13}: triton {t50 * 1e3:8.1f} us "
                  f"({100 * ideal / t50 / 1e6 / copy_bw['p50']:5.1f}% of copy), eager "
                  f"{e50 * 1e3:8.1f} us, x{e50 / t50:.2f}")
    return rows


def _parity_gate(out, device, quick, dry_run):
    """The kernel parity table first, written to parity.json; no speed is reported for
    kernels that fail it (as the engine's bench)."""
    from bridgegan.kernels.parity import check_ops

    prow = check_ops(device=device, quick=quick or dry_run, impl="torch" if dry_run else None,
                     written=out / "parity.json")
    print(f"parity: {sum(r['ok'] for r in prow)}/{len(prow)} pass")
    failed = sorted({f"{r['op']} {r['dtype']} {r['layout']}" for r in prow if not r["ok"]})
    if failed:
        raise SystemExit(f"bench_kernels: parity failed for {', '.join(failed)} (see "
                         f"{out / 'parity.json'}); no speed reported")


def _spade_backends(rot, impl, path, ideal, ideal_res, sweep, batch, c, h, cl):
    """name: (call, path, ideal bytes, the eager row it is compared with) of one SPADE
    layer; ``sweep``: the SWEEP configurations of its layout too."""
    backends = {
        "triton": (rot(lambda x, g, b, mb, r: norm_act.spade_modulate(
            x, g, b, act="relu", impl=impl)), path, ideal, "eager"),
        "triton+bias": (rot(lambda x, g, b, mb, r: norm_act.spade_modulate(
            x, g, b, act="relu", impl=impl, bias=mb)), path, ideal, "eager"),
        "triton+res": (rot(lambda x, g, b, mb, r: norm_act.spade_modulate(
            x, g, b, act="relu", impl=impl, residual=r)), path, ideal_res, "eager+res"),
        "eager": (rot(_eager), "eager", ideal, None),
        "eager+res": (rot(_eager_res), "eager", ideal_res, None),
        "torch": (rot(lambda x, g, b, mb, r: norm_act.spade_modulate(
            x, g, b, act="relu", impl="torch")), "torch", ideal, "eager"),
    }
    for cfg in sweep:
        tag = ",".join(f"{k}={v}" for k, v in cfg.items())
        p = norm_act.plan_launch(batch, c, h * h, cl, cfg)
        backends[f"triton[{tag}]"] = (rot(
            lambda x, g, b, mb, r, cfg=cfg: norm_act.spade_modulate(
                x, g, b, act="relu", impl="triton", config=cfg)),
            f"{p.path}:bhw={p.block_hw},bc={p.block_c},w={p.num_warps}", ideal, "eager")
    return backends


def _spade_rows(times, backends, common, copy_bw):
    """Each timed backend's time, bandwidth, share of copy bandwidth and speed-up rows."""
    rows = []
    for name, (t50, t20, t80) in times.items():
        _, path, nbytes, against = backends[name]
        row = dict(common, backend=name, path=path, ideal_bytes=nbytes)
        bw = {"p50": nbytes / t50 / 1e6, "p20": nbytes / t80 / 1e6, "p80": nbytes / t20 / 1e6}
        rows.append(dict(row, metric="time", unit="ms", p50=t50, p20=t20, p80=t80))
        rows.append(dict(row, metric="bandwidth", unit="GB/s", **bw))
        rows.append(dict(row, metric="copy_bw_share", unit="%",
                         **{k: 100 * v / copy_bw["p50"] for k, v in bw.items()}))
        if against in times:
            e = times[against]
            rows.append(dict(row, metric="speedup_vs_eager", unit="x", p50=e[0] / t50,
                             p20=e[1] / t20, p80=e[2] / t80, note=RATIO_NOTE))
    return rows


def _print_layer(dname, layout, c, h, count, times, backends, ideal, ideal_res, copy_bw):
    """One SPADE layer's line: triton's time and share of copy bandwidth, +bias, +res and
    eager beside it; each sweep configuration's time under it."""
    t, tb, tr, e = (times.get(k) for k in ("triton", "triton+bias", "triton+res", "eager"))
    if not t:
        return
    print(f"{dname} {layout:<13} C={c:<3} {h:>3}x{h:<3} x{count}: triton {t[0]*1e3:8.1f} us "
          f"({ideal / t[0] / 1e6:6.0f} GB/s, {100 * ideal / t[0] / 1e6 / copy_bw['p50']:5.1f}% "
          f"of copy, {backends['triton'][1]})"
          + (f", +bias {tb[0]*1e3:8.1f} us (x{tb[0] / t[0]:.3f})" if tb else "")
          + (f", +res {tr[0]*1e3:8.1f} us ({100 * ideal_res / tr[0] / 1e6 / copy_bw['p50']:5.1f}%"
             " of copy)" if tr else "")
          + (f", eager {e[0]*1e3:8.1f} us, x{e[0] / t[0]:.2f}" if e else ""))
    for name in backends:
        if name.startswith("triton[") and name in times:
            print(f"    {name:<44} {times[name][0]*1e3:8.1f} us  {backends[name][1]}")


def _total_rows(totals, base, copy_bw):
    """The generator's SPADE layers summed (each layer times its count in GEN_LAYERS); the
    triton sum printed against eager's, the triton+bias sum against the triton one."""
    rows = []
    for (dname, layout, name), (t50, t20, t80, nbytes) in totals.items():
        common = dict(base, what=f"generator SPADE layers ({len(GEN_LAYERS)}, {IMAGE_RES}px)",
                      backend=name, dtype=dname, layout=layout, resolution=IMAGE_RES, channels=0,
                      path="-", ideal_bytes=nbytes, note=SUM_NOTE)
        rows.append(dict(common, metric="time", unit="ms", p50=t50, p20=t20, p80=t80))
        rows.append(dict(common, metric="copy_bw_share", unit="%",
                         p50=100 * nbytes / t50 / 1e6 / copy_bw["p50"],
                         p20=100 * nbytes / t80 / 1e6 / copy_bw["p50"],
                         p80=100 * nbytes / t20 / 1e6 / copy_bw["p50"]))
        e = totals.get((dname, layout, "eager"))
        if name != "eager" and e:
            rows.append(dict(common, metric="speedup_vs_eager", unit="x",
                             p50=e[0] / t50, p20=e[1] / t20, p80=e[2] / t80,
                             note=f"{SUM_NOTE}; {RATIO_NOTE}"))
            if name == "triton":
                print(f"generator {dname} {layout}: triton {t50:.3f} ms vs eager {e[0]:.3f} ms "
                      f"= x{e[0] / t50:.2f}, {100 * nbytes / t50 / 1e6 / copy_bw['p50']:.1f}% of copy bw")
            t = totals.get((dname, layout, "triton"))
            if name == "triton+bias" and t:
                print(f"generator {dname} {layout}: triton+bias {t50:.3f} ms, {t50 / t[0]:.3f}x "
                      "the triton time")
    return rows


def run(out_dir, dry_run=False, sweep=False, parity=False, quick=False, dtypes=None, layouts=None):
    """Run the benchmark; write kernels.json / kernels.csv under out_dir; return the rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not dry_run
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and not dry_run:
        raise SystemExit("bench_kernels: no CUDA device; use --dry-run for the CPU smoke run")
    env = _env()
    rows: list[dict] = []
    if parity:
        _parity_gate(out, device, quick, dry_run)

    timing, quick_timing = _timing(device, quick or dry_run), _timing(device, True)
    batch = 2 if dry_run else BATCH
    impl = "torch" if dry_run else "triton"
    layers = [((max(1, c // 16), max(2, h // 8)), k) for (c, h), k in _unique_layers()] if dry_run \
        else _unique_layers()
    if sweep:  # the biggest planes first: a sweep stopped by its time limit has timed those
        layers.sort(key=lambda layer: -layer[0][0] * layer[0][1] ** 2)
    copy_bw = {k: v / 1e9 for k, v in copy_bandwidth(
        device, (1 << 20) * (8 if dry_run else 1024), **timing).items()}
    print(f"device {env['device']}: copy bandwidth {copy_bw['p50']:.0f} GB/s (read+write)")
    base = dict(batch=batch, device=env["device"], torch=env["torch"], triton=env["triton"],
                commit=env["commit"], date=env["date"])
    rows.append(dict(base, what="device_copy", backend="torch", dtype="fp16", layout="-",
                     resolution=0, channels=0, metric="bandwidth", unit="GB/s", path="-",
                     ideal_bytes=0, **copy_bw))
    gen = torch.Generator(device=device).manual_seed(0)
    totals: dict = {}

    for dname in dtypes or BENCH_DTYPES:
        dtype = BENCH_DTYPES[dname]
        for layout in layouts or LAYOUTS:
            fmt = FORMATS[layout]
            for (c, h), count in layers:
                numel = batch * c * h * h
                ideal = 4 * numel * torch.finfo(dtype).bits // 8
                ideal_res = ideal // 2 * 3  # + read the residual, write the sum
                n_sets = max(2, min(6, -(-(3 * 64 << 20) // ideal))) if cuda else 1

                def mk(scale):
                    return (scale * torch.randn(batch, c, h, h, device=device, generator=gen)).to(
                        dtype).contiguous(memory_format=fmt)
                sets = [(mk(1.0), mk(0.5), mk(0.5), (0.5 * torch.randn(
                    2 * c, device=device, generator=gen)).to(dtype), mk(1.0))
                    for _ in range(n_sets)]
                cl = layout == "channels_last"
                path = norm_act.plan_launch(batch, c, h * h, cl).path if impl == "triton" \
                    else "torch"
                backends = _spade_backends(
                    _rotating(sets), impl, path, ideal, ideal_res,
                    SWEEP[layout] if sweep and not dry_run and dname == "fp16" else (),
                    batch, c, h, cl)
                times = {}
                for name, (fn, *_) in backends.items():
                    with torch.no_grad():
                        try:
                            times[name] = _ms(fn, device, quick_timing if name.startswith("triton[")
                                             else timing)
                        except Exception as exc:  # a sweep variant that does not compile
                            print(f"  {name}: failed: {type(exc).__name__}: {exc}")
                rows += _spade_rows(times, backends, dict(  # backend: its place in a row
                    base, what=f"spade_modulate C={c} {h}x{h}", backend=None, dtype=dname,
                    layout=layout, resolution=h, channels=c), copy_bw)
                for name in ("triton", "triton+bias", "eager", "torch"):  # the 8 layers
                    if name in times:
                        tot = totals.setdefault((dname, layout, name), [0.0, 0.0, 0.0, 0])
                        for i in range(3):
                            tot[i] += count * times[name][i]
                        tot[3] += count * backends[name][2]
                _print_layer(dname, layout, c, h, count, times, backends, ideal, ideal_res,
                             copy_bw)
                del sets
                _write(out, env, rows)
    rows += _total_rows(totals, base, copy_bw)
    rows += _tail_rows(device, batch, impl, dtypes or BENCH_DTYPES, layouts or LAYOUTS, timing,
                       copy_bw, base, gen, dry_run)
    _write(out, env, rows)
    print(f"wrote {len(rows)} rows to {out / 'kernels.json'} and {out / 'kernels.csv'}")
    return rows


def _write(out: Path, env: dict, rows: list[dict]) -> None:
    """kernels.json and kernels.csv, replaced together atomically: written after every
    shape too, so that a run stopped by a time limit keeps the rows it measured."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_files_atomic({out / "kernels.json": json.dumps({"env": env, "rows": rows},
                                                         indent=1).encode(),
                        out / "kernels.csv": buf.getvalue().encode()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/bench_kernels", help="folder for kernels.json / kernels.csv")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, torch impl (CI smoke run)")
    p.add_argument("--sweep", action="store_true",
                   help="also time launch-config variants (fp16, every shape, biggest first)")
    p.add_argument("--parity", action="store_true", help="run the kernel parity table first")
    p.add_argument("--quick", action="store_true", help="shorter timing runs")
    p.add_argument("--tune", action="store_true", help="only compare launch-config candidates (TUNE)")
    p.add_argument("--dtype", choices=sorted(BENCH_DTYPES), action="append", help="default: fp16 and bf16")
    p.add_argument("--layout", choices=LAYOUTS, action="append", help="default: both")
    args = p.parse_args(argv)
    if args.dry_run:
        os.environ.pop("TRITON_INTERPRET", None)
    if args.tune:
        tune()
        return 0
    rows = run(args.out, dry_run=args.dry_run, sweep=args.sweep, parity=args.parity,
               quick=args.quick, dtypes=args.dtype, layouts=args.layout)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
