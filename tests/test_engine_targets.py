"""Every Triton kernel compiles for sm_90 (H100 / H200) on this GPU-less machine:
`python -m bridgegan.engine.targets`, run without the interpreter (interpreted kernels do
not compile; the interpreter, which CI runs the kernels in, raises none of ptxas's or
Triton's compiler errors), on what the paper model launches at batch 64, and with
`--launchers` on the extreme configurations the launchers choose for any model (the most
and the fewest tile elements per thread of each norm path and layout, the split path's
widest merge of partials and both of its statistics, rgb_tail's widest channel tile with
the most outputs, the transposed convolution's epilogue) in float32, float16 and bfloat16,
where a spill fails too."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridgegan.engine import targets

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ("_fused_kernel", "_stats_kernel", "_apply_kernel", "_rgb_tail_kernel",
           "_bias_relu_kernel")
# (kernel, layout, config) -> the most bytes it may spill. Measured on sm_90 (triton 3.9.0):
# the fused kernel's channels_last [4096 pixels, 4 channels] tile (C <= 4 at 64x64; 16 warps,
# whose ceiling is 128 registers) with gamma, beta and a residual spills 184-200 B in every
# dtype: its pixel stride C is no multiple of 16, so every element is a load of its own.
# Whether the split path is faster there is for a GPU to say; until then a spill elsewhere,
# or more of this one, fails.
KNOWN_SPILLS = {("_fused_kernel", "cl", "BLOCK_HW=4096, BLOCK_C=4,"): 200}
# Triton 3.8 (which torch 2.14's CUDA wheels pin: triton~=3.8.0) writes PTX for the fused
# kernel's widest nchw tile [16384 pixels, 1 channel] with gamma, beta and a residual that
# ptxas (3.8's 12.9 and 3.9's 13.4 alike) compiles in bfloat16 to an 8 B stack frame (4 B
# spill stores); 3.9's PTX spills nothing there.
TRITON_38_SPILLS = {("_fused_kernel", "nchw", "BLOCK_HW=16384, BLOCK_C=1,"): 8}
COLUMNS = ("kernel", "dtype", "layout", "launches", "first use", "regs", "spilled", "shared",
           "warps", "occupancy", "config")  # of targets.markdown's table


needs_toolchain = pytest.mark.skipif(bool(targets.toolchain_problem()),
                                     reason=targets.toolchain_problem() or "n/a")


def compiled_table(tmp_path, *args) -> list[dict]:
    """The rows of `python -m bridgegan.engine.targets ARGS --markdown`, which must exit 0
    (every specialisation compiled) and say so; the launches ask for FP fusion themselves
    (Triton 3.9 warns where its default decides: 3.10 turns it off)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "bridgegan.engine.targets", *args,
                           "--markdown", str(tmp_path / "table.md")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TRITON_DEFAULT_FP_FUSION is unset" not in proc.stderr
    assert "kernel specialisations compile for sm_90" in proc.stdout.strip().splitlines()[-1]
    rows = [dict(zip(COLUMNS, (cell.strip() for cell in line.split("|")[1:-1])))
            for line in (tmp_path / "table.md").read_text().splitlines()[2:]]
    assert not [r for r in rows if r["regs"].startswith("failed")]
    return rows


@needs_toolchain
def test_every_engine_kernel_compiles_for_sm90(tmp_path):
    rows = compiled_table(tmp_path)
    # the engine launches every norm and tail kernel at the paper's sizes
    assert {"_fused_kernel", "_stats_kernel", "_apply_kernel",
            "_rgb_tail_kernel"} <= {r["kernel"] for r in rows}


def _known_spills() -> dict:
    import triton

    older = targets.triton_version(triton) < (3, 9)
    return {**KNOWN_SPILLS, **(TRITON_38_SPILLS if older else {})}


def _allowed(row: dict) -> int:
    return max((b for (kernel, layout, config), b in _known_spills().items()
                if (row["kernel"], row["layout"]) == (kernel, layout) and config in row["config"]),
               default=0)


@needs_toolchain
def test_launcher_configs_compile_for_sm90_without_spills(tmp_path):
    rows = compiled_table(tmp_path, "--launchers", "--dtypes", "fp32,fp16,bf16", "--arch", "90")
    assert {r["kernel"] for r in rows} == set(KERNELS)
    assert {r["dtype"] for r in rows} == {"fp32", "fp16", "bf16"}
    spilled = [f"{r['kernel']} {r['dtype']} {r['layout']} {r['first use']}: {r['spilled']} B "
               f"spilled ({r['config']})" for r in rows if int(r["spilled"]) > _allowed(r)]
    assert not spilled, "\n".join(spilled)


def test_occupancy_follows_the_register_rule():
    # 32 registers x 8 warps: 8 blocks fill an SM's 64 warps; 87 registers round up to
    # 2816 per warp: 23 warps fit, two blocks of 8
    assert targets.occupancy(32, 8, 0) == 1.0
    assert targets.occupancy(87, 16, 1024) == 0.25
    assert targets.occupancy(87, 8, 1024) == 0.25
    assert targets.occupancy(32, 8, 100 * 1024) == 2 * 8 / 64  # two blocks' shared memory


def test_a_triton_older_than_the_tool_is_named(monkeypatch):
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", "3.3.1")
    assert targets.toolchain_problem() == (
        "triton 3.3.1 is older than this tool's 3.6: pip install 'triton>=3.6'")
