"""`bridgegan bench`: a matrix of backend x dtype x batch x resolution x workload.

Each variant is timed after warm-up with device-side timing on GPU (CUDA events) and a
monotonic clock on CPU; rows give p20 / p50 / p80 latency, images per second, peak
memory, the ratio to the reference model measured in the same run (float32, and the
same dtype where measured, with the same cuDNN algorithm choice), the roofline share
(reference FLOPs per second over the matrix-product peak measured in the row's dtype), and
the wall seconds of the first call at that shape (what a user waits for: torch.compile's
compilation, autotuning, cuDNN's algorithm search, CUDA-graph capture) and of building the
variant's engine (``build_s``: the graph rewrite, an ONNX export, a TensorRT plan), both
with whatever caches the machine holds (inductor's, Triton's, the ONNX and plan caches: a
first run on a machine waits longer). At each resolution every variant is built and
checked first; then each workload and call size is one row per variant, timed in
alternation: ``rounds`` rounds, each variant's share of the timed calls in each, the
order rotated each round and reversed every other one (``_cell_rows``), so that the
ratios between variants hold no drift of the machine over the run (clocks, heat, other
load): ``spread``, a row's largest round median over its smallest, is what remains.
Results go to CSV + JSON, and a PNG plot (``bench_results``).

Columns: ``dtype`` is torch's name of the dtype (``bf16`` and ``bfloat16`` are one dtype,
``auto`` is resolved), and the ratio columns join on it. Their baseline is the plain
reference variant of that dtype (no ``cl`` / ``graphs`` / ``streams`` tag); a table with
two of them for one dtype and cuDNN choice is refused. ``peak_mem_mb``: on CUDA, what the
variant's build left allocated (weights, rewritten constants), the row's inputs and what
its first call keeps (that call's own peak is not counted; its time is ``first_call_s``;
where parity made that call, before the rows, what it kept is not counted either),
plus the most its warm-up and timed calls allocate above that: the variant's own, though
the other variants' engines are held beside it; empty on the CPU, where the only cheap
figure (ru_maxrss) is the process's running maximum, not the row's, and for CUDA-graph
rows, whose activations live in the graph's private pool, allocated once at capture:
replays allocate nothing, so the figure would be the weights and the static inputs and
outputs only, and for the backends that run exported graphs (onnxruntime, TensorRT), whose
weights and activations their own allocators hold, out of torch's sight. The row's inputs
are the workload's only (a reference batch for reference rows alone).
``device`` names the GPU, or the CPU model with its matrix ISA extensions
(``machine.CPU_FLAGS``) and torch's thread count; ``commit`` ends in ``-dirty`` when the
working tree differs from it.
``samples``: the timed calls the row's percentiles come from, over all its rounds
(bench.json's ``timer`` holds the warm-up, reps, min_seconds and rounds asked for).

Precision: every variant is built, checked and timed with TF32 off (``torch_flags.no_tf32``,
as ``engine.parity`` checks it), so a float32 row is timed in float32, the precision its
parity certifies, and a float32 variant with CUDA graphs or compile captures or compiles
every batch with TF32 off.

On CUDA the engine runs with cuDNN's algorithm search on (``torch_flags``); a variant
tagged ``heuristics`` runs with cuDNN's heuristic choice instead, for the A/B; a tag
``streams`` overlaps the trunk and the latent codes on CUDA side streams
(``engine.streams``); a tag ``-REWRITE`` turns one of the graph rewrites off
(``graph.Rewrites``), for its A/B.

Workloads: ``translate`` (label-based, the public API on device tensors), ``reference``
(one reference per source), ``samples`` (BENCH_SAMPLES noise samples of each source's
label edit, ``translate_samples``: the trunk once per source; its batch is the images per
call, batch // BENCH_SAMPLES sources, at least one), ``strip`` and ``strip_nocache`` (one
source's edit strip with and without the trunk cache; its batch is the strip length,
clamped to what edit_strip makes: the reconstruction and the flips, up to MAX_SAMPLES
samples more).

Parity first: before a variant is timed, its engine translates a seeded batch of random
images (the smallest batch of the run: a shape it compiles or captures anyway) and the result is
held to its dtype's image limit against the float64 reference model
(``engine.parity.compare``); a variant that fails gets a ``skipped`` row that says so and
no speed, and every measured row names its parity in the ``parity`` column (a row of
another workload or size says which call the verdict was made on); that call is
the translate row's first call (``first_call_s``, its copies of the CPU inputs to the
device and back included). ``parity=False`` skips the check.

Without a variant list, a device's default table (``variants.DEFAULT_VARIANTS``) is
measured; on the CPU it holds the reference, torch, onnxruntime and compile backends side
by side. A
variant or row that cannot run here (a backend not installed, out of memory, any error
its calls raise) is a ``skipped`` row whose note says why, and the other rows go on (the
variants of a resolution are held at once: a table the device's memory cannot hold, run in
parts). Given an output folder (``run_matrix(out=...)``), the rows go to its
bench.partial.csv as soon as they are measured (header first, flushed: a variant skipped
at its build at once, the others' when their workload and size has been timed for every
variant), so a run killed part-way keeps what it measured beside the last complete table;
``bench_results.write_results`` then writes the final CSV (with the ratio columns) and
JSON atomically and removes the partial file.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import threads
from ..progress import bar as progress_bar
from ..reference.checkpoint import load_checkpoint, read_config
from ..reference.config import BridgeGANConfig
from ..reference.model import BridgeGAN
from ..timing import p50_p20_p80, synchronize, time_calls
from ..torch_flags import no_tf32
from . import roofline
from .backends import REGISTRY, BackendUnavailable
from .bench_results import add_ratios, is_baseline, streamed
from .engine import Engine
from .placement import backend_dtype, engine_device
from .machine import environment, libraries
from .options import BENCH_MIN_SECONDS, BENCH_ROUNDS, BENCH_SAMPLES, MAX_SAMPLES, WORKLOADS
from .parity import compare, parity_inputs, reference_translation
from .variants import Variant, check_once, default_variants


def _allocated(device: torch.device) -> int:
    """CUDA: the bytes allocated now (after the queued work); 0 on the CPU."""
    if device.type != "cuda":
        return 0
    synchronize(device)
    return torch.cuda.memory_allocated(device)


def _sources(workload: str, batch: int) -> int:
    """The source images of a ``workload`` call asked for at ``batch``: a samples call
    makes BENCH_SAMPLES images of each, a strip is one source's."""
    if workload in ("translate", "reference"):
        return batch
    return max(1, batch // BENCH_SAMPLES) if workload == "samples" else 1


def _strip_samples(cfg: BridgeGANConfig, batch: int) -> int:
    """A strip's noise samples at ``batch``: its length clamped to what edit_strip makes,
    from the reconstruction and the flips alone to MAX_SAMPLES samples more."""
    return min(max(batch - 1 - cfg.n_attrs, 0), MAX_SAMPLES)


def _images(cfg: BridgeGANConfig, workload: str, batch: int) -> int:
    """The images a ``workload`` call asked for at ``batch`` makes (a row's batch)."""
    if workload.startswith("strip"):
        return 1 + cfg.n_attrs + _strip_samples(cfg, batch)
    return _sources(workload, batch) * (BENCH_SAMPLES if workload == "samples" else 1)


def _workload_fn(eng: Engine, workload: str, batch: int, seed: int):
    """A call of ``workload`` at ``batch`` (``_images`` says what it makes) on seeded
    inputs."""
    cfg = eng.config
    gen = torch.Generator().manual_seed(seed)
    shape = (_sources(workload, batch), 3, cfg.image_size, cfg.image_size)
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(eng.device)
    refs = torch.rand(shape, generator=gen) * 2 - 1  # drawn alike for every workload
    # labels and noise in host memory, as callers pass them: the engine checks them there
    # (a device tensor would be copied back for its checks)
    ys = torch.randint(0, 2, (shape[0], cfg.n_attrs), generator=gen).float()
    noise = torch.randn(shape[0], cfg.noise_dim, generator=gen)
    if workload == "translate":
        return lambda: eng.translate(x, 1 - ys, noise=noise, source=ys)
    if workload == "reference":
        refs = refs.to(eng.device)  # on the device for this workload only: peak memory
        return lambda: eng.translate_reference(x, refs, source=ys, reference_labels=1 - ys)
    if workload == "samples":
        # seed None: one randn for the noise (seeds cost a generator each per call; the
        # translate rows get their noise before the call)
        return lambda: eng.translate_samples(x, 1 - ys, BENCH_SAMPLES, seed=None, source=ys)
    # strip or strip_nocache (run_matrix refuses other names)
    samples, cache = _strip_samples(cfg, batch), workload == "strip"
    return lambda: eng.edit_strip(x[:1], samples=samples, source=ys[:1], cache=cache)


def _check_table(variants: list[Variant], dev: torch.device) -> None:
    """Refuse a table with two baselines for one dtype and cuDNN choice (e.g.
    reference:fp16 and reference:float16), which would make the ratios ambiguous; and on
    CUDA one that mixes ``heuristics`` rows with searched ones: cuDNN keeps the plan it
    first chose for a convolution in a cache (PyTorch's, one per thread: bench's rows run
    on one) whose key has no search flag, so the later rows would run the earlier rows'
    plans."""
    kinds = {v.heuristics for v in variants}
    if dev.type == "cuda" and len(kinds) > 1:
        raise ValueError("run the :heuristics variants in a bench of their own: cuDNN's plan "
                         "cache has no search flag in its key, so beside searched variants "
                         "they would run the plans the search chose")
    seen: dict[tuple, str] = {}
    for v in variants:
        if is_baseline(v.name):
            key = (v.resolved_dtype(dev), v.heuristics)
            if key in seen:
                raise ValueError(f"variants {seen[key]} and {v.name} are both the plain "
                                 f"reference in {key[0]}, the baseline of the ratio "
                                 "columns: keep one")
            seen[key] = v.name


def _why(exc: Exception) -> str:
    """A skipped row's note: the project's own refusals as they read, others typed."""
    if isinstance(exc, torch.OutOfMemoryError):
        return "out of memory"
    if isinstance(exc, (BackendUnavailable, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _check_resolutions(resolutions: list[int], checkpoint: str | None,
                       config_overrides: dict | None) -> None:
    """Refuse, before anything is measured or written (``out``'s partial CSV), a resolution
    the checkpoint does not make or no configuration takes."""
    if checkpoint:
        size = read_config(checkpoint).image_size
        if any(res != size for res in resolutions):
            raise ValueError(f"{checkpoint} makes {size} px images; --resolutions must be {size}")
        return
    for res in resolutions:
        try:
            BridgeGANConfig(image_size=res, **(config_overrides or {}))
        except ValueError as exc:
            raise ValueError(f"resolution {res}: {exc}") from None


def _model(res: int, loaded: BridgeGAN | None, config_overrides: dict | None) -> BridgeGAN:
    """The checkpoint ``loaded`` (``_check_resolutions``: it makes ``res`` px images), or
    seeded weights at ``res``."""
    if loaded is not None:
        return loaded
    torch.manual_seed(res)
    return BridgeGAN(BridgeGANConfig(image_size=res, **(config_overrides or {}))).eval()


@dataclass
class _Ready:
    """A variant's engine, built and checked, with what its rows carry."""
    engine: Engine
    base: dict  # the columns every row of the variant carries, build_s included
    verdict: str  # parity's
    checked: tuple[str, int] | None  # the (workload, images) call parity made
    first_calls: dict  # {(workload, images): seconds} of the calls parity made
    resident: int  # CUDA bytes its build left allocated (weights, rewritten constants)
    cuda_graphs: bool


def _ready(model: BridgeGAN, v: Variant, dev: torch.device, case, base: dict) -> _Ready:
    """The variant's engine, its build timed, checked against ``case`` (inputs, the float64
    reference's output; None: not checked). Raises ValueError when parity fails."""
    before = _allocated(dev)
    t0 = time.perf_counter()
    eng = v.engine(model, dev)
    synchronize(dev)
    base = dict(base, build_s=round(time.perf_counter() - t0, 3))
    resident = _allocated(dev) - before
    if case is None:
        return _Ready(eng, base, "not checked", None, {}, resident, v.cuda_graphs)
    inputs, want = case
    p = compare(eng, inputs, want)
    verdict = f"max abs {p['max_abs']:.1e}, PSNR {p['psnr_db']:.1f} dB ({p['limit']})"
    if not p["ok"]:
        raise ValueError(f"parity failed against the float64 reference: {verdict}; "
                         "speed not reported")
    call = ("translate", len(inputs[0]))
    return _Ready(eng, base, verdict, call, {call: p["seconds"]}, resident, v.cuda_graphs)


def _row_parity(verdict: str, checked: tuple[str, int] | None, call: tuple[str, int]) -> str:
    """The ``parity`` column of a row: the verdict as it is for the call parity made; for
    any other workload or size (another program, graph bucket or compiled shape) the
    verdict says which call it was made on, so that it does not read as this row's."""
    if checked is None or call == checked:
        return verdict
    return f"{verdict}; checked on {checked[0]} at batch {checked[1]}, not this call"


def _first_call(fn, dev: torch.device) -> float:
    """Seconds of one call of ``fn``, its queued work included."""
    t0 = time.perf_counter()
    fn()
    synchronize(dev)
    return time.perf_counter() - t0


def _latency(ms: list[float], n: int, flop: float, first: float, peak: float | str,
             peak_flops: float) -> dict:
    """The measured columns of a row whose calls of ``n`` images (``flop`` per image) took
    ``ms`` milliseconds each; its roofline share is over ``peak_flops``, the matrix peak in
    the row's dtype."""
    p50, p20, p80 = p50_p20_p80(ms)
    per_s = n / (p50 / 1e3)
    return dict(metric="latency", unit="ms", p50=round(p50, 4), p20=round(p20, 4),
                p80=round(p80, 4), samples=len(ms), images_per_s=round(per_s, 2),
                peak_mem_mb=peak,
                roofline_share=round(flop * per_s / peak_flops, 4),
                gflop_per_image=round(flop / 1e9, 3), first_call_s=round(first, 3))


def _cell_rows(ready: list[_Ready], workload: str, batch: int, dev: torch.device,
               timer: dict, rounds: int, peaks: dict) -> list[dict]:
    """One row per ready variant for ``workload`` at ``batch``: each variant's first call
    (unless parity made it), then ``rounds`` rounds in which every variant runs its share of
    the timed calls (ceil(reps / rounds) calls and min_seconds / rounds a round; the warm-up
    calls before the first round, one more before each later one: the other variants'
    calls took the caches), the order rotated each round and reversed every other one (no
    variant always first, and none always after the same one where there are more than
    two). The variants of a row are so timed in alternation, seconds apart: their ratios
    do not hold the machine's drift over a run. A variant whose calls raise gets a
    ``skipped`` row and leaves the rotation."""
    cfg = ready[0].engine.config
    n = _images(cfg, workload, batch)
    rows = [dict(r.base, what=workload, batch=n) for r in ready]
    fns, first, held, ms, extra = {}, {}, {}, {}, {}
    for i, r in enumerate(ready):
        before = _allocated(dev)
        try:
            fns[i] = _workload_fn(r.engine, workload, batch, seed=batch)
            made = r.first_calls.pop((workload, n), None)
            first[i] = _first_call(fns[i], dev) if made is None else made
        except Exception as exc:
            rows[i].update(metric="skipped", note=_why(exc))
            fns.pop(i, None)
        held[i] = _allocated(dev) - before  # its inputs, and what its first call keeps
    share = dict(reps=-(-timer["reps"] // rounds), min_seconds=timer["min_seconds"] / rounds)
    for k in range(rounds):
        live = list(fns)
        turn = k % max(len(live), 1)
        order = live[turn:] + live[:turn]
        for i in order[::-1] if k % 2 else order:
            before = _allocated(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            try:
                times = time_calls(fns[i], dev, warmup=timer["warmup"] if k == 0
                                   else min(timer["warmup"], 1), **share)
            except Exception as exc:
                rows[i].update(metric="skipped", note=_why(exc))
                del fns[i]
                continue
            if dev.type == "cuda":
                extra[i] = max(extra.get(i, 0), torch.cuda.max_memory_allocated(dev) - before)
            ms.setdefault(i, []).append([1e3 * t for t in times])
    for i in fns:
        r, medians = ready[i], [float(np.median(m)) for m in ms[i]]
        # CUDA: the engine's own memory, its inputs and the most its calls allocate above
        # what was there before them (the other variants' engines are held beside it); not
        # for graph rows, whose activations live in the graph's pool, nor for exported
        # graphs' backends, whose own allocators torch does not see
        peak = ("" if dev.type != "cuda" or r.cuda_graphs or REGISTRY[r.engine.backend].exported
                else round((r.resident + held[i] + extra[i]) / 2 ** 20, 1))
        flops = roofline.workload_flops(cfg, workload, n, BENCH_SAMPLES)
        rows[i].update(_latency([t for m in ms[i] for t in m], n, flops, first[i], peak,
                                peaks["matmul_flops_by_dtype"][r.base["dtype"]]),
                       spread=round(max(medians) / min(medians), 3) if rounds > 1 else "",
                       parity=_row_parity(r.verdict, r.checked, (workload, n)))
    return rows


def roofline_peaks(variants: list[Variant], dev: torch.device, quick: bool = False,
                   measure=None) -> dict:
    """The roofline's peaks: the matrix product measured in each dtype of the table
    (``matmul_flops_by_dtype``; a row's share is over its own dtype's, so that it does not
    depend on the other rows of the table), the fastest one as the headline
    (``matmul_dtype``; bf16 on a CPU with AMX is several times float32, without it
    slower). ``measure``: roofline's ``measure_peaks`` (a stand-in in the tests)."""
    measure = measure or roofline.measure_peaks
    dtypes = list(dict.fromkeys(backend_dtype(v.backend, v.dtype, dev) for v in variants))
    each = {dtype: measure(dev, dtype, quick=quick) for dtype in dtypes}
    best = max(each.values(), key=lambda p: p["matmul_flops"])
    return dict(best, matmul_flops_by_dtype={p["matmul_dtype"]: p["matmul_flops"]
                                             for p in each.values()})


def run_matrix(variants: list[Variant] | None, batches: list[int], resolutions: list[int],
               workloads: list[str], device: str = "cpu", checkpoint: str | None = None,
               warmup: int = 2, reps: int = 10, min_seconds: float = BENCH_MIN_SECONDS,
               rounds: int = BENCH_ROUNDS, quick_peaks: bool = False,
               config_overrides: dict | None = None, progress: bool = True,
               parity: bool = True, out: str | Path | None = None) -> tuple[list[dict], dict]:
    """Measure every combination (``variants`` None: the device's default table); returns
    (rows, peaks). At each resolution every variant is built and checked first (held at
    once: their weights, caches and graph pools), then each workload and size is timed
    for all of them in alternation, over ``rounds`` rounds (``_cell_rows``). A variant
    that cannot run, or fails parity, gives one ``skipped`` row per resolution. ``out``: a
    folder whose bench.partial.csv gets the rows as they are measured
    (``bench_results.write_results`` then writes the rows and their ratios)."""
    dev = engine_device(device)
    variants = variants or default_variants(dev)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload {unknown[0]!r}; workloads: {', '.join(WORKLOADS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    # one row per (variant, batch): plot() refuses a line through two rows at one batch,
    # so repeats are refused here, before anything is timed
    for what, seq in (("variant", [v.name for v in variants]), ("batch", batches),
                      ("resolution", resolutions), ("workload", workloads)):
        check_once(what, seq)
    _check_table(variants, dev)
    _check_resolutions(resolutions, checkpoint, config_overrides)
    # a damaged checkpoint refused before any file or progress
    loaded = load_checkpoint(checkpoint) if checkpoint else None
    # the machine's load, for whoever reads the numbers: a 1-minute average, so the start's
    # still holds the minute before (a previous run's), the end's this run's own threads
    load = {"load_1min_at_start": round(threads.load_average(), 2), "cores": threads.cores()}
    env = environment(dev)
    with no_tf32():  # the float32 peak in float32, as the rows are timed (not TF32's)
        peaks = roofline_peaks(variants, dev, quick=quick_peaks)
    peaks.update(env)
    timer = dict(warmup=warmup, reps=reps, min_seconds=min_seconds)
    peaks["timer"] = dict(timer, rounds=rounds)  # how each row's timed calls were made
    rows: list[dict] = []
    bar = progress_bar(total=len(resolutions) * (len(variants) + len(workloads) * len(batches)),
                       show=progress, desc="bench", unit="step")
    # timed as parity checked it: float32 means float32; the bar closed before an error's
    # line
    with bar, streamed(out) as stream, no_tf32():
        for res in resolutions:
            model = _model(res, loaded, config_overrides)
            case = None
            if parity:
                inputs = parity_inputs(model.config, min(batches))
                case = inputs, reference_translation(model, dev, inputs)
            ready = []
            for v in variants:
                bar.set_postfix_str(f"{res}px building {v.name}")
                base = dict(backend=v.backend, dtype=v.resolved_dtype(dev), resolution=res,
                            variant=v.name, **env)
                try:
                    ready.append(_ready(model, v, dev, case, base))
                except Exception as exc:
                    rows.append(dict(base, what="all", batch="", metric="skipped",
                                     note=_why(exc)))
                    stream(rows[-1])
                bar.update()
            sizes_done = set()  # strips clamped to one length share it
            for workload in workloads:
                for batch in batches:
                    n = _images(model.config, workload, batch)
                    if ready and (workload, n) not in sizes_done:
                        sizes_done.add((workload, n))
                        bar.set_postfix_str(f"{res}px {workload} b{n}")
                        for row in _cell_rows(ready, workload, batch, dev, timer, rounds, peaks):
                            rows.append(row)
                            stream(row)
                    bar.update()
            del ready  # this resolution's engines freed before the next one's
    peaks.update(load, load_1min_at_end=round(threads.load_average(), 2),
                 libraries=libraries(dev))
    add_ratios(rows)
    return rows, peaks
