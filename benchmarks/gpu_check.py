#!/usr/bin/env python
"""The one-shot GPU check (run through benchmarks/gpu_check.sh OUTDIR [--dry-run]).

Stages, each a subprocess with its own time limit so one failure or stall cannot sink the
rest, all within five minutes on an H100:
  1. kernel parity on the GPU (bridgegan.kernels.parity)
  2. backend parity on the GPU (bridgegan parity --backends), 128x128 paper model, batch 3
     (the CUDA-graph rows padded to their bucket of 4)
  3. kernel speed (benchmarks/bench_kernels.py): GB/s vs copy bandwidth, vs eager; then
     its launch-config sweep in channels_last fp16 (``sweep_kernels``: wider channel
     tiles among them), the data for the >= 75% of copy bandwidth target
  4. the engine speed table (bridgegan bench) at 128x128, batch 1, 8, 64, 256, with the
     trunk and the latent codes on side streams as an A/B (``streams`` rows)
  5. the edit strip with and without the trunk cache, and noise samples (the trunk once per source)
  6. where the time goes (benchmarks/profile_engine.py): kernel table, kernels per forward
     and stage times of the reference, the engine with round 2's switchable rewrites off
     (before) and the engine (after), in fp16 at batch 1 and 64
  7. the engine at batch 64 with each graph rewrite of round 2 off in turn (``ablation``:
     ``-REWRITE`` bench tags), in a device call of its own (``--stages ablation``)
  8. torch.compile (max-autotune, under the engine's CUDA graphs) at batch 64: autotuning
     takes minutes, so it is not in the default run but asked for in a device call of its
     own (``--stages bench_compile``); inductor's and Triton's caches live in the repo's
     .cache/ (gitignored), which a lent machine's run carries between calls; the row's
     first_call_s is the compile time with the caches the earlier calls left (a user's
     first run compiles from scratch)
  9. the test suite's GPU-only tests (``gpu_tests``: pytest, the cells CPU runs skip for
     want of a GPU), asked for like stage 8
The engine rows include an A/B of cuDNN's algorithm search (``heuristics`` rows: off) for
the reference and the engine, so that the ratio between them stays fair either way. Those
rows run in a process of their own (``bench_heuristics``): cuDNN keeps the plan it first
chose for a convolution in a cache (one per thread; bench runs its rows on one) keyed
without the search flag, so in bench_engine's process they would replay the plans the
search rows chose.
--stages NAME,... runs only those stages. Writes into OUTDIR, anew after each stage (a run
stopped by the device's limit keeps what its finished stages measured): gpu_check.json
(every stage's rows and status), bench.csv (engine rows), bench.png, kernels.csv,
profile.csv and profile.md; gpu_check.log as the stages print. --dry-run runs the same
stages at tiny sizes on the CPU with no time limits (CI runs it, so the script cannot rot,
on machines of any speed).
A copy of the tree without .git (a lent machine) records the commit given as
BRIDGEGAN_COMMIT=<hash>.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET_S = 300  # one run; each stage gets at most what is left
ENGINE_VARIANTS = ("reference:float32,reference:fp16,torch:fp16:cl,"
                   "triton:fp16:cl,triton:fp16:cl:graphs,triton:fp16:cl:graphs:streams,"
                   "triton:fp16:graphs,triton:bf16:cl,triton:bf16:cl:graphs")
# cuDNN's heuristic choice, in a process of its own: cuDNN's plan cache (per thread, and
# bench's rows share one; its key has no benchmark flag) would otherwise hand these rows
# the search's plans
HEURISTICS_VARIANTS = "reference:fp16:heuristics,triton:fp16:cl:graphs:heuristics"
# triton:fp16:graphs = NCHW (the kernels' best layout)
# the engine at batch 64 with each graph rewrite of round 2 off in turn (its A/B), and
# batch_hidden (its split hidden slices are copied before the gamma/beta convolutions)
ABLATION = ",".join(["triton:fp16:cl:graphs"] + [
    f"triton:fp16:cl:graphs:-{r}" for r in ("transposed_up", "kernel_bias", "fold_labels",
                                             "fused_relu", "fused_tail", "fused_residual",
                                             "shortcut_bias",
                                             "low_res_shortcut", "batch_hidden")])
OWN_CALL = ("ablation", "bench_compile", "gpu_tests")  # run only when named in --stages
# the files holding the suite's tests marked gpu (CPU runs skip them, naming the GPU):
# every API call against float64 on CUDA, CUDA graphs and streams, the engine's GPU paths,
# cuDNN's fused convolution over poisoned memory, TensorRT (only its test from
# test_export.py, whose module needs onnx)
GPU_TESTS = ["tests/test_parity_matrix.py", "tests/test_engine.py", "tests/test_training.py",
             "tests/test_conv_act.py",
             "tests/test_export.py::test_tensorrt_plan_matches_the_reference"]
CACHE = ROOT / ".cache"  # inductor and Triton caches, carried between device calls
PROGRESS = re.compile(r"\|\s*\d+/\d+ \[")  # a tqdm bar's refresh ("| 2/3 [00:01<..."): not printed


def stages(work: Path, dry: bool) -> list[tuple[str, list[str], int]]:
    py = sys.executable
    cli = [py, "-m", "bridgegan.cli"]
    if dry:
        dev, res, batches = "cpu", "64", "1,2"
        reps = ["--reps", "1", "--warmup", "0", "--min-seconds", "0"]
        variants = "reference:float32,torch:float32,torch:bf16:cl"
    else:
        # bench's default --min-seconds (0.2 s of timed calls a row: batch 1 under CUDA
        # graphs ~150 calls at the 1.35 ms of results/h100-2026-11-26/bench.csv)
        dev, res, batches, reps = "cuda", "128", "1,8,64,256", ["--reps", "10", "--warmup", "2"]
        variants = ENGINE_VARIANTS
    out = [
        ("parity_ops", [py, "-m", "bridgegan.kernels.parity", "--device", dev,
                        "--json", str(work / "parity_ops.json")] + (["--quick"] if dry else []),
         70),  # 43 s on the H100 before the rgb_tail rows (12 more compilations)
        ("parity_backends", cli + ["parity", "--backends", "--device", dev, "--json",
                                   str(work / "parity_backends.json")]
         # batch 3: the CUDA-graph rows run padded to their bucket of 4
         + (["--resolution", "64", "--batch", "1"] if dry else ["--batch", "3"]), 45),
        ("bench_kernels", [py, str(ROOT / "benchmarks" / "bench_kernels.py"), "--out",
                           str(work / "kernels")] + (["--dry-run"] if dry else ["--quick"]),
         50),  # 7 s on the H100 before the triton+res / eager+res rows and their compilations
        ("sweep_kernels", [py, str(ROOT / "benchmarks" / "bench_kernels.py"), "--out",
                           str(work / "sweep"), "--sweep", "--quick", "--dtype", "fp16",
                           "--layout", "channels_last"] + (["--dry-run"] if dry else []), 60),
        ("bench_engine", cli + ["bench", "--device", dev, "--variants", variants, "--batches",
                                batches, "--resolutions", res, "--workloads", "translate",
                                "--out", str(work / "engine")] + reps, 100),
        ("bench_heuristics", cli + ["bench", "--device", dev, "--variants",
                                    "reference:float32:heuristics,torch:float32:heuristics"
                                    if dry else HEURISTICS_VARIANTS, "--batches", batches,
                                    "--resolutions", res, "--workloads", "translate",
                                    "--out", str(work / "heuristics")] + reps, 40),
        ("bench_strip", cli + ["bench", "--device", dev, "--variants",
                               "reference:float32,torch:float32" if dry else
                               "reference:fp16,triton:fp16:cl", "--batches", "22" if dry else "32",
                               "--resolutions", res, "--workloads", "strip,strip_nocache,samples",
                               "--out", str(work / "strip")] + reps, 25),
        ("profile", [py, str(ROOT / "benchmarks" / "profile_engine.py"), str(work / "profile"),
                     "--device", dev] + (["--variants", "reference:float32,torch:float32",
                                          "--batches", "1", "--resolution", "64", "--calls", "1"]
                                         if dry else ["--resolution", res]), 40),
    ]
    out.append(("ablation", cli + ["bench", "--device", dev, "--variants",
                                   "torch:float32,torch:float32:-transposed_up" if dry else ABLATION,
                                   "--batches", "1" if dry else "64", "--resolutions", res,
                                   "--workloads", "translate", "--out", str(work / "ablation")]
                # ten variants, 0.2 s of calls a row each: the stage near a minute
                + (reps if dry else ["--reps", "5", "--warmup", "1"]), 100))
    # -m gpu: the tests marked so (a CPU run collects and skips them)
    out.append(("gpu_tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              "-m", "gpu", *(str(ROOT / t) for t in GPU_TESTS)], 240))
    compile_variants = "compile:float32" if dry else "triton:fp16:cl:graphs,compile:fp16:cl:graphs"
    out.append(("bench_compile", cli + ["bench", "--device", dev, "--variants", compile_variants,
                                        "--batches", "1" if dry else "64", "--resolutions", res,
                                        "--workloads", "translate", "--out", str(work / "compile")]
                + reps, BUDGET_S))
    return out


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    p.add_argument("--stages", help="comma-separated stage names to run (default: all but "
                   f"{', '.join(OWN_CALL)})")
    args = p.parse_args(argv)
    names = [name for name, _, _ in stages(Path("work"), args.dry_run)]
    wanted = args.stages.split(",") if args.stages else [n for n in names if n not in OWN_CALL]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(names)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        return _run(stages(work, args.dry_run), wanted, work, out, args.dry_run)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(plan, wanted: list[str], work: Path, out: Path, dry_run: bool) -> int:
    """Run the wanted stages of plan in work, gathering the results into out after each
    stage (a run stopped by the device's limit keeps what its finished stages measured)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1", TORCHINDUCTOR_CACHE_DIR=str(CACHE / "inductor"),
               TRITON_CACHE_DIR=str(CACHE / "triton"))
    env.pop("TRITON_INTERPRET", None)
    results, t_all = [], time.perf_counter()
    log_path = out / "gpu_check.log"
    log_path.write_text("")
    with open(log_path, "a") as log:  # appended to by the stages themselves, as they print
        for name, cmd, limit in (s for s in plan if s[0] in wanted):
            t0 = time.perf_counter()
            # the limits are for the GPU: a dry run's speed is the CI machine's business
            limit = None if dry_run else int(min(limit, max(30, BUDGET_S - (t0 - t_all))))
            print(f"== {name} (limit {limit or 'none'} s)", flush=True)
            log.write(f"== {name}: {' '.join(cmd)}\n")
            log.flush()
            start = log_path.stat().st_size
            # a session of its own: a stage past its limit is stopped with its children
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                status = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = "timeout"
            with open(log_path, "rb") as f:
                f.seek(start)
                text = f.read().decode(errors="replace")
            seconds = round(time.perf_counter() - t0, 1)
            log.write(f"\n== {name}: status {status}, {seconds} s\n")
            log.flush()
            tail = "\n".join(l for l in text.splitlines() if not PROGRESS.search(l))
            print(tail[-2500:])
            print(f"== {name}: status {status} in {seconds} s", flush=True)
            results.append({"stage": name, "status": status, "seconds": seconds})
            try:
                _gather(results, work, out, round(time.perf_counter() - t_all, 1))
            except Exception as exc:  # a report that cannot be made must not stop the stages
                print(f"== gathering the results after {name} failed: {exc!r}", flush=True)
                results.append({"stage": f"gather after {name}", "status": repr(exc),
                                "seconds": 0.0})
    print(f"gpu_check finished in {round(time.perf_counter() - t_all, 1)} s: " +
          ", ".join(f"{r['stage']}={r['status']}" for r in results))
    return int(any(r["status"] != 0 for r in results))


def _gather(results: list[dict], work: Path, out: Path, seconds: float) -> None:
    """The stages' results so far into out: gpu_check.json, bench.csv and .png, kernels.csv,
    profile.csv and .md (a lent machine returns at most eight files, two folders deep)."""
    from bridgegan.engine.bench_results import PARTIAL_CSV, csv_text, measured, plot_png
    from bridgegan.files import RowsFile, write_file_atomic

    engine_rows = []
    for sub in ("engine", "heuristics", "strip", "ablation", "compile"):
        # a stage stopped by its limit leaves the rows it measured in the partial file
        done = work / sub / "bench.csv"
        rows = _read_csv(done if done.is_file() else work / sub / PARTIAL_CSV)
        # each stage is a run of its own (its own process, warm-up and ratios): its rows
        # are named by it, or the plot would join a variant's points of several runs
        engine_rows += [dict(r, variant=f"{sub}: {r['variant']}") if sub != "engine" else r
                        for r in rows]
    report = {"stages": results, "seconds": seconds}
    for key, path in (("parity_ops", work / "parity_ops.json"),
                      ("parity_backends", work / "parity_backends.json"),
                      ("kernels", work / "kernels" / "kernels.json"),
                      ("kernel_sweep", work / "sweep" / "kernels.json"),
                      ("engine_peaks", work / "engine" / "bench.json")):
        if not path.is_file() and RowsFile.partial_of(path).is_file():  # a stage stopped
            path, key = RowsFile.partial_of(path), f"{key}_partial"  # part-way: its rows so far
        if path.is_file():
            data = json.loads(path.read_text())
            report[key] = data.get("peaks", data) if key == "engine_peaks" else data
    report["engine"] = engine_rows
    write_file_atomic(out / "gpu_check.json", json.dumps(report, indent=1, default=str).encode())
    if engine_rows:
        write_file_atomic(out / "bench.csv", csv_text(engine_rows).encode())
        rows = [dict(r, batch=int(r["batch"]), resolution=int(r["resolution"]),
                     images_per_s=float(r["images_per_s"])) for r in measured(engine_rows)]
        if rows:  # as write_results: skipped rows only have nothing to plot
            write_file_atomic(out / "bench.png", plot_png(
                rows, f"bridgegan gpu_check on {engine_rows[0]['device']}"))
    for src in (work / "kernels" / "kernels.csv", work / "profile" / "profile.csv",
                work / "profile" / "profile.md"):
        if src.is_file():
            shutil.copy(src, out / src.name)


if __name__ == "__main__":
    sys.exit(main())
