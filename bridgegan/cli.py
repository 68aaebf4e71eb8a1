"""The `bridgegan` command: one table, COMMANDS, of each command's name, help, the
function adding its options and the "module:function" that runs it. Building the parser
imports no torch (`--help` stays fast): the option functions live in torch-free modules,
and a command's module is imported when it runs. A new command is one row in COMMANDS."""
from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
from collections.abc import Callable
from dataclasses import dataclass

from . import threads
from .argtypes import (SEED, Parser, add_device, int_between, non_negative_float, non_negative_int,
                       output_file, positive_float, positive_int, positive_int_list)
from .engine import options as engine_options
from .engine.export import cli as export_cli
from .exits import end, signals_deferred, stopped_status
from .reference import classifier_defaults, train_cli
from .reference.config import INT_RANGES
from .reference.presets import PAPER_RESOLUTION, PRESET_RESOLUTIONS
from .reference.data import registry as data_registry
from .serve import cli as serve_cli
from .warning_filters import one_line_warnings


@dataclass(frozen=True)
class Command:
    """``options`` adds the command's options to its parser; ``run`` names the function
    ("module:function", module relative to this package) called with the parsed args."""

    name: str
    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: str


MAX_DEMO_ROWS = 64  # one grid row per face, held in memory until the PNG is written
DEMO_MAX_SEED = 2 ** 63  # the demo draws from its seed plus offsets: room below SEEDS
MAX_PRUNE_DAYS = 1_000_000  # cache --prune: days * 86400 s stays a float

STRENGTH_HELP = ("edit strength, the scale of d (default: the model's config edit_strength: "
                 "1.5, the official test's, unless it names another)")


def _demo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--input", nargs="+", help="source images (default: procedural faces)")
    p.add_argument("--out", default="bridgegan-demo", help="output folder (default: %(default)s)")
    p.add_argument("--samples", type=int_between(0, engine_options.MAX_SAMPLES), default=3,
                   help=f"noise samples per source, 0 to {engine_options.MAX_SAMPLES} "
                        f"(default: 3)")
    p.add_argument("--rows", type=int_between(1, MAX_DEMO_ROWS), default=4,
                   help=f"procedural source faces, one row each, 1 to {MAX_DEMO_ROWS} "
                        f"(default: %(default)s)")
    p.add_argument("--seed", type=int_between(0, DEMO_MAX_SEED), default=0,
                   help=f"seed of the faces and the noise, 0 to {DEMO_MAX_SEED} "
                        "(default: 0)")
    add_device(p)
    p.add_argument("--bench", action="store_true",
                   help="also print the throughput of the backends that run here and build "
                        "quickly (not compile or tensorrt, whose builds can take minutes)")
    threads.add_option(p)


def _translate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint folder (default: the shipped model, as `demo` uses)")
    p.add_argument("--input", nargs="+", required=True,
                   help="source image files, with distinct file names (the outputs are "
                        "NAME_editK.png and NAME_reference.png)")
    p.add_argument("--set", action="append", metavar="NAME=0|1",
                   help="target attribute (repeatable); conflict rules apply")
    p.add_argument("--reference", nargs="+", help="reference image(s), averaged in the latent code")
    p.add_argument("--attributes", help="comma list of attributes taken from the references "
                                        "(default: all)")
    p.add_argument("--samples", type=int_between(1, engine_options.MAX_SAMPLES), default=1,
                   help=f"noise samples per label edit, 1 to {engine_options.MAX_SAMPLES} "
                        "(default: 1)")
    p.add_argument("--strength", type=float, help=STRENGTH_HELP)
    p.add_argument("--seed", type=SEED, default=0,
                   help="noise seed of the first sample, the next ones +1 (default: 0); "
                        "every input gets the noise it would get translated alone")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="inputs per engine call, loaded and written as they go (default: "
                        + ", ".join(f"{n} on {d}" for d, n in
                                    engine_options.TRANSLATE_BATCH.items())
                        + "); results do not depend on it")
    engine_options.add_options(p)
    p.add_argument("--out", required=True, help="output folder")
    threads.add_option(p)


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", help=f"comma list of {engine_options.VARIANT_FORM} "
                   "(default: the device's table; CPU: reference, torch, onnxruntime and "
                   "compile in float32, then torch and compile in bf16 channels_last)")
    p.add_argument("--batches", type=positive_int_list, default="1,8",
                   help="comma list of integers >= 1 (default: %(default)s)")
    p.add_argument("--resolutions", type=positive_int_list, default=None,
                   help=f"comma list of image sizes, powers of two (the presets: "
                        f"{'/'.join(map(str, PRESET_RESOLUTIONS))}; default: "
                        f"{PAPER_RESOLUTION}, or the --checkpoint's size)")
    p.add_argument("--workloads", default="translate,strip,strip_nocache",
                   help=f"{', '.join(engine_options.WORKLOADS)} (default: %(default)s); a "
                        "samples row's batch is its images, a strip's its length (clamped to "
                        "what one source's strip holds)")
    p.add_argument("--checkpoint", help="time this checkpoint (default: seeded paper-width weights)")
    add_device(p)
    p.add_argument("--warmup", type=non_negative_int, default=2,
                   help="untimed calls before each row's first round, one more before each "
                        "later round where > 0 (default: %(default)s)")
    p.add_argument("--reps", type=positive_int, default=10,
                   help="timed calls per row, >= 1: ceil(reps / rounds) a round (default: "
                        "%(default)s)")
    p.add_argument("--min-seconds", type=non_negative_float,
                   default=engine_options.BENCH_MIN_SECONDS,
                   help="time each row at least this many seconds, whatever --reps, split "
                        "over the rounds (a finite number >= 0; default: %(default)s)")
    p.add_argument("--rounds", type=positive_int, default=engine_options.BENCH_ROUNDS,
                   help="rounds per row, the variants timed in alternation, the order "
                        "rotated each round (>= 1; default: %(default)s)")
    p.add_argument("--no-parity", dest="parity", action="store_false",
                   help="skip the check of each variant against the float64 reference before "
                        "it is timed (a variant that fails it gets no speed)")
    p.add_argument("--out", default="bench-results", help="output folder (default: %(default)s)")
    threads.add_option(p)


def _parity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", action="store_true", help="the fused SPADE / instance-norm kernels")
    p.add_argument("--backends", action="store_true",
                   help="the engine backends of the device's parity table (not compile or "
                        "tensorrt; `bench` checks every variant it times)")
    p.add_argument("--variants", help=f"the engine variants --backends checks: comma list of "
                   f"{engine_options.VARIANT_FORM}, as `bench --variants` (default: the "
                   "device's parity table)")
    add_device(p, default=None)
    p.add_argument("--resolution", type=int, choices=PRESET_RESOLUTIONS, default=None,
                   help=f"backend parity model size (default: the paper's {PAPER_RESOLUTION})")
    p.add_argument("--batch", type=positive_int, default=4,
                   help="backend parity batch size (default: %(default)s)")
    p.add_argument("--json", type=output_file,
                   help="write rows to this path (with --ops and --backends both: the "
                        "kernels' rows to PATH.ops.json)")


def _classifier_options(p: argparse.ArgumentParser) -> None:
    data_registry.add_option(p, "images and labels to learn")
    p.add_argument("--attributes", default=None, help="preset or comma list (default: the dataset's)")
    p.add_argument("--resolution", type=int_between(*INT_RANGES["image_size"]), default=64,
                   help="image size, that of the models it is to judge: {} to {} "
                        "(default: %(default)s)".format(*INT_RANGES["image_size"]))
    p.add_argument("--steps", type=positive_int, default=classifier_defaults.STEPS,
                   help="Adam steps (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=classifier_defaults.BATCH,
                   help="images per step (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=classifier_defaults.LR,
                   help="Adam learning rate (default: %(default)s)")
    p.add_argument("--width", type=int_between(1, classifier_defaults.MAX_WIDTH),
                   default=classifier_defaults.WIDTH,
                   help=f"base width, 1 to {classifier_defaults.MAX_WIDTH} (default: %(default)s)")
    p.add_argument("--kernel", type=int, default=classifier_defaults.KERNEL,
                   choices=classifier_defaults.KERNELS,
                   help="convolution kernel size (default: %(default)s); a classifier used in "
                        "training (--feature-classifier) should differ from the judge, in "
                        "kernel and --seed at least")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="data-loader worker processes")
    p.add_argument("--seed", type=SEED, default=0,
                   help="initialisation and data seed (>= 0)")
    add_device(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the run whose state --out holds (kept every "
                        f"{classifier_defaults.SAVE_EVERY} steps, and when Ctrl-C or SIGTERM "
                        f"stops the run); give the run's options again")
    threads.add_option(p)


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder to judge")
    p.add_argument("--classifier", required=True, help="folder written by train-classifier")
    data_registry.add_option(p, "source images")
    p.add_argument("--split", default="test", help="dataset split of the sources (default: test)")
    p.add_argument("--n", type=positive_int, default=200,
                   help="number of source images (default: 200)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="seed of the noise draws and of the procedural faces, >= 0 (use one "
                        "that training never saw)")
    p.add_argument("--strength", type=float, help=STRENGTH_HELP)
    engine_options.add_options(p, dtype=False)
    p.add_argument("--json", type=output_file, help="also write the metrics to this file")
    threads.add_option(p)


def _info_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()  # a checkpoint has its own resolution
    which.add_argument("--checkpoint", help="checkpoint folder (default: the paper configuration)")
    # default None: argparse lets a value that *is* the default (a cached small int such
    # as 128) past the group's check, so 128 is filled in by info.run
    which.add_argument("--resolution", type=int, default=None, choices=PRESET_RESOLUTIONS,
                       help="the paper configuration at this resolution (default: "
                            f"{PAPER_RESOLUTION})")


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prune", metavar="DAYS", type=int_between(0, MAX_PRUNE_DAYS),
                   help="remove the exports not used for DAYS days (0: all; at most "
                        f"{MAX_PRUNE_DAYS}); without it, list")


COMMANDS = (
    Command("demo", "the main job: translate procedural faces with the shipped model and "
                    "write one grid PNG", _demo_options, ".demo:run"),
    Command("translate", "edit images by attribute (label-based) and/or copy attributes from "
                         "reference images", _translate_options, ".engine.commands:translate"),
    Command("bench", "throughput / latency matrix of backend x dtype x batch x resolution x "
                     "workload; CSV, JSON and a PNG plot", _bench_options,
            ".engine.commands:bench"),
    Command("parity", "check kernels (--ops) and backends (--backends) against a float64 "
                      "reference; exit status 1 when any fails", _parity_options, ".parity:run"),
    Command("train", "train BridgeGAN (procedural faces, CelebA or a folder)",
            train_cli.add_arguments, ".reference.train_cli:run"),
    Command("train-classifier", "train the attribute classifier that `eval` uses to judge "
                                "edits", _classifier_options, ".reference.classifier_cli:run"),
    Command("eval", "edit accuracy, preservation, reconstruction PSNR / SSIM and diversity of "
                    "a checkpoint", _eval_options, ".evaluate:run_eval"),
    Command("export", "export ONNX graphs, build TensorRT plans, write a Triton Inference "
                      "Server model repository", export_cli.add_arguments,
            ".engine.export.cli:run"),
    Command("serve", "serve the engine on Triton Inference Server (dynamic batching, a "
                     "checking front), or write / serve a python-backend model repository; needs "
                     "bridgegan[serve]", serve_cli.add_arguments, ".serve.cli:run"),
    Command("cache", "list the exports the onnxruntime and tensorrt backends cached, or "
                     "remove those not used lately", _cache_options, ".engine.export.cache:run"),
    Command("info", "print a configuration and its parameter counts", _info_options,
            ".reference.info:run"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bridgegan",
        description="BridgeGAN multi-attribute face editing: reference model, fused kernels, "
                    "inference engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.options(sub.add_parser(command.name, help=command.help))
    return parser


def _run(name: str, args: argparse.Namespace) -> int:
    """Import the module of command ``name`` (torch with it, and ``--threads`` applied;
    a Ctrl-C meanwhile acts once they are in: ``signals_deferred``) and run it."""
    module, _, func = next(c.run for c in COMMANDS if c.name == name).partition(":")
    with signals_deferred():
        if hasattr(args, "threads"):
            threads.apply(args.threads)
        run = getattr(importlib.import_module(module, __package__), func)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    name = " ".join(filter(None, (args.command, getattr(args, "target", None))))  # export X

    def run() -> int:
        try:
            with one_line_warnings(name):
                return int(_run(args.command, args) or 0)
        except (ValueError, OSError, RuntimeError) as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():
                return 0  # the reader left (`bridgegan info | head`): not this command's error
            print(f"bridgegan {name}: error: {exc}", file=sys.stderr)
            return 2
    # a Ctrl-C or SIGTERM: a line, not a traceback (writes are atomic)
    return stopped_status(f"bridgegan {name}", run)


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (its pipe polls as an error); if so stdout is
    pointed at /dev/null, so that Python's flush at exit does not fail again."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no real stdout
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return closed


def entry() -> None:
    """The ``bridgegan`` command: ``main``'s status as the process's (``exits.end``: a
    command a signal stopped ends by that signal)."""
    end(main())


if __name__ == "__main__":
    entry()
