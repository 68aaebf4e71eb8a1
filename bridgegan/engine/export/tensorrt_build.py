"""TensorRT plans from the exported ONNX graphs: ``bridgegan export tensorrt ONNX OUT``.

Two halves. :func:`build_config` computes the whole build as plain data from the ONNX
file with the ``onnx`` package, so tests check it without TensorRT:

- an optimisation profile: every input's (min, opt, max) shape over a batch range;
- builder flags: ``FP16`` or ``BF16`` with ``OBEY_PRECISION_CONSTRAINTS``; float32 plans
  clear ``TF32`` (they must meet the float32 image tolerance);
- the layers pinned to float32 in fp16 / bf16 plans: the graph's InstanceNormalization
  nodes (their statistics overflow in fp16; design.md keeps statistics in float32), and
  E's head, which the torch engine runs in float32 in every dtype (``fold_labels`` adds
  the labels' constant there, tens to hundreds of times a channel's spread: in bf16 it
  rounds the image part away).

:func:`build_plan` applies it with the TensorRT 10 Python API (network from the ONNX
parser with native instance norm, pinned layers get ``precision`` and output types
float32, the profile, a timing cache file loaded and saved) and writes the plan with a
JSON sidecar ``<plan>.json``: TensorRT version, GPU name, compute capability, precision,
profile, pinned layers, the source graph and its sha256, and the plan's own sha256 (a
sidecar vouches only for the plan it was written with: not for a plan copied over it, nor
one a build wrote before it was killed). Plans only run on the GPU and
TensorRT version they were built with: :func:`read_sidecar` and :func:`check_sidecar`
(:func:`sidecar_problems` is the pure check) tell, for the engine's ``tensorrt`` backend
(``engine.backends.tensorrt``, which runs plans) and the Triton model repository.

Build from the float32 graphs: the flag chooses the reduced precision, TensorRT picks
per layer, and the pinned layers stay float32.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ... import __version__
from ...files import read_small_text, sha256_hex, write_file_atomic, write_files_atomic
from ..backends.base import BackendUnavailable
from .names import (HEADS, MAX_WORKSPACE_GB, PLAN_BATCHES, TENSORRT_PRECISIONS, TIMING_CACHE,
                    WORKSPACE_GB)
from .onnx_export import io_spec, load_onnx

TRT_EXTRA = "pip install 'bridgegan[tensorrt]'"
E_HEAD_SCOPE = re.compile(r"/e_head(_\d+)?/")  # E's head's ONNX scopes (two where E runs twice)
MATCH_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")


class PlanMismatch(RuntimeError):
    """A plan was built for another GPU or TensorRT version."""


@dataclass(frozen=True)
class TrtBuildConfig:
    """Everything a plan build needs, as data."""

    onnx: str
    graph: str  # the bridgegan graph name from the ONNX metadata
    precision: str
    profile: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    flags: tuple[str, ...]  # trt.BuilderFlag names to set
    clear_flags: tuple[str, ...]  # ... and to clear
    fp32_layers: tuple[str, ...]  # ONNX InstanceNormalization node names pinned to float32
    fp32_head: tuple[str, ...]  # ... and E's head's nodes (but constants)
    workspace_bytes: int

    @property
    def batch_range(self) -> tuple[int, int]:
        return batch_range(self.profile)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def batch_range(profile: Mapping) -> tuple[int, int]:
    """(least, largest) batch of an optimisation profile (a build's, or a sidecar's)."""
    shapes = next(iter(profile.values()))
    return shapes[0][0], shapes[2][0]


def build_config(onnx_path: str | os.PathLike, precision: str = "fp16",
                 batch: tuple[int, int, int] = PLAN_BATCHES,
                 workspace_gb: float = WORKSPACE_GB) -> TrtBuildConfig:
    """The build of ``onnx_path`` at ``precision`` over batch sizes (min, opt, max)."""
    if precision not in TENSORRT_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TENSORRT_PRECISIONS)}, "
                         f"got {precision!r}")
    if not 0 < workspace_gb <= MAX_WORKSPACE_GB:
        raise ValueError(f"--workspace-gb must be above 0 and at most {MAX_WORKSPACE_GB}, got "
                         f"{workspace_gb:g}")
    lo, opt, hi = batch
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {tuple(batch)}")
    model = load_onnx(onnx_path)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("bridgegan.precision", "fp32") != "fp32":
        raise ValueError(f"{onnx_path} is the {meta['bridgegan.precision']} variant of its graph; "
                         f"build plans from the float32 graph (`bridgegan export onnx "
                         f"--precision fp32`): --precision chooses the plan's precision")
    if meta.get("bridgegan.graph") in HEADS and precision != "fp32":
        raise ValueError(f"{onnx_path} is D's attribute head ({meta['bridgegan.graph']}), "
                         f"whose labels are thresholds at 0 that reduced precision would tip: "
                         f"build it with --precision fp32")
    profile = {}
    for port in io_spec(model)["inputs"]:
        dims = port["shape"]
        if not dims or not isinstance(dims[0], str) or not all(
                isinstance(d, int) and d > 0 for d in dims[1:]):
            raise ValueError(f"{onnx_path}: input {port['name']!r} has shape {dims}; expected a "
                             f"dynamic batch dimension, then fixed sizes (`bridgegan export onnx`)")
        profile[port["name"]] = tuple((b, *dims[1:]) for b in (lo, opt, hi))
    reduced = precision != "fp32"
    nodes = model.graph.node if reduced else ()
    norms = tuple(n.name for n in nodes if n.op_type == "InstanceNormalization")
    head = tuple(n.name for n in nodes if n.op_type not in ("Constant", "InstanceNormalization")
                 and E_HEAD_SCOPE.match(n.name))
    return TrtBuildConfig(
        onnx=str(onnx_path), graph=meta.get("bridgegan.graph", Path(onnx_path).stem),
        precision=precision, profile=profile,
        flags=(precision.upper(), "OBEY_PRECISION_CONSTRAINTS") if reduced else (),
        clear_flags=() if reduced else ("TF32",), fp32_layers=norms, fp32_head=head,
        workspace_bytes=int(workspace_gb * 2**30))


def import_tensorrt():
    """The tensorrt module (version 10), or BackendUnavailable naming the extra: 9 lacks
    the API used here, and 11 removed the reduced-precision builder flags (FP16, BF16,
    OBEY_PRECISION_CONSTRAINTS) and per-layer precision that the fp16 / bf16 plans use."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed: {TRT_EXTRA} "
                                 f"(TensorRT 10, on a CUDA machine)") from None
    if int(trt.__version__.split(".")[0]) != 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} is not supported; this build uses "
                                 f"the TensorRT 10 API: {TRT_EXTRA}")
    return trt


@functools.cache
def logger(trt):
    """The one TensorRT logger of this process (TensorRT warns when builders and runtimes
    get different ones; a logger must outlive every object that uses it)."""
    return trt.Logger(trt.Logger.WARNING)


def device_info(trt) -> dict[str, str]:
    """What a plan is tied to: TensorRT version, GPU name, compute capability."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"tensorrt_version": trt.__version__, "gpu_name": torch.cuda.get_device_name(),
            "compute_capability": f"{major}.{minor}"}


def gpu_kind(here: Mapping) -> str:
    """The GPU ``here`` (``device_info``) in file names: its name and compute capability,
    so that GPUs of two kinds sharing one cache folder keep plans and timing caches each
    instead of rebuilding each other's (a new TensorRT version rebuilds in place: the
    sidecar tells)."""
    gpu = re.sub(r"[^a-z0-9]+", "-", here["gpu_name"].lower()).strip("-")
    return f"{gpu}-sm{here['compute_capability'].replace('.', '')}"


def plan_name(stage: str, precision: str, here: Mapping) -> str:
    """The file name of a stage's plan built on the GPU ``here``."""
    return f"{stage}_{precision}_{gpu_kind(here)}.plan"


def sidecar_path(plan: str | os.PathLike) -> Path:
    return Path(f"{plan}.json")


def read_sidecar(plan: str | os.PathLike) -> dict:
    path = sidecar_path(plan)
    try:
        sidecar = json.loads(read_small_text(path))
    except FileNotFoundError:
        raise PlanMismatch(f"{plan} has no sidecar {path.name}: build plans with "
                           f"`bridgegan export tensorrt`") from None
    except ValueError as exc:
        raise PlanMismatch(f"{path} is corrupt: {exc}") from None
    if not isinstance(sidecar, dict):
        raise PlanMismatch(f"{path} is corrupt: not a JSON object")
    return sidecar


def stale_plan(plan: str | os.PathLike, cfg: TrtBuildConfig, here: Mapping) -> bool:
    """Whether ``plan`` must be (re)built for ``cfg`` on this machine: missing, or its
    sidecar names another GPU or TensorRT version, another source graph (the ONNX file
    was exported again), precision or batch range, or it is unreadable."""
    if not Path(plan).is_file() or not sidecar_path(plan).is_file():
        return True
    try:
        sidecar = read_sidecar(plan)
    except PlanMismatch:  # a damaged sidecar vouches for nothing: build the plan again
        return True
    built = (sidecar.get("onnx_sha256"), sidecar.get("precision"), sidecar.get("profile"),
             sidecar.get("plan_sha256"))
    wanted = (sha256_hex(Path(cfg.onnx).read_bytes()), cfg.precision,
              json.loads(json.dumps(cfg.profile)),  # tuples as the sidecar's JSON lists
              sha256_hex(Path(plan).read_bytes()))
    return bool(sidecar_problems(sidecar, here)) or built != wanted


def plan_problem(sidecar: Mapping, data: bytes, plan: str | os.PathLike) -> str | None:
    """Why ``sidecar`` does not describe plan bytes ``data`` (None: it does, or it is a
    sidecar from before plan hashes)."""
    want = sidecar.get("plan_sha256")
    if want is not None and want != sha256_hex(data):
        return (f"{plan} is not the plan its sidecar {sidecar_path(plan).name} was written "
                f"with (the sha256 differs): rebuild it with `bridgegan export tensorrt`")
    return None


def sidecar_problems(sidecar: Mapping, here: Mapping) -> list[str]:
    """What differs between the machine a plan was built on and ``here`` (empty: none)."""
    return [f"{k}: plan {sidecar.get(k)!r}, here {here[k]!r}" for k in MATCH_KEYS
            if sidecar.get(k) != here[k]]


def check_sidecar(sidecar: Mapping, here: Mapping, plan: str | os.PathLike) -> None:
    problems = sidecar_problems(sidecar, here)
    if problems:
        raise PlanMismatch(f"{plan} was built for another GPU or TensorRT version "
                           f"({'; '.join(problems)}); plans run only where they were built: "
                           f"rebuild it here with `bridgegan export tensorrt`")


def _pin_float32(network, norms: tuple[str, ...], others: tuple[str, ...], trt) -> None:
    """Pin the normalisation layers and the layers of the nodes ``others`` to float32. The
    ONNX parser names a node's layers after the node (onnx-tensorrt's ``registerLayer``;
    a name taken already gets a suffix ``_<n>``), so a layer whose name begins with a
    pinned node's is pinned."""
    if not norms and not others:
        return
    found = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        norm = layer.type == trt.LayerType.NORMALIZATION
        if norm or layer.name.startswith(norms + others):
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            found += norm
    if found < len(norms):
        raise RuntimeError(f"expected {len(norms)} instance-norm layers to pin to float32, the "
                           f"parsed network has {found} normalisation layers")


def build_plan(cfg: TrtBuildConfig, plan: str | os.PathLike,
               timing_cache: str | os.PathLike | None = None) -> Path:
    """Build ``cfg`` into ``plan`` (+ sidecar); ``timing_cache`` (default: this GPU kind's,
    TIMING_CACHE beside the plan) is loaded when present and saved after the build."""
    trt = import_tensorrt()
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("building a TensorRT plan needs a CUDA device")
    plan = Path(plan)
    plan.parent.mkdir(parents=True, exist_ok=True)
    here = device_info(trt)
    cache_file = (Path(timing_cache) if timing_cache
                  else plan.parent / TIMING_CACHE.format(gpu=gpu_kind(here)))
    builder = trt.Builder(logger(trt))
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger(trt))
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(cfg.onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {cfg.onnx}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_bytes)
    for flag in cfg.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in cfg.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    _pin_float32(network, cfg.fp32_layers, cfg.fp32_head, trt)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in cfg.profile.items():
        profile.set_shape(name, lo, opt, hi)
    if config.add_optimization_profile(profile) < 0:
        raise RuntimeError(f"TensorRT refused the optimisation profile {cfg.profile} of "
                           f"{cfg.onnx} (see its log)")
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    # a cache from another device or TensorRT version may be refused (None or False)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build a plan from {cfg.onnx} (see its log)")
    data = bytes(serialized)
    sidecar = {**here, **cfg.to_dict(), "bridgegan_version": __version__,
               "onnx_sha256": sha256_hex(Path(cfg.onnx).read_bytes()),
               "plan_sha256": sha256_hex(data)}
    # together: a failed write (a full disk) keeps the old pair; a kill between the two
    # renames leaves a plan beside a sidecar of another hash, which is built again
    write_files_atomic({plan: data,
                        sidecar_path(plan): (json.dumps(sidecar, indent=2) + "\n").encode()})
    try:  # the plan stands without it: a cache that cannot be saved only slows the next build
        write_file_atomic(cache_file, bytes(config.get_timing_cache().serialize()))
    except OSError as exc:
        warnings.warn(f"the TensorRT timing cache {cache_file} was not saved ({exc}); the "
                      f"plan {plan} was built")
    return plan
