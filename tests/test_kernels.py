"""Fused SPADE / IN kernels: parity with a float64 reference, edge cases, bad input.

The Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1, which the README's test
command sets; without it they skip: this module does not set it, since the whole process
would then interpret, a GPU machine's GPU tests included), so shapes are tiny. Inputs are fresh seeded random tensors (never
zeros); gamma/beta have a realistic scale (0.5 * randn).
"""

import json
import math
import re
import warnings

import pytest
import torch

from bridgegan.kernels import (
    KernelFallbackWarning,
    instance_norm_act,
    plan_launch,
    rgb_tail,
    spade_modulate,
    triton_interpreted,
)
from bridgegan.kernels import dispatch
from bridgegan.kernels.layout import add_upsampled, memory_format
from bridgegan.kernels.norm_act import ACTS
from bridgegan.kernels.parity import LAYOUTS, OPS, PARITY_DTYPES, call, make_inputs, reference64
from bridgegan.kernels.parity import main as parity_main
from bridgegan.kernels.registry import KERNELS, OP_PARITY
from bridgegan.numerics import dtype_name, errors, float64_call, same_nonfinite, tolerance
from conftest import assert_close, benchmark_script

try:
    import triton  # noqa: F401

    _TRITON_ERR = None
except Exception as exc:  # pragma: no cover - depends on the environment
    _TRITON_ERR = f"{type(exc).__name__}: {exc}"

if _TRITON_ERR is not None:
    _SKIP_REASON = f"triton does not import ({_TRITON_ERR})"
elif not triton_interpreted():
    _SKIP_REASON = ("the Triton kernels on the CPU need TRITON_INTERPRET=1 (the README's test "
                    "command sets it)")
else:
    _SKIP_REASON = ""
requires_triton = pytest.mark.skipif(bool(_SKIP_REASON), reason=_SKIP_REASON or "n/a")

# SPADE2C: spade_modulate with the merged (N, 2C, H, W) gamma; *_B: with the (2C,) bias
SPADE, SPADE2C, SPADE2C_B, IN = OPS
SPADE_B = "spade_modulate+bias"  # not in the parity table (the same kernel as SPADE2C_B)
ALL_OPS = OPS + (SPADE_B,)
SPLIT = {"max_fused": 16, "target_programs": 16}  # forces the split (looped) path


def make(op, shape, dtype=torch.float32, layout="nchw", seed=0):
    """x and the op's other inputs, fresh and seeded; off-centre, so that the mean matters."""
    gen = torch.Generator().manual_seed(seed)
    return make_inputs(op, shape, dtype, layout, "cpu", gen, x_scale=2.0, shift=0.1)


def assert_format(out, x, layout):
    assert out.dtype == x.dtype and out.shape == x.shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()


# ----------------------------------------------------------------------------- parity


@requires_triton
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("op", ALL_OPS)
def test_parity_fused(op, dtype, layout, act, poisoned_alloc):
    seed = 10 * ALL_OPS.index(op) + ACTS.index(act)
    x, kw = make(op, (2, 3, 7, 5), dtype, layout, seed=seed)
    assert plan_launch(2, 3, 35, layout == "channels_last").path == "fused"
    out = call(op, x, kw, act=act, impl="triton")
    assert_format(out, x, layout)
    assert_close(out, reference64(op, x, kw, act), dtype)


@requires_triton
@pytest.mark.parametrize("stats", ["lanes", "tiles"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("op", ALL_OPS)
def test_parity_split(op, dtype, layout, stats, poisoned_alloc):
    shape = (2, 3, 9, 7)  # 63 pixels: several tiles per chunk, a partial last tile and chunk
    cfg = dict(SPLIT, stats=stats)
    plan = plan_launch(2, 3, 63, layout == "channels_last", cfg)
    assert plan.path == "split" and plan.n_chunks > 1 and plan.chunk > plan.block_hw
    assert plan.lanes == (stats == "lanes")
    act = ACTS[(ALL_OPS.index(op) + PARITY_DTYPES.index(dtype)) % 3]
    x, kw = make(op, shape, dtype, layout, seed=7)
    out = call(op, x, kw, act=act, impl="triton", config=cfg)
    assert_format(out, x, layout)
    assert_close(out, reference64(op, x, kw, act), dtype)


def far_from_zero(layout, stds, seed=33):
    """Planes ``stds`` standard deviations (0.1) off zero, with a spread of one in the
    reference's relative error."""
    gen = torch.Generator().manual_seed(seed)
    x = (0.1 * stds + 0.1 * torch.randn(2, 5, 16, 12, generator=gen)).float()
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_path_statistics_far_from_zero(layout):
    """The oracle's statistics are two-pass accurate in both layouts: planes 100 standard
    deviations off zero meet the float32 op tolerance. (A sum-of-squares variance, as CPU
    group_norm computes for channels_last, was measured 6e-2 off at this offset and 37 off
    at 10^4 standard deviations.)"""
    x = far_from_zero(layout, 100)
    out = call(IN, x, {}, act="none", impl="torch")
    assert_close(out, reference64(IN, x, {}, "none"), torch.float32)


@requires_triton
@pytest.mark.parametrize("stds", [1e2, 1e4])
@pytest.mark.parametrize("path", ["fused", "lanes", "tiles"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_statistics_far_from_zero(layout, path, stds):
    """The kernels' statistics are shifted by each plane's first pixel: planes 10^2 and
    10^4 standard deviations off zero meet the float32 op tolerance on every path (the
    unshifted sums were measured 3e-5 and 4e-3 off; the torch path, before it was
    shifted too, 5e-4 off at 10^4)."""
    x = far_from_zero(layout, stds)
    cfg = None if path == "fused" else dict(SPLIT, stats=path)
    assert plan_launch(2, 5, 192, layout == "channels_last", cfg).path == (
        "fused" if path == "fused" else "split")
    out = call(IN, x, {}, act="none", impl="triton", config=cfg)
    ref = reference64(IN, x, {}, "none")
    assert_close(out, ref, torch.float32)
    if stds == 1e4:  # the data needs the shift: unshifted, the same path misses the tolerance
        unshifted = call(IN, x, {}, act="none", impl="triton", config=dict(cfg or {}, shift=False))
        assert errors(unshifted, ref)[1] > tolerance(torch.float32).op_rel


def test_kernel_modules_keep_their_annotations_objects():
    """Triton < 3.2's interpreter (TRITON_INTERPRET=1, as CI runs the kernels) tells
    tl.constexpr parameters by the annotation object: under postponed annotations (a
    string "tl.constexpr") every block size became an array there (triton>=3.0 holds)."""
    import ast
    from pathlib import Path

    import bridgegan.kernels as kernels

    files = sorted(Path(kernels.__file__).parent.glob("_triton_*.py"))
    assert len(files) >= 3
    for f in files:
        future = [n for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ImportFrom)
                  and n.module == "__future__" and any(a.name == "annotations" for a in n.names)]
        assert not future, f"{f.name} postpones its annotations"


def test_sweep_configs_are_launch_plans():
    """Every launch config of bench_kernels' GPU sweep is a plan for every swept shape, so
    that a typo fails here and not in the lent GPU's one call."""
    bench = benchmark_script("bench_kernels")
    for layout, configs in bench.SWEEP.items():
        for cfg in configs:
            for c, h in bench.GEN_LAYERS:
                plan_launch(bench.BATCH, c, h * h, layout == "channels_last", cfg)


def test_bench_kernels_reports_no_speed_after_failed_parity(tmp_path, monkeypatch):
    """bench_kernels --parity: a kernel that fails its parity row stops the run before
    anything is timed, naming it (its speed was reported beside a pass count)."""
    from bridgegan.files import RowsFile
    from bridgegan.kernels import parity

    bench = benchmark_script("bench_kernels")
    rows = [dict(op="spade_modulate", dtype="fp16", layout="nchw", ok=True),
            dict(op="instance_norm_act", dtype="bf16", layout="channels_last", ok=False)]
    def check_ops(written=None, **kw):  # the table, written as the real one writes it
        RowsFile(written).done(rows)
        return rows

    monkeypatch.setattr(parity, "check_ops", check_ops)
    with pytest.raises(SystemExit, match=r"parity failed for instance_norm_act bf16 "
                                         r"channels_last \(see .*\); no speed reported"):
        bench.run(tmp_path, dry_run=True, parity=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parity.json"]


def test_kernel_parity_json_holds_the_rows_so_far(tmp_path, monkeypatch):
    """The rows so far are written to NAME.partial after each row, so that a run stopped
    part-way (a device call's limit) keeps what it checked: here the residual rows raise
    after the table and the NaN rows. NAME itself holds only a complete run's (a CI job
    reading it took a stopped run's all-PASS part for the whole): an earlier run's is
    removed as the run starts, as it would pass for this run's, and so is what a killed
    run's writes of both left."""
    from bridgegan.kernels import parity
    from conftest import dead_pid

    def stopped(*args):
        raise RuntimeError("stopped")

    monkeypatch.setattr(parity, "_residual_rows", stopped)
    path = tmp_path / "rows.json"
    path.write_text("[]")  # an earlier run's
    for name in ("rows.json", "rows.json.partial"):  # a killed run's writes
        (tmp_path / f".{name}.tmp-{dead_pid()}-ab").write_text("[")
    with pytest.raises(RuntimeError, match="stopped"):
        parity.check_ops("cpu", quick=True, impl="torch", written=path)
    rows = json.loads((tmp_path / "rows.json.partial").read_text())
    assert len(rows) > 2 * len(OPS) and rows[-1]["op"] == "spade_modulate[nan]"
    assert all(r["ok"] for r in rows) and not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json.partial"]
    monkeypatch.undo()
    done = parity.check_ops("cpu", quick=True, impl="torch", written=path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(done))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_parity_unshifted(path):
    """The sweep's unshifted statistics (``shift=False``) are correct on ordinary data."""
    cfg = {"shift": False} if path == "fused" else dict(SPLIT, shift=False)
    x, kw = make(SPADE2C_B, (2, 3, 9, 7), seed=12)
    out = call(SPADE2C_B, x, kw, act="relu", impl="triton", config=cfg)
    assert_close(out, reference64(SPADE2C_B, x, kw, "relu"), torch.float32)


@requires_triton
def test_paths_agree_past_float32s_variance():
    """Planes whose squared deviations overflow float32 (std ~1e19): every path gives what
    torch's float32 instance norm gives (the variance Inf, the plane's beta); here the
    split path gave NaN (delta**2 * 0 for an empty part in its merge), so the result hung
    on which path a shape took. Far past any activation of the model."""
    g = torch.Generator().manual_seed(0)
    gamma, beta = (0.5 * torch.randn(1, 2, 8, 8, generator=g)[..., :5, :4] for _ in range(2))
    x = 1e19 * torch.randn(1, 2, 5, 4, generator=g)
    want = spade_modulate(x, gamma, beta, impl="torch")
    with warnings.catch_warnings():  # numpy's overflow warnings under the interpreter
        warnings.simplefilter("ignore", RuntimeWarning)
        for config in (None, SPLIT):
            got = spade_modulate(x, gamma, beta, impl="triton", config=config)
            assert torch.equal(got, want), config


def test_plan_refuses_unknown_statistics():
    with pytest.raises(ValueError, match="stats must be 'lanes' or 'tiles', got 'warp'"):
        plan_launch(2, 3, 63, False, dict(SPLIT, stats="warp"))
    with pytest.raises(ValueError, match="shift must be True or False, got 'no'"):
        plan_launch(2, 3, 63, False, {"shift": "no"})


@requires_triton
def test_parity_split_wide_channels_last():
    # channels_last split path with several channel blocks and a partial one (C=40, block 32).
    x, kw = make(SPADE, (1, 40, 6, 6), torch.float16, "channels_last", seed=3)
    cfg = {"max_fused": 64, "target_programs": 4}
    plan = plan_launch(1, 40, 36, True, cfg)
    assert plan.path == "split" and plan.block_c == 32 and plan.n_cblocks == 2
    out = call(SPADE, x, kw, act="relu", impl="triton", config=cfg)
    assert_close(out, reference64(SPADE, x, kw, "relu"), torch.float16)


@requires_triton
@pytest.mark.parametrize("cfg", [{"block_c": 64}, {"block_c": 128},
                                 {"path": "split", "block_c": 64, "target_programs": 4}],
                         ids=["fused64", "fused128", "split64"])
def test_parity_wide_channel_tiles_channels_last(cfg):
    # the sweep's wider channel rows (bench_kernels SWEEP), a partial block included (C=80)
    x, kw = make(SPADE, (2, 80, 4, 4), torch.float16, "channels_last", seed=4)
    plan = plan_launch(2, 80, 16, True, cfg)
    assert plan.block_c == min(cfg["block_c"], 128) and plan.path == cfg.get("path", "fused")
    out = call(SPADE, x, kw, act="relu", impl="triton", config=cfg)
    assert_close(out, reference64(SPADE, x, kw, "relu"), torch.float16)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_slope_and_eps_are_used(path):
    cfg = SPLIT if path == "split" else None
    x, kw = make(SPADE, (2, 2, 5, 5), seed=11)
    opts = dict(act="leaky_relu", negative_slope=0.05, eps=0.5)
    out = call(SPADE, x, kw, impl="triton", config=cfg, **opts)
    assert_close(out, reference64(SPADE, x, kw, **opts), torch.float32)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_eps_zero_on_zero_variance_gives_the_shift(layout, path):
    """eps=0 is accepted: planes of zero variance (a constant plane; every plane when
    H*W = 1) normalise to 0, as in the reference (torch's instance norm), not to NaN."""
    cfg = SPLIT if path == "split" else None
    x, kw = make(SPADE, (2, 3, 5, 7), layout=layout, seed=12)
    x[0, 1] = 2.0
    out = call(SPADE, x, kw, eps=0.0, impl="triton", config=cfg)
    assert_close(out, reference64(SPADE, x, kw, eps=0.0), torch.float32)
    x, kw = make(IN, (2, 3, 1, 1), layout=layout, seed=13)
    out = call(IN, x, kw, eps=0.0, impl="triton", config=cfg)
    assert_close(out, reference64(IN, x, kw, eps=0.0), torch.float32)


def make_residual(x, half, seed, scale=1.0, shift=0.0):
    """A residual for x: its size or half of it, in x's dtype and memory format."""
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    r = shift + scale * torch.randn(n, c, h // 2 if half else h, w // 2 if half else w,
                                    generator=gen)
    return r.to(x.dtype).contiguous(memory_format=memory_format(x))


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("half", [False, True], ids=["same", "half"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("op", [SPADE2C_B, IN])
def test_parity_residual(op, dtype, layout, half, path, poisoned_alloc):
    """With ``residual``, the kernels normalise x + up(residual) and store that sum: both
    outputs against float64 (the sum rounded as stored in fp32/fp16; the CPU interpreter
    rounds bf16 toward zero where the GPU rounds to nearest, so bf16 is held to its op
    tolerance)."""
    cfg = SPLIT if path == "split" else None
    x, kw = make(op, (2, 3, 8, 6), dtype, layout, seed=21)
    assert plan_launch(2, 3, 48, layout == "channels_last", cfg).path == path
    r = make_residual(x, half, seed=22)
    out, total = call(op, x, kw, act="relu", impl="triton", config=cfg, residual=r)
    want = add_upsampled(x, r)
    assert_format(out, x, layout)
    assert_format(total, x, layout)
    if dtype == torch.bfloat16:
        assert_close(total, add_upsampled(x.double(), r.double()), dtype)
    else:
        assert torch.equal(total, want)
    assert_close(out, reference64(op, total, kw, "relu"), dtype)


@pytest.mark.parametrize("half", [False, True], ids=["same", "half"])
def test_residual_torch_path(half):
    """The torch path adds, then normalises; what ONNX export traces."""
    x, kw = make(SPADE2C_B, (2, 3, 6, 4), seed=23)
    r = make_residual(x, half, seed=24)
    out, total = call(SPADE2C_B, x, kw, act="leaky_relu", impl="torch", residual=r)
    up = r.repeat_interleave(2, 2).repeat_interleave(2, 3) if half else r
    torch.testing.assert_close(total, x + up, rtol=0, atol=0)
    torch.testing.assert_close(out, call(SPADE2C_B, x + up, kw, act="leaky_relu", impl="torch"),
                               rtol=0, atol=0)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_residual_statistics_far_from_zero(path):
    """The shift comes from the sum: x near zero plus a residual 10^4 standard deviations
    off zero meets the float32 tolerance (a pivot from x alone would not)."""
    cfg = None if path == "fused" else SPLIT
    x, _ = make(IN, (2, 3, 8, 6), seed=25)
    x = 0.1 * x
    r = make_residual(x, True, seed=26, scale=0.1, shift=1000.0)
    out, total = call(IN, x, {}, act="none", impl="triton", config=cfg, residual=r)
    ref = reference64(IN, total, {}, "none")
    assert_close(out, ref, torch.float32)
    unshifted, _ = call(IN, x, {}, act="none", impl="triton", residual=r,
                        config=dict(cfg or {}, shift=False))  # the data needs the shift
    assert errors(unshifted, ref)[1] > tolerance(torch.float32).op_rel


@requires_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("path", ["fused", "split"])
def test_residual_nonfinite(path):
    """A NaN in the residual poisons the planes its pixels reach in the sum, and the
    pivot (pixel 0) included: the same as the torch path."""
    cfg = SPLIT if path == "split" else None
    x, kw = make(IN, (2, 3, 8, 6), seed=27)
    r = make_residual(x, True, seed=28)
    r[0, 1, 0, 0] = float("nan")   # the pivot pixel of plane (0, 1)
    r[1, 2, 3, 2] = float("inf")   # one pixel of plane (1, 2): its 2x2 block in the sum
    out, total = call(IN, x, kw, act="relu", impl="triton", config=cfg, residual=r)
    ref_out, ref_total = call(IN, x, kw, act="relu", impl="torch", residual=r)
    assert same_nonfinite(total, ref_total) and (~torch.isfinite(total)).sum() == 8
    assert same_nonfinite(out, ref_out) and torch.isnan(out[0, 1]).all()


@requires_triton
def test_residual_autograd_matches_torch_path():
    """While autograd records, the sum is a torch add and the norm the Triton forward:
    gradients reach x, the residual and gamma as on the torch path."""
    grads = {}
    for impl in ("triton", "torch"):
        x, kw = make(SPADE2C_B, (2, 3, 6, 4), seed=29)
        r = make_residual(x, True, seed=30)
        leaves = [t.requires_grad_() for t in (x, r, kw["gamma"])]
        out, total = call(SPADE2C_B, x, kw, act="relu", impl=impl, residual=r)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[impl] = [t.grad for t in leaves]
    for got, want in zip(grads["triton"], grads["torch"]):
        assert_close(got, want.double(), torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=dtype_name)
@pytest.mark.parametrize("op", ALL_OPS)
def test_parity_torch_path(op, dtype, layout):
    seed = 10 * ALL_OPS.index(op) + LAYOUTS.index(layout)
    x, kw = make(op, (2, 5, 7, 3), dtype, layout, seed=seed)
    out = call(op, x, kw, act="leaky_relu", impl="torch")
    assert_format(out, x, layout)
    assert_close(out, reference64(op, x, kw, "leaky_relu"), dtype)


def test_torch_path_is_the_textbook_definition():
    """impl="torch" is the textbook definition (F.instance_norm, then modulation)."""
    x, kw = make(SPADE, (2, 4, 6, 5), torch.float64, seed=5)
    want = torch.nn.functional.instance_norm(x, eps=1e-5) * (1 + kw["gamma"]) + kw["beta"]
    got = call(SPADE, x, kw, impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    x, kw = make(SPADE2C_B, (2, 4, 6, 5), torch.float64, seed=4)
    g, b, gb, bb = kw["gamma"][:, :4], kw["gamma"][:, 4:], kw["bias"][:4], kw["bias"][4:]
    want = torch.relu(torch.nn.functional.instance_norm(x, eps=1e-5)
                      * (1 + g + gb[:, None, None]) + b + bb[:, None, None])
    got = call(SPADE2C_B, x, kw, act="relu", impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    x, kw = make(IN, (2, 4, 6, 5), torch.float64, seed=6)
    w, b = kw["weight"].double(), kw["bias"].double()
    want = torch.nn.functional.leaky_relu(
        torch.nn.functional.instance_norm(x, weight=w, bias=b, eps=1e-5), 0.2)
    got = instance_norm_act(x, w, b, act="leaky_relu", impl="torch")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", [SPADE2C, SPADE2C_B])
def test_merged_gamma_equals_separate(op):
    x, kw = make(op, (2, 3, 4, 4), seed=2)
    g2, bias = kw["gamma"], kw.get("bias")
    a = spade_modulate(x, g2, impl="torch", bias=bias)
    b = spade_modulate(x, g2[:, :3], g2[:, 3:], impl="torch", bias=bias)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bias_without_beta_map(layout, path, impl):
    """gamma of C channels and no beta: bias[C:] is the whole shift."""
    cfg = SPLIT if path == "split" and impl == "triton" else None
    x, kw = make(SPADE_B, (2, 3, 7, 5), torch.float16, layout, seed=19)
    del kw["beta"]
    out = call(SPADE_B, x, kw, act="leaky_relu", impl=impl, config=cfg)
    assert_format(out, x, layout)
    ref = reference64(SPADE_B, x, kw, "leaky_relu")
    assert_close(out, ref, torch.float16)
    gamma_bias_only = torch.cat([kw["bias"][:3], torch.zeros(3, dtype=torch.float16)])
    no_shift = reference64(SPADE_B, x, dict(kw, bias=gamma_bias_only), "leaky_relu")
    assert errors(ref, no_shift)[0] > 0.1  # the beta half of the bias is applied


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype,bias_dtype", [(torch.bfloat16, torch.float32),
                                              (torch.float32, torch.float16)], ids=dtype_name)
def test_bias_in_another_dtype(dtype, bias_dtype, layout, path, poisoned_alloc):
    """The bias need not be in x's dtype: it is read in float32 either way."""
    cfg = SPLIT if path == "split" else None
    x, kw = make(SPADE2C_B, (2, 3, 7, 5), dtype, layout, seed=20)
    kw["bias"] = kw["bias"].to(bias_dtype)
    out = call(SPADE2C_B, x, kw, act="relu", impl="triton", config=cfg)
    assert_format(out, x, layout)
    assert_close(out, reference64(SPADE2C_B, x, kw, "relu"), dtype)


# ----------------------------------------------------------------------------- edge shapes


EDGE_SHAPES = [
    (1, 1, 1, 1),   # H*W = 1, C = 1, N = 1
    (3, 4, 1, 1),   # H*W = 1: output is beta / bias
    (1, 1, 7, 5),   # C = 1
    (2, 5, 1, 7),   # H = 1
    (2, 3, 6, 1),   # W = 1
    (1, 17, 3, 3),  # C not a power of two, > 16 (two channel blocks in channels_last)
]


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_edge_shapes(shape, layout, path, poisoned_alloc):
    cfg = SPLIT if path == "split" else None
    for op, dtype in ((SPADE, torch.float32), (IN, torch.float16), (SPADE2C, torch.bfloat16),
                      (SPADE_B, torch.float16), (SPADE2C_B, torch.float32)):
        x, kw = make(op, shape, dtype, layout, seed=sum(shape))
        out = call(op, x, kw, act="leaky_relu", impl="triton", config=cfg)
        assert out.shape == x.shape and out.dtype == dtype
        assert_close(out, reference64(op, x, kw, "leaky_relu"), dtype)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_non_contiguous_inputs(path, poisoned_alloc):
    cfg = SPLIT if path == "split" else None
    g = torch.Generator().manual_seed(21)
    big = torch.randn(3, 8, 9, 8, generator=g)
    gbig = 0.5 * torch.randn(3, 8, 9, 8, generator=g)
    cases = {
        # channel slice of NCHW: H, W still flatten -> strides passed through, no copy
        "channel_slice": (big[:, 2:5], gbig[:, 1:4], gbig[:, 4:7], "nchw"),
        # spatial crop: H, W do not flatten -> copied
        "spatial_crop": (big[:, :3, 1:8, 2:7], gbig[:, :3, 1:8, 2:7], gbig[:, 3:6, :7, :5], "nchw"),
        # batch stride 2
        "batch_step": (big[::2, :4], gbig[::2, :4], gbig[::2, 4:], "nchw"),
        # channels_last, channel slice
        "cl_slice": tuple(t.contiguous(memory_format=torch.channels_last)[:, 1:4]
                          for t in (big, gbig, gbig.flip(1))) + ("channels_last",),
        # H/W transposed view
        "transposed": (big[:, :3].transpose(2, 3), gbig[:, :3].transpose(2, 3),
                       gbig[:, 3:6].transpose(2, 3), "nchw"),
    }
    for name, (x, gamma, beta, layout) in cases.items():
        if name != "transposed":
            assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last), name
        kw = dict(gamma=gamma, beta=beta)
        out = call(SPADE, x, kw, act="relu", impl="triton", config=cfg)
        assert_close(out, reference64(SPADE, x, kw, "relu"), torch.float32)
        assert_format(out, x, layout)
        out = instance_norm_act(x, gamma[0, :, 0, 0], None, act="none", impl="triton", config=cfg)
        assert_close(out, float64_call(instance_norm_act, x, gamma[0, :, 0, 0], impl="torch"),
                     torch.float32)


@requires_triton
def test_maps_in_other_memory_format():
    x, kw = make(SPADE, (2, 4, 5, 6), torch.float16, "channels_last", seed=4)
    kw = {k: v.contiguous() for k, v in kw.items()}  # gamma/beta NCHW, x channels_last
    out = call(SPADE, x, kw, impl="triton")
    assert_format(out, x, "channels_last")
    assert_close(out, reference64(SPADE, x, kw), torch.float16)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_buffer_poisoned(layout, path):
    cfg = SPLIT if path == "split" else None
    x, kw = make(SPADE, (2, 3, 7, 5), torch.float16, layout, seed=8)
    out = torch.full_like(x, float("nan"))
    res = call(SPADE, x, kw, act="relu", impl="triton", out=out, config=cfg)
    assert res is out
    assert torch.isfinite(out).all()
    assert_close(out, reference64(SPADE, x, kw, "relu"), torch.float16)
    # the torch path honours out= too
    out2 = torch.full_like(x, float("nan"))
    assert call(SPADE, x, kw, act="relu", impl="torch", out=out2) is out2
    assert torch.isfinite(out2).all()


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_out_may_be_x(path, poisoned_alloc):
    """In place (out=x): on the split path the apply kernels overwrite x while others still
    run, so their pivot comes from the stats kernel, not from x's first pixel."""
    cfg = SPLIT if path == "split" else None
    x, kw = make(IN, (2, 3, 8, 6), seed=31)
    want = reference64(IN, x, kw, "relu")
    assert call(IN, x, kw, act="relu", impl="triton", out=x, config=cfg) is x
    assert_close(x, want, torch.float32)


@requires_triton
@pytest.mark.parametrize("path", ["fused", "split"])
def test_out_overlapping_an_input_gets_the_reference(path, poisoned_alloc):
    """An out= that overlaps an input other than as its exact alias (x shifted by one
    plane, the other half of a merged gamma, a residual's memory) is read after the kernels
    wrote it: the result is computed apart and copied in, as on the torch path. (64x64
    planes: one program per plane on the fused path, so the interpreter's programs, run
    in order, see each other's writes as a GPU's would.)"""
    cfg = SPLIT if path == "split" else None
    shape = (2, 3, 64, 64) if path == "fused" else (2, 3, 7, 5)
    n, c, h, w = shape
    assert plan_launch(n, c, h * w, False, cfg).path == path
    g = torch.Generator().manual_seed(34)
    buf = torch.randn(n, c + 1, h, w, generator=g)
    x, out = buf[:, :c], buf[:, 1:]
    want = float64_call(instance_norm_act, x, act="relu", impl="torch")
    assert instance_norm_act(x, act="relu", impl="triton", out=out, config=cfg) is out
    assert_close(out, want, torch.float32)
    x = torch.randn(shape, generator=g)
    gamma = 0.5 * torch.randn(n, 2 * c, h, w, generator=g)
    want = reference64(SPADE2C, x, {"gamma": gamma})
    out = gamma[:, 1:c + 1]  # straddles the gamma and beta halves
    assert spade_modulate(x, gamma, impl="triton", out=out, config=cfg) is out
    assert_close(out, want, torch.float32)
    x = torch.randn(shape, generator=g)
    buf = torch.randn(n, c + 1, h, w, generator=g)
    r, out = buf[:, 1:], buf[:, :c]
    want_total = x.double() + r.double()
    want = float64_call(instance_norm_act, want_total, impl="torch")
    got, total = instance_norm_act(x, impl="triton", residual=r, out=out, config=cfg)
    assert got is out
    assert_close(total, want_total, torch.float32)
    assert_close(out, want, torch.float32)


@requires_triton
def test_out_whose_hw_do_not_flatten_is_written():
    """out= with a spatial crop's strides (H and W do not flatten) is written, as on the
    torch path, not refused."""
    x, kw = make(SPADE2C, (2, 3, 5, 7), seed=35)
    out = torch.full((2, 3, 5, 9), float("nan"))[..., :7]
    assert call(SPADE2C, x, kw, impl="triton", out=out) is out
    assert_close(out, reference64(SPADE2C, x, kw), torch.float32)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_out_with_shared_memory_is_refused(impl):
    """An out= whose elements share memory (expanded) would get several results written
    to one place: refused on every path (the kernels would return it silently wrong)."""
    x, kw = make(IN, (2, 3, 4, 4), seed=32)
    out = torch.empty(1, 3, 4, 4).expand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="instance_norm_act: out has elements that share memory"):
        call(IN, x, kw, impl=impl, out=out)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_numpy_scalars_for_eps_and_slope(impl):
    """eps / negative_slope as numpy scalars (float32 is no Python float subclass) are
    read as the numbers they are."""
    np = pytest.importorskip("numpy")
    if impl == "triton" and _SKIP_REASON:
        pytest.skip(_SKIP_REASON)
    x, kw = make(IN, (1, 2, 3, 3), seed=25)
    opts = dict(act="leaky_relu", eps=np.float32(0.5), negative_slope=np.float32(0.05))
    out = call(IN, x, kw, impl=impl, **opts)
    assert_close(out, reference64(IN, x, kw, act="leaky_relu", eps=0.5, negative_slope=0.05),
                 torch.float32)


def test_empty_input():
    x = torch.randn(0, 3, 4, 4)
    assert spade_modulate(x, torch.randn(0, 3, 4, 4), impl="torch").shape == x.shape
    assert instance_norm_act(torch.randn(2, 3, 0, 4), impl="torch").shape == (2, 3, 0, 4)


# ----------------------------------------------------------------------------- NaN / Inf


@requires_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, interpreter
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", PARITY_DTYPES, ids=dtype_name)
def test_nan_inf_propagate_like_reference(dtype, layout, path):
    cfg = SPLIT if path == "split" else None
    x, kw = make(SPADE, (2, 3, 5, 4), dtype, layout, seed=9)
    x[0, 1, 2, 3] = float("nan")      # poisons plane (0, 1)
    x[1, 0, 0, 0] = float("inf")      # poisons plane (1, 0)
    x[1, 2, 4, 1] = float("-inf")     # poisons plane (1, 2)
    kw["gamma"][0, 0, 1, 1] = float("nan")   # one element only
    kw["beta"][1, 1, 3, 2] = float("inf")    # one element only
    for act in ACTS:
        ref = reference64(SPADE, x, kw, act)
        assert torch.isnan(ref[0, 1]).all() and torch.isnan(ref[1, 0]).all()
        out = call(SPADE, x, kw, act=act, impl="triton", config=cfg)
        assert_close(out, ref, dtype)
        assert torch.isfinite(out[0, 2]).all()   # untouched planes stay finite
    xi, kwi = make(IN, (2, 3, 5, 4), dtype, layout, seed=10)
    xi[1, 1, 0, 2] = float("nan")
    out = call(IN, xi, kwi, act="relu", impl="triton", config=cfg)
    assert_close(out, reference64(IN, xi, kwi, "relu"), dtype)
    assert torch.isnan(out[1, 1]).all() and torch.isfinite(out[0]).all()


# ----------------------------------------------------------------------------- dispatch


def test_auto_falls_back_with_one_warning():
    x, kw = make(SPADE, (1, 2, 3, 3), seed=12)
    dispatch.reset_fallback_warning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        outs = [call(SPADE, x, kw, impl="auto") for _ in range(3)]
        outs.append(call(IN, x, make(IN, (1, 2, 3, 3))[1], impl="auto"))
    fallback = [w for w in rec if issubclass(w.category, KernelFallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in rec]
    msg = str(fallback[0].message)
    assert "torch path" in msg and "CUDA" in msg
    torch.testing.assert_close(outs[0], call(SPADE, x, kw, impl="torch"), rtol=0, atol=0)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        call(SPADE, x, kw, impl="torch")
    assert not [w for w in rec if issubclass(w.category, KernelFallbackWarning)]


@requires_triton
@pytest.mark.parametrize("residual", [False, True])
def test_fallback_warning_points_at_the_caller(residual):
    """The fallback warning is attributed to the line that called the op, not to a line of
    bridgegan.kernels (filters by module and the printed location then work)."""
    x, kw = make(IN, (1, 2, 4, 4), seed=24)
    dispatch.reset_fallback_warning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        instance_norm_act(x, kw["weight"], kw["bias"], residual=x if residual else None)
    shown = [w for w in rec if issubclass(w.category, KernelFallbackWarning)]
    assert len(shown) == 1 and shown[0].filename == __file__


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setattr(dispatch, "_interpreted", lambda module: False)
    x, kw = make(SPADE, (1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        call(SPADE, x, kw, impl="triton")


@requires_triton
def test_triton_on_meta_outside_recording_is_refused_clearly():
    """The interpreter runs CPU tensors only: a meta tensor (outside engine.targets'
    recording) gets the device error, not a failure inside the interpreter."""
    from bridgegan.kernels import rgb_tail

    x = torch.randn(1, 2, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="x is on meta; the Triton path needs a CUDA tensor"):
        instance_norm_act(x, impl="triton")
    with pytest.raises(RuntimeError, match="x is on meta; the Triton path needs a CUDA tensor"):
        rgb_tail(x, torch.randn(3, 2, device="meta"), impl="triton")


def test_triton_missing_is_reported(monkeypatch):
    monkeypatch.setitem(dispatch._MODULES, "norm", (None, "triton does not import (ImportError: x)"))
    x, kw = make(SPADE, (1, 2, 3, 3))
    with pytest.raises(RuntimeError, match=r"^spade_modulate\(impl='triton'\): triton does not "
                                           r"import \(ImportError: x\); install triton or use "
                                           r"impl='torch'$"):
        call(SPADE, x, kw, impl="triton")


def _bad_cases():
    x = torch.randn(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4)
    s, i = spade_modulate, instance_norm_act
    return {
        "x_3d": (lambda: s(x[0], g[0]), "4-D"),
        "x_not_tensor": (lambda: s(x.numpy(), g), "torch.Tensor"),
        "x_int": (lambda: i(x.long()), "dtype int64"),
        "gamma_shape": (lambda: s(x, g[:, :2]), "gamma has shape (2, 2, 4, 4)"),
        "gamma_hw": (lambda: s(x, g[..., :3]), "accepted: (2, 3, 4, 4) or (2, 6, 4, 4)"),
        "merged_with_beta": (lambda: s(x, torch.randn(2, 6, 4, 4), g), "accepted: (2, 3, 4, 4)"),
        "beta_shape": (lambda: s(x, g, g[:1]), "beta has shape"),
        "gamma_dtype": (lambda: s(x, g.half()), "gamma has dtype float16 but x is float32"),
        "weight_shape": (lambda: i(x, torch.ones(4)), "weight has shape (4,)"),
        "in_bias_dtype": (lambda: i(x, None, torch.ones(3, dtype=torch.long)), "floating dtype"),
        "unknown_act": (lambda: s(x, g, act="gelu"), "unknown act 'gelu'"),
        "unknown_impl": (lambda: s(x, g, impl="cuda"), "unknown impl 'cuda'"),
        "eps_negative": (lambda: i(x, eps=-1.0), "eps must be"),
        "slope_nan": (lambda: i(x, act="leaky_relu", negative_slope=math.nan), "negative_slope"),
        "out_shape": (lambda: s(x, g, out=torch.empty(2, 3, 4, 5)), "out has shape"),
        "out_dtype": (lambda: s(x, g, out=torch.empty(2, 3, 4, 4, dtype=torch.half)), "out has dtype"),
        "out_with_grad": (lambda: s(x.requires_grad_(), g, impl="torch", out=torch.empty_like(x)),
                          "autograd"),
        "fp64_triton": (lambda: s(x.double(), g.double(), impl="triton"), "float64"),
        "bias_per_channel": (lambda: s(x, g, g, bias=torch.ones(3)),
                             "bias has shape (3,); accepted: (6,) (2C: C gamma biases, then C "
                             "beta biases) or None"),
        "bias_merged_2d": (lambda: s(x, torch.randn(2, 6, 4, 4), bias=torch.ones(1, 6)),
                           "bias has shape (1, 6); accepted: (6,)"),
        "bias_not_tensor": (lambda: s(x, g, bias=[0.0] * 6),
                            "bias must be a torch.Tensor of shape (6,) or None, got list"),
        "bias_dtype": (lambda: s(x, g, g, bias=torch.ones(6, dtype=torch.int32)),
                       "bias has dtype int32; it must be a floating dtype: float16, bfloat16, "
                       "float32 or float64"),
        "bias_device": (lambda: s(x, g, g, bias=torch.ones(6, device="meta")),
                        "bias is on meta but x is on cpu; they must match"),
        "residual_shape": (lambda: i(x, residual=torch.randn(2, 3, 3, 3)),
                           "residual has shape (2, 3, 3, 3); accepted: (2, 3, 4, 4) or "
                           "(2, 3, 2, 2) for x of shape (2, 3, 4, 4)"),
        "residual_half_of_odd": (lambda: i(x[..., :3], residual=torch.randn(2, 3, 2, 1)),
                                 "accepted: (2, 3, 4, 3) for x of shape (2, 3, 4, 3)"),
        "residual_dtype": (lambda: s(x, g, residual=x.half()),
                           "residual has dtype float16 but x is float32"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_is_rejected(case):
    fn, needle = _bad_cases()[case]
    if case == "fp64_triton" and _TRITON_ERR is not None:
        pytest.skip(f"triton does not import: {_TRITON_ERR}")
    with pytest.raises(ValueError) as err:
        fn()
    assert needle in str(err.value), str(err.value)
    assert str(err.value).startswith(("spade_modulate:", "instance_norm_act:"))


# ----------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("act", ["none", "leaky_relu"])
def test_gradcheck_torch_path(act):
    torch.manual_seed(13)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    g = (0.5 * torch.randn(2, 3, 3, 4, dtype=torch.float64)).requires_grad_()
    b = (0.5 * torch.randn(2, 3, 3, 4, dtype=torch.float64)).requires_grad_()
    g2 = (0.5 * torch.randn(2, 6, 3, 4, dtype=torch.float64)).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    mb = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: spade_modulate(*t, act=act, impl="torch"), (x, g, b))
    assert torch.autograd.gradcheck(
        lambda *t: spade_modulate(*t, act=act, impl="torch"), (x, g2))
    assert torch.autograd.gradcheck(
        lambda x, g, b, mb: spade_modulate(x, g, b, act=act, impl="torch", bias=mb), (x, g, b, mb))
    assert torch.autograd.gradcheck(
        lambda x, g2, mb: spade_modulate(x, g2, act=act, impl="torch", bias=mb), (x, g2, mb))
    assert torch.autograd.gradcheck(
        lambda *t: instance_norm_act(*t, act=act, impl="torch"), (x, w, bias))


@requires_triton
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", ALL_OPS)
def test_triton_grads_match_the_torch_path(op, layout):
    x, kw = make(op, (2, 3, 5, 4), torch.float32, layout, seed=14)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(15))
    grads = {}
    outs = {}
    for impl in ("torch", "triton"):
        xs = x.detach().clone().requires_grad_()
        kws = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
        y = call(op, xs, kws, act="leaky_relu", impl=impl)
        (y * gy).sum().backward()
        outs[impl] = y.detach()
        grads[impl] = [xs.grad] + [kws[k].grad for k in sorted(kws)]
    assert_close(outs["triton"], outs["torch"].double(), torch.float32)
    with torch.no_grad():
        plain = call(op, x, kw, act="leaky_relu", impl="triton")
    torch.testing.assert_close(outs["triton"], plain, rtol=0, atol=0)
    for gt, gr in zip(grads["triton"], grads["torch"]):
        assert gt is not None
        assert errors(gt, gr)[1] <= tolerance(torch.float32).op_rel


@requires_triton
@pytest.mark.parametrize("op", [SPADE2C_B, IN])
def test_triton_double_backward_matches_the_torch_path(op):
    """A gradient of a gradient (create_graph=True: gradient penalties, Hessian-vector
    products) through the Triton path is the torch path's."""
    x, kw = make(op, (2, 3, 5, 4), torch.float32, seed=22)
    grads = {}
    for impl in ("torch", "triton"):
        xs = x.detach().clone().requires_grad_()
        kws = {k: v.detach().clone().requires_grad_() for k, v in kw.items()}
        y = call(op, xs, kws, act="leaky_relu", impl=impl)
        gx, = torch.autograd.grad(y.square().sum(), xs, create_graph=True)
        gx.square().sum().backward()
        grads[impl] = [xs.grad] + [kws[k].grad for k in sorted(kws)]
    for gt, gr in zip(grads["triton"], grads["torch"]):
        assert gt is not None
        assert errors(gt, gr)[1] <= tolerance(torch.float32).op_rel


@requires_triton
def test_triton_grad_with_an_inference_tensor_input():
    """x made under inference_mode, gamma requiring grad: the torch path's gradient."""
    x, kw = make(SPADE, (1, 2, 3, 3), seed=23)
    with torch.inference_mode():
        x = x.clone()
    grads = []
    for impl in ("torch", "triton"):
        g = kw["gamma"].detach().clone().requires_grad_()
        spade_modulate(x, g, kw["beta"], act="relu", impl=impl).square().sum().backward()
        grads.append(g.grad)
    assert errors(grads[1], grads[0])[1] <= tolerance(torch.float32).op_rel


@requires_triton
def test_triton_grad_only_for_some_inputs():
    x, kw = make(SPADE, (1, 2, 3, 3), seed=16)
    g = kw["gamma"].requires_grad_()
    spade_modulate(x, g, kw["beta"], act="relu", impl="triton").sum().backward()
    assert g.grad is not None and x.grad is None


# ----------------------------------------------------------------------------- launch plans


def test_launch_plans_for_generator_shapes():
    # hottest layer, NCHW: one program per plane, whole plane in registers, x read once
    p = plan_launch(64, 32, 128 * 128, False)
    assert (p.path, p.block_hw, p.block_c, p.num_warps, p.grid) == ("fused", 16384, 1, 16, (2048,))
    assert p.hw_major  # NCHW tiles are [channels, pixels]: pixels on the contiguous axis
    # channels_last 128x128: a plane does not fit with >= 16 channels per row -> split
    p = plan_launch(64, 32, 128 * 128, True)
    assert p.path == "split" and p.block_c == 32 and p.n_chunks * p.chunk >= 16384
    assert 512 <= p.grid[0] * p.grid[1] <= 4096
    # 16x16 planes: several planes / channels per program
    p = plan_launch(64, 256, 256, False)
    assert p.path == "fused" and p.block_c > 1 and p.block_hw == 256
    p = plan_launch(64, 256, 256, True)
    assert p.path == "fused" and p.block_c >= 16 and not p.hw_major
    # H*W = 1: channels are contiguous in either format -> channel tiles
    assert not plan_launch(8, 64, 1, False).hw_major
    # large planes: split in both layouts
    assert plan_launch(1, 3, 512 * 512, False).path == "split"
    # config can force the split path
    assert plan_launch(2, 3, 35, False, {"max_fused": 16}).path == "split"
    with pytest.raises(ValueError, match="unknown config"):
        plan_launch(2, 3, 35, False, {"bogus": 1})


# ----------------------------------------------------------------------------- ONNX / parity CLI


def test_torch_path_traces_and_auto_takes_it_when_tracing():
    class M(torch.nn.Module):
        def forward(self, x, g):
            return spade_modulate(x, g, act="relu", impl="auto")

    x, kw = make(SPADE2C, (1, 2, 4, 4), seed=17)
    dispatch.reset_fallback_warning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        # check_trace=False: the trace checker re-runs forward outside tracing
        traced = torch.jit.trace(M(), (x, kw["gamma"]), check_trace=False)
    assert not [w for w in rec if issubclass(w.category, KernelFallbackWarning)]
    torch.testing.assert_close(traced(x, kw["gamma"]), call(SPADE2C, x, kw, act="relu", impl="torch"))
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert not any("triton" in k or "PythonOp" in k for k in kinds), kinds


@pytest.mark.parametrize("op", [SPADE2C, IN, "rgb_tail"])
def test_triton_impl_traces_the_torch_path(op):
    """impl="triton" under a tracer records the torch path too (design.md: an export
    traces the reference, never a kernel), rather than failing inside the launch planner."""
    from bridgegan.kernels import rgb_tail

    x, kw = make(SPADE2C, (1, 2, 4, 4), seed=19)
    weight = torch.randn(3, 2, generator=torch.Generator().manual_seed(20))
    if op == "rgb_tail":
        fn = lambda x: rgb_tail(x, weight, impl="triton")  # noqa: E731
        want = lambda x: rgb_tail(x, weight, impl="torch")  # noqa: E731
    else:
        fn = lambda x: call(op, x, kw, act="relu", impl="triton")  # noqa: E731
        want = lambda x: call(op, x, kw, act="relu", impl="torch")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(fn, x, check_trace=False)
    x2 = make(SPADE2C, (1, 2, 4, 4), seed=21)[0]
    torch.testing.assert_close(traced(x2), want(x2))


@pytest.mark.parametrize("op", [SPADE2C, SPADE2C_B])
def test_torch_path_exports_to_onnx(tmp_path, op):
    onnx = pytest.importorskip("onnx")
    x, kw = make(op, (1, 2, 4, 4), seed=18)

    class M(torch.nn.Module):
        def forward(self, x, g):
            return spade_modulate(x, g, act="leaky_relu", impl="torch", bias=kw.get("bias"))

    path = tmp_path / "spade.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(M(), (x, kw["gamma"]), str(path), dynamo=False, opset_version=17)
        except TypeError:  # older torch without the dynamo flag
            torch.onnx.export(M(), (x, kw["gamma"]), str(path), opset_version=17)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops and "LeakyRelu" in ops, ops  # TensorRT pins IN to fp32
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (x.numpy(), kw["gamma"].numpy()))))[0]
    assert_close(torch.from_numpy(got), reference64(op, x, kw, "leaky_relu"), torch.float32)


def test_parity_cli_quick(capsys, tmp_path):
    """The op table passes, and holds rows of every op whose registry row says it does."""
    assert parity_main(["--device", "cpu", "--quick", "--json", str(tmp_path / "rows.json")]) == 0
    text = capsys.readouterr().out
    assert "PASS" in text and "FAIL" not in text
    assert ("triton/" in text) == triton_interpreted()
    checked = {re.match(r"\w+", row["op"]).group()
               for row in json.loads((tmp_path / "rows.json").read_text())}
    assert checked == {k.name for k in KERNELS.values() if k.parity == OP_PARITY}


@requires_triton
def test_triton_engine_from_eight_threads_gets_the_serial_results():
    """The interpreter patches module-wide state during each kernel run: the engine's calls
    on the triton backend take turns, so 8 threads get what 8 serial calls got."""
    import threading

    from conftest import images, randomize, small_config

    from bridgegan.engine import Engine
    from bridgegan.reference import BridgeGAN

    torch.manual_seed(0)
    eng = Engine(randomize(BridgeGAN(small_config(16, g_downs=2, d_downs=2))).eval(), "triton")
    xs = [images(1, 16, i) for i in range(8)]
    serial = [eng.translate(x, {"Male": 1}, seed=i) for i, x in enumerate(xs)]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = eng.translate(xs[i], {"Male": 1}, seed=i)
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:2]
    assert all(torch.equal(results[i], serial[i]) for i in range(8))


def test_triton_refuses_samples_past_int32_offsets():
    """The kernels index a sample with int32 offsets: a sample of x, or of gamma and beta
    as halves of one (N, 2C, H, W) tensor (channels_last: each spans 2C*H*W), past 2^31 - 1
    elements is refused before a launch (meta tensors: nothing is allocated)."""
    pytest.importorskip("triton")

    def meta(*shape, fmt=torch.contiguous_format):
        return torch.empty(shape, device="meta", dtype=torch.float16, memory_format=fmt)

    c = 3 * 2 ** 13  # C*H*W = 1.5 * 2^30: x fits, the merged gamma/beta do not
    x = meta(1, c, 256, 256, fmt=torch.channels_last)
    merged = meta(1, 2 * c, 256, 256, fmt=torch.channels_last)
    too_wide = "indexes one sample with int32 offsets, at most 2147483647; a sample spans"
    with dispatch.recording() as got:
        spade_modulate(x[:, :, :8], merged[:, :c, :8], merged[:, c:, :8], impl="triton")
        assert len(got) > 0  # smaller planes fit
        with pytest.raises(ValueError, match=f"spade_modulate: impl='triton' {too_wide} "
                                             f"{2 * c * 256 * 256 - c}"):
            spade_modulate(x, merged[:, :c], merged[:, c:], impl="triton")
        with pytest.raises(ValueError, match=f"instance_norm_act: impl='triton' {too_wide}"):
            instance_norm_act(meta(1, 2 ** 15, 256, 256), impl="triton")
        # an expanded x spans one plane, but its output (and the sum) are dense
        with pytest.raises(ValueError, match=f"instance_norm_act: impl='triton' {too_wide}"):
            instance_norm_act(meta(1, 1, 256, 256).expand(1, 2 ** 15, 256, 256), impl="triton")
        with pytest.raises(ValueError, match="rgb_tail: impl='triton' indexes one sample"):
            rgb_tail(meta(1, 1, 2 ** 14, 2 ** 13), meta(16, 1), impl="triton")
