"""``tensorrt``: TensorRT plans of the exported stage graphs, run with torch CUDA tensors.

The float32 stage graphs are exported (see ``export.onnx_export``) into the export folder
and one plan per stage is built beside them (``<stage>_<precision>.plan``) on first use,
or again when its sidecar says it was built for another GPU or TensorRT version.
:class:`TrtPlan` binds torch tensors by address and enqueues on the current torch stream
(``execute_async_v3``; no pycuda); it refuses a plan built elsewhere and batches outside
the plan's optimisation profile.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ...reference.programs import Stages
from ..export.names import STAGES
from ..export.onnx_export import ONNX_PRECISION_OF, export_model, file_name
from ..export.tensorrt_build import (PlanMismatch, build_config, build_plan, check_sidecar,
                                     device_info, import_tensorrt, read_sidecar,
                                     sidecar_path, sidecar_problems)
from .exported import exported_stages

PLAN_PRECISION_OF = {**ONNX_PRECISION_OF, torch.bfloat16: "bf16"}


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


def build(model, rewrites, dtype, device, channels_last=False, onnx_dir=None,
          batch: tuple[int, int, int] = (1, 8, 64)) -> Stages:
    """One plan per stage graph over batch sizes ``batch`` (min, opt, max), built on
    first use; ``channels_last`` does not apply."""
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
    return exported_stages(plans)
