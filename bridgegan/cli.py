"""The `bridgegan` command. Each subcommand's work lives in the module named for it;
this file only parses arguments and dispatches (imports stay lazy so --help is fast)."""
from __future__ import annotations

import argparse
import sys


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
        args.ops = True
    status = 0
    if args.ops:
        from .kernels.parity import main as ops_main

        status |= ops_main(["--device", args.device] if args.device else [])
    if args.backends:
        from .engine.parity import main as backends_main

        status |= backends_main(args)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridgegan",
        description="BridgeGAN multi-attribute face editing: reference model, fused kernels, "
                    "inference engine.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print a configuration and its parameter counts")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the paper configuration)")
    p.add_argument("--resolution", type=int, default=128, choices=(64, 128, 256))
    p.set_defaults(func=_info)

    p = sub.add_parser("parity", help="check kernels / backends against a float64 reference; "
                                      "exit status 1 when any result is outside tolerance")
    p.add_argument("--ops", action="store_true", help="the fused SPADE / instance-norm kernels")
    p.add_argument("--backends", action="store_true", help="every available engine backend")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=_parity)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"bridgegan {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
