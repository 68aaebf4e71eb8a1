#!/usr/bin/env python
"""Train, judge and package the default 64x64 model on a lent GPU, in one call.

    python benchmarks/gpu_train_default.py OUTDIR [--minutes 7]   on a CUDA machine
    python benchmarks/gpu_train_default.py OUTDIR --dry-run        tiny sizes on the CPU (CI)

Stages (each a `bridgegan` command, recorded verbatim in OUTDIR/default/training.json):
  1. train-classifier: the attribute classifier `eval` judges with
  2. train: the model, stopped by --time-limit with a final checkpoint
  3. eval: edit accuracy, preservation, PSNR / SSIM, diversity on 200 held-out faces
  4. ship: OUTDIR/default = fp16 weights + config.json + eval.json + training.json
  5. demo: OUTDIR/demo_grid.png from the packaged model
Copy OUTDIR/default to bridgegan/assets/default and OUTDIR/demo_grid.png to docs/ to ship it.
The recipe (widths, batch, n_d, warm-up, D attribute weight) is RECIPE below; docs/TRAINING.md
says why each value differs from the paper.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The 64 px preset (paper widths) with the paper's batch and n_d, bf16 autocast, and the two
# departures the CPU runs showed necessary (docs/TRAINING.md): D's attribute head warmed up
# on real images and kept useful by a larger weight of its loss. 12 workers render the
# procedural faces (about 1 ms each on one core) fast enough for the GPU.
RECIPE = ["--data", "synthetic", "--resolution", "64", "--batch", "60", "--n-d", "5",
          "--d-attr-warmup", "2000", "--w-d-attr", "10", "--amp", "bf16", "--workers", "12",
          "--ema", "0.999", "--ckpt-every", "500", "--sample-every", "500", "--log-every", "50"]
DRY = ["--data", "synthetic:64", "--resolution", "32", "--g-width", "8", "--e-width", "4",
       "--latent-channels", "8", "--spade-hidden", "8", "--mapping-channels", "16",
       "--d-width", "4", "--batch", "8", "--n-d", "1", "--d-attr-warmup", "2", "--workers", "0",
       "--steps", "3", "--log-every", "1", "--sample-every", "0"]


def bridgegan(argv: list[str], log: list[str]) -> None:
    from bridgegan.cli import main

    log.append("bridgegan " + shlex.join(argv))
    print(f"\n$ {log[-1]}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    print(f"({time.perf_counter() - t0:.0f} s, exit {code})", flush=True)
    if code:
        raise SystemExit(f"stage failed: {log[-1]}")


def run(out: Path, minutes: float, dry: bool) -> Path:
    from bridgegan.demo import ship

    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if dry else "cuda"
    res = "32" if dry else "64"
    clf, run_dir, log = out / "classifier", out / "run", []
    bridgegan(["train-classifier", "--data", "synthetic", "--resolution", res, "--device", device,
               "--steps", "5" if dry else "4000", "--batch", "8" if dry else "64",
               "--workers", "0" if dry else "12", "--out", str(clf)], log)
    train = (DRY if dry else RECIPE + ["--device", "cuda", "--steps", "50500"])
    bridgegan(["train", *train, "--out", str(run_dir), "--no-progress",
               "--time-limit", str(minutes * 60)], log)
    from bridgegan.reference.trainer import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    eval_json = out / "eval.json"
    bridgegan(["eval", "--checkpoint", str(ckpt), "--classifier", str(clf), "--device", device,
               "--n", "8" if dry else "200", "--json", str(eval_json)], log)
    report = json.loads(eval_json.read_text())
    steps = json.loads((ckpt / "train_state.json").read_text())["step"]
    shipped = ship(ckpt, report, {"commands": log, "checkpoint_step": steps,
                                  "trained_on": _device_name(device)}, out / "default")
    bridgegan(["demo", "--checkpoint", str(shipped), "--device", device, "--out", str(out)], log)
    return shipped


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--minutes", type=float, default=7.0,
                   help="training time (default: 7, so that the whole call fits the device "
                        "tool's 10-minute limit)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    args = p.parse_args()
    shipped = run(args.out, 0.05 if args.dry_run else args.minutes, args.dry_run)
    print(f"\npackaged model: {shipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
