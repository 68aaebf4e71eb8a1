"""DDP (gloo, two CPU processes under torchrun) equals one process on the same global batch.

Both runs go through the real command line (`python -m bridgegan.reference.train_cli`),
the DDP one launched by `python -m torch.distributed.run --standalone --nproc_per_node 2`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from bridgegan.reference import BridgeGAN
from bridgegan.reference.checkpoint import read_config, read_tensors
from bridgegan.reference.train_data import STREAM_INIT, derive_seed
from bridgegan.reference.run_folder import latest_checkpoint
from bridgegan.reference.train_state import STATE_JSON, STATE_TENSORS

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

ARGS = ["--data", "synthetic:24", "--resolution", "32", "--g-width", "8", "--e-width", "4",
        "--e-blocks", "1", "--latent-channels", "8", "--spade-hidden", "16",
        "--mapping-channels", "16", "--noise-dim", "8", "--d-width", "4", "--d-downs", "3",
        "--attributes", "Black_Hair,Blond_Hair,Brown_Hair,Male,Young,Bangs",
        "--batch", "8", "--n-d", "1", "--seed", "7", "--workers", "0",
        "--log-every", "1", "--sample-every", "0", "--ckpt-every", "0", "--no-progress"]


def _train_one_and_two(tmp_path, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "bridgegan.reference.train_cli", *ARGS, *extra, "--out", str(one)],
         tmp_path, "single process")
    # --log-dir: torchrun's default is a torchelastic_* folder in /tmp that nothing removes
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2", "--log-dir", str(tmp_path / "torchrun"),
                 "-m", "bridgegan.reference.train_cli", *ARGS, *extra,
                 "--out", str(two)], tmp_path, "torchrun")
    assert "2 processes" in proc.stderr
    return one, two


def _run(cmd, tmp_path, name, ok=True):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # the timeout: a hang guard
    assert (proc.returncode == 0) == ok, \
        f"{name} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def test_ddp_two_processes_match_one_process(tmp_path):
    """float64, so that rounding differences (batch 4 vs 8 kernels, the gradient all-reduce)
    stay at rounding level instead of being amplified by the L1 subgradients and Adam's
    normalisation of near-zero gradients, as they are in float32 (see the next test)."""
    one, two = _train_one_and_two(tmp_path, ["--dtype", "float64", "--steps", "3"])

    ck1, ck2 = latest_checkpoint(one), latest_checkpoint(two)
    assert ck1.name == ck2.name == "step-00000003"
    assert json.loads((ck2 / STATE_JSON).read_text())["world_size"] == 2
    a, b = read_tensors(ck1 / STATE_TENSORS), read_tensors(ck2 / STATE_TENSORS)
    keys = [k for k in a if not k.startswith("rng.")]
    assert keys and set(keys) == {k for k in b if not k.startswith("rng.")}
    assert any(k.startswith("raw.discriminator.") for k in keys) and "noise_memory" in keys
    worst = max(((a[k] - b[k]).abs().max().item(), k) for k in keys)
    assert worst[0] < 1e-8, f"largest difference {worst[0]:.3g} in {worst[1]}"
    # the parameters did move from their initialisation, so the comparison is not vacuous
    torch.manual_seed(derive_seed(7, STREAM_INIT))
    init = BridgeGAN(read_config(ck1)).double().state_dict()
    moved = max((a["raw." + k] - v).abs().max().item() for k, v in init.items())
    assert moved > 1e-4

    # only rank 0 writes logs; the logged losses are global-batch means in both runs
    m1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m1] == [r["step"] for r in m2] == [1, 2, 3]
    for r1, r2 in zip(m1, m2):
        for k in ("d/adv", "d/gp", "d/attr", "g/rec", "g/cycle", "g/mode_seeking", "g/total"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-4, abs=1e-6), (r1["step"], k)


def test_ddp_float32_first_step_losses_match(tmp_path):
    """float32: the first D step and the G-only terms of the first G step (G is unchanged by
    the D steps) see identical weights and batches, so they agree to rounding."""
    one, two = _train_one_and_two(tmp_path, ["--steps", "1"])
    r1 = json.loads((one / "metrics.jsonl").read_text().splitlines()[0])
    r2 = json.loads((two / "metrics.jsonl").read_text().splitlines()[0])
    for k in ("d/adv", "d/gp", "d/attr", "g/rec", "g/latent", "g/cycle", "g/mode_seeking",
              "noise/r_mean"):
        assert r1[k] == pytest.approx(r2[k], rel=1e-5, abs=1e-7), k


def test_an_unreadable_image_on_one_rank_stops_every_rank_with_a_checkpoint(tmp_path):
    """The image rank 1 reads in step 3's second batch cannot be decoded: rank 1 names it,
    rank 0 names rank 1 (it does not wait in a gather), and rank 0 writes the checkpoint of
    step 2 while rank 1 waits for it before they exit."""
    from PIL import Image

    from bridgegan.reference.train_data import epoch_order

    root = tmp_path / "faces"
    root.mkdir()
    gen = torch.Generator().manual_seed(5)
    rows = ["filename,Black_Hair,Male"]
    for i in range(48):
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen)
        Image.fromarray(pixels.numpy()).save(root / f"{i}.png")
        rows.append(f"{i}.png,{i % 2},{(i // 2) % 2}")
    (root / "attributes.csv").write_text("\n".join(rows) + "\n")
    # batch 8, n_d 1: step 3 reads global batches 4 and 5; rank 1 loads positions 4..7
    bad = int(epoch_order(48, 7, 0)[5 * 8 + 5])
    (root / f"{bad}.png").write_bytes(b"not a png")
    args = list(ARGS)
    args[args.index("--data") + 1] = f"folder:{root}"
    args[args.index("--attributes") + 1] = "Black_Hair,Male"
    out = tmp_path / "run"
    # --monitor-interval: torchrun stops the other ranks at its first look after one has
    # failed (every 0.1 s by default); a rank 0 a moment late could go before it printed.
    # Looking every 5 s makes that unlikely (both ranks print right after one gather)
    proc = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", "2", "--log-dir", str(tmp_path / "torchrun"),
                 "--monitor-interval", "5",
                 "-m", "bridgegan.reference.train_cli", *args, "--steps", "4",
                 "--out", str(out)], tmp_path, "torchrun", ok=False)
    assert f"bridgegan train: error: cannot read image file {root / f'{bad}.png'}" in proc.stderr
    assert "bridgegan train: error: rank 1 could not read its part of the batch" in proc.stderr
    assert latest_checkpoint(out).name == "step-00000002"
    assert json.loads((latest_checkpoint(out) / STATE_JSON).read_text())["batches"] == 4


def test_end_process_runs_the_exit_handlers_and_writes_buffered_output(tmp_path):
    """Each torchrun process leaves through distributed.end_process (no interpreter
    finalization, during which gloo's worker threads can abort a finished run): the exit
    handlers still run, output still buffered is written, and the status is the process's."""
    marker = tmp_path / "handler_ran"
    code = ("import atexit, pathlib, sys\n"
            "from bridgegan.reference.distributed import end_process\n"
            f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
            "sys.stdout.write('buffered')\n"
            "end_process(3)\n"
            "print('not reached')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered" and marker.read_text() == "yes"


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_distributed_run_ends_through_end_process(tmp_path, monkeypatch, capsys, world_size):
    """With two or more processes `run` ends the process through end_process with its
    status, an error nothing caught included (its traceback printed, status 1, as Python
    gives it); one process returns the status or raises, as before."""
    from bridgegan.reference import distributed, train_cli

    class Ended(Exception):
        pass

    def end_process(status):
        raise Ended(status)

    monkeypatch.setattr(distributed, "init_from_env",
                        lambda *a, **k: distributed.DistInfo(world_size=world_size))
    monkeypatch.setattr(distributed, "end_process", end_process)
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run: refused, status 2
    argv = [*ARGS, "--threads", "1", "--out", str(out)]
    if world_size == 1:
        assert train_cli.main(argv) == 2
    else:
        with pytest.raises(Ended) as ended:
            train_cli.main(argv)
        assert ended.value.args == (2,)
    assert "of an earlier run" in capsys.readouterr().err

    def bug(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_cli, "_refuse_earlier_run", bug)
    with pytest.raises(RuntimeError if world_size == 1 else Ended) as ended:
        train_cli.main(argv)
    if world_size == 2:
        assert ended.value.args == (1,)
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "RuntimeError: a bug" in err
