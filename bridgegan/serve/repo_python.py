"""A Triton model repository of python-backend models that load the engine: the same
models, inputs and outputs as ``bridgegan serve`` (``models``), which runs it, served by a
plain ``tritonserver --model-repository DIR`` (NVIDIA's container, or the binary
nvidia-pytriton bundles: ``server.tritonserver_command``)::

    DIR/<model>/config.pbtxt       backend "python", inputs / outputs, dynamic batching,
                                   instance group, engine backend and dtype as parameters
    DIR/<model>/bridgegan.json     config and attribute names (for clients)
    DIR/<model>/1/model.py         imports TritonPythonModel from this module
    DIR/<model>/1/checkpoint/      config.json + model.safetensors (hard links to the
                                   first model's copy where the file system allows; that
                                   one links the checkpoint's files only where they are
                                   as readable as written files: ``files.link_or_copy``)

The server's Python needs this package and torch installed (``pip install bridgegan``).
The python backend answers each request of a batch on its own: an invalid request gets
its error and the rest of its batch runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __version__
from ..argtypes import split_device
from ..engine.export.names import MAX_BATCH, QUEUE_DELAY_US
from ..engine.export.pbtxt import model_config
from ..files import check_replaceable, link_or_copy, write_folders_atomic
from ..reference.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from .models import ModelSpec, model_specs, run_requests
from .names import MODELS

MODEL_PY = "from bridgegan.serve.repo_python import TritonPythonModel  # noqa: F401\n"


def python_model_config(spec: ModelSpec, max_batch: int, queue_delay_us: int, device: str,
                        backend: str, dtype: str, max_queue_size: int = 0) -> str:
    """config.pbtxt text of one python-backend model: one instance on ``device``, the
    engine's backend and dtype as parameters."""
    return model_config(spec.name, ("backend", "python"), max_batch, spec.inputs, spec.outputs,
                        queue_delay_us, device=device,
                        parameters={"engine_backend": backend, "engine_dtype": dtype},
                        max_queue_size=max_queue_size)


def _text(text: str):
    return lambda path: path.write_text(text)


def write_python_repo(checkpoint: str | os.PathLike, out: str | os.PathLike,
                      max_batch: int = MAX_BATCH, queue_delay_us: int = QUEUE_DELAY_US,
                      device: str = "cpu", backend: str = "torch", dtype: str = "float32",
                      max_queue_size: int = 0) -> list[Path]:
    """Write one python-backend model folder per served model under ``out`` (each replaced
    atomically, all written before any goes in: ``files.write_folders_atomic``; every
    folder is checked replaceable before any is written). ``device``
    "cuda" gives GPU instances ("cuda:N": on GPU N); ``backend`` / ``dtype`` are the
    engine's; ``max_queue_size``: ``pbtxt.model_config``'s. Returns the model folders."""
    split_device(device)  # a bad device fails before anything is written
    config = load_checkpoint(checkpoint).config  # checks every tensor before copying
    specs = model_specs(config)
    info = {"config": json.loads(config.to_json()), "attributes": list(config.attributes),
            "bridgegan_version": __version__}
    folders, staged = {}, {}  # staged: where the first model's checkpoint files were written

    def checkpoint_file(name: str):
        """A writer of checkpoint file ``name``: the first model's from the checkpoint, the
        others linked to that copy (staged: every folder is written before any goes in)."""
        def write(path: Path) -> None:
            link_or_copy(staged.get(name, Path(checkpoint) / name))(path)
            staged.setdefault(name, path)
        return write

    for name in MODELS:
        text = python_model_config(specs[name], max_batch, queue_delay_us, device, backend, dtype,
                                   max_queue_size)
        meta = {**info, "model": name, "backend": "python",
                "inputs": [vars(p) for p in specs[name].inputs]}
        folders[Path(out) / name] = {
            "config.pbtxt": _text(text), "bridgegan.json": _text(json.dumps(meta, indent=2) + "\n"),
            "1/model.py": _text(MODEL_PY),
            **{f"1/checkpoint/{f}": checkpoint_file(f) for f in (CONFIG_FILE, WEIGHTS_FILE)}}
    # the bytecode Python caches beside model.py when tritonserver's stub imports it
    # ("<version>.model"): a repository that has been served is still one of ours
    cached = {folder: [str(p.relative_to(folder))
                       for p in (folder / "1" / "__pycache__").glob("model.*.pyc")]
              for folder in folders}
    for folder, writers in folders.items():
        check_replaceable(folder, [*writers, *cached[folder]])
    return write_folders_atomic({folder: (writers, cached[folder])
                                 for folder, writers in folders.items()})


class TritonPythonModel:
    """Triton python-backend model: loads the engine from the version folder's checkpoint
    (engine backend and dtype from the config parameters; a GPU instance runs on its
    device) and answers each request, or its error, separately."""

    def initialize(self, args: dict) -> None:
        import triton_python_backend_utils as pb_utils

        from ..engine import Engine

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        device = (f"cuda:{args['model_instance_device_id']}"
                  if args["model_instance_kind"] == "GPU" else "cpu")
        folder = Path(args["model_repository"]) / args["model_version"] / "checkpoint"
        self.name = args["model_name"]
        self.engine = Engine.from_checkpoint(folder, backend=params.get("engine_backend", "torch"),
                                             dtype=params.get("engine_dtype", "float32"),
                                             device=device)
        self.inputs = [p.name for p in model_specs(self.engine.config)[self.name].inputs]

    def execute(self, requests):
        pb = self.pb
        data = []
        for request in requests:
            tensors = {n: pb.get_input_tensor_by_name(request, n) for n in self.inputs}
            data.append({n: t.as_numpy() for n, t in tensors.items() if t is not None})
        return [pb.InferenceResponse(error=self._error(r)) if isinstance(r, Exception) else
                pb.InferenceResponse([pb.Tensor(k, v) for k, v in r.items()])
                for r in run_requests(self.engine, self.name, data)]

    def _error(self, exc: Exception):
        """A refused request's error: the client's (INVALID_ARG), or, where the model
        computed NaN / Inf from valid inputs, the server's (INTERNAL: HTTP 500)."""
        from ..engine import NonFiniteOutputError

        if isinstance(exc, NonFiniteOutputError):
            return self.pb.TritonError(f"{self.name}: {exc}", self.pb.TritonError.INTERNAL)
        return self.pb.TritonError(f"{self.name}: invalid input: {exc}",
                                   self.pb.TritonError.INVALID_ARG)
