"""`bridgegan parity --backends`: the engine's backends against a float64 reference, in the
variants of the device's parity table (``variants.PARITY_VARIANTS``: never compile or
tensorrt, `bridgegan bench` checks every variant it times) or those given.

The reference is the unmodified model in float64 on the same device (weights and inputs
upcast). Each row passes at its dtype's end-to-end image limit in ``numerics.TOLERANCES``
(float32: max abs; float16 / bfloat16: PSNR), with TF32 switched off while the rows run
(it is a 5e-4-class approximation, see design.md). NaN never passes. Exit status 1 when
any row fails.
"""
from __future__ import annotations

import argparse
import time

import torch

from ..files import RowsFile
from ..numerics import errors, float64_call, float64_model, psnr, tolerance
from ..torch_flags import no_tf32
from ..reference.config import BridgeGANConfig
from ..reference.model import BridgeGAN
from .backends import BackendUnavailable
from .engine import Engine
from .variants import Variant, check_once, parity_variants, parse_variants


def parity_inputs(cfg: BridgeGANConfig, batch: int, seed: int = 1):
    """Seeded source images in [-1, 1], their labels and noise (CPU tensors)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    ys = torch.randint(0, 2, (batch, cfg.n_attrs), generator=gen).float()
    return x, ys, torch.randn(batch, cfg.noise_dim, generator=gen)


def reference_translation(model: BridgeGAN, device: torch.device, inputs) -> torch.Tensor:
    """The float64 reference model's label-based translation of ``inputs`` (every label
    flipped), computed on ``device``, returned on the CPU."""
    x, ys, noise = (t.to(device) for t in inputs)
    ref64 = float64_model(model).to(device)
    with torch.no_grad():
        return float64_call(ref64.translate, x, ys, 1 - ys, noise=noise).cpu()


def compare(eng: Engine, inputs, want: torch.Tensor) -> dict:
    """The engine's translation of ``inputs`` against ``want`` at its dtype's image limit
    (TF32 off while it runs): max_abs, rel, psnr_db (the worst image's), limit, ok (NaN never
    passes) and the call's wall seconds (the first call at that shape compiles or captures
    what it needs)."""
    x, ys, noise = inputs
    with no_tf32():
        t0 = time.perf_counter()
        out = eng.translate(x, 1 - ys, noise=noise, source=ys).cpu()
        seconds = time.perf_counter() - t0
    max_abs, rel = errors(out, want)
    p = psnr(out.double(), want).min().item()
    tol = tolerance(eng.dtype)
    ok = bool(torch.isfinite(out).all()) and tol.image_ok(max_abs, p)
    return dict(max_abs=max_abs, rel=rel, psnr_db=p, limit=tol.image_limit, ok=ok,
                seconds=seconds)


def check_backends(device: str | None = None, config: BridgeGANConfig | None = None,
                   batch: int = 4, variants: list[Variant] | None = None, verbose: bool = True,
                   written=None) -> list[dict]:
    """One row per variant (None: the device's parity table): the engine's label-based
    translation against the float64 reference model; a variant that cannot run here (its
    backend absent, an option this device or dtype does not take) is a SKIP row that says
    why. ``written``: the JSON file of the rows (``files.RowsFile``: the rows so far in
    ``written.partial`` after each row, ``written`` once all are in)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = variants or parity_variants(dev)
    check_once("variant", [v.name for v in variants])
    cfg = config or BridgeGANConfig.paper()
    torch.manual_seed(0)
    model = BridgeGAN(cfg).eval()
    inputs = parity_inputs(cfg, batch)
    want = reference_translation(model, dev, inputs)
    rows, report = [], RowsFile(written)

    def add(row: dict) -> None:
        rows.append(row)
        report.save(rows)
    for v in variants:
        case = dict(case=v.name, backend=v.backend, dtype=v.dtype, channels_last=v.channels_last,
                    cuda_graphs=v.cuda_graphs, streams=v.streams, device=str(dev))
        eng = None
        try:
            eng = v.engine(model, dev)
            result = compare(eng, inputs, want)
        except Exception as exc:  # a CUDA-graph capture error, say: this row fails, the
            # other rows still run and the table is still written; a variant this device
            # or dtype cannot build is skipped, saying why
            skip = eng is None and isinstance(exc, (BackendUnavailable, ValueError))
            status, reason = ("SKIP", str(exc)) if skip else ("FAIL",
                                                             f"{type(exc).__name__}: {exc}")
            add(dict(case, status=status, reason=reason))
            if verbose:
                print(f"{v.name:32s} {status}  {reason}")
            continue
        add(dict(case, max_abs=result["max_abs"], rel=result["rel"],
                 psnr_db=result["psnr_db"], limit=result["limit"],
                 status="PASS" if result["ok"] else "FAIL"))
        if verbose:
            print(f"{v.name:32s} {'PASS' if result['ok'] else 'FAIL'}  max abs "
                  f"{result['max_abs']:.3e}  rel {result['rel']:.3e}  PSNR "
                  f"{result['psnr_db']:6.1f} dB  ({result['limit']})")
    report.done(rows)
    return rows


def main(args: argparse.Namespace) -> int:
    """Entry from the CLI: uses args.device, args.variants, args.resolution, args.batch,
    args.json."""
    variants = parse_variants(args.variants) if args.variants else None
    cfg = BridgeGANConfig.preset(args.resolution) if args.resolution else None
    print(f"backend parity against the float64 reference model "
          f"({(cfg or BridgeGANConfig.paper()).image_size}px, batch {args.batch})")
    rows = check_backends(args.device, cfg, batch=args.batch, variants=variants,
                          written=getattr(args, "json", None))
    count = {s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{count['PASS']}/{len(rows)} rows pass" + (f", {count['FAIL']} FAIL" if count["FAIL"]
                                                      else "")
          + (f", {count['SKIP']} skipped" if count["SKIP"] else ""))
    if getattr(args, "json", None):
        print(f"wrote {args.json}")
    return int(count["FAIL"] > 0)
