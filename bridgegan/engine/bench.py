"""`bridgegan bench`: a matrix of backend x dtype x batch x resolution x workload.

Each variant is timed after warm-up with device-side timing on GPU (CUDA events) and a
monotonic clock on CPU; rows give p20 / p50 / p80 latency, images per second, peak
memory, the ratio to the reference model measured in the same run (float32, and the
same dtype where measured, with the same cuDNN algorithm choice), the roofline share
(reference FLOPs per second over the measured matrix-product peak), and the wall seconds
of the first call at that shape (what a user waits for: torch.compile's compilation,
autotuning, cuDNN's algorithm search, CUDA-graph capture). Results go to CSV + JSON, and
a PNG plot.

On CUDA the engine runs with cuDNN's algorithm search on (``cudnn_tuning``); a variant
tagged ``heuristics`` runs with cuDNN's heuristic choice instead, for the A/B; a tag
``streams`` overlaps the trunk and the latent codes on CUDA side streams
(``engine.streams``); a tag ``-REWRITE`` turns one of the graph rewrites off
(``graph.Rewrites``), for its A/B.

Workloads: ``translate`` (label-based, the public API on device tensors), ``reference``
(one reference per source), ``strip`` and ``strip_nocache`` (one source's edit strip with
and without the trunk cache; its batch is the strip length).

Parity first: before a variant is timed, its engine translates a seeded batch of faces
(the smallest batch of the run: a shape it compiles or captures anyway) and the result is
held to its dtype's image limit against the float64 reference model
(``engine.parity.compare``, TF32 off: a float32 variant with CUDA graphs or compile keeps,
at that batch, what it built with TF32 off); a variant that fails gets a ``skipped`` row
that says so and no speed, and every measured row names its parity in the ``parity``
column; that call is the translate row's first call (``first_call_s``, its copies of
the CPU inputs to the device and back included).
``parity=False`` skips the check.

Without a variant list, a device's default table (DEFAULT_VARIANTS) is measured; on the
CPU it holds the reference, torch, onnxruntime and compile backends side by side. A
variant that cannot run here (a backend not installed, out of memory) is a ``skipped``
row whose note says why.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..files import write_file_atomic
from ..reference.config import BridgeGANConfig
from ..reference.model import BridgeGAN
from ..timing import synchronize, time_calls
from . import roofline
from .backends import AUTO, BACKENDS, BackendUnavailable
from .engine import Engine, resolve_dtype
from .graph import Rewrites
from .parity import compare, parity_inputs, reference_translation

FIELDS = ["what", "backend", "dtype", "batch", "resolution", "metric", "unit", "p50", "p20",
          "p80", "images_per_s", "peak_mem_mb", "vs_reference_fp32", "vs_reference_same_dtype",
          "roofline_share", "gflop_per_image", "first_call_s", "variant", "parity", "note",
          "device", "torch", "triton", "commit", "date"]
WORKLOADS = ("translate", "reference", "strip", "strip_nocache")
# The table measured when no variants are given, per device type. CPU: the backends side
# by side in float32 (issue 14 item 9), then torch and compile in bf16 channels_last
# (AMX CPUs: 2.1-2.7x and 5.5-7.2x the reference).
DEFAULT_VARIANTS = {
    "cpu": "reference:float32,torch:float32,onnxruntime:float32,compile:float32,torch:bf16:cl,"
           "compile:bf16:cl",
    "cuda": "reference:float32,torch:float32,torch:bf16:cl",
}


@dataclass(frozen=True)
class Variant:
    backend: str
    dtype: str
    channels_last: bool = False
    cuda_graphs: bool = False
    heuristics: bool = False  # cuDNN's heuristic algorithm choice, not its search
    streams: bool = False  # the trunk and the latent codes on CUDA side streams
    without: tuple[str, ...] = ()  # graph rewrites turned off, for an A/B of each

    TAGS = ("cl", "graphs", "heuristics", "streams")
    FORM = "backend:dtype[:cl][:graphs][:heuristics][:streams][:-REWRITE ...]"

    @property
    def name(self) -> str:
        flags = (self.channels_last, self.cuda_graphs, self.heuristics, self.streams)
        return "-".join([self.backend, self.dtype] + [t for t, on in zip(self.TAGS, flags) if on]
                        + [f"no_{r}" for r in self.without])

    @property
    def rewrites(self) -> Rewrites:
        return Rewrites(**{r: False for r in self.without})

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """backend:dtype[:cl][:graphs][:heuristics][:streams][:-REWRITE ...], e.g.
        triton:fp16:cl:graphs, or triton:fp16:cl:-transposed_up (that rewrite off)."""
        parts = text.split(":")
        tags = [p for p in parts[2:] if not p.startswith("-")]
        without = tuple(p[1:] for p in parts[2:] if p.startswith("-"))
        if len(parts) < 2 or any(p not in cls.TAGS for p in tags):
            raise ValueError(f"variant {text!r}: expected {cls.FORM}")
        if without and parts[0] == "reference":
            raise ValueError(f"variant {text!r}: the reference backend runs the unmodified "
                             "model; -REWRITE tags apply to the rewritten graph's backends")
        names = [f.name for f in fields(Rewrites)]
        for r in without:
            if r not in names:
                raise ValueError(f"variant {text!r}: unknown rewrite {r!r}; rewrites are "
                                 f"{', '.join(names)}")
        if parts[0] == AUTO:  # a row is one named backend (auto picks by the device)
            raise ValueError(f"variant {text!r}: {AUTO!r} is not a bench variant; name the "
                             f"backend, one of {', '.join(BACKENDS)}")
        if parts[0] not in BACKENDS:
            raise ValueError(f"variant {text!r}: unknown backend {parts[0]!r}; backends: "
                             f"{', '.join(BACKENDS)}")
        return cls(parts[0], parts[1], *(t in tags for t in cls.TAGS), without=without)


def default_variants(device: str | torch.device) -> list[Variant]:
    """The default table of a device type (DEFAULT_VARIANTS)."""
    return [Variant.parse(v) for v in DEFAULT_VARIANTS[torch.device(device).type].split(",")]


def environment(device: torch.device) -> dict:
    """device name and versions carried by every row."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    commit = os.environ.get("BRIDGEGAN_COMMIT", "")  # set where the copy has no .git
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                          capture_output=True, text=True,
                                          cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads")
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "commit": commit or "unknown", "date": dt.date.today().isoformat()}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS


def _workload_fn(eng: Engine, workload: str, batch: int, seed: int):
    cfg = eng.config
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1).to(eng.device)
    refs = (torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1).to(eng.device)
    ys = torch.randint(0, 2, (batch, cfg.n_attrs), generator=gen).float()
    noise = torch.randn(batch, cfg.noise_dim, generator=gen)
    if workload == "translate":
        return lambda: eng.translate(x, 1 - ys, noise=noise, source=ys), batch
    if workload == "reference":
        return lambda: eng.translate_reference(x, refs, source=ys, reference_labels=1 - ys), batch
    if workload in ("strip", "strip_nocache"):
        samples = max(batch - 1 - cfg.n_attrs, 0)
        n = 1 + cfg.n_attrs + samples
        cache = workload == "strip"
        return lambda: eng.edit_strip(x[:1], samples=samples, source=ys[:1], cache=cache), n
    raise ValueError(f"unknown workload {workload!r}; workloads: {', '.join(WORKLOADS)}")


def _flops_per_image(cfg: BridgeGANConfig, workload: str, n: int) -> float:
    if workload.startswith("strip"):
        return roofline.strip_flops(cfg, n, cached=True) / n  # useful work
    return roofline.workload_flops(cfg, workload)


def _skipped(what: str, v: Variant, batch: int | str, res: int, why: str, env: dict) -> dict:
    """The row of a variant (or one of its workloads) that could not be measured, and why."""
    return dict(what=what, backend=v.backend, dtype=v.dtype, batch=batch, resolution=res,
                metric="skipped", variant=v.name, note=why, **env)


def run_matrix(variants: list[Variant] | None, batches: list[int], resolutions: list[int],
               workloads: list[str], device: str = "cpu", checkpoint: str | None = None,
               warmup: int = 2, reps: int = 10, min_seconds: float = 0.0, quick_peaks: bool = False,
               config_overrides: dict | None = None, progress: bool = True,
               parity: bool = True) -> tuple[list[dict], dict]:
    """Measure every combination (``variants`` None: the device's default table); returns
    (rows, peaks). A variant that cannot run, or fails parity, gives one ``skipped`` row
    per resolution."""
    from tqdm import tqdm

    dev = torch.device(device)
    variants = variants or default_variants(dev)
    env = environment(dev)
    # roofline against the fastest matrix unit any variant uses (bf16 / fp16 on GPU)
    low = [v.dtype for v in variants if resolve_dtype(v.dtype, dev) != torch.float32]
    peak_dtype = resolve_dtype(low[0] if low and dev.type == "cuda" else "float32", dev)
    peaks = roofline.measure_peaks(dev, peak_dtype, quick=quick_peaks)
    peaks.update(env)
    rows: list[dict] = []
    combos = [(r, v) for r in resolutions for v in variants]
    bar = tqdm(total=len(combos) * len(workloads) * len(batches), disable=not progress,
               desc="bench", unit="row")
    for res in resolutions:
        if checkpoint:
            from ..reference.checkpoint import load_checkpoint

            model = load_checkpoint(checkpoint)
            if model.config.image_size != res:
                raise ValueError(f"{checkpoint} makes {model.config.image_size} px images; "
                                 f"--resolutions must be {model.config.image_size}")
        else:
            torch.manual_seed(res)
            model = BridgeGAN(BridgeGANConfig(image_size=res, **(config_overrides or {}))).eval()
        cfg = model.config
        if parity:
            inputs = parity_inputs(cfg, min(batches))
            want = reference_translation(model, dev, inputs)
        for v in variants:
            verdict = "not checked"
            first_calls = {}  # (workload, images) -> seconds of a first call made for parity
            try:
                eng = Engine(model, backend=v.backend, dtype=v.dtype, device=dev,
                             channels_last=v.channels_last, cuda_graphs=v.cuda_graphs,
                             cudnn_benchmark=False if v.heuristics else None, streams=v.streams,
                             rewrites=v.rewrites)
                if parity:
                    p = compare(eng, inputs, want)
                    first_calls[("translate", min(batches))] = p["seconds"]
                    verdict = (f"max abs {p['max_abs']:.1e}, PSNR {p['psnr_db']:.1f} dB "
                               f"({p['limit']})")
                    if not p["ok"]:
                        raise ValueError(f"parity failed against the float64 reference: "
                                         f"{verdict}; speed not reported")
            except (BackendUnavailable, RuntimeError, ValueError) as exc:
                rows.append(_skipped("all", v, "", res, str(exc), env))
                bar.update(len(workloads) * len(batches))
                continue
            sizes_done = set()  # (workload, images per call) already measured
            for workload in workloads:
                for batch in batches:
                    bar.set_postfix_str(f"{res}px {v.name} {workload} b{batch}")
                    fn, n = _workload_fn(eng, workload, batch, seed=batch)
                    if (workload, n) in sizes_done:  # strips shorter than 1 + A share one size
                        bar.update()
                        continue
                    sizes_done.add((workload, n))
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(dev)
                    try:
                        first = first_calls.pop((workload, n), None)
                        if first is None:
                            first = time.perf_counter()
                            fn()
                            synchronize(dev)
                            first = time.perf_counter() - first
                        ms = [1e3 * t for t in time_calls(fn, dev, warmup, reps, min_seconds)]
                    except torch.OutOfMemoryError:
                        rows.append(_skipped(workload, v, n, res, "out of memory", env))
                        bar.update()
                        continue
                    p20, p50, p80 = np.percentile(ms, [20, 50, 80])
                    flop = _flops_per_image(cfg, workload, n)
                    rows.append(dict(
                        what=workload, backend=v.backend, dtype=v.dtype, batch=n, resolution=res,
                        metric="latency", unit="ms", p50=round(p50, 4), p20=round(p20, 4),
                        p80=round(p80, 4), images_per_s=round(n / (p50 / 1e3), 2),
                        peak_mem_mb=round(_peak_mb(dev), 1),
                        roofline_share=round(flop * n / (p50 / 1e3) / peaks["matmul_flops"], 4),
                        gflop_per_image=round(flop / 1e9, 3), first_call_s=round(first, 3),
                        variant=v.name, parity=verdict, **env))
                    bar.update()
            del eng
    bar.close()
    _add_ratios(rows)
    return rows, peaks


def measured(rows: list[dict]) -> list[dict]:
    """The rows that hold a measurement (not ``skipped``)."""
    return [r for r in rows if r["metric"] == "latency"]


def _add_ratios(rows: list[dict]) -> None:
    def key(r):  # rows compared: same workload and size, same cuDNN algorithm choice
        return (r["what"], r["batch"], r["resolution"], "heuristics" in r["variant"].split("-"))

    ref = {(key(r), r["dtype"]): r["p50"] for r in measured(rows)
           if r["backend"] == "reference" and "-graphs" not in r["variant"]}
    fp32 = {"float32", "fp32"}
    for r in measured(rows):
        base = next((ref[(key(r), d)] for d in fp32 if (key(r), d) in ref), None)
        same = ref.get((key(r), r["dtype"]))
        r["vs_reference_fp32"] = round(base / r["p50"], 3) if base else ""
        r["vs_reference_same_dtype"] = round(same / r["p50"], 3) if same else ""


def write_results(rows: list[dict], peaks: dict, out: str | Path, title: str = "") -> list[Path]:
    """CSV + JSON + PNG plot of images/s against batch, one line per variant and workload."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k, "") for k in FIELDS} for r in rows)
    (out / "bench.json").write_text(json.dumps({"peaks": peaks, "rows": rows}, indent=1))
    plot(rows, out / "bench.png", title or f"bridgegan bench on {peaks.get('device', '?')}")
    return [out / "bench.csv", out / "bench.json", out / "bench.png"]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for r in measured(rows):
        groups.setdefault((r["what"], r["resolution"], r["variant"]), []).append(r)
    whats = sorted({(g[0], g[1]) for g in groups})
    fig, axes = plt.subplots(1, len(whats), figsize=(5.5 * len(whats), 4.2), squeeze=False)
    for ax, (what, res) in zip(axes[0], whats):
        for (w, r_, variant), rs in sorted(groups.items()):
            if (w, r_) != (what, res):
                continue
            rs = sorted(rs, key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rs], [r["images_per_s"] for r in rs], marker="o",
                    label=variant)
        ax.set(xscale="log", yscale="log", xlabel="batch (images per call)",
               ylabel="images / s", title=f"{what} @ {res}x{res}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_file_atomic(path, buf.getvalue())


def format_table(rows: list[dict]) -> str:
    head = (f"{'what':14s} {'variant':24s} {'res':>4s} {'batch':>5s} {'p50 ms':>9s} "
            f"{'img/s':>9s} {'x ref32':>8s} {'x ref':>7s} {'roof':>6s} {'mem MB':>8s} "
            f"{'1st s':>7s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = f"{r['what']:14s} {r['variant']:24s} {r['resolution']:>4d} {r['batch']!s:>5s} "
        if r["metric"] == "skipped":
            lines.append(f"{lead} skipped: {r['note']}")
            continue
        lines.append(
            f"{lead}{r['p50']:>9.3f} {r['images_per_s']:>9.1f} {str(r['vs_reference_fp32']):>8s} "
            f"{str(r['vs_reference_same_dtype']):>7s} {r['roofline_share']:>6.3f} "
            f"{r['peak_mem_mb']:>8.0f} {r['first_call_s']:>7.2f}")
    return "\n".join(lines)
