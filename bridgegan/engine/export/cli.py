"""`bridgegan export onnx | tensorrt | triton-repo`: argument parsing; the work lives in
the modules named for each target (imported when the command runs)."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from ...argtypes import input_file, int_between, output_file, positive_float_up_to, positive_int
from .names import (GRAPHS, MAX_BATCH, MAX_WORKSPACE_GB, ONNX_PRECISIONS, OPSET, PLAN_BATCHES,
                    PREFERRED_BATCHES, QUEUE_DELAY_US, TENSORRT_PRECISIONS, TRITON_INT,
                    WORKSPACE_GB)


def _check_opset(opset: int) -> None:
    """Refuse, before any tracing, an opset outside OPSET..the newest one torch's
    TorchScript exporter writes (a private constant: where a torch lacks it, only the
    lower bound is checked here and the exporter refuses the rest)."""
    import torch
    import torch.onnx._constants as constants

    newest = getattr(constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", None)
    if opset < OPSET or (newest is not None and opset > newest):
        raise ValueError(f"--opset must be from {OPSET} to {newest or 'the newest'} (the newest "
                         f"that torch {torch.__version__}'s ONNX exporter writes), got {opset}")


def _onnx(args: argparse.Namespace) -> int:
    from ...files import read_small_text
    from ...path_checks import check_apart, check_writable_folder
    from ...reference.config import BridgeGANConfig
    from .onnx_export import export_onnx, read_manifest, require_onnx

    _check_opset(args.opset)
    require_onnx("bridgegan export onnx")
    check_writable_folder(args.out, "export folder", replaced=True)
    check_apart(args.out, "export folder", [("checkpoint", args.checkpoint),
                                            ("--expect-config", args.expect_config)])
    expected = None
    if args.expect_config:
        try:
            expected = BridgeGANConfig.from_json(read_small_text(args.expect_config))
        except ValueError as exc:
            raise ValueError(f"--expect-config {args.expect_config}: {exc}") from None

    def graphs(folder) -> dict[str, str]:
        """file -> sha256 of the graphs ``folder``'s manifest lists (hashed by the export,
        which checks every file against it) and the folder holds."""
        manifest = read_manifest(folder) or {"graphs": {}}
        return {name: entry["sha256"][p] for entry in manifest["graphs"].values()
                for p, name in entry.get("files", {}).items()
                if p in entry.get("sha256", {}) and (Path(folder) / name).is_file()}

    before = graphs(args.out)
    out = export_onnx(args.checkpoint, args.out, args.graphs, args.precision, args.opset,
                      expected)
    after = graphs(out)
    kept = [g for g, digest in sorted(after.items()) if before.get(g) == digest]
    wrote = [g for g in sorted(after) if g not in kept]
    if not wrote:  # nothing missing: export_onnx wrote nothing, the manifest included
        print(f"{out}: nothing to write; {', '.join(kept)} already there and current")
    else:
        print(f"{out}: wrote {', '.join(wrote)} and manifest.json"
              + (f"; kept {', '.join(kept)} (already there and current)" if kept else ""))
    return 0


def _tensorrt(args: argparse.Namespace) -> int:
    from ...path_checks import check_apart
    from .tensorrt_build import build_config, build_plan

    check_apart(args.out, "plan file", [("ONNX file", args.onnx)])
    cfg = build_config(args.onnx, args.precision, (args.min_batch, args.opt_batch, args.max_batch),
                       args.workspace_gb)
    plan = build_plan(cfg, args.out, args.timing_cache)
    print(f"wrote {plan} ({cfg.precision}, batch {args.min_batch}..{args.max_batch}, "
          f"{len(cfg.fp32_layers) + len(cfg.fp32_head)} nodes pinned to float32) and {plan}.json")
    return 0


def _triton(args: argparse.Namespace) -> int:
    from ...path_checks import check_apart, check_writable_folder
    from .onnx_export import require_onnx
    from .triton_repo import write_triton_repo

    too_large = [b for b in args.preferred_batch or () if b > args.max_batch]
    if too_large:
        raise ValueError(f"--preferred-batch sizes {' '.join(map(str, too_large))} exceed "
                         f"--max-batch {args.max_batch}: give sizes from 1 to {args.max_batch}")
    require_onnx("bridgegan export triton-repo")
    check_writable_folder(args.dir, "model repository folder")
    check_apart(args.dir, "model repository folder", [("checkpoint", args.checkpoint),
                                                      ("--onnx-dir", args.onnx_dir)])
    folders = write_triton_repo(args.checkpoint, args.dir, args.plan or (), args.precision,
                                args.onnx_dir, args.max_batch,
                                args.preferred_batch or PREFERRED_BATCHES,
                                args.max_queue_delay_us,
                                max_queue_size=args.max_queue_size)
    print(f"wrote {', '.join(f.name for f in folders)} to {args.dir}; serve with: "
          f"tritonserver --model-repository {shlex.quote(os.path.abspath(args.dir))}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Export to the target given on the command line."""
    return args.target_func(args)


# argparse types of a Triton model repository's counts: within its int32 fields
TRITON_COUNT = int_between(0, TRITON_INT)
TRITON_BATCH = int_between(1, TRITON_INT)


def add_queue_options(p: argparse.ArgumentParser, *aliases: str) -> None:
    """``--max-queue-delay-us`` (also named ``aliases``) and ``--max-queue-size``: the
    dynamic batching of a Triton model repository's models (export, serve)."""
    p.add_argument("--max-queue-delay-us", *aliases, type=TRITON_COUNT,
                   default=QUEUE_DELAY_US, help="how long a request may wait for others to "
                                                "batch with, >= 0 (default: %(default)s)")
    p.add_argument("--max-queue-size", type=TRITON_COUNT, default=0,
                   help="requests a model's queue holds; more are refused at once instead "
                        "of waiting behind them (`bridgegan serve` answers them HTTP 503 with "
                        "Retry-After, gRPC UNAVAILABLE); 0: no bound (default)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the export targets and their options to ``p``."""
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)

    t = targets.add_parser("onnx", help="the inference graph as ONNX (whole programs and "
                                        "stages, fp32 and fp16; D's attribute head, "
                                        "classify, in fp32) plus manifest.json")
    t.add_argument("checkpoint", help="checkpoint folder")
    t.add_argument("out", help="export folder (new, empty, or an export of this checkpoint)")
    t.add_argument("--precision", nargs="+", choices=list(ONNX_PRECISIONS),
                   default=list(ONNX_PRECISIONS), metavar="PRECISION",
                   help=f"{', '.join(ONNX_PRECISIONS)} (default: all)")
    t.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS), metavar="GRAPH",
                   help=f"{', '.join(GRAPHS)} (default: all)")
    t.add_argument("--opset", type=int, default=OPSET,
                   help="%(default)s up to the newest torch's ONNX exporter writes "
                        "(default: %(default)s)")
    t.add_argument("--expect-config", metavar="CONFIG_JSON", type=input_file,
                   help="refuse a checkpoint whose configuration differs from this config.json")
    t.set_defaults(target_func=_onnx)

    t = targets.add_parser("tensorrt", help="a TensorRT plan (+ JSON sidecar) from an ONNX "
                                            "graph; needs TensorRT 10 and a CUDA device")
    t.add_argument("onnx", type=input_file,
                   help="an ONNX file from `bridgegan export onnx` (float32 variant)")
    t.add_argument("out", type=output_file, help="plan file to write (the sidecar is OUT.json)")
    t.add_argument("--precision", choices=TENSORRT_PRECISIONS, default="fp16",
                   help="the plan's precision (default: %(default)s)")
    for bound, what, default in zip(("min", "opt", "max"), ("smallest", "tuned-for", "largest"),
                                    PLAN_BATCHES):
        t.add_argument(f"--{bound}-batch", type=positive_int, default=default,
                       help=f"the plan profile's {what} batch (default: %(default)s)")
    t.add_argument("--workspace-gb", type=positive_float_up_to(MAX_WORKSPACE_GB),
                   default=WORKSPACE_GB,
                   help=f"TensorRT's workspace memory pool limit in GiB, > 0 and <= "
                        f"{MAX_WORKSPACE_GB:g} (default: %(default)s)")
    t.add_argument("--timing-cache",
                   help="timing cache file (default: timing_<GPU kind>.cache beside OUT)")
    t.set_defaults(target_func=_tensorrt)

    t = targets.add_parser("triton-repo", help="a Triton model repository serving "
                                               "translate_label and translate_reference")
    t.add_argument("checkpoint", help="checkpoint folder")
    t.add_argument("dir", help="model repository folder")
    t.add_argument("--plan", action="append", help="a TensorRT plan replacing the ONNX model of "
                                                   "the graph its sidecar names (repeatable)")
    t.add_argument("--precision", choices=list(ONNX_PRECISIONS), default="fp32",
                   help="ONNX variant to serve (default: %(default)s)")
    t.add_argument("--onnx-dir", help="export folder to take the graphs from or export into "
                                      "(default: the export cache)")
    t.add_argument("--max-batch", type=TRITON_BATCH, default=MAX_BATCH,
                   help="largest batch Triton forms and accepts, >= 1 (default: %(default)s; "
                        "a --plan keeps its profile's)")
    t.add_argument("--preferred-batch", type=TRITON_BATCH, nargs="+",
                   help="batch sizes dynamic batching prefers, each 1 to --max-batch "
                        f"(default: {' '.join(map(str, PREFERRED_BATCHES))}, those up to "
                        "--max-batch)")
    add_queue_options(t, "--queue-delay-us")  # this command's earlier name of it
    t.set_defaults(target_func=_triton)
