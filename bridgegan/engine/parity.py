"""`bridgegan parity --backends`: every available backend against a float64 reference.

The reference is the unmodified model in float64 on the same device (weights and inputs
upcast). Each row passes at its dtype's end-to-end image limit in ``numerics.TOLERANCES``
(float32: max abs; float16 / bfloat16: PSNR), with TF32 switched off while the rows run
(it is a 5e-4-class approximation, see design.md). NaN never passes. Exit status 1 when
any row fails.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..numerics import errors, float64_call, float64_model, no_tf32, psnr, tolerance
from ..reference.config import BridgeGANConfig
from ..reference.model import BridgeGAN
from .backends import BackendUnavailable
from .engine import Engine


def default_cases(device: torch.device) -> list[tuple[str, str, bool, bool]]:
    """(backend, dtype, cuda_graphs, streams) rows for a device."""
    if device.type == "cuda":
        return [("torch", "float32", False, False), ("triton", "float32", False, False),
                ("torch", "fp16", True, False), ("triton", "fp16", False, False),
                ("triton", "fp16", True, False), ("triton", "fp16", True, True),
                ("triton", "fp16", False, True), ("triton", "bf16", True, False),
                ("reference", "fp16", False, False), ("onnxruntime", "float32", False, False)]
    return [("torch", "float32", False, False), ("triton", "float32", False, False),
            ("torch", "bf16", False, False), ("onnxruntime", "float32", False, False)]


def check_backends(device: str | None = None, config: BridgeGANConfig | None = None,
                   batch: int = 4, cases=None, verbose: bool = True) -> list[dict]:
    """One row per (backend, dtype, cuda_graphs, streams) case: the engine's label-based translation
    against the float64 reference model; a backend that cannot run here is a SKIP row."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = config or BridgeGANConfig.paper()
    torch.manual_seed(0)
    model = BridgeGAN(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    ys = torch.randint(0, 2, (batch, cfg.n_attrs), generator=gen).float()
    noise = torch.randn(batch, cfg.noise_dim, generator=gen)
    ref64 = float64_model(model).to(dev)
    with torch.no_grad():
        want = float64_call(ref64.translate, x.to(dev), ys.to(dev), (1 - ys).to(dev),
                            noise=noise.to(dev)).cpu()
    rows = []
    for backend, dtype, graphs, streams in cases or default_cases(dev):
        name = f"{backend}-{dtype}" + ("-graphs" if graphs else "") + ("-streams" if streams else "")
        try:
            eng = Engine(model, backend=backend, dtype=dtype, device=dev, cuda_graphs=graphs,
                         streams=streams)
        except BackendUnavailable as exc:
            rows.append(dict(case=name, status="SKIP", reason=str(exc)))
            if verbose:
                print(f"{name:28s} SKIP  {exc}")
            continue
        with no_tf32():
            out = eng.translate(x, 1 - ys, noise=noise, source=ys).cpu()
        max_abs, rel = errors(out, want)
        p = psnr(out.double().flatten()[None], want.flatten()[None]).item()
        tol = tolerance(eng.dtype)
        ok = bool(torch.isfinite(out).all()) and tol.image_ok(max_abs, p)
        rows.append(dict(case=name, backend=backend, dtype=dtype, cuda_graphs=graphs, streams=streams,
                         max_abs=max_abs, rel=rel, psnr_db=p, limit=tol.image_limit,
                         status="PASS" if ok else "FAIL", device=str(dev)))
        if verbose:
            print(f"{name:28s} {'PASS' if ok else 'FAIL'}  max abs {max_abs:.3e}  rel {rel:.3e}  "
                  f"PSNR {p:6.1f} dB  ({tol.image_limit})")
    return rows


def main(args: argparse.Namespace) -> int:
    """Entry from the CLI: uses args.device, args.resolution, args.batch, args.json."""
    cfg = BridgeGANConfig.preset(args.resolution) if args.resolution else None
    print(f"backend parity against the float64 reference model "
          f"({(cfg or BridgeGANConfig.paper()).image_size}px, batch {args.batch})")
    rows = check_backends(args.device, cfg, batch=args.batch)
    if getattr(args, "json", None):
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return int(any(r["status"] == "FAIL" for r in rows))
