"""Running TensorRT plans with torch CUDA tensors, and the engine's ``tensorrt`` backend.

:class:`TrtPlan` binds torch tensors by address and enqueues on the current torch stream
(``execute_async_v3``; no pycuda). It refuses a plan whose sidecar says it was built for
another GPU, compute capability or TensorRT version (:func:`sidecar_problems` is the pure
check), and batches outside the plan's optimisation profile.

The ``tensorrt`` backend exports the float32 stage graphs (see ``onnx_export``) into the
export folder and builds one plan per stage beside them (``<stage>_<precision>.plan``),
rebuilding a plan whose sidecar does not match this machine.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ...reference.model import BridgeGAN
from ..backends import Stages
from ..graph import Rewrites
from .onnx_export import PRECISION_OF, STAGES, export_model, exported_stages, file_name
from .tensorrt_build import build_config, build_plan, device_info, import_tensorrt, sidecar_path

MATCH_KEYS = ("tensorrt_version", "gpu_name", "compute_capability")
PLAN_PRECISION_OF = {**PRECISION_OF, torch.bfloat16: "bf16"}


class PlanMismatch(RuntimeError):
    """A plan was built for another GPU or TensorRT version."""


def read_sidecar(plan: str | os.PathLike) -> dict:
    path = sidecar_path(plan)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanMismatch(f"{plan} has no sidecar {path.name}: build plans with "
                           f"`bridgegan export tensorrt`") from None
    except ValueError as exc:
        raise PlanMismatch(f"{path} is corrupt: {exc}") from None


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


class TrtPlan:
    """A plan file on a CUDA device, called with tensors in the graph's input order;
    returns its outputs as new tensors on the device."""

    def __init__(self, plan: str | os.PathLike, device: torch.device | str = "cuda"):
        trt = import_tensorrt()
        self.path, self.device = Path(plan), torch.device(device)
        self.sidecar = read_sidecar(plan)
        with torch.cuda.device(self.device):
            check_sidecar(self.sidecar, device_info(trt), plan)
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
                self.path.read_bytes())
            if self.engine is None:
                raise PlanMismatch(f"TensorRT cannot load {plan} (see its log)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = list(self.sidecar["profile"])  # the ONNX graph's input order
        self.outputs = [n for n in names if not is_input[n]]
        types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
        self.dtypes = {n: types[self.engine.get_tensor_dtype(n)] for n in names}
        first = self.sidecar["profile"][self.inputs[0]]
        self.batch_range = (first[0][0], first[2][0])

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        lo, hi = self.batch_range
        n = args[0].shape[0]
        if not lo <= n <= hi:
            raise ValueError(f"batch {n} is outside the profile of {self.path} ({lo} to {hi}); "
                             f"rebuild it with --min-batch / --max-batch")
        ctx, bound = self.context, []
        for name, a in zip(self.inputs, args):
            t = a.to(self.device, self.dtypes[name]).contiguous()
            ctx.set_input_shape(name, tuple(t.shape))
            ctx.set_tensor_address(name, t.data_ptr())
            bound.append(t)  # alive until enqueued; the stream orders its reuse
        outs = []
        for name in self.outputs:
            o = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self.dtypes[name],
                            device=self.device)
            ctx.set_tensor_address(name, o.data_ptr())
            outs.append(o)
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path}")
        return outs


def trt_stages(model: BridgeGAN, rewrites: Rewrites, dtype: torch.dtype, device: torch.device,
               onnx_dir: str | os.PathLike | None = None,
               batch: tuple[int, int, int] = (1, 8, 64)) -> Stages:
    """The ``tensorrt`` backend: one plan per stage graph, built on first use."""
    trt = import_tensorrt()
    precision = PLAN_PRECISION_OF[dtype]
    folder = export_model(model, onnx_dir, STAGES, ("fp32",), rewrites)
    plans = {}
    with torch.cuda.device(device):
        here = device_info(trt)
        for name in STAGES:
            plan = folder / f"{name}_{precision}.plan"
            if not sidecar_path(plan).is_file() or not plan.is_file() or sidecar_problems(
                    read_sidecar(plan), here):
                build_plan(build_config(folder / file_name(name, "fp32"), precision, batch), plan)
            plans[name] = TrtPlan(plan, device)
    return exported_stages(plans, stateful=True)  # one execution context per plan
