"""`bridgegan demo`: the main job on the embedded default, in one command.

Loads the shipped model (``bridgegan/assets/default``, with its eval numbers and the
targets it misses) or a given checkpoint, makes source and reference faces from the
procedural set (or takes ``--input`` images), and writes one grid PNG with a caption under
every image. Each row is one source: the source, its reconstruction, every attribute
flipped, noise samples, the reference-based edit with the reference beside it, a region
edit (hair colour on the left half only) and label-to-reference interpolation. ``--bench``
also prints the throughput of the registry's backends that run here and build quickly (not
the ``slow_build`` ones, compile and tensorrt, even where they run). Without a shipped
model it says so and uses seeded untrained weights, so the grid shows the pipeline, not
edits.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from .engine import BackendUnavailable, Engine
from .engine.backends import REGISTRY, device_type
from .engine.options import MAX_SAMPLES
from .path_checks import check_apart, check_writable_folder, prepare_file_targets
from .reference import BridgeGAN, BridgeGANConfig
from .reference.checkpoint import CONFIG_FILE, EVAL_FILE, SHIPPED, load_checkpoint
from .reference.data import procedural_batch, save_png
from .reference.data.grid import captioned_grid
from .timing import time_calls

def _summary(folder: Path) -> str:
    """The shipped model's eval numbers in a few words, and the targets it misses."""
    path = folder / EVAL_FILE
    if not path.is_file():
        return ""
    from .evaluate import metric_text, missed_targets

    r = json.loads(path.read_text())
    shown = r.get("label_edit_accuracy_shown", r["label_edit_accuracy"])
    line = (f"; eval on {r.get('sources', '?')} held-out faces: label edit accuracy "
            f"{metric_text(shown, '.1%')}, preservation "
            f"{metric_text(r['label_preservation'], '.1%')}, reconstruction PSNR "
            f"{r['reconstruction_psnr_db']:.1f} dB")
    if "label_true_change" in r:
        line += f", true-change score {metric_text(r['label_true_change'], '.2f')}"
    missed = missed_targets(r)
    return line + (f"; INTERIM model, misses the targets: {'; '.join(missed)}" if missed else "")


def load_model(checkpoint: str | None) -> tuple[BridgeGAN, str]:
    if checkpoint:
        return load_checkpoint(checkpoint), f"checkpoint {checkpoint}"
    if (SHIPPED / CONFIG_FILE).is_file():
        return load_checkpoint(SHIPPED), f"the shipped model ({SHIPPED}{_summary(SHIPPED)})"
    from .reference.data import PROCEDURAL_ATTRIBUTES

    torch.manual_seed(0)
    cfg = BridgeGANConfig(image_size=64, attributes=PROCEDURAL_ATTRIBUTES)
    return BridgeGAN(cfg).eval(), ("UNTRAINED seeded weights: no trained model is shipped yet, "
                                   "so the grid shows the pipeline, not real edits")


def throughput(model: BridgeGAN, device: str, batch: int = 8, calls: int = 3) -> Iterator[str]:
    """images/s of label-based translation (float32), one line per backend of the
    registry that runs here and builds quickly (not ``slow_build``: a demo does not wait
    minutes for autotuning or plans), as each is measured. Triton kernels count only on a
    CUDA device (the CPU interpreter is for testing, not for speed)."""
    size = model.config.image_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ys = torch.zeros(batch, model.config.n_attrs)
    for name, spec in REGISTRY.items():
        if spec.slow_build or spec.problem(device) is not None or (
                spec.triton_kernels and device_type(device) != "cuda"):
            continue
        try:
            eng = Engine(model, backend=name, device=device)
            times = time_calls(lambda: eng.translate(x, 1 - ys, source=ys, seed=0), eng.device,
                               warmup=1, reps=calls)
        except (BackendUnavailable, RuntimeError) as exc:
            yield f"{name}: unavailable ({exc})"
            continue
        yield f"{name} fp32: {batch * len(times) / sum(times):.1f} images/s"


def _caption(edit: str) -> str:
    """'Name=1' -> '+Name', 'Name=0' -> '-Name', underscores as spaces (for wrapping)."""
    name, _, value = edit.partition("=")
    return ("+" if value == "1" else "-") + name.replace("_", " ")


def _region_edit(labels: torch.Tensor, attributes: list[str]) -> dict[str, int]:
    """The demo's spatial edit: blond hair (black when already blond), or the first
    attribute flipped when the model has no Blond_Hair."""
    if "Blond_Hair" in attributes:
        blond = labels[attributes.index("Blond_Hair")] > 0.5
        return {"Black_Hair" if blond else "Blond_Hair": 1}
    return {attributes[0]: 1 - int(labels[0])}


def demo_rows(eng: Engine, sources: torch.Tensor, labels: torch.Tensor, samples: int,
              seed: int) -> tuple[list[torch.Tensor], list[list[str]]]:
    """One row per source: source, reconstruction, every flip, noise samples, reference
    and reference edit, a region edit (left half) and label-to-reference interpolation.
    Row i's noise comes from seed + i * (MAX_SAMPLES + 1), its samples' from the seeds
    after it (``Engine.edit_strip``): rows share no noise."""
    attrs = list(eng.attributes)
    size = eng.config.image_size
    left = torch.zeros(size, size)
    left[:, : size // 2] = 1
    references, ref_labels = torch.roll(sources, 1, dims=0), torch.roll(labels, 1, dims=0)
    rows, captions = [], []
    for i in range(sources.shape[0]):
        x, r = sources[i:i + 1], references[i:i + 1]
        y, y_r = labels[i:i + 1], ref_labels[i:i + 1]
        row_seed = seed + i * (MAX_SAMPLES + 1)
        strip = eng.edit_strip(x, samples=samples, seed=row_seed, source=y)
        ref_edit = eng.translate_reference(x, r, source=y, reference_labels=y_r)
        edit = _region_edit(y[0], attrs)
        region_caption = _caption("{}={}".format(*next(iter(edit.items())))) + ", left half only"
        region = eng.translate(x, edit, source=y, seed=row_seed, region=left)
        alphas = (0.0, 0.5, 1.0)
        inter = eng.interpolate(x, r, y_r, alphas=list(alphas), seed=row_seed, source=y)[:, 0]
        rows.append(torch.cat([x.to(strip.images), strip.images, r.to(strip.images), ref_edit,
                               region, inter]).cpu())
        flips = [_caption(c) for c in strip.captions[1:1 + len(attrs)]]
        noise = [f"noise {k + 1}: " + _caption(c.split(": ")[1]) for k, c in
                 enumerate(strip.captions[1 + len(attrs):])]
        ends = {0.0: " (reference)", 1.0: " (labels)"}
        captions.append(["source", "reconstruction", *flips, *noise, "reference",
                         "reference edit (all its labels)", region_caption,
                         *(f"interpolation a={a:g}{ends.get(a, '')}" for a in alphas)])
    return rows, captions


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    check_writable_folder(args.out)
    path = Path(args.out) / "demo_grid.png"
    prepare_file_targets(args.out, [path.name])
    check_apart(path, "the grid", [("--checkpoint", args.checkpoint),
                                   *(("--input", p) for p in args.input or ())])
    model, what = load_model(args.checkpoint)
    print(f"model: {what}")
    cfg = model.config
    eng = Engine(model, backend="torch", device=args.device)
    if args.input:
        sources = eng.load_images(args.input)
        labels = eng.classify(sources)  # the attribute head's estimate
    else:  # procedural faces come with their true labels
        sources, labels = procedural_batch(args.rows, cfg.image_size, seed=args.seed + 1000,
                                           attributes=cfg.attributes)
    rows, captions = demo_rows(eng, sources, labels.cpu(), args.samples, args.seed)
    title = (f"bridgegan demo: {what.split(' (')[0]}, {cfg.image_size} px, edit strength "
             f"{cfg.edit_strength}, seed {args.seed}; columns: source, reconstruction, each "
             f"attribute flipped, noise samples, reference, reference edit, region edit, "
             f"interpolation")
    save_png(captioned_grid(rows, captions, title=title, scale=max(1, -(-96 // cfg.image_size))),
             path)
    print(f"wrote {path} ({len(rows)} row{'s' * (len(rows) != 1)} x {len(rows[0])} columns, "
          f"captions in the image)")
    if args.bench:
        for line in throughput(model, args.device):
            print("throughput " + line, flush=True)
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0
