"""Engine variants: one engine configuration (backend, dtype, layout, CUDA graphs, cuDNN's
algorithm choice, side streams, graph rewrites turned off) as `bridgegan bench` times it
and `bridgegan parity --backends` checks it, and each device's default tables of both."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import dtype_name
from ..reference.model import BridgeGAN
from .backends import AUTO, BACKENDS, REGISTRY
from .engine import Engine
from .placement import backend_dtype
from .graph import Rewrites
from .options import VARIANT_FORM, VARIANT_TAGS

# The table measured when no variants are given, per device type. CPU: the backends side
# by side in float32 (issue 14 item 9), then torch and compile in bf16 channels_last
# (AMX CPUs: 2.1-2.7x and 5.5-7.2x the reference). CUDA: the reference in float32 and
# fp16, the torch backend, and what backend="auto" runs there with dtype="auto" (triton,
# fp16, channels_last, CUDA graphs; the default dtype is float32).
DEFAULT_VARIANTS = {
    "cpu": "reference:float32,torch:float32,onnxruntime:float32,compile:float32,torch:bf16:cl,"
           "compile:bf16:cl",
    "cuda": "reference:float32,reference:fp16,torch:float32,torch:fp16:cl,"
            "triton:fp16:cl:graphs",
}

# The table `bridgegan parity --backends` checks, per device type: the backends in float32,
# the low-precision dtypes, CUDA graphs and side streams in each combination the engine
# offers, each row in the layout the engine takes by default (``default_channels_last``:
# channels_last on CUDA, and for bf16 on a CPU); never compile or tensorrt (their builds
# take minutes: `bridgegan bench` checks every variant it times).
PARITY_VARIANTS = {
    "cpu": "torch:float32,triton:float32,torch:bf16:cl,onnxruntime:float32",
    "cuda": "torch:float32:cl,triton:float32:cl,torch:fp16:cl:graphs,triton:fp16:cl,"
            "triton:fp16:cl:graphs,triton:fp16:cl:graphs:streams,triton:fp16:cl:streams,"
            "triton:bf16:cl:graphs,reference:fp16:cl,onnxruntime:float32:cl",
}


@dataclass(frozen=True)
class Variant:
    """One engine configuration, written ``backend:dtype[:cl][:graphs][:heuristics]
    [:streams][:-REWRITE ...]`` (``parse``), named for its rows (``name``)."""

    backend: str
    dtype: str
    channels_last: bool = False
    cuda_graphs: bool = False
    heuristics: bool = False  # cuDNN's heuristic algorithm choice, not its search
    streams: bool = False  # the trunk and the latent codes on CUDA side streams
    without: tuple[str, ...] = ()  # graph rewrites turned off, for an A/B of each

    TAGS, FORM = VARIANT_TAGS, VARIANT_FORM

    @property
    def name(self) -> str:
        flags = (self.channels_last, self.cuda_graphs, self.heuristics, self.streams)
        return "-".join([self.backend, self.dtype] + [t for t, on in zip(self.TAGS, flags) if on]
                        + [f"no_{r}" for r in self.without])

    def resolved_dtype(self, device: torch.device) -> str:
        """torch's name of the dtype on ``device`` (aliases read, ``auto`` resolved)."""
        return dtype_name(backend_dtype(self.backend, self.dtype, device))

    @property
    def rewrites(self) -> Rewrites:
        return Rewrites.without(*self.without)

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """backend:dtype[:cl][:graphs][:heuristics][:streams][:-REWRITE ...], e.g.
        triton:fp16:cl:graphs, or triton:fp16:cl:-transposed_up (that rewrite off)."""
        parts = text.split(":")
        tags = [p for p in parts[2:] if not p.startswith("-")]
        without = tuple(p[1:] for p in parts[2:] if p.startswith("-"))
        if len(parts) < 2 or any(p not in cls.TAGS for p in tags):
            raise ValueError(f"variant {text!r}: expected {cls.FORM}")
        if parts[0] == AUTO:  # a row is one named backend (auto picks by the device)
            raise ValueError(f"variant {text!r}: {AUTO!r} is not a variant; name the "
                             f"backend, one of {', '.join(BACKENDS)}")
        if parts[0] not in BACKENDS:
            raise ValueError(f"variant {text!r}: unknown backend {parts[0]!r}; backends: "
                             f"{', '.join(BACKENDS)}")
        if without and not REGISTRY[parts[0]].rewritten:
            raise ValueError(f"variant {text!r}: the {parts[0]} backend runs the unmodified "
                             "model; -REWRITE tags apply to the rewritten graph's backends")
        try:
            Rewrites.without(*without)
        except ValueError as exc:
            raise ValueError(f"variant {text!r}: {exc}") from None
        return cls(parts[0], parts[1], *(t in tags for t in cls.TAGS), without=without)

    def engine(self, model: BridgeGAN, device: str | torch.device) -> Engine:
        """This variant's Engine for ``model`` on ``device``."""
        return Engine(model, backend=self.backend, dtype=self.dtype, device=device,
                      channels_last=self.channels_last, cuda_graphs=self.cuda_graphs,
                      cudnn_benchmark=False if self.heuristics else None,
                      streams=self.streams, rewrites=self.rewrites)


def check_once(what: str, items) -> None:
    """Refuse a list (of variants by name, batches...) that gives an item twice: bench and
    parity make one row of each."""
    repeated = sorted({str(x) for x in items if items.count(x) > 1})
    if repeated:
        raise ValueError(f"each {what} may be given once; repeated: {', '.join(repeated)}")


def parse_variants(text: str) -> list[Variant]:
    """A comma list of variants (``Variant.parse``)."""
    return [Variant.parse(v) for v in text.split(",")]


def default_variants(device: str | torch.device) -> list[Variant]:
    """The default table of `bridgegan bench` on a device type (DEFAULT_VARIANTS)."""
    return parse_variants(DEFAULT_VARIANTS[torch.device(device).type])


def parity_variants(device: str | torch.device) -> list[Variant]:
    """The table of `bridgegan parity --backends` on a device type (PARITY_VARIANTS)."""
    return parse_variants(PARITY_VARIANTS[torch.device(device).type])
