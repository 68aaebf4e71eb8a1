"""``onnxruntime``: the exported ONNX stage graphs in onnxruntime sessions (CPU, or CUDA
for a CUDA device), and D's attribute head as its float32 ``classify`` graph (the source
labels of images given without them). The graphs are exported on first use into
``onnx_dir``, by default the cache folder of the model's export key (see
``export.onnx_export``)."""
from __future__ import annotations

import ctypes
import os
import threading
import warnings
from pathlib import Path

import torch

from ...path_checks import NotWritableError
from ...reference.programs import Stages
from ..export.names import HEADS, STAGES
from ..export.onnx_export import ONNX_PRECISION_OF, OnnxFileError, export_model, file_name
from .base import BackendUnavailable
from .exported import exported_stages


CUDA_MIN_VERSION = (1, 18)  # the CUDA provider's use_tf32 option


def session_providers(device: torch.device) -> list:
    """The execution providers of a session on ``device``; BackendUnavailable where this
    onnxruntime cannot run one there."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("this onnxruntime has no CUDAExecutionProvider: "
                                     "pip install onnxruntime-gpu, or use device='cpu'")
        # use_tf32 0: float32 graphs' convolutions in float32, not TF32 (ORT's default on
        # CUDA, as cuDNN's), as the engine's torch backends run them; the option is 1.18's
        # (the extra's floor binds the CPU package only, not onnxruntime-gpu)
        if tuple(int(p) for p in ort.__version__.split(".")[:2]) < CUDA_MIN_VERSION:
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} runs float32 convolutions on CUDA in "
                f"TF32 only: pip install 'onnxruntime-gpu>="
                f"{'.'.join(map(str, CUDA_MIN_VERSION))}', or use device='cpu'")
        providers.insert(0, ("CUDAExecutionProvider",
                             {"device_id": device.index or 0, "use_tf32": 0}))
    return providers


TRIM_SLACK = 128 << 20  # resident bytes past the last trim's that start the next trim


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm = {"pid": None, "fd": None}  # /proc/self/statm kept open, by the process that did


def resident_bytes() -> int:
    """This process's resident size (Linux's /proc/self/statm). The file stays open (a
    read is one pread, not an open, a read and a close), as it is read after every session
    run: 150-170 us less per call of the shipped model (one thread, this workplace's CPU,
    2026-12-07: 3.7% of a batch-1 translate, 0.6% at batch 8). A forked child opens its
    own, as "self" names the process that opened it."""
    if _statm["pid"] != os.getpid():
        _statm.update(fd=os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC),
                      pid=os.getpid())
    return int(os.pread(_statm["fd"], 256, 0).split()[1]) * _PAGE


def _glibc_malloc_trim():
    """glibc's ``malloc_trim``, or None where this process has no glibc (musl, macOS,
    Windows) or no /proc/self/statm to read its resident size from."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
        resident_bytes()
    except (OSError, AttributeError, TypeError, ValueError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class HeapTrimmer:
    """Gives the heap's freed pages back to the system once the process's resident size
    has grown ``slack`` bytes past what it was after the last trim (see ``OrtGraph``); a
    no-op without glibc. ``trim`` defaults to glibc's. A thread that meets it while
    another trims goes on."""

    def __init__(self, slack: int = TRIM_SLACK, trim=None, resident=resident_bytes):
        self.slack, self.resident = slack, resident
        self.trim = _glibc_malloc_trim() if trim is None else trim
        self.floor = 0  # resident bytes after the last trim
        self.lock = threading.Lock()

    def __call__(self) -> None:
        if self.trim is None or not self.lock.acquire(blocking=False):
            return
        try:
            if self.resident() > self.floor + self.slack:
                self.trim(0)
                self.floor = self.resident()
        except (OSError, ValueError, IndexError):  # /proc unreadable now (or its descriptor
            # closed by other code and reused): no more trims, the run's result stands
            self.trim = None
        finally:
            self.lock.release()


release_freed_memory = HeapTrimmer()


class OrtGraph:
    """An ONNX file in an onnxruntime session (CPU, or CUDA for a CUDA ``device``), called
    with torch tensors in the graph's input order; returns float32 tensors on ``device``."""

    def __init__(self, path: str | os.PathLike, device: torch.device):
        import onnxruntime as ort

        providers = session_providers(device)
        options = ort.SessionOptions()
        # torch's thread count (``--threads``), read now, so that ORT and torch rows of one
        # bench run on as many cores; the stage graphs are sequential: one inter-op thread
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # no busy-waiting threads between runs: torch work (D, glue) runs in between
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no CPU memory arena: it keeps the memory of the largest call for good (paper
        # model, 128 px, one thread, this 2-core CPU, 2026-12-06: 4.2 GB resident after
        # one batch-64 call and 1.1 GB after batch 8, against 0.6-0.7 GB without), for
        # 4-5% of a batch-8 call's time and 8-12% of a batch-64 call's (two runs each).
        # Without it every run mallocs its tensors at batch-dependent sizes, and glibc,
        # whose mmap threshold rises as mmapped blocks are freed, keeps them in a heap
        # that fragments: every session's __call__ (a CUDA one's host copies too) trims it
        # (release_freed_memory; benchmarks/RESULTS.md)
        options.enable_cpu_mem_arena = False
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise OnnxFileError(f"onnxruntime cannot load {path}: {exc}") from None
        # a CUDA provider that fails to load (its CUDA or cuDNN libraries missing or of
        # another major version) is only logged: the session runs on the CPU
        if device.type == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable(
                f"onnxruntime could not start its CUDAExecutionProvider (providers in use: "
                f"{', '.join(self.session.get_providers())}; see its log): install the "
                f"onnxruntime-gpu build for this CUDA, or use device='cpu'")
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.device, self.path = device, Path(path)

    def __call__(self, *args: torch.Tensor) -> list[torch.Tensor]:
        feeds = {n: a.detach().to("cpu", torch.float32).contiguous().numpy()
                 for n, a in zip(self.inputs, args)}
        try:
            outputs = self.session.run(None, feeds)
        except Exception as exc:  # its own pybind types (Fail: out of memory...), no RuntimeError
            raise RuntimeError(f"onnxruntime failed to run {self.path.name} "
                               f"({self.path.parent}): {exc}") from None
        release_freed_memory()  # see __init__
        return [torch.from_numpy(o).to(self.device) for o in outputs]


def build(model, rewrites, dtype, device, channels_last=False, onnx_dir=None) -> Stages:
    """The stage graphs of ``model`` at ``dtype`` (float32 or float16) in sessions;
    ``channels_last`` does not apply."""
    precision = ONNX_PRECISION_OF[dtype]
    session_providers(device)  # refused before the export, not after it
    folder = export_model(model, onnx_dir, STAGES, (precision,), rewrites)
    return exported_stages({n: OrtGraph(folder / file_name(n, precision), device)
                            for n in STAGES})


def build_classifier(model, rewrites, device, onnx_dir=None):
    """D's attribute head, its float32 ``classify`` graph in a session: images -> logits;
    None (torch's head runs it, with a warning) where an ``onnx_dir`` without the graph
    cannot be written (exported with the stage graphs only, then made read-only).
    ``Engine.classify`` ran 1.6-1.9x as fast as with torch's head (channels_last; 0.49
    against 0.95 ms at batch 1, 2.9 against 4.5 ms at batch 8; the shipped model, one
    thread, this workplace's 2-core CPU, 2026-12-07)."""
    (head,) = HEADS
    try:
        folder = export_model(model, onnx_dir, HEADS, ("fp32",), rewrites)
    except NotWritableError as exc:
        warnings.warn(f"{exc}; it holds no {file_name(head, 'fp32')}: source labels are "
                      f"estimated by torch's attribute head", stacklevel=2)
        return None
    graph = OrtGraph(folder / file_name(head, "fp32"), device)
    return lambda x: graph(x)[0]
