"""The inference programs of spec sections 4 and 7, written once over four stages.

A *stages* object has ``trunk(x) -> h`` (source-only, reusable across edits of one
source), ``encode(x, d) -> S``, ``map(r, d) -> S`` and ``decode(h, S | LatentMix) ->
images``. The reference networks (``BridgeGAN.stages``), the rewritten graph
(``engine.graph.InferenceGraph``), every engine backend and the exported stage graphs
provide them, and the reference model, the engine, the ONNX export and the training
objective all compose them here:

    S_rand = M(r, d) + E(x, -d)             label-based (d = 0: reconstruction)
    S_ref  = mean_k E(x_r^k, d) + E(x, -d)  reference-based
    S_int  = a S_rand + (1 - a) S_ref       interpolation (or blended SPADE modulations)

E(x, -d), the source's part of every code, is an argument of the code functions so that
it is computed once per source and edit (and, in training, in one batched encoder call
with the other terms). The trunk and the codes do not depend on each other: the programs
hand them to ``branches``, which runs them concurrently where the stages object can.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layers import LatentMix

Tensor = torch.Tensor
LEVELS = ("latent", "spade")  # interpolation: of the codes, or of the SPADE modulations


@dataclass(frozen=True)
class Stages:
    """The four stage functions the programs compose."""

    trunk: Callable  # x -> h
    encode: Callable  # (x, d) -> S
    map: Callable  # (r, d) -> S
    decode: Callable  # (h, S or LatentMix) -> images


# ----- latent codes (spec section 4) --------------------------------------------------
def source_code(st, x: Tensor, d: Tensor) -> Tensor:
    """E(x, -d): the source's part of every code of the edit d."""
    return st.encode(x, -d)


def encode_references(st, refs: Tensor, d: Tensor) -> Tensor:
    """E(x_r, d) of refs (N, 3, S, S), one reference per source; or of refs
    (K, N, 3, S, S), K per source, in one encoder call: (K, N, ...)."""
    if refs.dim() == 4:
        return st.encode(refs, d)
    k, n = refs.shape[:2]
    return st.encode(refs.flatten(0, 1), d.repeat(k, 1)).unflatten(0, (k, n))


def label_code(st, r: Tensor, d: Tensor, source: Tensor) -> Tensor:
    """S_rand = M(r, d) + E(x, -d), ``source`` being E(x, -d) (``source_code``)."""
    return st.map(r, d) + source


def reference_code(targets: Tensor, source: Tensor) -> Tensor:
    """S_ref = mean_k E(x_r^k, d) + E(x, -d), from the references' codes ``targets``
    (``encode_references``: (N, ...) or (K, N, ...)) and ``source``."""
    return (targets.mean(0) if targets.dim() == source.dim() + 1 else targets) + source


def blend(a, s_rand: Tensor, s_ref: Tensor) -> Tensor:
    """S_int = a S_rand + (1 - a) S_ref; ``a`` a number or one weight per sample (N,)."""
    if isinstance(a, Tensor):
        a = a.to(s_rand).view(-1, 1, 1, 1)
    return a * s_rand + (1 - a) * s_ref


# ----- programs (spec section 7) ------------------------------------------------------
def branches(st, *thunks: Callable[[], Tensor]) -> list[Tensor]:
    """The results of independent parts of a program: concurrently through
    ``st.concurrent(thunks)`` where the stages object has it (the engine's CUDA streams,
    ``engine.streams``), else one after another."""
    run = getattr(st, "concurrent", None)
    return run(thunks) if run is not None else [t() for t in thunks]


def in_region(st, h: Tensor, code: Tensor, rec_code: Tensor, m: Tensor) -> Tensor:
    """An edit confined to the region mask ``m`` (N, 1, S, S): decoded from the edited
    code inside the mask and the reconstruction's (d = 0) outside, mixed at the code's
    size (S is spatial), then composited over the reconstruction's pixels with ``m``:
    the generator's 4x4 and 8x8 layers would otherwise carry the edit across the
    border (about half of it, in the shipped 32 px model)."""
    m_code = F.avg_pool2d(m, m.shape[-1] // code.shape[-1])
    edit = st.decode(h, m_code * code + (1 - m_code) * rec_code)
    return m * edit + (1 - m) * st.decode(h, rec_code)


def translate_label(st, x: Tensor, d: Tensor, r: Tensor, region: Tensor | None = None
                    ) -> Tensor:
    """Label-based translation (d = 0: reconstruction), confined to ``region`` if given."""
    def code(e):
        return lambda: label_code(st, r, e, source_code(st, x, e))

    if region is None:
        h, s = branches(st, lambda: st.trunk(x), code(d))
        return st.decode(h, s)
    h, s, rec = branches(st, lambda: st.trunk(x), code(d), code(torch.zeros_like(d)))
    return in_region(st, h, s, rec, region)


LABEL_BATCH_DIMS = (0, 0, 0, 0)  # translate_label's x, d, r, region


def translate_reference(st, x: Tensor, refs: Tensor, d: Tensor,
                        region: Tensor | None = None) -> Tensor:
    """Reference-based translation (refs: see ``encode_references``), confined to
    ``region`` if given."""
    def code(e):
        return lambda: reference_code(encode_references(st, refs, e), source_code(st, x, e))

    if region is None:
        h, s = branches(st, lambda: st.trunk(x), code(d))
        return st.decode(h, s)
    h, s, rec = branches(st, lambda: st.trunk(x), code(d), code(torch.zeros_like(d)))
    return in_region(st, h, s, rec, region)


REFERENCE_BATCH_DIMS = (0, 1, 0, 0)  # translate_reference's x, refs (K, N, ...), d, region


def check_level(level: str) -> str:
    """``level`` of an interpolation, refused unless "latent" or "spade"."""
    if level not in LEVELS:
        raise ValueError(f"level must be 'latent' or 'spade', got {level!r}")
    return level


def decode_blend(st, h: Tensor, s_rand: Tensor, s_ref: Tensor, a, level: str = "latent"
                 ) -> Tensor:
    """The images between S_rand (a = 1) and S_ref (a = 0): of the blended code (level
    "latent", the training form) or with every SPADE layer blending its modulations
    under both codes ("spade", the official test's SPADE-level blend, with S_rand in
    the training form: the official test feeds M(r, d) alone)."""
    if check_level(level) == "latent":
        return st.decode(h, blend(a, s_rand, s_ref))
    return st.decode(h, LatentMix((s_rand, s_ref), (a, 1 - a)))


def interpolate(st, x: Tensor, refs: Tensor, d: Tensor, r: Tensor, alphas: Sequence,
                level: str = "latent", region: Tensor | None = None) -> list[Tensor]:
    """One image batch per alpha between label-based (1) and reference-based (0)
    translation; the trunk and the codes are computed once. ``region`` confines the
    blended edit (level "latent" only: a ValueError with level "spade")."""
    if check_level(level) != "latent" and region is not None:
        raise ValueError("a region confines latent-level interpolation: use level='latent'")
    h, src = st.trunk(x), source_code(st, x, d)
    s_rand = label_code(st, r, d, src)
    s_ref = reference_code(encode_references(st, refs, d), src)
    if region is None:
        return [decode_blend(st, h, s_rand, s_ref, a, level) for a in alphas]
    zero = torch.zeros_like(d)
    src0 = source_code(st, x, zero)
    rec_rand = label_code(st, r, zero, src0)
    rec_ref = reference_code(encode_references(st, refs, zero), src0)
    return [in_region(st, h, blend(a, s_rand, s_ref), blend(a, rec_rand, rec_ref), region)
            for a in alphas]


def interleave(t: Tensor, k: int) -> Tensor:
    """Each of t's rows k times, a row's copies adjacent (rows i * k .. i * k + k - 1)."""
    return t.unsqueeze(1).expand(-1, k, *t.shape[1:]).flatten(0, 1)


def translate_samples(st, x: Tensor, d: Tensor, r: Tensor,
                      repeat: Callable[[Tensor, int], Tensor] = interleave) -> Tensor:
    """K noise samples r (N, K, noise) of the label-based edits d of sources x:
    (N, K, 3, S, S). The trunk and E(x, -d) run once per source; the samples' codes
    and decodes run as one batch of N K rows. ``repeat`` as in ``edit_strip``."""
    n, k = r.shape[:2]
    h, src = branches(st, lambda: st.trunk(x), lambda: source_code(st, x, d))
    s = label_code(st, r.flatten(0, 1), repeat(d, k), repeat(src, k))
    return st.decode(repeat(h, k), s).unflatten(0, (n, k))


SAMPLES_BATCH_DIMS = (0, 0, 0)  # translate_samples's x, d, r (N, K, noise)


def edit_strip(st, x: Tensor, d: Tensor, r: Tensor, cache: bool = True,
               repeat: Callable[[Tensor, int], Tensor] = interleave) -> Tensor:
    """Label-based edits d, r (K rows) of one source x (1, 3, S, S). With ``cache`` the
    trunk runs once and its output is repeated; ``repeat(t, k)`` makes k copies of each
    row, adjacent (``interleave``; the engine also lays them out in its memory format)."""
    k = d.shape[0]
    xk = repeat(x, k)
    h = repeat(st.trunk(x), k) if cache else st.trunk(xk)
    return st.decode(h, label_code(st, r, d, source_code(st, xk, d)))
