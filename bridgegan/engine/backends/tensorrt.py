"""``tensorrt``: TensorRT plans of the exported stage graphs, run with torch CUDA tensors.

The float32 stage graphs are exported (see ``export.onnx_export``) into the export folder
and one plan per stage and GPU kind is built beside them (``<stage>_<precision>_<gpu>.plan``,
``plan_name``) on first use, or again when its sidecar says it was built for another GPU
or TensorRT version, from another export of the graph, or for another batch range
(``stale_plan``).
:class:`TrtPlan` binds torch tensors by address and enqueues (``execute_async_v3``; no
pycuda) on a stream of its own, ordered after and before the current torch stream:
TensorRT synchronises the device around work on the default stream. A batch larger than
the plan's profile runs in chunks of the profile's max (the engine's stages see K * N rows
for K references per source), one below its least is padded up to it; an input that is a
view not 256-byte aligned (a slice of a larger tensor) is copied first: TensorRT requires
that alignment of every I/O address. It refuses a plan built elsewhere and any binding
that TensorRT does not accept.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ...locks import locked
from ...reference.programs import Stages
from ..cudagraphs import in_chunks, pad_rows
from ..export.names import STAGES
from ..export.onnx_export import ONNX_PRECISION_OF, export_model, file_name
from ..export.tensorrt_build import (PlanMismatch, batch_range, build_config, build_plan,
                                     check_sidecar, device_info, import_tensorrt, logger,
                                     plan_name, plan_problem, read_sidecar, stale_plan)
from .exported import exported_stages

PLAN_PRECISION_OF = {**ONNX_PRECISION_OF, torch.bfloat16: "bf16"}
ALIGNMENT = 256  # bytes: IExecutionContext.set_tensor_address needs it for every I/O address


def aligned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a contiguous copy of it when its address is not ``ALIGNMENT``-aligned."""
    return t if t.data_ptr() % ALIGNMENT == 0 else t.clone(memory_format=torch.contiguous_format)


class TrtPlan:
    """A plan file on a CUDA device, called with tensors in the graph's input order;
    returns its outputs as new tensors on the device."""

    def __init__(self, plan: str | os.PathLike, device: torch.device | str = "cuda"):
        trt = import_tensorrt()
        self.path, self.device = Path(plan), torch.device(device)
        self.sidecar = read_sidecar(plan)
        with torch.cuda.device(self.device):
            check_sidecar(self.sidecar, device_info(trt), plan)
            # TensorRT's factories must outlive what they create: the runtime, its engine
            self.runtime = trt.Runtime(logger(trt))
            data = self.path.read_bytes()
            problem = plan_problem(self.sidecar, data, plan)
            if problem:
                raise PlanMismatch(problem)
            self.engine = self.runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise PlanMismatch(f"TensorRT cannot load {plan} (see its log)")
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise RuntimeError(f"TensorRT could not create an execution context for "
                                   f"{plan} (see its log; device memory for its activations?)")
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = list(self.sidecar["profile"])  # the ONNX graph's input order
        self.outputs = [n for n in names if not is_input[n]]
        types = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                 trt.DataType.BF16: torch.bfloat16}
        self.dtypes = {}
        for n in names:
            dtype = self.engine.get_tensor_dtype(n)
            if dtype not in types:
                raise PlanMismatch(f"{plan}: tensor {n!r} has TensorRT type {dtype}; the "
                                   f"exported graphs have float inputs and outputs")
            self.dtypes[n] = types[dtype]
        self.batch_range = batch_range(self.sidecar["profile"])

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        if len(args) != len(self.inputs):
            raise ValueError(f"{self.path} takes {len(self.inputs)} inputs "
                             f"({', '.join(self.inputs)}), got {len(args)}")
        n = args[0].shape[0]
        if any(a.shape[0] != n for a in args):
            raise ValueError(f"{self.path}: the inputs must share their first (batch) "
                             f"dimension, got shapes {[tuple(a.shape) for a in args]}")
        return in_chunks(self._run, args, self.batch_range[1])

    def _run(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """A batch within the profile's max; one below its least padded up to it, the
        extra rows dropped."""
        lo, n = self.batch_range[0], args[0].shape[0]
        if n < lo:
            return [o[:n] for o in self._enqueue(*(pad_rows(a, 0, lo) for a in args))]
        return self._enqueue(*args)

    def _enqueue(self, *args: torch.Tensor) -> list[torch.Tensor]:
        with torch.cuda.device(self.device):
            main = torch.cuda.current_stream()
            tensors = [aligned(a.to(self.device, self.dtypes[name]).contiguous())
                       for name, a in zip(self.inputs, args)]
            for name, t in zip(self.inputs, tensors):
                self._bind(name, t, shape=True)
            outs = [torch.empty(tuple(self.context.get_tensor_shape(name)),
                                dtype=self.dtypes[name], device=self.device)
                    for name in self.outputs]
            for name, o in zip(self.outputs, outs):
                self._bind(name, o)
            self.stream.wait_stream(main)  # the inputs are ready, the outputs allocated
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {self.path}")
            main.wait_stream(self.stream)
            for t in tensors + outs:  # the allocator must not reuse them before the plan ran
                t.record_stream(self.stream)
        return outs

    def _bind(self, name: str, t: torch.Tensor, shape: bool = False) -> None:
        """Bind tensor ``t`` to ``name`` (and its shape, for an input); TensorRT's refusal
        (a shape outside the profile, an address not 256-byte aligned) is an error, never
        a run on the previous call's binding."""
        if shape and not self.context.set_input_shape(name, tuple(t.shape)):
            raise ValueError(f"{self.path} refuses input {name!r} of shape {tuple(t.shape)}; "
                             f"its profile: {self.sidecar['profile'][name]}")
        if not self.context.set_tensor_address(name, t.data_ptr()):
            raise RuntimeError(f"TensorRT refuses the address of {name!r} for {self.path} "
                               f"(it needs 256-byte aligned device memory)")


def build(model, rewrites, dtype, device, channels_last=False, onnx_dir=None) -> Stages:
    """One plan per stage graph over the default batch profile (``PLAN_BATCHES``), built on
    first use; ``channels_last`` does not apply."""
    trt = import_tensorrt()
    precision = PLAN_PRECISION_OF[dtype]
    folder = export_model(model, onnx_dir, STAGES, ("fp32",), rewrites)
    plans = {}
    with torch.cuda.device(device):
        here = device_info(trt)
        for name in STAGES:
            plan = folder / plan_name(name, precision, here)
            cfg = build_config(folder / file_name(name, "fp32"), precision)
            if stale_plan(plan, cfg, here):
                # under the export folder's lock (no lock for a fresh plan: the cache may be
                # read-only): two processes' first use build it once, neither loads a plan
                # the other is replacing (a sidecar written for other bytes), and `bridgegan
                # cache --prune` waits for the build; as ``export_model``, a folder the
                # caller named keeps no lock file beside it
                with locked(folder, remove=onnx_dir is not None):
                    if not folder.is_dir():
                        raise FileNotFoundError(f"{folder} was removed while this engine "
                                                f"was built (`bridgegan cache --prune`?): "
                                                f"run again")
                    if stale_plan(plan, cfg, here):
                        build_plan(cfg, plan)
            plans[name] = TrtPlan(plan, device)
    return exported_stages(plans)
