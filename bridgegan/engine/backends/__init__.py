"""Backends: how the engine's stages (trunk, encode, map, decode) are executed.

One module per backend, named after it, each with a ``build(model, rewrites, dtype,
device, channels_last, onnx_dir) -> Stages`` (and, where it runs D's attribute head its own
way, a ``build_classifier(model, rewrites, device, onnx_dir)``; the others run
``graph.AttributeHead`` in torch), and one table, ``REGISTRY``, saying what each needs and
how the engine may run it. A new backend is one module and one ``Backend``
row. ``backend="auto"`` picks the fastest measured backend that runs
on the device (``FASTEST``), torch where none of them does.

This package's ``__init__`` and ``base`` are torch-free (the command line lists the names
without importing the engine); a backend's module is imported when it is built.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ...numerics import dtype_name
from .base import BackendUnavailable, place

if TYPE_CHECKING:
    import torch

    from ...reference.programs import Stages

AUTO = "auto"
ALL_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Backend:
    """One engine backend: what it needs, how the engine may run it, what builds it."""

    name: str  # also the name of its module in this package
    packages: tuple[str, ...] = ()  # the import names it needs ...
    install: str = ""  # ... and how to install them
    cuda: bool = False  # needs a CUDA device ...
    triton_kernels: bool = False  # runs Triton kernels: on a CPU only in the interpreter
    dtypes: tuple[str, ...] = ALL_DTYPES
    cuda_graphs: bool = False  # the engine may capture its programs in CUDA graphs ...
    graphs_by_default: bool = False  # ... and does on CUDA unless told not to
    serialised: bool = False  # calls share state (compiled code, execution contexts)
    slow_build: bool = False  # first use can take minutes (autotuning, plan builds)
    exported: bool = False  # runs the ONNX graphs exported into ``onnx_dir``
    rewritten: bool = True  # runs the rewritten graph, whose rewrites ``rewrites`` choose

    def problem(self, device: str | torch.device, dtype: torch.dtype | None = None
                ) -> Exception | None:
        """Why this backend cannot run on ``device`` at ``dtype`` (a torch dtype or a name:
        float16, fp16, half...); None when it can."""
        if dtype is not None and dtype_name(dtype) not in self.dtypes:
            return ValueError(f"backend {self.name!r} runs {' or '.join(self.dtypes)}, "
                              f"got {dtype_name(dtype)}")
        if not all(installed(p) for p in self.packages):
            return BackendUnavailable(f"backend {self.name!r} needs "
                                      f"{' and '.join(self.packages)}: {self.install}")
        interpreter = self.triton_kernels and os.environ.get("TRITON_INTERPRET") == "1"
        if self.cuda and device_type(device) != "cuda" and not interpreter:
            return BackendUnavailable(
                f"backend {self.name!r} needs a CUDA device (device='cuda')" + (
                    "; on a CPU it runs only under the Triton interpreter "
                    "(TRITON_INTERPRET=1, slow, for testing)" if self.triton_kernels else ""))
        return None

    def build(self, model, rewrites, dtype, device, channels_last: bool,
              onnx_dir=None) -> Stages:
        """This backend's stages for ``model`` (see the backend module's ``build``)."""
        module = importlib.import_module(f".{self.name}", __package__)
        return module.build(model, rewrites, dtype, device, channels_last, onnx_dir)

    def classifier(self, model, rewrites, device, onnx_dir=None):
        """D's attribute head on ``device``: images (N, 3, S, S) -> float32 logits (N, A)
        (the backend module's ``build_classifier`` where it has one and that gives one,
        else ``graph.AttributeHead``, its weights channels_last on a CPU: ``Engine.classify``
        1.1x as fast at batch 1 and 1.3x at batch 8 at 32 px, 1.3-1.4x at 128 px, one
        thread, this workplace's 2-core CPU, 2026-12-07; a GPU's layout is left as it was,
        unmeasured)."""
        module = importlib.import_module(f".{self.name}", __package__)
        build = getattr(module, "build_classifier", None)
        head = build(model, rewrites, device, onnx_dir) if build else None
        if head is not None:
            return head
        import torch

        from ..graph import AttributeHead

        return place(AttributeHead(model), torch.float32, device,
                     channels_last=device_type(device) == "cpu")


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("reference", cuda_graphs=True, rewritten=False),
    Backend("torch", cuda_graphs=True, graphs_by_default=True),
    Backend("triton", packages=("triton",), install="pip install 'bridgegan[triton]'",
            cuda=True, triton_kernels=True, cuda_graphs=True, graphs_by_default=True),
    Backend("compile", cuda_graphs=True, graphs_by_default=True, serialised=True,
            slow_build=True),  # max-autotune on a GPU
    Backend("onnxruntime", packages=("onnx", "onnxruntime"),
            install="pip install 'bridgegan[onnx]'", dtypes=("float32", "float16"),
            exported=True),
    Backend("tensorrt", packages=("tensorrt",),
            install="pip install 'bridgegan[tensorrt]' (TensorRT 10, on a CUDA machine)",
            cuda=True, serialised=True, slow_build=True,  # one execution context per plan
            exported=True),
)}
BACKENDS = tuple(REGISTRY)

# backend="auto": the first of these that runs here, in orders measured
# (benchmarks/RESULTS.md): on a CPU onnxruntime ahead of or tied with torch on the same
# rewritten graph (0.98-1.40x its speed at 128 px, batch 1 and 8, one or two threads,
# 2026-12-06);
# on CUDA triton fp16 channels_last ahead of torch (5,179 against 2,665 img/s at batch 64,
# H100). tensorrt, compile and onnxruntime were never measured on a GPU, so auto never
# picks them there; torch runs where triton cannot (torch's CUDA builds bring triton).
FASTEST = {"cpu": ("onnxruntime", "torch"), "cuda": ("triton", "torch")}


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found, not imported)."""
    return find_spec(package) is not None


def device_type(device: str | torch.device) -> str:
    """"cuda" for "cuda", "cuda:1" or torch.device("cuda", 1); likewise other devices."""
    return str(device).split(":")[0]


def check_backend(name: str, device: str | torch.device,
                  dtype: torch.dtype | None = None) -> Backend:
    """The checked registry row of backend ``name``; "auto": the fastest one that runs on
    ``device`` at ``dtype`` (see FASTEST; torch when none of them does). Raises
    ValueError for an unknown name or a dtype the backend does not run, and
    BackendUnavailable naming what to install or which device it needs."""
    if not isinstance(name, str):
        raise ValueError(f"backend must be a name: {AUTO}, {', '.join(BACKENDS)}; got "
                         f"{type(name).__name__}")
    if name == AUTO:
        for candidate in FASTEST.get(device_type(device), ()):
            if REGISTRY[candidate].problem(device, dtype) is None:
                return REGISTRY[candidate]
        name = "torch"
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; backends are {AUTO}, {', '.join(BACKENDS)}")
    problem = REGISTRY[name].problem(device, dtype)
    if problem is not None:
        raise problem
    return REGISTRY[name]

