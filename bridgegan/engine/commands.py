"""The engine's CLI commands: `bridgegan translate` and `bridgegan bench`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import progress
from ..path_checks import check_apart, check_name_fits, check_writable_folder, prepare_file_targets
from ..numerics import dtype_name
from ..reference.checkpoint import SHIPPED, read_config
from ..reference.data.grid import save_grid, save_png
from ..reference.data.image import check_image_file, open_rgb, tensor_to_uint8
from ..reference.presets import PAPER_RESOLUTION
from .options import TRANSLATE_BATCH, check_sample_seeds

GRID = "grid.png"  # translate's grid of the inputs and their outputs
GRID_ROWS = 64  # inputs shown in the grid (one row each); every output is written


def parse_sets(items: list[str]) -> dict[str, int]:
    """["Blond_Hair=1", "Male=0"] -> {"Blond_Hair": 1, "Male": 0}."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or value.strip() not in ("0", "1"):
            raise ValueError(f"--set expects NAME=0 or NAME=1, got {item!r}")
        if name.strip() in out:
            raise ValueError(f"--set gives {name.strip()} twice; give each attribute once")
        out[name.strip()] = int(value)
    return out


def output_names(inputs: list[str], samples: int, edits: bool, references: list[str],
                 out: Path, checkpoint: str | Path = SHIPPED) -> list[list[str]]:
    """The file names ``translate`` writes in ``out`` for each input (``STEM_editK.png``
    per label-edit sample, then ``STEM_reference.png`` when there are ``references``;
    ``GRID`` besides). A ValueError, before any work, when two inputs share a file name
    (their outputs would overwrite each other), an output would overwrite an input or a
    reference or land in the ``checkpoint`` folder, or an input's name makes an output
    name too long for ``out``'s file system (named as the input's)."""
    seen: dict[str, str] = {}
    for p in inputs:
        stem = Path(p).stem
        if stem in seen:
            raise ValueError(f"--input {seen[stem]} and {p} would both write {stem}_*.png in "
                             f"--out (outputs are named after the input's file name): give "
                             f"inputs with distinct file names")
        seen[stem] = p
    suffixes = [f"_edit{k + 1}" for k in range(samples)] if edits else []
    suffixes += ["_reference"] if references else []
    names = [[f"{stem}{s}.png" for s in suffixes] for stem in seen]
    for p, row in zip(seen.values(), names):
        if row:  # its longest
            check_name_fits(out / max(row, key=len), f"--input {p} gives an output,")
    check_apart([out / n for n in (GRID, *(n for row in names for n in row))], "output",
                [*(("--input", p) for p in inputs), *(("--reference", r) for r in references),
                 ("--checkpoint", checkpoint)])
    return names


def _translate_batch(eng, args: argparse.Namespace, start: int, batch: int,
                     edits: dict[str, int], attrs: list[str] | None, refs: list,
                     names: list[list[str]], out: Path) -> list[torch.Tensor]:
    """Translate and write the inputs ``start`` .. ``start + batch``; their rows of the
    grid (none past GRID_ROWS)."""
    x = eng.load_images([open_rgb(p) for p in args.input[start:start + batch]])
    ys = eng.classify(x)  # once for every column (each input's as it gets it alone)
    columns = [x.cpu()[:, None]]
    if edits:  # sample k's noise from seed + k alone: an input's results do not depend on
        # the other inputs (or on --batch-size)
        columns.append(eng.translate_samples(x, edits, args.samples, seed=args.seed,
                                             strength=args.strength, source=ys).cpu())
    if refs:
        columns.append(eng.translate_reference(x, refs, attributes=attrs, source=ys,
                                               strength=args.strength).cpu()[:, None])
    rows = torch.cat(columns, dim=1)  # (input, column, C, H, W)
    # an earlier run's grid would show results this run replaces (a link stays: the grid
    # is written through it)
    if start == 0 and (out / GRID).is_file() and not (out / GRID).is_symlink():
        (out / GRID).unlink()
    for row_names, row in zip(names[start:start + batch], rows[:, 1:]):
        for name, img in zip(row_names, row):  # atomic: an earlier run's file is replaced
            save_png(tensor_to_uint8(img), out / name)  # whole or kept
    # a copy: a view (even of no rows) keeps the whole batch
    return [rows[:GRID_ROWS - start].clone()] if start < GRID_ROWS else []


def translate(args: argparse.Namespace) -> int:
    from .engine import Engine

    edits = parse_sets(args.set or [])
    if not edits and not args.reference:
        raise ValueError("nothing to do: give --set NAME=0|1 (label-based) and/or --reference")
    attrs = None
    if args.attributes is not None:
        if not args.reference:
            raise ValueError("--attributes names what is taken from the references: give "
                             "--reference too")
        attrs = [a.strip() for a in args.attributes.split(",") if a.strip()]
        if not attrs:
            raise ValueError("--attributes is empty: give a comma list of attribute names, "
                             "or leave it out to take every attribute from the references")
    if edits:
        check_sample_seeds(args.seed, args.samples, "--seed")
    out = Path(args.out)
    names = output_names(args.input, args.samples, bool(edits), args.reference or [], out,
                         args.checkpoint or SHIPPED)
    check_writable_folder(out)
    prepare_file_targets(out, [GRID, *(n for row in names for n in row)])
    for path in [*args.input, *(args.reference or [])]:  # before any work
        check_image_file(path)
    eng = Engine.from_checkpoint(args.checkpoint or SHIPPED, backend=args.backend,
                                 dtype=args.dtype, device=args.device)
    # K references shared by every input: a list of batches of one image each
    refs = [[eng.load_images([open_rgb(r)])] for r in args.reference or []]
    batch = args.batch_size or TRANSLATE_BATCH[eng.device.type]
    grid_rows, done = [], 0
    try:
        with progress.bar(total=len(args.input), desc="translate", unit="image",
                          show=len(args.input) > batch) as bar:  # closed before an error's line
            for start in range(0, len(args.input), batch):
                grid_rows += _translate_batch(eng, args, start, batch, edits, attrs, refs,
                                              names, out)
                written = min(start + batch, len(args.input))
                bar.update(written - done)
                done = written
    except BaseException:  # an error, Ctrl-C: what the folder holds now
        if done:
            print(f"translate: stopped with the results of {done} of {len(args.input)} "
                  f"inputs written; {out / GRID} is not", file=sys.stderr)
        raise
    grid = torch.cat(grid_rows)
    save_grid(grid.flatten(0, 1), out / GRID, nrow=grid.shape[1])
    shown = "" if len(args.input) <= GRID_ROWS else f", the first {GRID_ROWS} inputs"
    edit = " ".join(f"{k}={v}" for k, v in edits.items())
    samples = f"{args.samples} noise samples of " if args.samples > 1 else ""
    written = len(args.input) * (grid.shape[1] - 1)
    print(f"wrote {written} image{'s' if written > 1 else ''} and {out / GRID} (columns: "
          f"source" + (f", {samples}the edit {edit}" if edits else "")
          + (", reference" if args.reference else "") + f"{shown}; {eng.backend} backend, "
          f"{dtype_name(eng.dtype)})")
    return 0


def bench(args: argparse.Namespace) -> int:
    from .bench import run_matrix
    from .variants import parse_variants
    from .bench_results import BENCH_FILES, format_table, measured, write_results

    check_writable_folder(args.out)
    prepare_file_targets(args.out, BENCH_FILES)
    variants = parse_variants(args.variants) if args.variants else None
    if args.resolutions:
        resolutions = args.resolutions
    elif args.checkpoint:
        resolutions = [read_config(args.checkpoint).image_size]
    else:
        resolutions = [PAPER_RESOLUTION]
    rows, peaks = run_matrix(
        variants, args.batches, resolutions, args.workloads.split(","),
        device=args.device, checkpoint=args.checkpoint, warmup=args.warmup, reps=args.reps,
        min_seconds=args.min_seconds, rounds=args.rounds, parity=args.parity, out=args.out)
    matmul = ", ".join(f"{flops / 1e12:.2f} TFLOP/s ({dtype})"  # each row's roof is its dtype's
                       for dtype, flops in peaks["matmul_flops_by_dtype"].items())
    print(f"peaks on {peaks['device']}: matmul {matmul}, copy "
          f"{peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s")
    print(format_table(rows))
    spread = [r["spread"] for r in measured(rows) if r["spread"] != ""]
    if spread:
        print(f"the variants of a row were timed in alternation over {args.rounds} rounds; a "
              f"row's round medians differ by up to x{max(spread):.2f} (its `spread`): "
              f"differences between variants within that are not resolved by this run")
    files = write_results(rows, peaks, args.out)
    print("wrote " + ", ".join(str(f) for f in files))
    return 0
