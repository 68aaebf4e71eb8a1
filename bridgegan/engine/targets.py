"""The Triton kernels compiled for a GPU that is not here (default sm_90: H100 / H200).

Triton compiles for a named target without a device. This module runs the engine's
rewritten graph (``impl="triton"``) on ``meta`` tensors (shapes, dtypes and strides, no
memory) while :func:`bridgegan.kernels.dispatch.recording` collects every kernel launch the ops would make,
then compiles each distinct launch with the JIT's own specialisation
(``JITFunction.warmup``) against a stand-in driver that names the target, down to PTX and
cubin; cuobjdump (shipped with Triton) reports the registers, spills and shared memory
that ptxas gave each kernel.

    python -m bridgegan.engine.targets [--dtypes fp16,bf16] [--layouts cl,nchw] [--arch 90]

prints one row per compiled kernel and exits 1 when a kernel does not compile: CI runs
it, so that a kernel which would fail on the lent GPU fails here first. ``--markdown FILE``
writes the table (registers, spills, shared memory and the occupancy they allow) that
benchmarks/KERNELS.md carries for the paper model. ``--launchers`` compiles instead the
extreme configurations the ops' launchers choose for any model (:func:`launcher_launches`).
Needs triton with its NVIDIA backend, and TRITON_INTERPRET unset (interpreted kernels do
not compile).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..files import write_file_atomic
from ..kernels import conv_act, norm_act, tail
from ..kernels.dispatch import Launch, recording, triton_interpreted
from ..kernels.layout import next_pow2
from ..numerics import SHORT_NAMES, dtype_name
from ..reference.presets import PAPER_RESOLUTION
from .graph import InferenceGraph, Rewrites

LAYOUTS = {"cl": torch.channels_last, "nchw": torch.contiguous_format}
ARCH = 90  # the default target: sm_90 (H100, H200)
# the stand-in driver and ptxas lookup below follow Triton 3.6's internals (3.3 lacks
# driver._active, 3.4-3.5's get_ptxas takes no architecture); checked with 3.6 to 3.9
TRITON_MIN = (3, 6)


def triton_version(triton) -> tuple[int, int]:
    """(major, minor) of the ``triton`` module."""
    return tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])


def toolchain_problem(arch: int = ARCH) -> str:
    """Why kernels cannot be compiled for ``sm_<arch>`` and measured here, or "": Triton
    (TRITON_MIN or newer) with its NVIDIA backend, the ptxas it runs for the target
    (ptxas-blackwell in Triton 3.9) and the cuobjdump :func:`resource_usage` reads the
    cubin with."""
    try:
        import triton
    except Exception as exc:
        return f"triton does not import ({type(exc).__name__}: {exc})"
    if triton_version(triton) < TRITON_MIN:
        least = ".".join(map(str, TRITON_MIN))
        return (f"triton {triton.__version__} is older than this tool's {least}: "
                f"pip install 'triton>={least}'")
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except Exception as exc:  # a build without its NVIDIA backend
        return f"triton's NVIDIA backend does not import ({type(exc).__name__}: {exc})"
    try:
        get_ptxas(arch)
    except Exception as exc:  # RuntimeError("Cannot find ptxas-blackwell")
        return f"triton {triton.__version__} finds no ptxas for sm_{arch} ({exc})"
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return "" if cuobjdump.is_file() else f"triton's NVIDIA backend lacks {cuobjdump}"


class _Offline:
    """The part of Triton's driver interface that compiling uses: device 0 of ``target``."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target

    def get_active_torch_device(self):
        return torch.device("meta")


@contextlib.contextmanager
def offline(arch: int = ARCH, warp_size: int = 32):
    """Triton compiles for CUDA ``sm_<arch>`` inside, whatever device is here."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    previous = driver._active  # reset_active() would build the default driver: no GPU, error
    driver.set_active(_Offline(GPUTarget("cuda", arch, warp_size)))
    try:
        yield
    finally:
        driver._active = previous


def _channels_last(t) -> bool:
    return (isinstance(t, torch.Tensor) and t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


class _LayoutAsOnCuda(torch.overrides.TorchFunctionMode):
    """Meta convolutions and resampling return NCHW whatever their operands; on CUDA a
    convolution is channels_last when its input or its weight is (cuDNN's rule), and
    resampling keeps its input's format. This mode does what the GPU does, so that the
    kernels see the strides they see there."""

    CONVS = (F.conv2d, F.conv_transpose2d)
    RESAMPLING = (F.interpolate, F.avg_pool2d, F.pad)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        operands = args[:2] if func in self.CONVS else args[:1] if func in self.RESAMPLING else ()
        if any(_channels_last(t) for t in operands):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def engine_launches(model, dtype: torch.dtype, layout: str, batch: int,
                    rewrites: Rewrites = Rewrites()) -> list[tuple[str, Launch]]:
    """(stage, launch) for every Triton launch of one label-based translation by the
    engine's graph (impl="triton", every rewrite on unless ``rewrites`` says), in order."""
    cfg = model.config
    fmt = LAYOUTS[layout]
    graph = InferenceGraph(model, rewrites, impl="triton").eval().to(device="meta", dtype=dtype,
                                                             memory_format=fmt)
    x = torch.empty(batch, 3, cfg.image_size, cfg.image_size, device="meta",
                    dtype=dtype).contiguous(memory_format=fmt)
    d = torch.empty(batch, cfg.n_attrs, device="meta", dtype=dtype)
    r = torch.empty(batch, cfg.noise_dim, device="meta", dtype=dtype)
    out, values = [], {}
    with torch.no_grad(), _LayoutAsOnCuda():
        for stage, call in (("trunk", lambda: graph.trunk(x)), ("encode", lambda: graph.encode(x, d)),
                            ("map", lambda: graph.map(r, d)),
                            ("decode", lambda: graph.decode(values["trunk"],
                                                            values["encode"] + values["map"]))):
            with recording() as got:
                values[stage] = call()
            out += [(stage, launch) for launch in got]
    return out


def _key(launch: Launch) -> tuple:
    """What the JIT specialises on: the kernel, its constexprs and options, the pointer
    dtypes and which integer arguments are 1 or multiples of 16. (Meta tensors have no
    address: every pointer counts as 16-byte aligned, as the engine's tensors are; a view
    that is not would compile a variant this table does not list.)"""
    def spec(v):
        if isinstance(v, torch.Tensor):
            return str(v.dtype)
        if isinstance(v, bool) or not isinstance(v, int):
            return type(v).__name__
        return "1" if v == 1 else "D" if v % 16 == 0 else "i"
    return (launch.kernel.fn.__name__, tuple(spec(a) for a in launch.args),
            tuple(sorted(launch.kwargs.items())))


def resource_usage(compiled) -> dict:
    """Registers, spilled bytes and shared memory of a compiled kernel, as cuobjdump reads
    them from its cubin; shared also counts what Triton allocates. ptxas spills to
    the thread's stack frame (STACK; LOCAL counts .local arrays, which Triton does not
    emit, and is 0 whatever spills), and a Triton kernel has no other use for one: no
    calls, no dynamically indexed arrays. So the stack frame is the spill space (ptxas -v
    on the same PTX with Triton's options: "192 bytes stack frame, 208 bytes spill
    stores" for a kernel whose LOCAL is 0)."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(compiled.asm["cubin"])
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)],
                              capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED):(\d+)", text))
    return dict(registers=int(fields.get("REG", 0)), spill_bytes=int(fields.get("STACK", 0)),
                shared_bytes=max(int(fields.get("SHARED", 0)), compiled.metadata.shared),
                num_warps=compiled.metadata.num_warps)


# per SM: 32-bit registers, resident warps, resident blocks, shared memory (bytes)
SM_LIMITS = {80: (65536, 64, 32, 163 * 1024), 90: (65536, 64, 32, 227 * 1024)}


def occupancy(registers: int, num_warps: int, shared_bytes: int, arch: int = ARCH) -> float:
    """Resident warps per SM over the most an SM holds, as registers and shared memory
    allow (registers are allocated per warp in units of 256): an estimate of how much
    memory traffic a memory-bound kernel keeps in flight."""
    regs, warps, blocks, shared = SM_LIMITS[arch]
    per_warp = -(-registers * 32 // 256) * 256
    fit = min(regs // max(1, per_warp * num_warps), blocks, warps // num_warps,
              shared // shared_bytes if shared_bytes else blocks)
    return fit * num_warps / warps


def markdown(rows: list[dict], arch: int) -> str:
    """The table of compile_table's rows, for KERNELS.md."""
    out = ["| kernel | dtype | layout | launches | first use | regs | spilled B | shared B | "
           "warps | occupancy | config |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        config = ", ".join(c for c in r["config"].split(", ") if not c.startswith("num_warps"))
        if r["error"]:
            out.append(f"| {r['kernel']} | {r['dtype']} | {r['layout']} | {len(r['uses'])} | "
                       f"{r['uses'][0]} | failed: {r['error'][:80]} | | | | | {config} |")
            continue
        occ = (f"{occupancy(r['registers'], r['num_warps'], r['shared_bytes'], arch):.0%}"
               if arch in SM_LIMITS else "-")
        out.append(f"| {r['kernel']} | {r['dtype']} | {r['layout']} | {len(r['uses'])} | "
                   f"{r['uses'][0]} | {r['registers']} | {r['spill_bytes']} | "
                   f"{r['shared_bytes']} | {r['num_warps']} | {occ} | {config} |")
    return "\n".join(out)


def compile_table(model, dtypes, layouts, batch: int = 64, arch: int = ARCH,
                  progress: bool = True) -> list[dict]:
    """One row per distinct kernel specialisation the engine launches: where it runs (the
    stages and tensor shapes), its launch config and its resource usage on sm_<arch>; a
    kernel that does not compile is a row with its error."""
    def launches():
        for dtype in dtypes:
            for layout in layouts:
                for stage, launch in engine_launches(model, dtype, layout, batch):
                    shape = "x".join(map(str, launch.args[0].shape))
                    yield dtype, layout, f"{stage} {shape}", launch
    return compile_rows(launches(), arch, progress)


def compile_rows(launches, arch: int = ARCH, progress: bool = True) -> list[dict]:
    """compile_table's rows for ``(dtype, layout, use, launch)``: one per distinct
    specialisation (its uses listed), with the seconds its compilation took."""
    rows: dict[tuple, dict] = {}
    with offline(arch):
        for dtype, layout, use, launch in launches:
            key = (layout, *_key(launch))  # rows per layout; Triton caches the rest
            if key in rows:
                rows[key]["uses"].append(use)
                continue
            row = dict(kernel=launch.kernel.fn.__name__,
                       dtype=SHORT_NAMES[dtype_name(dtype)], layout=layout,
                       config=", ".join(f"{k}={v}" for k, v in launch.kwargs.items()
                                        if k.isupper() or k == "num_warps"),
                       grid="x".join(map(str, launch.grid)), uses=[use])
            start = time.perf_counter()
            try:
                compiled = launch.warmup()
                row.update(resource_usage(compiled), error="")
            except Exception as exc:  # the point: report, do not stop at the first
                row.update(error=f"{type(exc).__name__}: {str(exc)[:300]}")
            row["seconds"] = time.perf_counter() - start
            rows[key] = row
            if progress:
                print(f"  {row['kernel']} {row['dtype']} {layout} "
                      f"{row.get('registers', '-')} regs {row['seconds']:.1f} s {row['error']}",
                      file=sys.stderr, flush=True)
    return list(rows.values())


def _norm_extremes(layout: str) -> list[tuple[str, int, int]]:
    """(what, C, H) of the norm plans launcher_launches compiles for ``layout``: over batch 1
    (the most chunks), C and H = W powers of two up to where plan_launch's tiles and chunks
    stop changing, per path the plan with the most tile elements per thread, the one with
    the fewest and (split) the one whose apply kernel merges the most partials per thread;
    ties to the smallest shape."""
    pow2 = [1 << k for k in range(24)]
    sizes = [(c, h) for c in pow2 if c <= norm_act.FUSED_TILE_TARGET
             for h in pow2 if h * h <= norm_act.MAX_CHUNKS * norm_act.SPLIT_TILE
             and (layout == "nchw" or c > 1)]  # one channel is NCHW whatever the strides
    picks: dict[tuple, tuple] = {}
    for c, h in sizes:
        plan = norm_act.plan_launch(1, c, h * h, layout == "cl")
        threads = 32 * plan.num_warps
        tile = plan.block_hw * plan.block_c / threads
        scores = {"most": tile, "fewest": -tile}
        if plan.path == "split":
            scores["partials"] = next_pow2(plan.n_chunks) * plan.block_c / threads
        for what, score in scores.items():
            best = picks.get((plan.path, what))
            if best is None or score > best[0]:
                picks[(plan.path, what)] = (score, c, h)
    return [(f"{path} {what}", c, h) for (path, what), (_, c, h) in sorted(picks.items())]


def launcher_launches(dtypes, layouts) -> list[tuple]:
    """(dtype, layout, use, launch) for the extremes of what the ops' launchers choose,
    whatever the model, each with every operand its kernel takes: spade_modulate (gamma,
    beta, the (2C,) bias, a half-size residual, leaky ReLU) at each of _norm_extremes'
    plans, the split ones in both statistics; rgb_tail at two channels and one output, and
    at the widest channels its full tile holds (TILE) with MAX_OUTPUTS outputs, with a
    half-size shortcut; the transposed convolution's epilogue."""
    def meta(shape, dtype, layout="nchw"):
        return torch.empty(shape, device="meta", dtype=dtype).contiguous(
            memory_format=LAYOUTS[layout])

    def spade(dtype, layout, c, h, stats):
        x = meta((1, c, h, h), dtype, layout)
        res = meta((1, c, h // 2, h // 2), dtype, layout) if h > 1 else None
        return norm_act.spade_modulate(
            x, meta(x.shape, dtype, layout), meta(x.shape, dtype, layout), act="leaky_relu",
            impl="triton", bias=meta((2 * c,), dtype), residual=res, config=dict(stats=stats))

    def rgb(dtype, layout, c, k, h):
        return tail.rgb_tail(meta((1, c, h, h), dtype, layout), meta((k, c), dtype),
                             meta((k,), dtype), meta((1, c, h // 2, h // 2), dtype, layout),
                             impl="triton")

    def epilogue(dtype, layout, c=16):
        return conv_act.conv2d_relu(meta((1, c, 8, 8), dtype, layout), meta((c, c, 4, 4), dtype),
                                    meta((c,), dtype), stride=2, padding=1, transposed=True)

    calls = []  # (dtype, layout, use, call)
    for layout in layouts:
        for dtype in dtypes:
            for what, c, h in _norm_extremes(layout):
                for stats in ("lanes", "tiles") if what.startswith("split") else ("lanes",):
                    calls.append((dtype, layout, f"{what} {stats} 1x{c}x{h}x{h}",
                                  functools.partial(spade, dtype, layout, c, h, stats)))
            for c, k in ((2, 1), (tail.TILE, tail.MAX_OUTPUTS)):
                calls.append((dtype, layout, f"rgb_tail K={k} 1x{c}x8x8",
                              functools.partial(rgb, dtype, layout, c, k, 8)))
            calls.append((dtype, layout, "conv_transpose2d 1x16x8x8",
                          functools.partial(epilogue, dtype, layout)))
    out = []
    with torch.no_grad(), _LayoutAsOnCuda():
        for dtype, layout, use, call in calls:
            with recording() as got:
                call()
            out += [(dtype, layout, use, launch) for launch in got]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bridgegan.engine.targets",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dtypes", default="fp16,bf16", help="comma list (default: %(default)s)")
    p.add_argument("--layouts", default="cl,nchw", help="comma list of cl, nchw (default: %(default)s)")
    p.add_argument("--arch", type=int, default=ARCH,
                   help="CUDA compute capability x10 (default: %(default)s)")
    p.add_argument("--resolution", type=int, default=PAPER_RESOLUTION,
                   help="paper model preset (default: %(default)s)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--markdown", type=Path, help="also write the table as markdown here")
    p.add_argument("--launchers", action="store_true",
                   help="compile the launchers' extreme configurations (launcher_launches), "
                        "not the model's graph")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1" or triton_interpreted():
        p.error("run with TRITON_INTERPRET unset: interpreted kernels do not compile for a GPU")
    problem = toolchain_problem(args.arch)
    if problem:
        p.error(problem)
    from .placement import resolve_dtype
    from ..reference import BridgeGAN, BridgeGANConfig

    dtypes = [resolve_dtype(d, torch.device("cuda")) for d in args.dtypes.split(",")]
    layouts = args.layouts.split(",")
    if args.launchers:
        rows = compile_rows(launcher_launches(dtypes, layouts), args.arch)
    else:
        model = BridgeGAN(BridgeGANConfig.preset(args.resolution)).eval()
        rows = compile_table(model, dtypes, layouts, args.batch, args.arch)
    for r in rows:
        usage = (f"{r['registers']:>3} regs, {r['spill_bytes']} B spilled, "
                 f"{r['shared_bytes']} B shared" if not r["error"] else f"FAILED {r['error']}")
        print(f"{r['kernel']:<18} {r['dtype']:<5} {r['layout']:<5} {usage:<44} "
              f"{r['seconds']:4.1f} s  {r['config']}")
    if args.markdown:
        write_file_atomic(args.markdown, (markdown(rows, args.arch) + "\n").encode())
    bad = [r for r in rows if r["error"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} kernel specialisations compile for sm_{args.arch}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
