"""ONNX export of the rewritten inference graph.

``bridgegan export onnx CKPT OUT`` traces the :class:`~bridgegan.engine.graph.InferenceGraph`
(every rewrite) through the torch ops (``impl="torch"``, never a Triton kernel) with
torch's TorchScript exporter (``dynamo=False``), opset 17 or newer, dynamic batch. The
graphs hold G, E and M; D's attribute head is a graph of its own (``classify``).

Graphs. Whole programs, for deployment (Triton server, TensorRT):

- ``translate_label(image, d, noise) -> output``
- ``translate_reference(image, reference, d) -> output``: one reference per source.

``image`` / ``reference`` are (N, 3, S, S) in [-1, 1], ``d = strength * (y_t - y_s)``
(N, A) is computed by the caller (labels, attribute conflict rules and the strength stay
in Python), ``noise`` is (N, noise_dim) N(0, 1). Averaging several references happens in
the latent code, so it needs the stage graphs, which the engine's ``onnxruntime`` and
``tensorrt`` backends run (``engine.backends``):

- ``trunk(image) -> h``, ``encode(image, d) -> s``, ``map(noise, d) -> s``,
  ``decode(h, s) -> output``, and ``decode_mix(h, s, s2, alpha) -> output`` (SPADE-level
  interpolation: each SPADE layer blends the modulations of s and s2 with weights alpha
  and 1 - alpha, alpha of shape (N,)).

And ``classify(image) -> logits`` (N, A): D's attribute head (``graph.AttributeHead``),
whose logits > 0 are the source labels the engine estimates for images given without
them (what the ``onnxruntime`` backend runs for that).

Precision. Each graph comes in ``fp32`` (``<graph>.onnx``) and ``fp16``
(``<graph>_fp16.onnx``): fp16 weights and activations inside, float32 inputs and outputs
(casts at the edges), so clients and Triton configs are the same for both. ``classify``
comes in fp32 only, whichever precisions are asked for (labels are thresholds). Instance-norm
statistics are float32 in both: the torch path upcasts, giving InstanceNormalization
nodes on float32 tensors (TensorRT builds pin them to float32).

Folder. An export folder holds the ``.onnx`` files and ``manifest.json`` (format, config,
attributes, versions, opset, rewrites, every graph's inputs and outputs and each file's
sha256, and a key: a hash over the weights and export settings). Each file's metadata
also carries the config JSON, the attribute names and the package version. A folder
belongs to one model: exporting another configuration or other weights into it is
refused, and so is a graph file whose hash is not the manifest's (a cache never silently
serves another model). The folder is written as a whole, atomically (a kill mid-export
leaves the previous folder or none); adding missing graphs rewrites it the same way,
under a lock file so that processes filling one cache wait for one another.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.onnx import symbolic_helper

from ... import __version__
from ...files import link_or_copy, read_small_text, remove_stale, sha256_hex, write_folder_atomic
from ...locks import locked
from ...path_checks import check_writable_folder
from ...reference import programs
from ...reference.checkpoint import CheckpointError, load_checkpoint
from ...reference.config import BridgeGANConfig
from ...reference.model import BridgeGAN
from ...warning_filters import Silenced
from ..backends.base import BackendUnavailable
from ..graph import AttributeHead, InferenceGraph, Rewrites
from .names import GRAPHS, HEADS, ONNX_PRECISIONS, OPSET, TIMING_CACHE, TRITON_TYPES
from .pbtxt import NAME

ONNX_DTYPES = {name: getattr(torch, dtype) for name, dtype in ONNX_PRECISIONS.items()}
ONNX_PRECISION_OF = {v: k for k, v in ONNX_DTYPES.items()}
MANIFEST = "manifest.json"
FORMAT = "bridgegan-onnx/1"

# graph -> (input names, output name, function of the traced module (an InferenceGraph; a
# head's: an AttributeHead) and the inputs)
_GRAPHS: dict[str, tuple[tuple[str, ...], str, Callable]] = {
    "translate_label": (("image", "d", "noise"), "output", programs.translate_label),
    "translate_reference": (("image", "reference", "d"), "output",
                            programs.translate_reference),
    "trunk": (("image",), "h", lambda g, x: g.trunk(x)),
    "encode": (("image", "d"), "s", lambda g, x, d: g.encode(x, d)),
    "map": (("noise", "d"), "s", lambda g, r, d: g.map(r, d)),
    "decode": (("h", "s"), "output", lambda g, h, s: g.decode(h, s)),
    "decode_mix": (("h", "s", "s2", "alpha"), "output",
                   lambda g, h, s, s2, a: programs.decode_blend(g, h, s, s2, a, "spade")),
    "classify": (("image",), "logits", lambda head, x: head(x)),
}


class OnnxFileError(ValueError):
    """A file is missing, is not an ONNX model, cannot be loaded, or is not the file its
    export folder's manifest names."""


def file_name(graph: str, precision: str) -> str:
    return f"{graph}.onnx" if precision == "fp32" else f"{graph}_{precision}.onnx"


def _port_shapes(config: BridgeGANConfig) -> dict[str, tuple[int, ...]]:
    """Each input / output name's shape without the batch dimension."""
    s, low, half = config.image_size, config.bottleneck_size, config.latent_size
    latent = (config.latent_channels, half, half)
    return {"image": (3, s, s), "reference": (3, s, s), "d": (config.n_attrs,),
            "noise": (config.noise_dim,), "h": (config.g_channels()[-1], low, low), "s": latent,
            "s2": latent, "alpha": (), "output": (3, s, s), "logits": (config.n_attrs,)}


def _dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype of a traced module's tensors (an InferenceGraph's buffers, a head's
    parameters)."""
    return next(iter(module.state_dict().values())).dtype


def _graph_precisions(graphs: Iterable[str], precisions: Iterable[str]) -> list[tuple[str, str]]:
    """The (graph, precision) pairs an export of ``graphs`` at ``precisions`` writes: a
    head's at fp32 whatever was asked."""
    return list(dict.fromkeys((g, "fp32" if g in HEADS else p)
                              for p in precisions for g in graphs))


# ----------------------------------------------------------------------------- tracing

class _Traced(torch.nn.Module):
    """One graph: float32 inputs cast to the graph's dtype, the output cast to float32."""

    def __init__(self, graph: InferenceGraph | AttributeHead, name: str):
        super().__init__()
        self.graph, self.fn = graph, _GRAPHS[name][2]
        self.dtype = _dtype(graph)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(self.graph, *(t.to(self.dtype) for t in inputs)).float()


@symbolic_helper.parse_args("v", "v", "v", "v", "v", "b", "f", "f", "b")
def _instance_norm(g, x, weight, bias, running_mean, running_var, use_input_stats, momentum,
                   eps, cudnn_enabled):
    """aten::instance_norm -> InstanceNormalization. Unlike torch's own symbolic it needs no
    channel count at export time (the four-phase reshape hides it from the tracer): a
    missing scale / shift is ConstantOfShape(Shape(x)[1]), folded later by ``_finish``."""
    def fill(value: float):
        channels = g.op("Shape", x, start_i=1, end_i=2)
        return g.op("ConstantOfShape", channels, value_t=torch.tensor([value]))

    weight = fill(1.0) if symbolic_helper._is_none(weight) else weight
    bias = fill(0.0) if symbolic_helper._is_none(bias) else bias
    return g.op("InstanceNormalization", x, weight, bias, epsilon_f=eps)


# torch's TorchScript exporter keeps process-wide state (GLOBALS.in_onnx_export, which
# it asserts, and the symbolic registry): one export at a time per process (two threads
# building onnxruntime engines of two models at once failed; the export folder's file
# lock orders processes, and threads only per folder).
_EXPORT_LOCK = threading.Lock()
# the exporter's chatter: tracer warnings about Python branches on shapes (those depend
# only on the fixed non-batch sizes or are input checks), the legacy-exporter notices,
# constant-folding notes
_CHATTER = Silenced((torch.jit.TracerWarning, "", ""),
                    (DeprecationWarning, "You are using the legacy TorchScript-based ONNX export",
                     __name__),
                    (DeprecationWarning, "The feature will be removed", "torch.onnx"),
                    (UserWarning, "Constant folding", "torch.onnx"))


@contextlib.contextmanager
def _exporting(opset: int):
    """The instance-norm symbolic registered, the exporter's chatter silenced
    (``_CHATTER``); one export at a time in this process (``_EXPORT_LOCK``)."""
    with _EXPORT_LOCK, _CHATTER():
        torch.onnx.register_custom_op_symbolic("aten::instance_norm", _instance_norm, opset)
        try:
            yield
        finally:
            torch.onnx.unregister_custom_op_symbolic("aten::instance_norm", opset)


def _drop_identity_casts(graph, types: dict) -> None:
    """Remove the Cast nodes whose input already has their type: torch's tracer records
    ``x.to(x.dtype)``, a no-op in torch, as a Cast (18 of them in the float32 trunk), and
    TensorRT, whose fp16 plans are built from the float32 graphs, gives a Cast layer's
    output its ``toType`` (float32) where the plan would otherwise choose fp16."""
    outputs = {o.name for o in graph.output}
    kept = outputs | {i.name for i in graph.input}
    for node in list(graph.node):
        src, dst = node.input[0] if node.input else "", node.output[0]
        if node.op_type != "Cast" or src not in types or types[src].elem_type != next(
                a.i for a in node.attribute if a.name == "to"):
            continue
        if dst in outputs and src in kept:
            continue  # an output read straight from an input or another output: keep it
        old, new = (src, dst) if dst in outputs else (dst, src)
        graph.node.remove(node)
        for other in graph.node:
            for ports in (other.input, other.output):
                for k, name in enumerate(ports):
                    if name == old:
                        ports[k] = new


def _finish(model):
    """Resolve every non-batch dimension (ONNX shape inference with data propagation),
    turn ConstantOfShape instance-norm scales / shifts into initializers, drop the nodes
    that computed them and the Casts that change nothing."""
    import onnx
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    types = {v.name: v.type.tensor_type
             for v in (*graph.input, *graph.value_info, *graph.output)}
    _drop_identity_casts(graph, types)
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "InstanceNormalization":
            continue
        channels = types[node.input[0]].shape.dim[1].dim_value
        for k, part in ((1, "scale"), (2, "bias")):
            src = producers.get(node.input[k])
            if src is None or src.op_type != "ConstantOfShape":
                continue
            if not channels:
                raise RuntimeError(f"ONNX export: cannot resolve the channels of {node.name}")
            value = numpy_helper.to_array(src.attribute[0].t).reshape(-1)[0]
            name = f"{node.name}.{part}"
            graph.initializer.append(
                numpy_helper.from_array(np.full(channels, value, dtype=value.dtype), name))
            node.input[k] = name
    while True:  # drop the nodes nothing reads any more
        used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(o in used for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    del graph.value_info[:]
    spec = io_spec(model)
    unresolved = [p["name"] for p in spec["inputs"] + spec["outputs"]
                  if not all(isinstance(d, int) and d > 0 for d in p["shape"][1:])]
    if unresolved:
        raise RuntimeError(f"ONNX export: unresolved dimensions in {unresolved}")
    return model


def export_graph(graph: InferenceGraph | AttributeHead, name: str, opset: int = OPSET,
                 batch: int = 2):
    """Trace graph ``name`` of ``graph`` (an InferenceGraph, float32 or float16, impl
    "torch"; for a head an AttributeHead; on the CPU) at ``batch`` into a checked
    ``onnx.ModelProto`` whose batch dimension is dynamic."""
    import onnx

    if graph.impl != "torch":
        raise ValueError("ONNX export traces the torch ops: build the InferenceGraph with "
                         "impl='torch' (never a Triton kernel)")
    if opset < OPSET:
        raise ValueError(f"opset must be {OPSET} or newer, got {opset}")
    if name not in _GRAPHS:
        raise ValueError(f"unknown graph {name!r}; graphs are {', '.join(GRAPHS)}")
    if (name in HEADS) != isinstance(graph, AttributeHead):
        raise ValueError(f"graph {name!r} is traced from "
                         f"{'an AttributeHead' if name in HEADS else 'an InferenceGraph'}")
    precision = ONNX_PRECISION_OF[_dtype(graph)]
    inputs, output, _ = _GRAPHS[name]
    shapes = _port_shapes(graph.config)
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.rand((batch, *shapes[n]), generator=gen) for n in inputs)
    buf = io.BytesIO()
    with _exporting(opset):
        torch.onnx.export(_Traced(graph, name).eval(), args, buf, dynamo=False,
                          opset_version=opset, input_names=list(inputs), output_names=[output],
                          dynamic_axes={n: {0: "batch"} for n in (*inputs, output)})
    model = _finish(onnx.load_from_string(buf.getvalue()))
    cfg = graph.config
    onnx.helper.set_model_props(model, {
        "bridgegan.version": __version__, "bridgegan.graph": name,
        "bridgegan.precision": precision, "bridgegan.config": cfg.to_json(),
        "bridgegan.attributes": json.dumps(list(cfg.attributes))})
    model.doc_string = (f"BridgeGAN {name} ({precision} inside, float32 inputs and outputs); "
                        f"attributes: {', '.join(cfg.attributes)}")
    onnx.checker.check_model(model, full_check=True)
    return model


# ----------------------------------------------------------------------------- files

def io_spec(model) -> dict[str, list[dict]]:
    """{"inputs": [...], "outputs": [...]}, each {"name", "dtype", "shape"}; a dynamic
    dimension is its name (the batch: "batch")."""
    import onnx

    def port(v) -> dict:
        t = v.type.tensor_type
        return {"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    weights = {i.name for i in model.graph.initializer}
    return {"inputs": [port(v) for v in model.graph.input if v.name not in weights],
            "outputs": [port(v) for v in model.graph.output]}


def load_onnx(path: str | os.PathLike):
    """Load and check an ONNX file; an OnnxFileError naming the file otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"no ONNX file at {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except (DecodeError, onnx.checker.ValidationError, OSError, ValueError) as exc:
        raise OnnxFileError(f"{path} is not a valid ONNX model: {exc}") from None
    if not model.graph.node:
        raise OnnxFileError(f"{path} is not a valid ONNX model: its graph is empty")
    return model


def traced_files() -> list[Path]:
    """The source files the exported graphs are traced from: the rewritten graph, every
    kernel module (their torch paths: norms, convolution + ReLU, layouts such as
    ``add_upsampled``), the reference layers and networks the graph reads, the programs
    and this exporter."""
    from ... import kernels
    from ...reference import layers, networks
    from .. import graph

    files = sorted(Path(kernels.__file__).parent.glob("*.py"))
    return files + [Path(m.__file__) for m in (graph, layers, networks, programs,
                                               sys.modules[__name__])]


@functools.cache
def _traced_code() -> str:
    """sha256 of ``traced_files``: a cached export of older code is not reused after an
    upgrade that changes what would be traced."""
    h = hashlib.sha256()
    for path in traced_files():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def export_key(model: BridgeGAN, rewrites: Rewrites, opset: int) -> str:
    """sha256 over the G / E / M / D tensors (D: ``classify``), the export settings and
    the traced code."""
    settings = {"config": model.config.architecture(),
                "rewrites": rewrites.enabled(), "opset": opset, "code": _traced_code()}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)}".encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_folder() -> Path:
    """$BRIDGEGAN_CACHE (default ~/.cache/bridgegan, or under $XDG_CACHE_HOME) /onnx: the
    exported backends' exports, one folder per key (``bridgegan cache`` lists and prunes)."""
    root = os.environ.get("BRIDGEGAN_CACHE") or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bridgegan")
    return Path(root).expanduser() / "onnx"


def default_onnx_dir(key: str) -> Path:
    """The cache folder of export key ``key``."""
    return cache_folder() / key[:16]


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of export folder ``folder``, None when it has none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(read_small_text(path))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}; remove {path.parent} to export "
                              f"again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bridgegan ONNX export manifest "
                              f"(format {FORMAT!r} expected)")
    problem = _manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"{path} is corrupt: {problem}; remove {path.parent} to "
                              f"export again")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is malformed in a manifest of the right format (None: nothing): the fields
    the export, the backends, triton-repo and `bridgegan cache` read, each of its type,
    and file names that are names in the folder (no path)."""
    for field, kind in (("key", str), ("config", dict), ("opset", int), ("rewrites", list),
                        ("attributes", list)):
        if not isinstance(manifest.get(field), kind):
            return f"no {field} ({kind.__name__})"
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict):
        return "no graphs object"
    for name, entry in graphs.items():
        if not isinstance(entry, dict):
            return f"graph {name!r} is not an object"
        for field in ("files", "sha256"):
            values = entry.get(field, {})
            if not isinstance(values, dict) or not all(isinstance(v, str)
                                                        for v in values.values()):
                return f"graph {name!r}: {field} is not an object of strings"
        for field in ("inputs", "outputs"):
            specs = entry.get(field)
            if not isinstance(specs, list) or not all(
                    isinstance(t, dict) and isinstance(t.get("name"), str)
                    and NAME.fullmatch(t["name"])
                    and isinstance(t.get("dtype"), str) and t["dtype"] in TRITON_TYPES
                    and isinstance(t.get("shape"), list) and all(
                        (type(d) is int and d >= 1) or (isinstance(d, str) and NAME.fullmatch(d))
                        for d in t["shape"]) for t in specs):
                return (f"graph {name!r}: {field} is not a list of tensors (name: an identifier, "
                        f"dtype: {' or '.join(TRITON_TYPES)}, shape: sizes >= 1 or names)")
        bad = [f for f in entry.get("files", {}).values()
               if f in ("", ".", "..") or Path(f).name != f]
        if bad:
            return f"graph {name!r} names a file outside its folder: {bad[0]!r}"
    return None


def _check_same_model(manifest: dict, folder: Path, config: BridgeGANConfig, key: str) -> None:
    try:
        exported = BridgeGANConfig.from_dict(manifest["config"])
    except ValueError as exc:
        raise CheckpointError(f"{folder / MANIFEST} is corrupt: {exc}") from None
    diffs = config.differences(exported)
    if diffs:
        raise CheckpointError(f"{folder} holds an ONNX export of another configuration (model "
                              f"vs export: {'; '.join(diffs)}); remove it or use another folder")
    if manifest["key"] != key:
        raise CheckpointError(f"{folder} holds an ONNX export of other weights, export "
                              f"settings (rewrites, opset) or exporter code (bridgegan "
                              f"{manifest.get('bridgegan_version', '?')}, this is {__version__}); "
                              f"remove it or use another folder")


def _missing(out: Path, config: BridgeGANConfig, key: str, pairs: list[tuple[str, str]]
             ) -> tuple[dict | None, list[tuple[str, str]]]:
    """The manifest of ``out`` (None: no export there yet) and the (graph, precision)
    ``pairs`` it lacks. Every file it has is checked against its sha256 in the manifest; a
    file listed without a hash (an export from before hashes) counts as missing."""
    manifest = read_manifest(out)
    if manifest is None:
        if out.is_dir() and any(out.iterdir()):
            raise CheckpointError(f"{out} is not empty and holds no {MANIFEST}: not an ONNX "
                                  f"export folder; give a new or empty folder")
        return None, pairs
    _check_same_model(manifest, out, config, key)
    missing = []
    for g, precision in pairs:
        entry = manifest["graphs"].get(g, {})
        name, digest = (entry.get(k, {}).get(precision) for k in ("files", "sha256"))
        if name is None or digest is None or not (out / name).is_file():
            missing.append((g, precision))
        elif sha256_hex((out / name).read_bytes()) != digest:
            raise OnnxFileError(
                f"{out / name} does not match its sha256 in {out / MANIFEST}: it is not the "
                f"graph this export wrote (a file of another export copied in, or damaged); "
                f"remove {out} to export again")
    return manifest, missing


def _new_manifest(model: BridgeGAN, key: str, rewrites: Rewrites, opset: int) -> dict:
    cfg = model.config
    return {"format": FORMAT, "key": key, "bridgegan_version": __version__,
            "torch_version": torch.__version__, "opset": opset, "rewrites": rewrites.enabled(),
            "attributes": list(cfg.attributes), "config": cfg.to_dict(), "graphs": {}}


def _carried(out: Path, manifest: dict) -> dict:
    """Writers carrying export folder ``out``'s files over to its replacement
    (``files.link_or_copy``): the graphs its manifest lists and the TensorRT plans, their
    sidecars and the timing caches that the tensorrt backend builds beside them."""

    graphs = [f for entry in manifest["graphs"].values() for f in entry.get("files", {}).values()]
    plans = [p.name for pattern in ("*.plan", "*.plan.json", TIMING_CACHE.format(gpu="*"))
             for p in out.glob(pattern)]
    links = [f for f in [*graphs, *plans] if (out / f).is_symlink()]
    if links:  # never written by an export: carried, a link's target would be copied in
        raise OnnxFileError(f"{out / links[0]} is a symbolic link: an export folder holds the "
                            f"files its exports wrote; remove the link (or the folder)")
    return {f: link_or_copy(out / f) for f in [*graphs, *plans] if (out / f).is_file()}


def _write_export(out: Path, manifest: dict, missing: list[tuple[str, str]], model: BridgeGAN,
                  rewrites: Rewrites, opset: int) -> None:
    """Export the ``missing`` graphs and replace folder ``out`` by one holding its files,
    the new ones and the updated manifest (atomically: a kill leaves the old folder)."""
    kept = _carried(out, manifest)
    written = {}
    for precision in dict.fromkeys(p for _, p in missing):
        names = [g for g, p in missing if p == precision]
        graph = (InferenceGraph(model, rewrites).to("cpu", ONNX_DTYPES[precision]).eval()
                 if any(g not in HEADS for g in names) else None)
        for name in names:
            traced = AttributeHead(model).eval() if name in HEADS else graph
            onnx_model = export_graph(traced, name, opset)
            data = onnx_model.SerializeToString()
            entry = manifest["graphs"].setdefault(name, io_spec(onnx_model))
            entry.setdefault("files", {})[precision] = file_name(name, precision)
            entry.setdefault("sha256", {})[precision] = sha256_hex(data)
            written[file_name(name, precision)] = lambda p, data=data: p.write_bytes(data)
    text = json.dumps(manifest, indent=2) + "\n"
    write_folder_atomic(out, {**kept, **written, MANIFEST: lambda p: p.write_text(text)})


def require_onnx(what: str) -> None:
    """Raise BackendUnavailable naming the extra when onnx is not installed."""
    if importlib.util.find_spec("onnx") is None:
        raise BackendUnavailable(f"{what} needs onnx: pip install 'bridgegan[onnx]'")


def export_model(model: BridgeGAN, out: str | os.PathLike | None = None,
                 graphs: Iterable[str] = GRAPHS, precisions: Iterable[str] = tuple(ONNX_DTYPES),
                 rewrites: Rewrites | None = None, opset: int = OPSET) -> Path:
    """Export into folder ``out`` the ``graphs`` x ``precisions`` it lacks (a head at
    fp32 only: ``_graph_precisions``) and return it.

    ``out`` None: the cache folder named by the model's export key (``default_onnx_dir``),
    whose manifest's mtime records this use.
    A folder holding another model's export, files but no manifest, or a graph file whose
    sha256 differs from the manifest's is refused. Processes exporting into one folder
    wait for one another (a lock file beside it); a complete folder needs no lock (it may
    be read-only).
    """
    graphs, precisions = list(graphs), list(precisions)
    for kind, given, known in (("graph", graphs, GRAPHS), ("precision", precisions, ONNX_DTYPES)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ValueError(f"unknown {kind}(s) {unknown}; accepted: {', '.join(known)}")
    pairs = _graph_precisions(graphs, precisions)
    rewrites = rewrites or Rewrites()
    key = export_key(model, rewrites, opset)
    cached = out is None
    # absolute: a relative folder is the working directory's now, not wherever the process
    # keeping the path (an engine loading plans later) has moved to since
    out = (default_onnx_dir(key) if cached else Path(out)).absolute()
    if not _missing(out, model.config, key, pairs)[1]:
        if cached:  # its last use, which `bridgegan cache --prune` reads
            with contextlib.suppress(OSError):  # a read-only cache stays usable
                os.utime(out / MANIFEST)
        return out
    require_onnx("ONNX export")
    if cached and out.exists() and not out.is_dir():  # no folder the user named
        raise ValueError(f"the export cache's entry {out} is a file, not a folder: remove it "
                         f"(the cache holds folders only) or set BRIDGEGAN_CACHE to another "
                         f"folder")
    check_writable_folder(out, "the export cache ($BRIDGEGAN_CACHE) folder" if cached
                          else "the ONNX export folder", replaced=True)
    # another process may have exported meanwhile: look again. A folder the caller named
    # keeps no lock file beside it; the cache's go with their folders (``cache.prune``)
    with locked(out, remove=not cached):
        # leftovers of killed writes first: a folder a killed swap moved aside comes back
        # (else it counts as missing and is then in the way), and temporary files inside
        # it (a TensorRT plan build's) would block the replacement of the folder
        remove_stale(out.parent, [out.name])
        remove_stale(out)
        manifest, missing = _missing(out, model.config, key, pairs)
        if missing:
            manifest = manifest or _new_manifest(model, key, rewrites, opset)
            _write_export(out, manifest, missing, model, rewrites, opset)
    return out


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike,
                graphs: Iterable[str] = GRAPHS, precisions: Iterable[str] = tuple(ONNX_DTYPES),
                opset: int = OPSET, expected_config: BridgeGANConfig | None = None) -> Path:
    """``bridgegan export onnx``: export checkpoint folder ``checkpoint`` into ``out``."""
    return export_model(load_checkpoint(checkpoint, expected_config), out, graphs, precisions,
                        opset=opset)
