"""A Triton Inference Server model repository: ``bridgegan export triton-repo CKPT DIR``.

One model per whole-program graph (``translate_label``, ``translate_reference``; see
``onnx_export`` for their inputs)::

    DIR/translate_label/config.pbtxt
    DIR/translate_label/bridgegan.json      config, attributes, opset, rewrites, graph,
                                            platform, bridgegan_version (for clients)
    DIR/translate_label/1/model.onnx        or 1/model.plan for a TensorRT plan

``config.pbtxt``: platform ``onnxruntime_onnx`` (``tensorrt_plan`` for a plan), inputs and
outputs with the ONNX graph's names, types and dims without the batch dimension,
``max_batch_size`` (the plan profile's max for plans) and dynamic batching (preferred batch
sizes, queue delay). A plan (``--plan``, repeatable) replaces the ONNX model of the graph
its sidecar names; it must have been built on the GPU type and TensorRT version the server
runs. Serve with ``tritonserver --model-repository DIR``. A model folder is replaced only
when it holds nothing but ``MODEL_FILES`` (an earlier export); all are checked before the
export starts.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ... import __version__
from ...files import check_replaceable, write_folders_atomic
from ...reference.checkpoint import load_checkpoint
from ...reference.config import BridgeGANConfig
from .names import MAX_BATCH, PREFERRED_BATCHES, PROGRAMS, QUEUE_DELAY_US, TRITON_TYPES
from .onnx_export import export_model, file_name, read_manifest
from .pbtxt import Port, model_config
from .tensorrt_build import batch_range, plan_problem, read_sidecar

# the files of a model folder: the ONNX model or a plan in version 1 (either may replace
# the other on a later export)
MODEL_FILES = ("config.pbtxt", "bridgegan.json", "1/model.onnx", "1/model.plan")


def graph_config(name: str, spec: dict, platform: str, max_batch_size: int,
                 preferred: Iterable[int], queue_delay_us: int, max_queue_size: int = 0) -> str:
    """config.pbtxt text of one exported graph; ``spec`` is its ``onnx_export.io_spec``."""
    def ports(kind: str) -> list[Port]:
        return [Port(p["name"], TRITON_TYPES[p["dtype"]], tuple(p["shape"][1:]))
                for p in spec[kind]]

    return model_config(name, ("platform", platform), max_batch_size, ports("inputs"),
                        ports("outputs"), queue_delay_us, preferred,
                        max_queue_size=max_queue_size)


def _plans_by_graph(plans: Iterable[str | os.PathLike], manifest: dict,
                    folder: Path) -> dict[str, tuple]:
    """graph -> (plan path, max batch), after checking each plan against its graph: the
    sidecar's source graph must be the float32 graph of this export (same sha256), not a
    graph of other weights of the same configuration."""
    out = {}
    for plan in plans:
        sidecar = read_sidecar(plan)
        graph = sidecar.get("graph")
        if graph not in PROGRAMS:
            raise ValueError(f"{plan} is a plan of graph {graph!r}; the repository serves "
                             f"{', '.join(PROGRAMS)}")
        if graph in out:
            raise ValueError(f"{out[graph][0]} and {plan} are both plans of {graph}: give one "
                             f"plan per graph")
        want = {p["name"]: p["shape"][1:] for p in manifest["graphs"][graph]["inputs"]}
        got = {k: list(v[0][1:]) for k, v in sidecar["profile"].items()}
        if got != want:
            raise ValueError(f"{plan} was built for inputs {got}, the checkpoint's {graph} has "
                             f"{want}: a plan of another configuration")
        source = folder / file_name(graph, "fp32")
        if sidecar.get("onnx_sha256") != manifest["graphs"][graph]["sha256"]["fp32"]:
            raise ValueError(f"{plan} was built from {sidecar.get('onnx')!r}, not from this "
                             f"checkpoint's {graph} graph ({source}; the sha256 differs): a plan "
                             f"of other weights or of another export; build it from {source}")
        problem = plan_problem(sidecar, Path(plan).read_bytes(), plan)
        if problem:
            raise ValueError(problem)
        lo, hi = batch_range(sidecar["profile"])
        if lo != 1:  # Triton's batches range from 1 to max_batch_size
            raise ValueError(f"{plan} was built for batches {lo} to {hi}; Triton runs the model "
                             f"on any batch from 1 to max_batch_size: rebuild it with "
                             f"`bridgegan export tensorrt ... --min-batch 1`")
        out[graph] = (Path(plan), hi)
    return out


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def write_triton_repo(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      plans: Iterable[str | os.PathLike] = (), precision: str = "fp32",
                      onnx_dir: str | os.PathLike | None = None,
                      max_batch_size: int = MAX_BATCH, preferred: Iterable[int] = PREFERRED_BATCHES,
                      queue_delay_us: int = QUEUE_DELAY_US,
                      expected_config: BridgeGANConfig | None = None,
                      max_queue_size: int = 0) -> list[Path]:
    """Write one model folder per program graph under ``out`` (each replaced atomically,
    all written before any goes in: ``files.write_folders_atomic``);
    the ONNX graphs come from ``onnx_dir`` (exported there when missing; default: the
    export cache). Returns the model folders."""
    for name in PROGRAMS:
        check_replaceable(Path(out) / name, MODEL_FILES)
    model = load_checkpoint(checkpoint, expected_config)
    plans = list(plans)  # plans are checked against the float32 graphs they are built from
    folder = export_model(model, onnx_dir, PROGRAMS,
                          dict.fromkeys((precision, "fp32") if plans else (precision,)))
    manifest = read_manifest(folder)
    plans = _plans_by_graph(plans, manifest, folder)
    info = {k: manifest[k] for k in ("config", "attributes", "opset", "rewrites")}
    folders = {}
    for name in PROGRAMS:
        if name in plans:
            plan, top = plans[name]
            platform, file, data = "tensorrt_plan", "model.plan", plan.read_bytes()
        else:
            top = max_batch_size
            platform, file = "onnxruntime_onnx", "model.onnx"
            data = (folder / file_name(name, precision)).read_bytes()
        text = graph_config(name, manifest["graphs"][name], platform, top, preferred,
                            queue_delay_us, max_queue_size)
        meta = {**info, "graph": name, "platform": platform, "bridgegan_version": __version__}
        folders[Path(out) / name] = ({
            "config.pbtxt": _bytes(text.encode()), "bridgegan.json": _bytes(
                (json.dumps(meta, indent=2) + "\n").encode()), f"1/{file}": _bytes(data)},
            MODEL_FILES)
    return write_folders_atomic(folders)
