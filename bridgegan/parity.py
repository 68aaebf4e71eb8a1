"""`bridgegan parity`: the fused kernels' check (``kernels.parity``) and the engine
backends' check (``engine.parity``), one exit status: 1 when any row fails, 2 when a
check could not run."""
from __future__ import annotations

import argparse

from .argtypes import output_file


def run(args: argparse.Namespace) -> int:
    """Both checks, or those ``args.ops`` / ``args.backends`` select."""
    if args.device:
        from .devices import check_device

        check_device(args.device)
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
        from .kernels.parity import run_ops

        # the kernels' rows beside the backends' when both run, else at the path given
        ops_json = args.json + ".ops.json" if args.json and args.backends else args.json
        if ops_json and ops_json != args.json:
            try:
                output_file(ops_json)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"--json {args.json}: the kernels' rows go beside it, and {exc}"
                                 ) from None
        status = run_ops(args.device, json=ops_json)
    if args.backends:
        from .engine.parity import main as backends_main

        status = max(status, backends_main(args))
    return status
