"""The `bridgegan` command. Each subcommand's work lives in the module named for it;
this file only parses arguments and dispatches (imports stay lazy so --help is fast)."""
from __future__ import annotations

import argparse
import sys

from . import threads
from .argtypes import positive_int


def _info(args: argparse.Namespace) -> int:
    from .reference import BridgeGAN, BridgeGANConfig
    from .reference.checkpoint import read_config

    cfg = read_config(args.checkpoint) if args.checkpoint else BridgeGANConfig.preset(args.resolution)
    model = BridgeGAN(cfg)
    print(cfg.to_json())
    for name in ("generator", "encoder", "mapping", "discriminator"):
        n = sum(p.numel() for p in getattr(model, name).parameters())
        print(f"{name:14s} {n:>12,d} parameters")
    return 0


def _parity(args: argparse.Namespace) -> int:
    if not (args.ops or args.backends):
        args.ops = args.backends = True
    status = 0
    if args.ops:
        from .kernels.parity import main as ops_main

        argv = (["--device", args.device] if args.device else [])
        argv += ["--json", args.json + ".ops.json"] if args.json else []
        status |= ops_main(argv)
    if args.backends:
        from .engine.parity import main as backends_main

        status |= backends_main(args)
    return status


def _lazy(module: str, func: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module, __package__), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgegan",
        description="BridgeGAN multi-attribute face editing: reference model, fused kernels, "
                    "inference engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="the main job: translate procedural faces with the shipped "
                                    "model and write one grid PNG")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    p.add_argument("--input", nargs="+", help="source images (default: procedural faces)")
    p.add_argument("--out", default="bridgegan-demo", help="output folder (default: %(default)s)")
    p.add_argument("--samples", type=int, default=3, help="noise samples per source (default: 3)")
    p.add_argument("--rows", type=int, default=4, help="procedural source faces, one row each "
                                                      "(default: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bench", action="store_true", help="also print the throughput of the "
                                                       "backends that run here")
    threads.add_option(p)
    p.set_defaults(func=_lazy(".demo", "run"))

    p = sub.add_parser("translate", help="edit images by attribute (label-based) and/or copy "
                                         "attributes from reference images")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--input", nargs="+", required=True, help="source image files")
    p.add_argument("--set", action="append", metavar="NAME=0|1",
                   help="target attribute (repeatable); conflict rules apply")
    p.add_argument("--reference", nargs="+", help="reference image(s), averaged in the latent code")
    p.add_argument("--attributes", help="comma list of attributes taken from the references "
                                        "(default: all)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="noise samples per label edit (>= 1)")
    p.add_argument("--strength", type=float, default=1.5, help="edit strength (d scale)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="torch",
                   help="reference, torch, triton, compile (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32, fp16, bf16 or auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", required=True, help="output folder")
    threads.add_option(p)
    p.set_defaults(func=_lazy(".engine.commands", "translate"))

    p = sub.add_parser("bench", help="throughput / latency matrix of backend x dtype x batch x "
                                     "resolution x workload; CSV, JSON and a PNG plot")
    p.add_argument("--variants", default="reference:float32,torch:float32,torch:bf16:cl",
                   help="comma list of backend:dtype[:cl][:graphs] (default: %(default)s)")
    p.add_argument("--batches", default="1,8", help="comma list (default: %(default)s)")
    p.add_argument("--resolutions", default="128", help="comma list of 64/128/256")
    p.add_argument("--workloads", default="translate,strip,strip_nocache",
                   help="translate, reference, strip, strip_nocache (default: %(default)s)")
    p.add_argument("--checkpoint", help="time this checkpoint (default: seeded paper-width weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=0.0, help="time each row at least this long")
    p.add_argument("--out", default="bench-results", help="output folder (default: %(default)s)")
    threads.add_option(p)
    p.set_defaults(func=_lazy(".engine.commands", "bench"))

    p = sub.add_parser("parity", help="check kernels (--ops) and backends (--backends) against "
                                      "a float64 reference; exit status 1 when any fails")
    p.add_argument("--ops", action="store_true", help="the fused SPADE / instance-norm kernels")
    p.add_argument("--backends", action="store_true", help="every available engine backend")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--resolution", type=int, choices=(64, 128, 256), default=None,
                   help="backend parity model size (default: the paper's 128)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--json", help="write rows to this path (.ops.json for the kernels)")
    p.set_defaults(func=_parity)

    p = sub.add_parser("train", help="train BridgeGAN (procedural faces, CelebA or a folder)")
    from .reference.train_cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_lazy(".reference.train_cli", "run"))

    p = sub.add_parser("train-classifier", help="train the attribute classifier that `eval` "
                                                "uses to judge edits")
    p.add_argument("--data", default="synthetic", help="synthetic[:COUNT], celeba:PATH or folder:PATH")
    p.add_argument("--attributes", default=None, help="preset or comma list (default: the dataset's)")
    p.add_argument("--resolution", type=int, default=64, help="image size (default: 64)")
    p.add_argument("--steps", type=int, default=1500, help="Adam steps (default: 1500)")
    p.add_argument("--batch", type=int, default=64, help="images per step (default: 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--out", required=True, help="output folder")
    threads.add_option(p)
    p.set_defaults(func=_lazy(".evaluate", "run_train_classifier"))

    p = sub.add_parser("eval", help="edit accuracy, preservation, reconstruction PSNR / SSIM "
                                    "and diversity of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder to judge")
    p.add_argument("--classifier", required=True, help="folder written by train-classifier")
    p.add_argument("--data", default="synthetic", help="synthetic[:COUNT], celeba:PATH or folder:PATH")
    p.add_argument("--split", default="test", help="dataset split of the sources (default: test)")
    p.add_argument("--n", type=int, default=200, help="number of source images (default: 200)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the noise draws and of the procedural faces (use one that "
                        "training never saw)")
    p.add_argument("--strength", type=float, default=1.5,
                   help="edit strength, the scale of d (default: 1.5, the official test's)")
    p.add_argument("--backend", default="torch", help="engine backend (default: torch)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--json", help="also write the metrics here")
    threads.add_option(p)
    p.set_defaults(func=_lazy(".evaluate", "run_eval"))

    from .engine.export.cli import register as register_export

    register_export(sub)
    from .serve.cli import register as register_serve

    register_serve(sub)

    p = sub.add_parser("info", help="print a configuration and its parameter counts")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the paper configuration)")
    p.add_argument("--resolution", type=int, default=128, choices=(64, 128, 256))
    p.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if hasattr(args, "threads"):
        threads.apply(args.threads)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"bridgegan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
