"""Triton model configuration text (``config.pbtxt``), written in one place for both model
repositories: the ONNX / TensorRT one (``triton_repo``) and the python-backend one that
``bridgegan serve`` runs (``serve.repo_python``). Torch-free.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ...argtypes import split_device

INSTANCE_KINDS = {"cpu": "KIND_CPU", "cuda": "KIND_GPU"}
DATA_TYPES = ("FP32", "FP16", "BF16", "BOOL", "UINT64")  # those the repositories use
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a port's name: one quoted string in the text


@dataclass(frozen=True)
class Port:
    """One input or output: Triton data type name ("FP32", "FP16", "BOOL"), shape without
    the batch dimension, and whether a request may leave it out."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    optional: bool = False

    def __post_init__(self):
        """Refuse what would not be one port in the text (a name with a quote or a line
        break, a dimension that is not an integer): a port can come from a manifest on disk."""
        if not (isinstance(self.name, str) and NAME.fullmatch(self.name)):
            raise ValueError(f"port name {self.name!r} is not an identifier (letters, digits, _)")
        if self.dtype not in DATA_TYPES:
            raise ValueError(f"port {self.name}: data type {self.dtype!r} is not one of "
                             f"{', '.join(DATA_TYPES)}")
        if not (isinstance(self.shape, tuple)
                and all(type(d) is int and (d >= 1 or d == -1) for d in self.shape)):
            raise ValueError(f"port {self.name}: dims {self.shape!r} must be integers >= 1 "
                             f"(or -1)")

    def batched_shape(self) -> str:
        """The shape a request declares, for messages: ``[N, d1, d2, ...]``."""
        return f"[N, {', '.join(map(str, self.shape))}]"


def _ports(kind: str, ports: Iterable[Port]) -> str:
    body = ",\n".join(
        f'  {{\n    name: "{p.name}"\n    data_type: TYPE_{p.dtype}\n'
        f'    dims: [ {", ".join(map(str, p.shape))} ]' +
        ("\n    optional: true" if p.optional else "") + "\n  }" for p in ports)
    return f"{kind} [\n{body}\n]"


def _parameter(key: str, value: str) -> str:
    return f'parameters: {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def model_config(name: str, runtime: tuple[str, str], max_batch_size: int,
                 inputs: Iterable[Port], outputs: Iterable[Port], queue_delay_us: int,
                 preferred: Iterable[int] = (), device: str | None = None,
                 parameters: Mapping[str, str] | None = None, max_queue_size: int = 0) -> str:
    """config.pbtxt text of one model with dynamic batching.

    ``runtime``: ("platform", "onnxruntime_onnx" / "tensorrt_plan") or ("backend",
    "python"). ``preferred``: preferred batch sizes (those above ``max_batch_size`` are
    left out). ``device`` ("cpu", "cuda" or "cuda:N"; ``argtypes.split_device``): one
    instance of that kind (on GPU N); None leaves the instances to Triton.
    ``parameters``: string parameters the model reads. ``max_queue_size``: requests the
    model's queue holds, more refused at once ("Exceeds maximum queue size"); 0: no bound.
    """
    sizes = [str(b) for b in preferred if b <= max_batch_size]
    batching = ([f"  preferred_batch_size: [ {', '.join(sizes)} ]"] if sizes else []) + [
        f"  max_queue_delay_microseconds: {queue_delay_us}"] + (
        [f"  default_queue_policy {{\n    max_queue_size: {max_queue_size}\n  }}"]
        if max_queue_size else [])
    lines = [f'name: "{name}"', f'{runtime[0]}: "{runtime[1]}"',
             f"max_batch_size: {max_batch_size}", _ports("input", inputs),
             _ports("output", outputs), "dynamic_batching {", *batching, "}"]
    if device is not None:
        kind, gpu = split_device(device)
        gpus = "" if gpu is None else f"\n    gpus: [ {gpu} ]"
        lines.append(f"instance_group [\n  {{\n    count: 1\n    kind: {INSTANCE_KINDS[kind]}"
                     f"{gpus}\n  }}\n]")
    lines += [_parameter(k, v) for k, v in (parameters or {}).items()]
    return "\n".join(lines) + "\n"
