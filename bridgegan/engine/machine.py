"""The machine a measurement ran on, as every bench row and the benchmarks' records name
it: the GPU, or the CPU's model with its matrix extensions (CPU_FLAGS) and torch's thread
count; the versions of torch, Triton and the other libraries the rows ran on; the commit."""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch


CPUINFO = Path("/proc/cpuinfo")  # where the CPU's model name and flags are read (Linux)


def cpu_info() -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of this machine's CPU from CPUINFO; (None, no flags) where it
    cannot be read."""
    model, flags = None, frozenset()
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and model is None:
                model = value
            elif key == "flags" and not flags:
                flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_has_amx() -> bool:
    """True when this CPU has AMX bf16 tiles."""
    return "amx_bf16" in cpu_info()[1]


# the ISA extensions that decide a CPU's matrix speed by dtype (bf16 on AMX is several
# times float32, without AMX / AVX512-BF16 emulated and slower): virtual machines often
# name every CPU "Intel(R) Xeon(R) Processor", so the model name alone cannot tell them apart
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def cpu_model() -> str:
    """The CPU's model name and its CPU_FLAGS (``cpu_info``), else what ``platform``
    knows."""
    model, have = cpu_info()
    flags = [f for f in CPU_FLAGS if f in have]
    model = model or platform.processor() or platform.machine()
    return f"{model} [{' '.join(flags)}]" if flags else model


def environment(device: torch.device) -> dict:
    """device name and versions carried by every row; the commit ends in ``-dirty`` when
    the working tree differs from it."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    commit = os.environ.get("BRIDGEGAN_COMMIT", "")  # set where the copy has no .git
    root = Path(__file__).resolve().parents[2]
    # only this package's own checkout: an installed copy (site-packages) may sit inside
    # some other git work tree (a project's .venv), whose commit is not this code's
    if not commit and (root / ".git").exists() and (root / "pyproject.toml").is_file():
        try:
            commit = subprocess.run(["git", "describe", "--always", "--dirty"],
                                    capture_output=True, text=True,
                                    cwd=root, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    threads = torch.get_num_threads()
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_model()}, {threads} thread{'s' if threads > 1 else ''}")
    return {"device": name, "torch": torch.__version__, "triton": triton_version,
            "commit": commit or "unknown", "date": dt.date.today().isoformat()}


def libraries(device: torch.device) -> dict:
    """Versions of the libraries the rows ran on besides torch and triton: onnxruntime and
    TensorRT where loaded by then, CUDA and cuDNN on a GPU."""
    found = {name: sys.modules[name].__version__ for name in ("onnxruntime", "tensorrt")
             if name in sys.modules}
    if device.type == "cuda":
        found.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return found
