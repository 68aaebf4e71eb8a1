"""The served models: their inputs and outputs, and how one batch of requests runs on the
engine. Shared by the python-backend model repository (``repo_python``) and the front
(``front``, ``request_checks``); imports none of them.

Every input and output is batch-first (the batch dimension is not listed here):

- ``translate_label``: ``image`` (3, S, S) float32 in [-1, 1], ``target`` (A,) target labels;
  optional ``noise`` (noise_dim,) N(0, 1) or ``seed`` (1,) uint64 (one per row: the noise
  ``Engine.translate(seed=[...])`` draws, so a row's result does not depend on its batch;
  neither: drawn from the server's generator), ``source``
  (A,) source labels (the discriminator's attribute head when absent), ``strength`` (1,)
  (the model's ``config.edit_strength`` when absent).
- ``translate_reference``: ``image``, ``reference`` (3, S, S): one reference per source;
  optional ``attributes`` (A,) bool: which attributes come from the reference (all when
  absent), ``source``, ``strength``.
- ``reconstruct``: ``image``; optional ``noise`` or ``seed``.
- output of each: ``output`` (3, S, S) float32 in [-1, 1].

A batch mixes requests freely: rows that differ in ``strength`` or ``attributes`` run as
separate engine calls. Each request is checked on its own (``check_request``: the engine's
image checks, 0 / 1 labels, noise and strength within the engine's bounds); a bad request
yields a ``ValueError`` in its slot and the others still run. Should the engine still
refuse a batch, its requests run again one at a time, so that only the one it refuses
fails.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.arguments import BOUNDS, check_bounded, draw_noise
from ..engine.export.pbtxt import Port
from ..engine.io import as_batch
from ..engine.options import NOISE_OR_SEED
from ..reference.config import BridgeGANConfig

IMAGE_INPUTS = ("image", "reference")  # checked by the engine: NaN / Inf, range [-1, 1]
LABEL_INPUTS = ("target", "source")  # 0 / 1, as the engine requires
NUMPY_TYPES = {"FP32": np.float32, "BOOL": np.bool_, "UINT64": np.uint64}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]


def model_specs(config: BridgeGANConfig) -> dict[str, ModelSpec]:
    """The served models of a configuration, by name (``_SERVED``: their inputs)."""
    s, a = config.image_size, config.n_attrs
    ports = {p.name: p for p in (
        Port("image", "FP32", (3, s, s)), Port("target", "FP32", (a,)),
        Port("reference", "FP32", (3, s, s)), Port("attributes", "BOOL", (a,), True),
        Port("noise", "FP32", (config.noise_dim,), optional=True),
        Port("seed", "UINT64", (1,), optional=True),
        Port("source", "FP32", (a,), optional=True),
        Port("strength", "FP32", (1,), optional=True))}
    out = (Port("output", "FP32", (3, s, s)),)
    return {name: ModelSpec(name, tuple(ports[p] for p in inputs), out)
            for name, (inputs, _) in _SERVED.items()}


def check_request(spec: ModelSpec, request: Mapping[str, np.ndarray]) -> int:
    """Check one request of ``spec`` on its own (inputs known and present, shapes, the
    engine's image checks, finite values, 0 / 1 labels, the engine's bounds on noise and
    strength, seeds in [0, 2**64), not both noise and seed) before it joins a batch;
    returns its number of rows. Raises ValueError naming the input and what is accepted."""
    ports = {p.name: p for p in spec.inputs}
    unknown = set(request) - set(ports)
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(sorted(unknown))}; {spec.name} takes "
                         f"{', '.join(ports)}")
    if request.get("noise") is not None and request.get("seed") is not None:
        raise ValueError(NOISE_OR_SEED)
    n = None
    for port in spec.inputs:
        if request.get(port.name) is None:
            if not port.optional:
                raise ValueError(f"missing input {port.name!r}")
            continue
        value = np.asarray(request[port.name])
        if value.ndim != len(port.shape) + 1 or value.shape[1:] != port.shape:
            raise ValueError(f"input {port.name!r} must have shape (N, "
                             f"{', '.join(map(str, port.shape))}), got {value.shape}")
        n = value.shape[0] if n is None else n
        if value.shape[0] != n:
            raise ValueError(f"input {port.name!r} has {value.shape[0]} rows, the others {n}")
        if port.name in IMAGE_INPUTS:
            as_batch(torch.tensor(value, dtype=torch.float32), port.shape[-1], port.name,
                     warn=False)
        elif port.name == "seed":
            if value.dtype.kind not in "ui" or (value < 0).any():
                raise ValueError(f"input 'seed' must hold integers in [0, 2**64), got "
                                 f"{value.dtype} {value.reshape(-1)[:4].tolist()}")
        elif port.name in BOUNDS:
            check_bounded(value, f"input {port.name!r}", BOUNDS[port.name])
        elif port.dtype != "BOOL" and not np.isfinite(value).all():
            raise ValueError(f"input {port.name!r} contains NaN or Inf")
        elif port.name in LABEL_INPUTS and not np.isin(value, (0, 1)).all():
            raise ValueError(f"input {port.name!r} must hold 0 (absent) or 1 (present)")
    return n


def _prepare(engine, spec: ModelSpec, request: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """One request's inputs as CPU tensors, checked, with the optional ones filled in."""
    n = check_request(spec, request)
    out = {}
    for port in spec.inputs:
        if request.get(port.name) is not None and port.name != "seed":
            value = np.asarray(request[port.name])
            out[port.name] = (torch.tensor(value.astype(bool)) if port.dtype == "BOOL"
                              else torch.tensor(value, dtype=torch.float32))
    ports = {p.name for p in spec.inputs}
    a = engine.config.n_attrs
    if "noise" in ports and "noise" not in out:
        seed = request.get("seed")
        out["noise"] = draw_noise(n, engine.config.noise_dim, None if seed is None else
                                  [int(s) for s in np.asarray(seed).reshape(-1)])
    if "source" in ports:
        out["has_source"] = torch.full((n,), "source" in out)
        out.setdefault("source", torch.zeros(n, a))
    if "strength" in ports:
        out.setdefault("strength", torch.full((n, 1), engine.config.edit_strength))
    if "attributes" in ports:
        out.setdefault("attributes", torch.ones(n, a, dtype=torch.bool))
    return out


def _by_key(key: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            n: int, size: int) -> torch.Tensor:
    """Run ``fn(rows, key value)`` once per distinct row of ``key`` and scatter the results."""
    values, inverse = torch.unique(key, dim=0, return_inverse=True)
    out = torch.empty(n, 3, size, size)
    for k, value in enumerate(values):
        rows = (inverse == k).nonzero().flatten()
        out[rows] = fn(rows, value).cpu()
    return out


def _sources(engine, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Given source labels, or the attribute head's where a request gave none."""
    src, need = b["source"].clone(), b["has_source"].logical_not()
    if need.any():
        src[need] = engine.classify(b["image"][need]).cpu()
    return src


def _translate_label(engine, b):
    src = _sources(engine, b)
    return _by_key(b["strength"], lambda r, s: engine.translate(
        b["image"][r], b["target"][r], noise=b["noise"][r], strength=s.item(), source=src[r]),
        len(src), engine.config.image_size)


def _translate_reference(engine, b):
    src = _sources(engine, b)
    names = engine.attributes

    def run(r, key):
        attrs = [n for n, take in zip(names, key[1:].tolist()) if take]
        return engine.translate_reference(b["image"][r], b["reference"][r], attributes=attrs,
                                          source=src[r], strength=key[0].item())

    key = torch.cat([b["strength"], b["attributes"].float()], dim=1)
    return _by_key(key, run, len(src), engine.config.image_size)


def _reconstruct(engine, b):
    return engine.reconstruct(b["image"], noise=b["noise"])


# each served model (names.MODELS, a test checks): its inputs (``model_specs`` gives their
# types and shapes) and how a prepared batch of it runs on the engine
_SERVED = {
    "translate_label": (("image", "target", "noise", "source", "strength", "seed"),
                        _translate_label),
    "translate_reference": (("image", "reference", "attributes", "source", "strength"),
                            _translate_reference),
    "reconstruct": (("image", "noise", "seed"), _reconstruct),
}


def run_requests(engine, name: str, requests: Sequence[Mapping[str, np.ndarray]]
                 ) -> list[dict[str, np.ndarray] | ValueError]:
    """Run a batch of requests of model ``name`` in one engine call per distinct
    strength / attribute mask; each slot holds that request's outputs or its error. If the
    engine refuses the batch, its requests run again one at a time (``_run_alone``)."""
    spec = model_specs(engine.config)[name]
    results: list = [None] * len(requests)
    good = []
    for i, request in enumerate(requests):
        try:
            good.append((i, _prepare(engine, spec, request)))
        except ValueError as exc:
            results[i] = _detached(exc)
    if good:
        prepared = [p for _, p in good]
        try:
            outputs = _run_batch(engine, name, prepared)
        except Exception:
            outputs = None
        if outputs is None:  # out of the except: the batch's error is no context of theirs
            outputs = [_run_alone(engine, name, p) for p in prepared]
        for (i, _), out in zip(good, outputs):
            results[i] = out
    return results


def _run_batch(engine, name: str, prepared: list[dict[str, torch.Tensor]]
               ) -> list[dict[str, np.ndarray]]:
    """The outputs of prepared requests (``_prepare``) of model ``name``, run as one batch."""
    batch = {k: torch.cat([p[k] for p in prepared]) for k in prepared[0]}
    _, run = _SERVED[name]
    out = run(engine, batch).float().cpu()
    return [{"output": chunk.numpy()} for chunk in out.split([len(p["image"]) for p in prepared])]


def _run_alone(engine, name: str, prepared: dict[str, torch.Tensor]
               ) -> dict[str, np.ndarray] | ValueError:
    """One prepared request run on its own: its outputs, or the ValueError the engine
    refused it with (any other failure is the server's and propagates)."""
    try:
        return _run_batch(engine, name, [prepared])[0]
    except ValueError as exc:
        return _detached(exc)


def _detached(exc: ValueError) -> ValueError:
    """``exc`` without its traceback, whose frames hold the batch's tensors: kept in
    ``run_requests``' results, it made a cycle through that frame (results, the error, its
    traceback, the frame), so every refused request kept its batch alive until Python's
    cycle collector ran, rarely with torch loaded."""
    return exc.with_traceback(None)
