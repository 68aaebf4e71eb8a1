"""The `bridgegan` command end to end: demo, translate, bench, parity, the GPU-check dry run."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bridgegan.cli import main
from bridgegan.engine import Engine
from bridgegan.engine.placement import backend_dtype, default_channels_last
from bridgegan.engine.bench_results import FIELDS, PARTIAL_CSV
from bridgegan.engine.options import BENCH_ROUNDS, BENCH_SAMPLES
from bridgegan.engine.variants import Variant, default_variants, parity_variants
from bridgegan.kernels.registry import KERNELS
from bridgegan.reference import BridgeGAN, save_checkpoint
from bridgegan.reference.checkpoint import read_config, read_tensors
from conftest import benchmark_script, randomize, read_image, small_config, stops_without_gc

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "translate", "bench", "parity", "train", "info"):
        assert cmd in out


def test_ctrl_c_ends_a_command_with_a_line_and_status_130(monkeypatch, capsys):
    """A KeyboardInterrupt printed its traceback (export, bench...); a command that stops
    on SIGINT itself (train) is unchanged."""
    from bridgegan import cli

    def interrupted(name, args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_run", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "bridgegan info: interrupted\n"


def test_sigterm_unwinds_a_command_and_ends_it_with_a_line_and_status_143(monkeypatch, capsys,
                                                                         tmp_path):
    """SIGTERM (a scheduler's stop) ended a command at once, its cleanups not run: a
    killed write's temporary file and an export's lock file stayed. It now unwinds as
    Ctrl-C does (``finally`` runs), one line, status 143; the handler is the earlier one
    after the command."""
    import signal

    from bridgegan import cli

    unhandled, unwound = [], []

    def terminated(name, args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler's exception ends the sleep
        finally:
            unwound.append(name)
    monkeypatch.setattr(cli, "_run", terminated)
    mine = lambda *_: unhandled.append(1)  # noqa: E731 - what ends pytest otherwise
    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert main(["info"]) == 128 + signal.SIGTERM and unwound == ["info"] and not unhandled
        assert signal.getsignal(signal.SIGTERM) is mine  # the earlier handler, back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert capsys.readouterr().err == "bridgegan info: terminated (SIGTERM)\n"


def test_a_signal_during_a_commands_imports_acts_once_they_are_in(monkeypatch, capsys):
    """A Ctrl-C while torch imported (a command's first second) was swallowed by the
    import, and the command ran to its end: signals inside ``signals_deferred`` (the
    command's imports) are noted and raised again as it ends, also after an error there;
    a second one acts at once."""
    import importlib
    import signal
    import types

    from bridgegan import cli
    from bridgegan.exits import Terminated, signals_deferred, terminated_raises

    def swallowing_import(name, package=None):  # as torch's import does
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return types.SimpleNamespace(run=lambda args: 0)
    monkeypatch.setattr(cli.importlib, "import_module", swallowing_import)
    assert main(["info"]) == 130 and capsys.readouterr().err == "bridgegan info: interrupted\n"
    monkeypatch.setattr(cli.importlib, "import_module", importlib.import_module)
    went_on = []
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            went_on.append("SIGINT")
            raise ValueError("an import failed meanwhile")
    with pytest.raises(Terminated), terminated_raises():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            went_on.append("SIGTERM")
    with pytest.raises(KeyboardInterrupt), terminated_raises():
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            went_on.append("first")
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
            went_on.append("not reached")
    assert went_on == ["SIGINT", "SIGTERM", "first"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("raised, sig, line", [
    ("KeyboardInterrupt", "SIGINT", "interrupted"),
    ("exits.Terminated(15)", "SIGTERM", "terminated (SIGTERM)")])
def test_a_command_a_signal_stopped_ends_by_the_signal(raised, sig, line):
    """The `bridgegan` command (``cli.entry``) ends a command Ctrl-C or SIGTERM stopped by
    that signal after its line and exit handlers: with status 130 a shell loop went on to
    the next command, and systemd takes status 143 for a failure, an end by SIGTERM for a
    clean stop."""
    import signal

    code = ("import atexit\nfrom bridgegan import cli, exits\n"
            "atexit.register(lambda: print('exit handlers ran', flush=True))\n"
            f"def interrupted(name, args):\n    raise {raised}\n"
            "cli._run = interrupted\nimport sys\nsys.argv = ['bridgegan', 'info']\n"
            "cli.entry()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -getattr(signal, sig), done
    assert done.stderr == f"bridgegan info: {line}\n" and done.stdout == "exit handlers ran\n"


@pytest.mark.parametrize("sig, line", [("SIGINT", "interrupted"),
                                       ("SIGTERM", "terminated (SIGTERM)")])
@pytest.mark.parametrize("module, stops, prog, argv", [
    ("bridgegan.reference.train_cli", "bridgegan.devices.device_problem",
     "bridgegan train", ["--data", "synthetic:8", "--out", "{tmp}/run"]),
    ("bridgegan.kernels.parity", "bridgegan.files.RowsFile", "parity",
     ["--quick", "--impl", "torch", "--json", "{tmp}/rows.json"])])
def test_module_entries_stop_on_a_signal_as_the_command_does(tmp_path, module, stops, prog,
                                                             argv, sig, line):
    """torchrun's entry (`python -m bridgegan.reference.train_cli`) and `python -m
    bridgegan.kernels.parity`, stopped by Ctrl-C or SIGTERM as they set up (at ``stops``):
    one line, their exit handlers, an end by the signal, as the `bridgegan` command (SIGTERM
    ended them at once, Ctrl-C with a traceback)."""
    import signal

    argv = [a.format(tmp=tmp_path) for a in argv]
    code = f"""if True:
        import atexit, importlib, os, runpy, signal, sys, time
        owner, _, name = {stops!r}.rpartition(".")

        def stopped(*args, **kwargs):
            os.kill(os.getpid(), signal.{sig})
            time.sleep(60)
        setattr(importlib.import_module(owner), name, stopped)
        atexit.register(lambda: print("exit handlers ran", flush=True))
        sys.argv = ["-m", *{argv!r}]
        runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -getattr(signal, sig), done
    assert done.stderr == f"{prog}: {line}\n", done.stderr
    assert done.stdout.endswith("exit handlers ran\n"), done.stdout


def test_help_imports_no_torch():
    """Building the parser and every command's --help (export's targets too) import no
    torch; in a fresh interpreter, so that other tests' imports do not count."""
    code = """if True:
        import argparse, contextlib, io, sys
        from bridgegan.cli import build_parser, main

        def commands(parser, argv=()):
            yield list(argv)
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        yield from commands(sub, (*argv, name))

        assert "torch" not in sys.modules
        for argv in commands(build_parser()):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([*argv, "--help"])
            assert "torch" not in sys.modules, argv
        print(len(list(commands(build_parser()))))
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout) > 10  # the top level, each command, each export target


def test_engine_backend_option_lists_every_backend(capsys):
    from bridgegan.engine import BACKENDS

    for command in ("translate", "eval", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert all(name in out for name in BACKENDS), command


def test_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--samples", "2", "--bench"]) == 0
    out = capsys.readouterr().out
    grid = tmp_path / "demo_grid.png"
    assert str(grid) in out and "images/s" in out
    im = read_image(grid)
    assert im.size[0] > 28 * 64 and im.size[1] > 4 * 64  # 4 rows of 28 captioned tiles
    assert np.asarray(im).std() > 10  # not a blank image
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path), "--samples", "-1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --samples: must be an integer from 0 to 64, got '-1'" in err


def test_an_os_error_is_a_one_line_error_with_status_2(tmp_path, monkeypatch, capsys):
    """An OSError a command meets (here reading a folder as a file) is reported like the
    other errors, not as a traceback."""
    from bridgegan import evaluate

    monkeypatch.setattr(evaluate, "run_eval", lambda args: open(tmp_path).read())
    assert main(["eval", "--checkpoint", "ck", "--classifier", "clf"]) == 2
    assert capsys.readouterr().err == (f"bridgegan eval: error: [Errno 21] Is a directory: "
                                       f"'{tmp_path}'\n")


def test_a_commands_own_warnings_read_as_one_line(monkeypatch):
    """The package's warnings during a command: ``bridgegan CMD: warning: ...`` (Python's
    form named a file of the install and printed a line of its code); others keep Python's
    form, and the form is restored after the command."""
    import warnings

    from bridgegan import evaluate

    shown = []

    def run_eval(args):  # how Python's warnings module prints a warning (out of pytest's)
        shown.extend(warnings.formatwarning("resuming with seed=3", UserWarning, filename, 12)
                     for filename in (evaluate.__file__, "/elsewhere/lib.py"))
        return 0
    monkeypatch.setattr(evaluate, "run_eval", run_eval)
    python_form = warnings.formatwarning
    assert main(["eval", "--checkpoint", "ck", "--classifier", "clf"]) == 0
    assert shown[0] == "bridgegan eval: warning: resuming with seed=3\n"
    assert shown[1].startswith("/elsewhere/lib.py:12: UserWarning: resuming with seed=3")
    assert warnings.formatwarning is python_form


def test_bars_in_a_log_redraw_every_30_seconds_at_most():
    """Where stderr is no terminal (pytest's capture here), a bar's redraws stay in the
    file: at most every LOG_REDRAW_S, and no forced redraw by tqdm's monitor thread (it
    redraws every 10 s when miniters has grown above 1)."""
    import io

    from bridgegan import progress

    bar = progress.bar(total=10, file=io.StringIO())
    assert (bar.mininterval, bar.miniters, bar.dynamic_miniters) == (progress.LOG_REDRAW_S, 1,
                                                                     False)
    bar.close()
    assert progress.bar(total=10, show=False).disable


def test_demo_captions_belong_to_their_own_row():
    """Each row's flip captions follow that row's source labels (+ when it lacks the
    attribute), and every image has its caption."""
    from bridgegan.demo import demo_rows
    from bridgegan.reference.data import PROCEDURAL_ATTRIBUTES, procedural_batch

    torch.manual_seed(0)
    eng = Engine(BridgeGAN(small_config(32, attributes=PROCEDURAL_ATTRIBUTES)).eval())
    x, y = procedural_batch(3, 32, seed=7)
    rows, captions = demo_rows(eng, x, y, samples=1, seed=0)
    assert [len(r) for r in rows] == [len(c) for c in captions]
    male = PROCEDURAL_ATTRIBUTES.index("Male")
    assert set(y[:, male].tolist()) == {0.0, 1.0}  # rows differ, so their captions must
    for row_labels, caps in zip(y, captions):
        want = "-Male" if row_labels[male] else "+Male"
        assert caps[2 + male] == want


def test_demo_loads_the_shipped_model_with_its_numbers(tmp_path, monkeypatch, capsys):
    from bridgegan import demo
    from bridgegan.reference.data import PROCEDURAL_ATTRIBUTES
    from bridgegan.reference.shipping import ship

    torch.manual_seed(0)
    m = randomize(BridgeGAN(small_config(32, attributes=PROCEDURAL_ATTRIBUTES))).eval()
    save_checkpoint(tmp_path / "ck", m)
    report = {"label_edit_accuracy": 0.5, "label_preservation": 0.9, "reconstruction_psnr_db": 20.0,
              "strength": 1.25}
    shipped = ship(tmp_path / "ck", report, {"commands": ["bridgegan train"]},
                   tmp_path / "default")
    assert read_config(shipped).edit_strength == 1.25  # edits by default as it was measured
    weights = read_tensors(shipped / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    monkeypatch.setattr(demo, "SHIPPED", shipped)
    assert main(["demo", "--out", str(tmp_path / "out"), "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "the shipped model" in out and "UNTRAINED" not in out
    assert "edit accuracy 50.0%" in out and "PSNR 20.0 dB" in out
    assert "INTERIM model, misses the targets: label_edit_accuracy_shown" in out
    assert read_image(tmp_path / "out" / "demo_grid.png").size[1] > 4 * 32
    # shipped again over a folder as train_default leaves it (a model card and its judge)
    (shipped / "MODEL_CARD.md").write_text("card")
    shutil.copytree(ROOT / "bridgegan" / "assets" / "default" / "judge", shipped / "judge")
    again = ship(tmp_path / "ck", report, {"commands": ["bridgegan train"]}, shipped)
    assert sorted(p.name for p in again.iterdir()) == [
        "config.json", "eval.json", "model.safetensors", "training.json"]


def test_translate_writes_results_and_grid(tmp_path, capsys):
    torch.manual_seed(0)
    m = randomize(BridgeGAN(small_config(32))).eval()
    save_checkpoint(tmp_path / "ck", m)
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(("RGB", "L", "RGBA")):
        p = tmp_path / f"in{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).convert(mode).save(p)
        paths.append(str(p))
    out = tmp_path / "out"
    code = main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", *paths,
                 "--set", "Blond_Hair=1", "--set", "Male=0", "--samples", "2",
                 "--reference", paths[0], "--out", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert "grid.png" in names and "in1_edit2.png" in names and "in2_reference.png" in names
    assert read_image(out / "in0_edit1.png").size == (32, 32)
    assert read_image(out / "grid.png").size[0] > 4 * 32  # source + 2 edits + reference
    # bad input: an unknown attribute and a malformed --set both fail with status 2
    assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", paths[0],
                 "--set", "Blue_Hair=1", "--out", str(out)]) == 2
    assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", paths[0],
                 "--set", "Male", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Blue_Hair" in err and "Black_Hair" in err and "NAME=0 or NAME=1" in err


def test_translate_defaults_to_the_shipped_model_and_checks_its_options(tmp_path, capsys):
    """Without --checkpoint, translate edits with the shipped model (as demo does);
    --attributes needs --reference and a name, and --set gives each name once."""
    from bridgegan.reference.checkpoint import SHIPPED

    face = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
                    ).save(face)
    assert main(["translate", "--input", str(face), "--set", "Smiling=1", "--backend", "auto",
                 "--out", str(tmp_path / "out")]) == 0
    assert re.search(r"; (torch|onnxruntime|compile) backend, float32\)$",
                     capsys.readouterr().out.strip())  # the one auto chose
    size = read_config(SHIPPED).image_size
    assert read_image(tmp_path / "out" / "face_edit1.png").size == (size, size)
    for extra, message in (
            (["--attributes", "Smiling"], "--attributes names what is taken from the "
                                          "references: give --reference too"),
            (["--reference", str(face), "--attributes", " , "], "--attributes is empty"),
            (["--set", "Smiling=0"], "--set gives Smiling twice")):
        assert main(["translate", "--input", str(face), "--set", "Smiling=1", *extra,
                     "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_bench_sizes_from_the_checkpoint_and_checks_before_timing(tmp_path, capsys,
                                                                   monkeypatch):
    """--resolutions defaults to the checkpoint's size (a 32 px checkpoint was refused at
    the default 128); the load average at the start and end is recorded, and the versions
    of the libraries the rows ran on besides torch and triton; batches below 1,
    unknown workloads, or CUDA on a machine without it, are refused in one line before
    anything is measured; a table whose every row is skipped is written without a plot."""
    from bridgegan import threads

    monkeypatch.setattr(threads, "load_average", lambda: 1.25)  # another job running
    save_checkpoint(tmp_path / "ck", randomize(BridgeGAN(small_config(32))).eval())
    out = tmp_path / "bench"
    assert main(["bench", "--checkpoint", str(tmp_path / "ck"), "--variants",
                 "torch:float32,onnxruntime:float32", "--batches", "1", "--workloads",
                 "translate", "--reps", "1", "--warmup", "0", "--out", str(out),
                 "--threads", "1"]) == 0
    with open(out / "bench.csv") as f:
        assert [r["resolution"] for r in csv.DictReader(f)] == ["32", "32"]
    peaks = json.loads((out / "bench.json").read_text())["peaks"]
    assert peaks["load_1min_at_start"] == peaks["load_1min_at_end"] == 1.25
    assert peaks["cores"] >= 1
    import onnxruntime

    assert peaks["libraries"] == {"onnxruntime": onnxruntime.__version__}
    for bad in ("0,1", "1,x", "1,,8"):  # refused by the parser, naming what it accepts
        with pytest.raises(SystemExit) as exit_:
            main(["bench", "--batches", bad, "--out", str(out)])
        assert exit_.value.code == 2
        assert (f"argument --batches: must be a comma list of integers >= 1, got {bad!r}"
                in capsys.readouterr().err)
    assert main(["bench", "--workloads", "translate,foo", "--out", str(out)]) == 2
    assert "unknown workload 'foo'; workloads: translate, reference, samples, strip" \
        in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda", "--out", str(out)]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
        assert main(["bench", "--checkpoint", str(tmp_path / "ck"), "--variants",
                     "tensorrt:fp16", "--batches", "1", "--workloads", "translate",
                     "--out", str(tmp_path / "skipped")]) == 0
        assert sorted(p.name for p in (tmp_path / "skipped").iterdir()) == ["bench.csv",
                                                                          "bench.json"]


def test_parity_ops_json_goes_to_the_path_given(tmp_path, monkeypatch):
    """With --ops alone the kernels' rows go to --json itself (they went to PATH.ops.json);
    with both checks, beside the backends' rows. A path starting with "-" reaches the
    kernels' parser as a path (it failed there, with that program's usage)."""
    from bridgegan.engine import parity as backends
    from bridgegan.kernels import parity as ops

    calls = []
    monkeypatch.setattr(ops, "check_ops",
                        lambda **kw: calls.append((kw["device"], kw["written"])) or [])
    monkeypatch.setattr(backends, "main", lambda args: 0)
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "rows.json")
    assert main(["parity", "--ops", "--json", path]) == 0
    assert main(["parity", "--json", path, "--device", "cpu"]) == 0
    assert main(["parity", "--ops", "--json=-p.json"]) == 0
    assert calls == [(None, path), ("cpu", path + ".ops.json"), (None, "-p.json")]


@pytest.mark.parametrize("ops, backends, status", [(2, 1, 2), (1, 0, 1), (0, 1, 1), (1, 1, 1)])
def test_parity_status_is_the_worse_of_the_two_checks(monkeypatch, capsys, ops, backends,
                                                       status):
    """`bridgegan parity` exits 1 when a row fails, 2 when a check could not run: the
    worse of the two checks' statuses (their bits were or-ed: 3 for an error and a FAIL)."""
    from bridgegan.engine import parity as backends_check
    from bridgegan.kernels import parity as ops_check

    def check_ops(**kw):
        if ops == 2:
            raise RuntimeError("no kernels here")
        return [{"ok": not ops}]

    monkeypatch.setattr(ops_check, "check_ops", check_ops)
    monkeypatch.setattr(backends_check, "main", lambda args: backends)
    assert main(["parity"]) == status


def test_a_ctrl_c_in_the_kernels_check_stops_parity(monkeypatch, capsys):
    """A Ctrl-C during the kernels' check ends `bridgegan parity` (130), the backends'
    check not run (the kernels' entry once caught it itself, and parity went on)."""
    from bridgegan.engine import parity as backends_check
    from bridgegan.kernels import parity as ops_check

    def interrupted(**kw):
        raise KeyboardInterrupt

    ran = []
    monkeypatch.setattr(ops_check, "check_ops", interrupted)
    monkeypatch.setattr(backends_check, "main", lambda args: ran.append(args) or 0)
    assert main(["parity"]) == 130 and not ran
    assert capsys.readouterr().err == "bridgegan parity: interrupted\n"


def test_bench_writes_rows_with_ratios(tmp_path, monkeypatch):
    from bridgegan.engine import bench, bench_results

    rows, peaks = bench.run_matrix(
        [Variant("reference", "float32"), Variant("torch", "float32"),
         Variant.parse("torch:float32:-transposed_up")], [1, 2], [64],
        ["translate", "strip", "strip_nocache", "samples"], reps=1, warmup=0, min_seconds=0,
        quick_peaks=True,
        config_overrides=dict(attributes=small_config().attributes, g_width=8, e_width=4,
                              latent_channels=8, spade_hidden=16, mapping_channels=16),
        progress=False)
    files = bench_results.write_results(rows, peaks, tmp_path)
    assert [f.name for f in files] == ["bench.csv", "bench.json", "bench.png"]
    with open(tmp_path / "bench.csv") as f:
        got = list(csv.DictReader(f))
    # translate at batch 1 and 2; each strip has one size (1 + A, no samples) per variant,
    # as has samples (one source's BENCH_SAMPLES)
    assert len(got) == 3 * (2 + 1 + 1 + 1)
    assert sum(r["variant"] == "torch-float32-no_transposed_up" for r in got) == 5
    assert {r["batch"] for r in got if r["what"] == "samples"} == {str(BENCH_SAMPLES)}
    for col in ("what", "backend", "dtype", "batch", "resolution", "metric", "unit", "p50",
                "p20", "p80", "first_call_s", "build_s", "device", "torch", "triton", "commit",
                "date"):
        assert all(r[col] != "" for r in got), col
    for r in got:
        assert float(r["p20"]) <= float(r["p50"]) <= float(r["p80"])
        assert r["vs_reference_fp32"] != ""
        if r["backend"] == "reference":
            assert float(r["vs_reference_fp32"]) == 1.0
    peaks = json.loads((tmp_path / "bench.json").read_text())["peaks"]
    assert peaks["matmul_flops"] > 0
    # timed over the default rounds (one call each here): the round medians' spread
    assert peaks["timer"]["rounds"] == BENCH_ROUNDS
    assert all(r["samples"] == str(BENCH_ROUNDS) and r["spread"] != "" for r in got)


def test_parity_backends_passes_on_cpu(tmp_path):
    rc = main(["parity", "--backends", "--device", "cpu", "--resolution", "64", "--batch", "1",
               "--json", str(tmp_path / "p.json")])
    rows = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and rows and all(r["status"] in ("PASS", "SKIP") for r in rows)
    assert any(r["status"] == "PASS" and r["dtype"] == "float32" for r in rows)
    assert [r["case"] for r in rows] == [v.name for v in parity_variants("cpu")]


def test_parity_backends_checks_the_variants_given(tmp_path, capsys):
    """--variants: bench's variant form, each row named as bench names it; a bad list or
    --variants with --ops alone refused before the kernels' check runs."""
    rc = main(["parity", "--backends", "--device", "cpu", "--resolution", "64", "--batch", "1",
               "--variants", "torch:bf16:cl:-transposed_up", "--json", str(tmp_path / "p.json")])
    [row] = json.loads((tmp_path / "p.json").read_text())
    assert rc == 0 and row["case"] == "torch-bf16-cl-no_transposed_up" and row["status"] == "PASS"
    assert capsys.readouterr().out.splitlines()[-2:] == ["1/1 rows pass",
                                                          f"wrote {tmp_path / 'p.json'}"]
    assert row["channels_last"] is True
    capsys.readouterr()
    # alone, --variants asks for the backends' check only; a variant this device cannot
    # build is a SKIP row that says why (not a FAIL: nothing was computed wrong)
    assert main(["parity", "--device", "cpu", "--resolution", "64", "--batch", "1",
                 "--variants", "torch:float32:graphs", "--json", str(tmp_path / "q.json")]) == 0
    [row] = json.loads((tmp_path / "q.json").read_text())
    assert row["status"] == "SKIP" and "cuda_graphs needs device='cuda'" in row["reason"]
    assert "kernel" not in capsys.readouterr().out
    for argv, why in ((["--variants", "torch:float32:fast"], "expected backend:dtype"),
                      (["--ops", "--variants", "torch:float32"], "--ops checks the kernels"),
                      (["--variants", "torch:fp32,torch:fp32"], "repeated: torch-fp32")):
        assert main(["parity", "--device", "cpu", *argv]) == 2
        out = capsys.readouterr()
        assert why in out.err and "kernel" not in out.out  # nothing run


def test_gpu_check_plan_parses_on_the_cpu(tmp_path):
    """The GPU run's bench variants are read here, so that a typo fails in CI and not on a
    lent machine's one call."""
    from bridgegan.engine import bench

    gpu_check = benchmark_script("gpu_check")
    plan = gpu_check.stages(tmp_path, dry=False)
    lists = [cmd[cmd.index("--variants") + 1] for _, cmd, _ in plan if "--variants" in cmd]
    variants = [Variant.parse(v) for text in lists for v in text.split(",")]
    cuda = torch.device("cuda")  # bench --device cuda's default table: parses, is a table,
    table = default_variants(cuda)  # and times what backend="auto" runs there
    bench._check_table(table, cuda)
    assert any(v.backend == "triton" and v.cuda_graphs and v.channels_last for v in table)
    checked = parity_variants(cuda)  # and the parity table of the GPU run's first stages
    assert {(v.cuda_graphs, v.streams) for v in checked if v.backend == "triton"} == {
        (False, False), (True, False), (False, True), (True, True)}
    for device in (cuda, torch.device("cpu")):  # each row in the engine's default layout
        for v in parity_variants(device):
            dtype = backend_dtype(v.backend, v.dtype, device)
            assert v.channels_last == default_channels_last(device, dtype), v.name
    assert any(v.streams and v.cuda_graphs for v in variants)
    assert any(v.without for v in variants) and any(v.backend == "compile" for v in variants)
    # the profile stage's own default list (its "before" and "after" engines)
    profiled = [Variant.parse(v)
                for v in benchmark_script("profile_engine").DEFAULT_VARIANTS.split(",")]
    assert any(v.without for v in profiled) and not any(v.cuda_graphs for v in profiled)
    # every test skipped for want of a GPU is marked gpu, in a file the gpu_tests stage runs
    listed = {t.split("::")[0] for t in gpu_check.GPU_TESTS}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"@pytest\.mark\.skipif\(.*cuda\.(is_available|device_count)", line):
                where = f"{path.name}:{i + 1}"
                assert lines[i - 1] == "@pytest.mark.gpu", f"{where} is not marked gpu"
                assert f"tests/{path.name}" in listed, f"{where}: gpu_check.GPU_TESTS lacks it"


def test_gpu_check_reports_after_each_stage(tmp_path):
    """A lent machine's call may be stopped at its limit, and only OUTDIR comes back: each
    stage's report is written before the next starts, the stages print into the log as
    they run, and a stage past its limit is stopped and reported."""
    gpu_check = benchmark_script("gpu_check")
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    report = out / "gpu_check.json"
    check = (f"import json, sys; r = json.load(open({str(report)!r})); "
             f"sys.exit([s['stage'] for s in r['stages']] != ['one'])")
    plan = [("one", [sys.executable, "-c", "print('stage one was here')"], 30),
            ("two", [sys.executable, "-c", check], 30),
            ("slow", [sys.executable, "-c", "import time; time.sleep(600)"], 2)]
    assert gpu_check._run(plan, ["one", "two", "slow"], work, out, dry_run=False) == 1
    stages = json.loads(report.read_text())["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("one", 0), ("two", 0),
                                                           ("slow", "timeout")]
    assert "stage one was here" in (out / "gpu_check.log").read_text()


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path),
                           "--dry-run"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in report["stages"]] == [0] * len(report["stages"])
    assert not {"ablation", "bench_compile", "gpu_tests"} & {  # their own call
        s["stage"] for s in report["stages"]}
    assert {"bench.csv", "bench.png", "kernels.csv", "profile.csv", "profile.md",
            "gpu_check.log"} <= {p.name for p in tmp_path.iterdir()}
    assert report["engine"] and report["parity_backends"]
    kernel_rows = list(csv.DictReader(open(tmp_path / "kernels.csv")))
    assert {k.name for k in KERNELS.values() if k.timed} <= {r["what"].split()[0]
                                                             for r in kernel_rows}
    kernels = [r for r in kernel_rows if r["what"].startswith("spade_modulate")]
    timed = {(r["what"], r["dtype"], r["layout"], r["backend"]) for r in kernels
             if r["metric"] == "time"}
    compared = {(r["what"], r["dtype"], r["layout"], r["backend"]) for r in kernels
                if r["metric"] == "speedup_vs_eager"}
    assert {k for k in timed if not k[3].startswith("eager")} == compared
    assert {"triton+res", "eager+res"} <= {k[3] for k in timed}
    profile = list(csv.DictReader(open(tmp_path / "profile.csv")))
    for variant in ("reference-float32", "torch-float32"):
        mine = [r for r in profile if r["variant"] == variant]
        assert {r["name"] for r in mine if r["kind"] == "stage"} == {"trunk", "encode", "map",
                                                                     "decode"}
        kernels = [float(r["share"]) for r in mine if r["kind"] == "kernel"]
        assert kernels and abs(sum(kernels) - 1) < 1e-6
        assert any("convolution" in r["name"] for r in mine if r["kind"] == "kernel")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path),
                           "--dry-run", "--stages", "bench_compile,profil"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown stage(s) profil; stages: parity_ops" in proc.stderr


@pytest.mark.slow
def test_train_default_dry_run_refuses_to_package_a_model_that_misses_the_targets(tmp_path):
    def call(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_default.py"),
                               str(tmp_path), "--dry-run", *extra], capture_output=True,
                              text=True, timeout=600)

    proc = call()
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "not packaged: the model misses" in proc.stdout and "reconstruction_psnr_db" in proc.stdout
    assert not (tmp_path / "default").exists()
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["sources"] == 8 and "label_true_change" in report
    commands = json.loads((tmp_path / "commands.json").read_text())
    assert [c.split()[1] for c in commands] == ["train-classifier", "train-classifier", "train",
                                                "eval"]
    critic = json.loads((tmp_path / "critic" / "classifier.json").read_text())
    judge = json.loads((tmp_path / "judge" / "classifier.json").read_text())
    assert (critic["kernel"], critic["width"]) != (judge["kernel"], judge["width"])
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000003" / "train_state.json")
                       .read_text())
    assert state["step"] == 3
    # a second call is the next stretch: the judge is kept, training resumes at its end;
    # --interim packages the model anyway, recording what it misses
    proc = call("--interim")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    commands = json.loads((tmp_path / "commands.json").read_text())
    assert [c.split()[1] for c in commands] == ["train-classifier", "train-classifier", "train",
                                                "eval", "train", "eval"]
    shipped = tmp_path / "default"
    training = json.loads((shipped / "training.json").read_text())
    assert training["checkpoint_step"] == 3 and training["missed_targets"]
    assert (shipped / "judge" / "classifier.safetensors").is_file()
    card = (shipped / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card") and "INTERIM: it misses" in card
    assert "`--w-paired 100`" in card and "`--w-feature 300`" in card and "| Smiling |" in card
    assert all(t.dtype == torch.float16 for t in read_tensors(shipped / "model.safetensors").values()
               if t.is_floating_point())
    assert read_image(tmp_path / "demo_grid.png").size[0] > 28 * 32


def test_bench_refuses_speed_for_a_variant_that_fails_parity(monkeypatch):
    """A rewritten graph that drifts from the reference (here its decoder's output shifted
    by 0.01) is checked before timing and gets a skipped row that says why, no speed."""
    from bridgegan.engine import bench
    from bridgegan.engine.graph import InferenceGraph

    decode = InferenceGraph.decode
    monkeypatch.setattr(InferenceGraph, "decode", lambda self, h, s: decode(self, h, s) + 0.01)
    rows, _ = bench.run_matrix(
        [Variant("reference", "float32"), Variant("torch", "float32")], [2], [64],
        ["translate"], reps=1, warmup=0, min_seconds=0, quick_peaks=True,
        config_overrides=dict(attributes=small_config().attributes, g_width=8, e_width=4,
                              latent_channels=8, spade_hidden=16, mapping_channels=16),
        progress=False)
    ref, torch_rows = ([r for r in rows if r["backend"] == b] for b in ("reference", "torch"))
    assert [r["metric"] for r in ref] == ["latency"]
    assert ref[0]["parity"].startswith("max abs") and "(max abs <= 0.0001)" in ref[0]["parity"]
    assert [r["metric"] for r in torch_rows] == ["skipped"]
    assert "parity failed against the float64 reference: max abs 1.0e-02" in torch_rows[0]["note"]
    assert "speed not reported" in torch_rows[0]["note"]


def _bench(variants: str, batches=(1,), **kw):
    """A quick CPU bench of ``variants`` (the CLI's comma list), label-based, 64 px."""
    from bridgegan.engine import bench

    args = dict(reps=1, warmup=0, min_seconds=0, quick_peaks=True, progress=False,
                config_overrides=dict(attributes=small_config().attributes, g_width=8,
                                      e_width=4, latent_channels=8, spade_hidden=16,
                                      mapping_channels=16))
    return bench.run_matrix([Variant.parse(v) for v in variants.split(",")],
                            list(batches), [64], ["translate"], **dict(args, **kw))


def test_bench_times_every_row_with_tf32_off(monkeypatch):
    """Rows are timed with TF32 off, as parity checked them (so a float32 row is float32),
    and the caller's TF32 settings come back afterwards."""
    from bridgegan.engine import bench, bench_results

    def tf32():
        return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    flags, real, saved = [], bench.time_calls, tf32()

    def time_calls(*args, **kw):
        flags.append(tf32())
        return real(*args, **kw)

    monkeypatch.setattr(bench, "time_calls", time_calls)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        rows, _ = _bench("reference:float32,torch:float32", batches=(1, 2))
        assert tf32() == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    # four rows, each over BENCH_ROUNDS rounds
    assert len(bench_results.measured(rows)) == 4 and flags == [(False, False)] * 4 * BENCH_ROUNDS


def _failing_at_batch_2(monkeypatch, exc: BaseException) -> None:
    """The torch variant's calls at batch 2 raise ``exc`` (its parity call, batch 1, runs)."""
    from bridgegan.engine import bench

    real = bench._workload_fn

    def workload_fn(eng, workload, batch, seed):
        fn = real(eng, workload, batch, seed)
        if eng.backend != "torch" or batch != 2:
            return fn

        def fail():
            raise exc
        return fail

    monkeypatch.setattr(bench, "_workload_fn", workload_fn)


def _csv_rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as f:
        return [(r["variant"], r["batch"], r["metric"]) for r in csv.DictReader(f)]


def test_bench_row_that_raises_is_skipped_and_rows_are_written_as_measured(tmp_path, monkeypatch):
    _failing_at_batch_2(monkeypatch, RuntimeError("kernel launch failed"))
    rows, _ = _bench("reference:float32,torch:float32", batches=(1, 2), out=tmp_path)
    got = [(r["variant"], str(r["batch"]), r["metric"]) for r in rows]
    assert got == [("reference-float32", "1", "latency"), ("torch-float32", "1", "latency"),
                   ("reference-float32", "2", "latency"), ("torch-float32", "2", "skipped")]
    assert rows[-1]["note"] == "RuntimeError: kernel launch failed"
    assert _csv_rows(tmp_path / PARTIAL_CSV) == got  # written during the run


def test_bench_refuses_a_damaged_checkpoint_before_writing_anything(tmp_path, capsys):
    """A truncated checkpoint was refused clearly, but after the output folder and a
    header-only bench.partial.csv were made and a progress bar shown."""
    ck = save_checkpoint(tmp_path / "ck", BridgeGAN(small_config(16)))
    weights = ck / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["bench", "--checkpoint", str(ck), "--out", str(tmp_path / "out"),
                 "--variants", "torch:float32", "--batches", "1"]) == 2
    err = capsys.readouterr().err  # then safetensors' words, which its versions word apart
    assert err.startswith(f"bridgegan bench: error: {weights} is corrupt or truncated: ")
    assert not (tmp_path / "out").exists()


def test_bench_interrupted_keeps_the_rows_measured_before(tmp_path, monkeypatch):
    class Killed(BaseException):  # what a stage's time limit does to the process
        pass

    _failing_at_batch_2(monkeypatch, Killed())
    (tmp_path / "bench.csv").write_text("the last complete table\n")
    with pytest.raises(Killed):
        _bench("reference:float32,torch:float32", batches=(1, 2), out=tmp_path)
    assert (tmp_path / "bench.csv").read_text() == "the last complete table\n"  # kept
    measured = [("reference-float32", "1", "latency"), ("torch-float32", "1", "latency")]
    assert _csv_rows(tmp_path / PARTIAL_CSV) == measured
    # the next run moves the interrupted run's rows aside (it truncated them), named by
    # their last write
    stamp = time.strftime("%Y%m%d-%H%M%S",
                          time.localtime((tmp_path / PARTIAL_CSV).stat().st_mtime))
    monkeypatch.undo()
    _bench("torch:float32", batches=(1,), out=tmp_path)
    assert _csv_rows(tmp_path / f"bench.partial-{stamp}.csv") == measured
    assert _csv_rows(tmp_path / PARTIAL_CSV) == [("torch-float32", "1", "latency")]
    # a run stopped before its first row leaves a header alone: not kept as rows
    kept = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / PARTIAL_CSV).write_text(",".join(FIELDS) + "\n")
    _bench("torch:float32", batches=(1,), out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == kept


def test_bench_times_the_variants_of_a_row_in_alternation(monkeypatch):
    """Each row's timed calls are split over the rounds, every variant's share in each
    round, the order rotated each round and reversed every other one (no variant always
    first, none always after the same one); the warm-up calls before the first round, one
    before each later one; a row pools its rounds' calls, and its spread is its largest
    round median over its smallest; a variant whose call fails in a round leaves the
    rotation with a skipped row."""
    from bridgegan.engine import bench, bench_results

    order, engines = [], []
    real_fn = bench._workload_fn

    def workload_fn(eng, workload, batch, seed):
        fn = real_fn(eng, workload, batch, seed)
        if eng not in engines:
            engines.append(eng)
        tag = (engines.index(eng), batch)

        def call():
            if tag == (2, 2) and sum(o[0] == tag for o in order) == 2:
                raise RuntimeError("failed in its second round")
            return fn()
        call.tag = tag
        return call

    def time_calls(fn, dev, warmup, reps, min_seconds):
        order.append((fn.tag, dict(warmup=warmup, reps=reps, min_seconds=min_seconds)))
        fn()
        k = sum(o[0] == fn.tag for o in order)  # its k-th round: k ms a call
        return [k / 1e3 + j / 1e6 for j in range(reps)]

    monkeypatch.setattr(bench, "_workload_fn", workload_fn)
    monkeypatch.setattr(bench, "time_calls", time_calls)
    rows, peaks = _bench("reference:float32,torch:float32,torch:float32:-transposed_up",
                         batches=(1, 2), reps=4, warmup=2, min_seconds=0.3, rounds=3)
    assert [t for t, _ in order[:9]] == [(v, 1) for v in (0, 1, 2, 0, 2, 1, 2, 0, 1)]
    assert [kw for _, kw in order[:9]] == [dict(warmup=2 if k < 3 else 1, reps=2,
                                                min_seconds=0.3 / 3) for k in range(9)]
    # batch 2: variant 2 fails in its second round, the others go on in turn
    assert [t for t, _ in order[9:]] == [(v, 2) for v in (0, 1, 2, 0, 2, 1, 0, 1)]
    got = {(r["variant"], r["batch"]): r for r in rows}
    assert got["torch-float32-no_transposed_up", 2]["note"] == (
        "RuntimeError: failed in its second round")
    assert len(bench_results.measured(rows)) == 5
    for r in bench_results.measured(rows):  # calls of 1, 1.001, 2, 2.001, 3, 3.001 ms
        assert (r["samples"], r["p50"], r["spread"]) == (6, 2.0005, round(3.0005 / 1.0005, 3))
    assert peaks["timer"] == dict(warmup=2, reps=4, min_seconds=0.3, rounds=3)


def test_bench_rows_store_torchs_dtype_names_and_join_ratios_on_them():
    """fp32 / bf16 / bfloat16 are stored as float32 / bfloat16, so torch:bf16 is compared
    with reference:bfloat16; CPU rows leave peak_mem_mb empty (no per-row figure there)."""
    rows, peaks = _bench("reference:fp32,reference:bfloat16,torch:bf16")
    ref32, ref16, mine = rows
    assert [r["dtype"] for r in rows] == ["float32", "bfloat16", "bfloat16"]
    for r in rows:  # each over its own dtype's peak, whatever else the table holds
        share = r["gflop_per_image"] * 1e9 * r["images_per_s"] / peaks["matmul_flops_by_dtype"][
            r["dtype"]]
        assert r["roofline_share"] == pytest.approx(share, rel=2e-2, abs=1e-4)
    assert mine["vs_reference_same_dtype"] == round(ref16["p50"] / mine["p50"], 3)
    assert mine["vs_reference_fp32"] == round(ref32["p50"] / mine["p50"], 3)
    assert [r["peak_mem_mb"] for r in rows] == ["", "", ""]


def test_bench_refuses_two_baselines_of_one_dtype():
    with pytest.raises(ValueError, match="reference-fp16 and reference-float16 are both the "
                                         "plain reference in float16"):
        _bench("reference:fp16,reference:fp16:cl,reference:float16")


def test_bench_rows_name_the_cpu_model(tmp_path, monkeypatch):
    from bridgegan.engine import machine

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n"
                    "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: amx_bf16\n")
    monkeypatch.setattr(machine, "CPUINFO", info)
    threads = torch.get_num_threads()
    try:
        for n, said in ((1, "1 thread"), (2, "2 threads")):
            torch.set_num_threads(n)
            device = machine.environment(torch.device("cpu"))["device"]
            assert device == f"Intel(R) Xeon(R) Platinum 8480+ [amx_bf16], {said}"
    finally:
        torch.set_num_threads(threads)


def test_bench_rows_tell_apart_cpus_of_one_name_by_their_matrix_extensions(tmp_path,
                                                                           monkeypatch):
    """Virtual machines name most CPUs "Intel(R) Xeon(R) Processor": with and without AMX
    (bf16 7x apart) the rows must still say which machine they came from."""
    from bridgegan.engine import machine

    names = []
    for flags in ("fpu avx2 avx512f", "fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16", "fpu"):
        info = tmp_path / "cpuinfo"
        info.write_text(f"model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: {flags}\n")
        monkeypatch.setattr(machine, "CPUINFO", info)
        names.append(machine.environment(torch.device("cpu"))["device"].rsplit(",", 1)[0])
    assert names == ["Intel(R) Xeon(R) Processor [avx2 avx512f]",
                     "Intel(R) Xeon(R) Processor [avx2 avx512f avx512_bf16 amx_bf16]",
                     "Intel(R) Xeon(R) Processor"]


def test_bench_parity_column_names_the_call_it_checked(tmp_path):
    """Parity runs one call (translate at the smallest batch): rows of another workload or
    batch say so instead of reading as checked themselves; each row counts its samples and
    bench.json keeps the timer's settings."""
    from bridgegan.engine import bench, bench_results

    rows, peaks = bench.run_matrix(
        [Variant("torch", "float32")], [1, 2], [64], ["translate", "strip"], reps=2,
        warmup=0, min_seconds=0, rounds=1, quick_peaks=True,
        config_overrides=dict(attributes=small_config().attributes, g_width=8, e_width=4,
                              latent_channels=8, spade_hidden=16, mapping_channels=16),
        progress=False)
    got = {(r["what"], r["batch"]): r for r in bench_results.measured(rows)}
    assert set(got) == {("translate", 1), ("translate", 2), ("strip", 1 + len(
        small_config().attributes))}
    checked = got.pop(("translate", 1))["parity"]
    assert checked.startswith("max abs") and "checked on" not in checked
    for r in got.values():
        assert r["parity"] == f"{checked}; checked on translate at batch 1, not this call"
    assert all(r["samples"] == 2 for r in bench_results.measured(rows))
    assert peaks["timer"] == dict(warmup=0, reps=2, min_seconds=0, rounds=1)
    bench_results.write_results(rows, peaks, tmp_path)
    with open(tmp_path / "bench.csv") as f:
        assert all(r["samples"] == "2" for r in csv.DictReader(f))


def test_bench_strips_run_from_the_flips_alone_to_max_samples():
    """A strip's batch is its length, clamped to what edit_strip makes (the reconstruction
    and the flips, up to MAX_SAMPLES samples more): a --batches list past it still runs
    (its strip rows once, at the longest length), and edit_strip is never asked for more."""
    from bridgegan.engine import Engine, bench
    from bridgegan.engine.options import MAX_SAMPLES

    torch.manual_seed(0)
    eng = Engine(BridgeGAN(small_config()).eval())
    a = eng.config.n_attrs
    lengths = {batch: bench._images(eng.config, "strip", batch)
               for batch in (1, a + 3, a + 1 + MAX_SAMPLES, 1000)}
    assert lengths == {1: 1 + a, a + 3: a + 3, a + 1 + MAX_SAMPLES: a + 1 + MAX_SAMPLES,
                       1000: a + 1 + MAX_SAMPLES}
    for batch in (1, 1000):  # what the call makes
        assert len(bench._workload_fn(eng, "strip", batch, seed=0)().images) == lengths[batch]


def test_bench_measures_the_roofline_peaks_with_tf32_off(monkeypatch):
    """The float32 matrix peak is float32's, as the rows are timed: with TF32 on in the
    caller it would be TF32's (about 8x on an H100) and every float32 share 8x too low."""
    from bridgegan.engine import bench

    flags = []

    def measure(device, dtype, quick=False):
        flags.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return {"matmul_flops": 1e12, "matmul_dtype": str(dtype).replace("torch.", ""),
                "copy_bytes_per_s": 1e10}

    monkeypatch.setattr(bench.roofline, "measure_peaks", measure)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        _bench("torch:float32")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert flags == [(False, False)]


def _info(argv, capsys) -> tuple[dict, dict[str, int]]:
    """`bridgegan info ...`'s configuration (the JSON it prints) and parameter counts."""
    import re

    assert main(["info", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    counts = [re.fullmatch(r"(\w+) +([\d,]+) parameters", line) for line in lines[-4:]]
    assert all(counts), lines[-4:]
    return (json.loads("\n".join(lines[:-4])),
            {m.group(1): int(m.group(2).replace(",", "")) for m in counts})


def test_info_prints_a_checkpoints_configuration_and_parameter_counts(tmp_path, capsys):
    """`bridgegan info`: the configuration a checkpoint (the shipped model, a small one of
    other attributes and edit strength) or a preset holds, and each network's parameter
    count, as the loaded model has them."""
    from bridgegan.demo import SHIPPED
    from bridgegan.reference import BridgeGANConfig, load_checkpoint

    def counts(model):
        return {name: sum(p.numel() for p in getattr(model, name).parameters())
                for name in ("generator", "encoder", "mapping", "discriminator")}

    torch.manual_seed(9)
    small = randomize(BridgeGAN(small_config(32, attributes=("Male", "Smiling", "Eyeglasses"),
                                             edit_strength=1.25, g_width=12)), seed=9)
    ck = save_checkpoint(tmp_path / "ck", small.eval())
    for path in (ck, SHIPPED):
        config, printed = _info(["--checkpoint", str(path)], capsys)
        model = load_checkpoint(path)
        assert config == json.loads(model.config.to_json())
        assert printed == counts(model) and list(printed) == list(counts(model)), path
    config, printed = _info(["--checkpoint", str(ck)], capsys)
    assert (config["attributes"], config["edit_strength"], config["g_width"]) == (
        ["Male", "Smiling", "Eyeglasses"], 1.25, 12)
    assert printed["generator"] == sum(p.numel() for p in small.generator.parameters())
    preset = BridgeGANConfig.preset(64)
    config, printed = _info(["--resolution", "64"], capsys)
    assert config == json.loads(preset.to_json()) and config["image_size"] == 64
    assert printed == counts(BridgeGAN(preset))


def test_profile_engine_profiles_with_tf32_off_as_the_bench_times(tmp_path, monkeypatch):
    """The bench times every row with TF32 off (torch_flags.no_tf32); the profile's kernel
    and stage tables must too, or its float32 rows are TF32 convolutions beside the bench's
    float32 ones (cuDNN's TF32 is on by default)."""
    profile_engine = benchmark_script("profile_engine")
    flags = []

    def rows(kind):
        def fake(eng, variant, batch, calls):
            flags.append((kind, torch.backends.cudnn.allow_tf32,
                          torch.backends.cuda.matmul.allow_tf32))
            return [dict(variant=variant, batch=batch, kind="summary", name="ops per forward",
                         calls_per_forward=1, us_per_forward=1.0, share=1.0)]
        return fake

    monkeypatch.setattr(profile_engine, "kernel_rows", rows("kernel"))
    monkeypatch.setattr(profile_engine, "stage_rows", rows("stage"))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert profile_engine.main([str(tmp_path), "--device", "cpu", "--variants",
                                "torch:float32", "--batches", "1", "--resolution", "64"]) == 0
    assert flags == [("kernel", False, False), ("stage", False, False)]
    assert torch.backends.cudnn.allow_tf32 is True  # the caller's setting back afterwards


def test_a_reader_that_leaves_early_is_not_an_error():
    """`bridgegan info | head`: stdout's reader is gone before the command writes; it
    ends with status 0 and no error message. An error of its own still is one."""
    read, write = os.pipe()
    os.close(read)  # the reader left before anything was written
    try:
        proc = subprocess.run([sys.executable, "-m", "bridgegan.cli", "info"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "bridgegan.cli", "info", "--checkpoint",
                               "/nonexistent"], stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 2 and "error: no checkpoint at /nonexistent" in proc.stderr


@pytest.mark.parametrize("argv,message", [
    (["translate", "--device", "gpu"], "argument --device: device must be cpu, cuda or cuda:N, "
                                       "got 'gpu'"),
    (["serve", "--device", "tpu"], "argument --device: device must be cpu, cuda or cuda:N"),
    (["parity", "--device", "cuda:x"], "argument --device: device must be cpu, cuda or cuda:N"),
    (["bench", "--device", "cuda:"], "argument --device: device must be cpu, cuda or cuda:N"),
    (["demo", "--device", "cpu:"], "argument --device: device must be cpu, cuda or cuda:N"),
    (["translate", "--device", "cuda:01"], "argument --device: device must be cpu, cuda or "
                                           "cuda:N"),
    (["demo", "--rows", "0"], "argument --rows: must be an integer from 1 to 64, got '0'"),
    (["demo", "--rows", "65"], "argument --rows: must be an integer from 1 to 64, got '65'"),
    (["demo", "--seed", "-1"], f"argument --seed: must be an integer from 0 to {2 ** 63}, "
                               "got '-1'"),
    (["translate", "--seed", "-1"], f"argument --seed: must be an integer from 0 to "
                                    f"{2 ** 64 - 1}, got '-1'"),
    (["info", "--checkpoint", "ck", "--resolution", "64"],
     "argument --resolution: not allowed with argument --checkpoint"),
    (["info", "--checkpoint", "ck", "--resolution", "128"],  # the default value too
     "argument --resolution: not allowed with argument --checkpoint"),
])
def test_device_demo_and_info_options_are_checked_by_the_parser(argv, message, capsys):
    """--device gpu reached torch's own message listing every device type it knows; demo's
    --rows had no bound (a grid of 10^8 rows ran for minutes) and --seed -1 named None;
    info ignored --resolution beside a checkpoint."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["train-classifier", "--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["train-classifier", "--lr", "-0.1"], "argument --lr: must be a finite number > 0, got '-0.1'"),
    (["train-classifier", "--width", "0"], "argument --width: must be an integer from 1 to 64, got '0'"),
    (["train-classifier", "--seed", "-1"],
     f"argument --seed: must be an integer from 0 to {2 ** 64 - 1}, got '-1'"),
    (["train-classifier", "--workers", "-1"],
     "argument --workers: must be an integer >= 0, got '-1'"),
    (["eval", "--checkpoint", "ck", "--classifier", "clf", "--seed", "-1"],
     f"argument --seed: must be an integer from 0 to {2 ** 64 - 1}, got '-1'"),
])
def test_classifier_and_eval_options_are_checked_before_any_work(tmp_path, argv, message,
                                                                  capsys):
    """A learning rate of inf trained a classifier of NaN weights that it then saved (and
    eval could not load); width 0 and a negative seed failed after loading the data, with
    torch's or numpy's words. Each is now refused by the parser, naming the option."""
    out = tmp_path / "clf"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", str(out)] if argv[0] == "train-classifier" else argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_diverged_classifier_is_not_saved(tmp_path, monkeypatch):
    """Training that ends with non-finite weights raises (nothing could load them); one
    that keeps its state raises at the first state it would keep, which it does not keep
    (a resume would refuse it, and a new run, the advice, was refused beside it)."""
    from bridgegan.reference import classifier
    from bridgegan.reference.classifier import train_classifier
    from bridgegan.reference.data import make_dataset

    train = make_dataset("synthetic:8", 32, "Male,Young", split="train")
    val = make_dataset("synthetic:4", 32, "Male,Young", split="val")
    with pytest.raises(ValueError, match="classifier training diverged: NaN or Inf weights"):
        train_classifier(train, val, steps=2, batch=4, width=4, lr=float("inf"), progress=False)
    monkeypatch.setattr(classifier, "SAVE_EVERY", 1)
    state = tmp_path / "state"
    with pytest.raises(ValueError, match=rf"after 1 steps .* in a new run \(remove {state}"):
        train_classifier(train, val, steps=3, batch=4, width=4, lr=float("inf"),
                         progress=False, state=state)
    assert not state.exists()


@pytest.mark.parametrize("workers", ["0", "1"])
def test_train_classifier_names_a_corrupt_image_in_one_line(tmp_path, capsys, workers,
                                                            faces_with_a_corrupt_image):
    """With data-loader workers too: a worker's error reaches the main process with the
    worker's whole traceback as its message; the error shown is its last line, and the
    workers have stopped when the command returns."""
    root = faces_with_a_corrupt_image
    assert stops_without_gc(lambda: main([
        "train-classifier", "--data", f"folder:{root}", "--resolution", "32", "--steps", "20",
        "--batch", "4", "--width", "4", "--workers", workers,
        "--out", str(tmp_path / "clf")])) == (2, True)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()
           and not line.startswith(("classifier", "note:"))]
    assert err == [f"bridgegan train-classifier: error: cannot read image file "
                   f"{root / '5.png'}: cannot identify image file '{root / '5.png'}'"], err
    assert not (tmp_path / "clf").exists()


def test_translate_gives_each_input_the_result_it_gets_alone(tmp_path):
    """--seed: an input's edits do not depend on the other inputs given with it."""
    torch.manual_seed(0)
    m = randomize(BridgeGAN(small_config(32))).eval()
    save_checkpoint(tmp_path / "ck", m)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        p = tmp_path / f"face{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))

    def edits(out, inputs):
        assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", *inputs,
                     "--set", "Male=1", "--samples", "2", "--seed", "5", "--out",
                     str(tmp_path / out), "--threads", "1"]) == 0
        return [np.asarray(read_image(tmp_path / out / f"face0_edit{k}.png"), dtype=int)
                for k in (1, 2)]

    alone, together = edits("alone", paths[:1]), edits("together", [paths[1], paths[0], paths[2]])
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() <= 1  # float rounding at most: one 8-bit step
    assert np.abs(alone[0] - alone[1]).max() > 1  # the samples differ


def checkpoint_and_faces(tmp_path, n: int, seed: int) -> list[str]:
    """A small seeded checkpoint in tmp_path/ck and ``n`` random 32 px faces (their paths)."""
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", randomize(BridgeGAN(small_config(32))).eval())
    rng = np.random.default_rng(seed)
    paths = [str(tmp_path / f"face{i}.png") for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
    return paths


def test_translate_stopped_part_way_says_what_it_wrote(tmp_path, monkeypatch, capsys):
    """Ctrl-C after the first of three batches: the line says how many inputs' results
    are in --out (the rest are an earlier run's, or none) and that the grid is not; the
    earlier run's grid, which showed other results, is gone."""
    from bridgegan.engine import commands

    paths = checkpoint_and_faces(tmp_path, 3, seed=4)
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_bytes(b"an earlier run's grid")
    real, calls = commands._translate_batch, []

    def batch(*args):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args)
    monkeypatch.setattr(commands, "_translate_batch", batch)
    assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", *paths,
                 "--set", "Male=1", "--out", str(out), "--threads", "1",
                 "--batch-size", "1"]) == 130
    assert capsys.readouterr().err.splitlines()[-2:] == [
        f"translate: stopped with the results of 1 of 3 inputs written; {out / 'grid.png'} "
        f"is not", "bridgegan translate: interrupted"]
    assert sorted(p.name for p in out.iterdir()) == ["face0_edit1.png"]


def test_translate_runs_in_batches_with_the_results_of_one(tmp_path, monkeypatch, capsys):
    """--batch-size: inputs are loaded, translated and written a batch at a time, with the
    results of one call (per-image seeds); every input is checked before any work (a bad
    fourth file writes nothing); the grid shows the first GRID_ROWS inputs. The attribute
    head labels each batch once for all its columns (it ran once per column) and the one
    reference once (it ran on a copy per input)."""
    from bridgegan.engine import Engine, commands

    paths = checkpoint_and_faces(tmp_path, 5, seed=2)
    labelled, head = [], Engine._head_labels
    monkeypatch.setattr(Engine, "_head_labels",
                        lambda self, x: labelled.append(len(x)) or head(self, x))

    def run(out, inputs, *extra):
        return main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", *inputs,
                     "--set", "Male=1", "--reference", paths[0], "--out", str(tmp_path / out),
                     "--threads", "1", *extra])

    def outputs(out):
        return {p.name: np.asarray(read_image(p), dtype=int)
                for p in sorted((tmp_path / out).glob("face*.png"))}

    monkeypatch.setattr(commands, "GRID_ROWS", 3)
    assert run("one", paths) == 0 and run("batches", paths, "--batch-size", "2") == 0
    assert labelled == [5, 1, 2, 1, 2, 1, 1, 1]  # per batch: its inputs, the reference
    one, batches = outputs("one"), outputs("batches")
    assert len(one) == 10 and one.keys() == batches.keys()
    assert max(np.abs(one[k] - batches[k]).max() for k in one) <= 1  # float rounding at most
    assert "the first 3 inputs" in capsys.readouterr().out
    assert read_image(tmp_path / "batches" / "grid.png").size[1] < 4 * 32  # 3 rows
    (tmp_path / "notes.png").write_text("not an image")
    assert run("bad", [*paths[:3], str(tmp_path / "notes.png")], "--batch-size", "1") == 2
    assert "notes.png" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_translate_keeps_only_the_grids_rows_of_past_batches(tmp_path, monkeypatch):
    """Memory stays bounded however many inputs: once a batch is written, only its rows
    shown in the grid are kept (a slice of no rows is still a view holding the batch)."""
    import gc
    import weakref

    from bridgegan.engine import commands

    paths = checkpoint_and_faces(tmp_path, 5, seed=3)
    batches, cat = [], torch.cat

    def joined(tensors, dim=0):  # each batch's (input, column, C, H, W) rows
        out = cat(tensors, dim=dim)
        if dim == 1 and out.dim() == 5:
            batches.append(weakref.ref(out))
        return out

    alive = []

    def save_grid(grid, path, nrow):
        gc.collect()
        alive.append(sum(r() is not None for r in batches))

    monkeypatch.setattr(torch, "cat", joined)
    monkeypatch.setattr(commands, "save_grid", save_grid)
    monkeypatch.setattr(commands, "GRID_ROWS", 2)
    assert main(["translate", "--checkpoint", str(tmp_path / "ck"), "--input", *paths,
                 "--set", "Male=1", "--out", str(tmp_path / "out"), "--threads", "1",
                 "--batch-size", "1"]) == 0
    assert len(batches) == 5 and alive == [0]  # the grid's rows are copies


def test_training_docs_state_the_options_defaults():
    """docs/TRAINING.md's option table states the defaults that `bridgegan train` has (the
    parser's, or the configuration's where the parser keeps None for "not given")."""
    import argparse

    from bridgegan.reference import train_cli

    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    actions = {s: a for a in parser._actions for s in a.option_strings}

    def stated(action) -> str:
        if action.default not in (None, False):
            return str(action.default)
        found = (re.search(r"\bdefault:? ([^);,\s]+)", action.help or "")
                 or re.search(r"\(paper ([^);,\s]+)", action.help or ""))
        return found[1] if found else ""

    def same(doc: str, code: str) -> bool:
        try:
            return float(doc) == float(code)
        except ValueError:
            return doc == code

    docs = (Path(__file__).parents[1] / "docs" / "TRAINING.md").read_text()
    table = docs.split("\n## Options\n")[1].split("\n## ")[0]
    rows = re.findall(r"^\| (`--.*?) \| (.*?) \|", table, re.M)
    checked = 0
    for cell, default in rows:
        options = re.findall(r"--[\w-]+", cell)
        values = [v.strip("` ") for v in default.split(", ")]
        values = values if len(values) == len(options) else values[:1] * len(options)
        for option, value in zip(options, values):
            assert option in actions, f"docs/TRAINING.md names {option}, which train lacks"
            if value and " " not in value and value not in ("paper", "off"):
                assert same(value, stated(actions[option])), (option, value)
                checked += 1
    assert checked >= 30
