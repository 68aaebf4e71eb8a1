#!/usr/bin/env python
"""Train, judge and package the default model (procedural faces), on a CPU or a GPU.

    python benchmarks/train_default.py OUTDIR --device cpu --minutes 100   one CPU stretch
    python benchmarks/train_default.py OUTDIR --device cuda --minutes 7    a lent GPU
    python benchmarks/train_default.py OUTDIR --dry-run                    tiny, on the CPU (CI)

Each call runs these stages; those of stages 1-3 are `bridgegan` commands recorded verbatim
in OUTDIR/commands.json (and in the packaged model's training.json), stage 4 is a Python
call and stage 5's `bridgegan demo` runs after both files are written (recorded in neither):
  1. train-classifier: the judge, trained on faces of another seed than the model's, and
     the critic of the feature term, of another kernel and seed than the judge (each
     skipped when its folder holds a classifier.json)
  2. train: RECIPES[device], resumed from OUTDIR/run when it holds a checkpoint, stopped by
     --time-limit with a final checkpoint (call again to train another stretch)
  3. eval: on 200 held-out faces (test split, data seed 1: never seen in training), at
     edit strength 1.0, which the packaged config then names as its default
  4. ship: OUTDIR/default = fp16 weights, config, eval.json, training.json, the judge and
     MODEL_CARD.md (benchmarks/model_card.py), only when the eval meets evaluate.TARGETS
     (or with --interim, recorded as missing them); otherwise the missed targets are
     listed and the exit status is 1
  5. demo: OUTDIR/demo_grid.png from the packaged model
Shipping it = copying OUTDIR/default to bridgegan/assets/default.
docs/TRAINING.md says why each departure from the paper in the recipes is there.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The departures from the paper (docs/TRAINING.md, "The default model"): paired L1 to the
# renderer's true edit, over the whole image and over the pixels each edit changes; half
# the targets single-attribute edits; no critic (n_d 0, adversarial and attribute weights
# 0); latent and cycle weights 5; lr 1e-3; fresh noise; D's attribute head trained alone
# first (it estimates the source labels of images given without them); a frozen
# classifier's features of the fakes and reconstructions matched to the true images'
# (--feature-classifier: OUTDIR/critic, added at the call).
DEPARTURES = ["--n-d", "0", "--w-adv", "0", "--w-attr", "0", "--w-paired", "100",
              "--w-paired-edit", "100", "--single-edits", "0.5", "--w-feature", "300",
              "--w-latent", "5", "--w-cycle", "5", "--lr", "1e-3", "--noise-memory", "off",
              "--d-attr-warmup", "3000"]
RECIPES = {
    # the shipped model: 32 px, narrow widths, batch 8, one thread (about 0.65 s a step on
    # this workplace's 2-core CPU, 2026-12-01)
    "cpu": ["--data", "synthetic", "--resolution", "32", "--g-width", "16", "--e-width", "16",
            "--latent-channels", "16", "--spade-hidden", "32", "--mapping-channels", "32",
            "--noise-dim", "8", "--d-width", "8", "--batch", "8", *DEPARTURES,
            "--steps", "100000", "--workers", "0", "--log-every", "100",
            "--sample-every", "1000", "--ckpt-every", "500"],
    # the 64 px preset (paper widths) at GPU scale; not yet run on a GPU
    "cuda": ["--data", "synthetic", "--resolution", "64", "--batch", "32", *DEPARTURES,
             "--amp", "bf16", "--workers", "12", "--steps", "100000", "--log-every", "100",
             "--sample-every", "1000", "--ckpt-every", "1000"],
    # CI: tiny sizes, three steps, no time limit (a test must not depend on the machine)
    "dry": ["--data", "synthetic:64", "--resolution", "32", "--g-width", "8", "--e-width", "4",
            "--latent-channels", "8", "--spade-hidden", "8", "--mapping-channels", "16",
            "--d-width", "4", "--batch", "8", *DEPARTURES[:-2], "--d-attr-warmup", "2",
            "--workers", "0", "--steps", "3", "--log-every", "1", "--sample-every", "0"],
}
JUDGE = {"cpu": ["--data", "synthetic", "--resolution", "32", "--steps", "3000", "--batch", "64"],
         "cuda": ["--data", "synthetic", "--resolution", "64", "--steps", "4000", "--batch", "64", "--workers", "12"],
         "dry": ["--data", "synthetic:64", "--resolution", "32", "--steps", "5", "--batch", "8"]}
# the feature term's critic: seed 11, kernel 3 (the judge: seed 7, kernel 4), width 32 and,
# on cpu and cuda, twice the judge's steps (after JUDGE's options, so its --steps wins)
CRITIC = {"cpu": ["--seed", "11", "--kernel", "3", "--width", "32", "--steps", "6000"],
          "cuda": ["--seed", "11", "--kernel", "3", "--width", "32", "--steps", "8000"],
          "dry": ["--seed", "11", "--kernel", "3", "--width", "8"]}
# strength 1.0: the paired terms train the edit at d = y_t - y_s, and there the shipped
# model's edits come closest to the true ones (docs/TRAINING.md, "The edit strength");
# ship() makes it the packaged config's edit_strength
EVAL = ["--split", "test", "--seed", "1", "--strength", "1.0"]


def bridgegan(argv: list[str], log: list[str]) -> None:
    from bridgegan.cli import main

    log.append("bridgegan " + shlex.join(argv))
    print(f"\n$ {log[-1]}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    print(f"({time.perf_counter() - t0:.0f} s, exit {code})", flush=True)
    if code:
        raise SystemExit(f"stage failed: {log[-1]}")


def run(out: Path, device: str, minutes: float | None, dry: bool, interim: bool = False) -> int:
    from bridgegan.reference.shipping import ship
    from bridgegan.evaluate import missed_targets
    from bridgegan.reference.run_folder import latest_checkpoint

    recipe = "dry" if dry else device
    out.mkdir(parents=True, exist_ok=True)
    judge, critic, run_dir, log = out / "judge", out / "critic", out / "run", []
    for folder, options in ((judge, ["--seed", "7"]), (critic, CRITIC[recipe])):
        if not (folder / "classifier.json").is_file():
            bridgegan(["train-classifier", "--device", device, *JUDGE[recipe], *options,
                       "--out", str(folder)], log)
    limit = [] if minutes is None else ["--time-limit", str(minutes * 60)]
    bridgegan(["train", *RECIPES[recipe], "--feature-classifier", str(critic), "--device",
               device, "--out", str(run_dir), "--resume", "auto", "--no-progress", *limit], log)
    ckpt = latest_checkpoint(run_dir)
    eval_json = out / "eval.json"
    bridgegan(["eval", "--checkpoint", str(ckpt), "--classifier", str(judge), "--device", device,
               *EVAL, "--n", "8" if dry else "200", "--json", str(eval_json)], log)
    history = out / "commands.json"
    commands = (json.loads(history.read_text()) if history.is_file() else []) + log
    history.write_text(json.dumps(commands, indent=1) + "\n")
    report = json.loads(eval_json.read_text())
    missed = missed_targets(report)
    if missed and not interim:
        print("not packaged: the model misses " + "; ".join(missed), flush=True)
        return 1
    step = json.loads((ckpt / "train_state.json").read_text())["step"]
    shipped = ship(ckpt, report, {"commands": commands, "checkpoint_step": step,
                                  "trained_on": _machine(device), "missed_targets": missed},
                   out / "default")
    shutil.copytree(judge, shipped / "judge", dirs_exist_ok=True)
    import model_card  # benchmarks/, this script's folder

    model_card.main([str(shipped)])
    bridgegan(["demo", "--checkpoint", str(shipped), "--device", device, "--out", str(out)], log)
    print(f"\npackaged model: {shipped}")
    return 0


def _machine(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="output folder (reused: training resumes there)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--minutes", type=float, default=None,
                   help="training time of this call (default: until the recipe's steps)")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (CI)")
    p.add_argument("--interim", action="store_true",
                   help="package a model that misses the targets, recorded as such (the demo "
                        "says so)")
    args = p.parse_args()
    return run(args.out, "cpu" if args.dry_run else args.device, args.minutes, args.dry_run,
               args.interim)


if __name__ == "__main__":
    sys.exit(main())
