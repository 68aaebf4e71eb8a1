"""The engine's command-line options (``--backend``, ``--dtype``, ``--device``), written
once for every command that runs the engine, and the torch-free constants the engine and
its commands share (samples bound and seed checks, bench variants, workloads and timing
settings, translate's batch); torch-free, so that the command line lists the backends
(from the registry, ``backends``) without importing the engine."""
from __future__ import annotations

import argparse

from ..argtypes import SEEDS, add_device
from .backends import AUTO, BACKENDS

# `bridgegan bench --variants`: each variant's tags and form (variants.Variant parses them)
VARIANT_TAGS = ("cl", "graphs", "heuristics", "streams")
VARIANT_FORM = f"backend:dtype{''.join(f'[:{t}]' for t in VARIANT_TAGS)}[:-REWRITE ...]"
# `bridgegan bench --workloads`: what a row times (bench._workload_fn builds each)
WORKLOADS = ("translate", "reference", "samples", "strip", "strip_nocache")
# `bridgegan translate --batch-size`'s default: images per engine call, by device type
TRANSLATE_BATCH = {"cpu": 8, "cuda": 64}
NOISE_OR_SEED = "give noise or seed, not both (a seed draws the noise)"  # both given
# noise samples per edit: a strip's sample rows (Engine.edit_strip, the demo's grid
# columns) and `bridgegan translate`'s files per input
MAX_SAMPLES = 64
BENCH_SAMPLES = 4  # the samples workload's noise samples per source
# the least seconds of timed calls a bench row takes, whatever its reps: a GPU's batch-1
# row of 10 calls spans about 10 ms with CUDA graphs (H100: 1.35 ms a call)
BENCH_MIN_SECONDS = 0.2
# the rounds over which a bench row's timed calls are split, the variants of a row timed in
# alternation (bench._cell_rows)
BENCH_ROUNDS = 3


def check_sample_seeds(seed: int, samples: int, what: str = "seed", first: int = 0,
                       counted: str = "samples") -> None:
    """Refuse a ``seed`` whose ``samples`` noise draws (seeds seed + first .. seed + first
    + samples - 1) would pass the last seed; ``what`` names the seed in the message,
    ``counted`` what the draws are of."""
    last = seed + first + samples - 1
    if last >= SEEDS:
        raise ValueError(f"{what} {seed} with {samples} {counted} draws seeds up to {last}; "
                         f"seeds must be below 2**64: give {what} <= {SEEDS - first - samples}")


def add_options(parser: argparse.ArgumentParser, dtype: bool = True) -> None:
    """Add ``--backend``, ``--dtype`` (unless ``dtype`` is False) and ``--device``. The
    backend default is torch, not auto: on a CPU auto picks onnxruntime, which exports the
    graphs into the cache folder on first use (files a default should not write) and made
    `bridgegan demo` slower, 6.3 s with a cold cache and 4.8 s warm against 4.4 s (one
    thread, 32 px, this workplace's 2-core CPU, 2026-12-01)."""
    parser.add_argument("--backend", default="torch",
                        help=f"engine backend: {AUTO} (the fastest measured that runs here, else "
                             f"torch), "
                             f"{', '.join(BACKENDS)} (default: %(default)s)")
    if dtype:
        parser.add_argument("--dtype", default="float32",
                            help="float32, fp16, bf16 or auto (default: %(default)s)")
    add_device(parser)
