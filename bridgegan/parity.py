"""`bridgegan parity`: the fused kernels' check (``kernels.parity``) and the engine
backends' check (``engine.parity``), one exit status: 1 when any row fails, 2 when a
check could not run."""
from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Both checks, or those ``args.ops`` / ``args.backends`` select."""
    if args.variants:  # refused before the kernels' check, not after it
        if args.ops and not args.backends:
            raise ValueError("--variants names what --backends checks; --ops checks the kernels")
        from .engine.variants import parse_variants

        parse_variants(args.variants)
        args.backends = True  # alone, it asks for those variants only
    if not (args.ops or args.backends):
        args.ops = args.backends = True
    status = 0
    if args.ops:
        from .kernels.parity import main as ops_main

        # OPTION=VALUE: a value starting with "-" is no option of its own there
        argv = [f"--device={args.device}"] if args.device else []
        if args.json:  # beside the backends' rows when both run, else the path given
            argv += [f"--json={args.json + '.ops.json' if args.backends else args.json}"]
        status = ops_main(argv)
    if args.backends:
        from .engine.parity import main as backends_main

        status = max(status, backends_main(args))
    return status
