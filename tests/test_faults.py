"""Faults: kills mid-write (ONNX exports, checkpoints), processes sharing an export cache,
files of another model, corrupt training state, unwritable outputs, file modes, resumed
metrics. Kills and concurrency use real subprocesses on real files."""
from __future__ import annotations

import json
import math
import re
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bridgegan import files
from bridgegan.cli import main
from bridgegan.files import remove_stale, write_folder_atomic
from bridgegan.reference import BridgeGAN, CheckpointError, save_checkpoint
from bridgegan.reference.data import make_dataset
from bridgegan.reference.train_config import TrainConfig
from bridgegan.reference.run_folder import METRICS_FILE, latest_checkpoint
from bridgegan.reference.train_state import STATE_JSON, STATE_TENSORS
from bridgegan.reference.trainer import Trainer
from conftest import dead_pid, randomize, small_config

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
# a python prelude for child processes: die by SIGKILL once a path matching KILL_AT is
# fsynced inside an atomic write (the file complete, its folder not yet in place)
KILLER = textwrap.dedent("""
    import os, signal, sys
    import bridgegan.files as files
    real = files._fsync
    def fsync(path):
        real(path)
        if os.environ["KILL_AT"] in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
    files._fsync = fsync
""")


def python(code: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**ENV, **(env or {})},
                          capture_output=True, text=True, **kw)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(5)
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck",
                           randomize(BridgeGAN(small_config(32)), seed=5).eval())


# ----------------------------------------------------------------------------- atomic writes

def test_a_kill_between_moving_the_old_folder_aside_and_the_new_one_in_is_undone(tmp_path):
    """Where the system cannot exchange two paths in one step, the old folder is moved
    aside first: a kill before the new one is in is undone by the next process."""
    target = write_folder_atomic(tmp_path / "model", {"a.txt": lambda p: p.write_text("old")})
    code = KILLER.replace('if os.environ["KILL_AT"] in str(path):', "if False:") + textwrap.dedent(f"""
        files._exchange = lambda a, b: False
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if ".old-" in str(dst):  # the old folder is aside, the new one not yet in
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        files.write_folder_atomic({str(target)!r}, {{"a.txt": lambda p: p.write_text("new")}})
    """)
    assert python(code).returncode == -signal.SIGKILL
    assert not target.exists() and len(leftovers(tmp_path)) == 2
    # the next process puts the old folder back and removes the rest
    assert python(f"import bridgegan.files as f; f.remove_stale({str(tmp_path)!r})").returncode == 0
    assert (target / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_a_replaced_folder_is_there_at_every_instant(tmp_path, monkeypatch, exchange):
    """Readers (an engine loading an export folder's graphs while another process adds to
    it) find the folder, old or new, at every instant of a replacement where the system
    exchanges paths in one step (Linux's renameat2); without it there is a gap, and the
    replacement still works."""
    import threading

    import bridgegan.files as files

    if exchange and files._renameat2() is None:
        pytest.skip("needs renameat2 (glibc >= 2.28)")
    if not exchange:
        monkeypatch.setattr(files, "_renameat2", lambda: None)
    target = write_folder_atomic(tmp_path / "model", {"a.txt": lambda p: p.write_text("0")})
    done, missing, seen = threading.Event(), [], set()

    def read():
        while not done.is_set():
            try:
                seen.add((target / "a.txt").read_text())
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 200):
            write_folder_atomic(target, {"a.txt": lambda p, i=i: p.write_text(str(i))})
    finally:
        done.set()
        reader.join()
    assert (target / "a.txt").read_text() == "199" and leftovers(tmp_path) == []
    assert len(seen) > 1  # the reader ran during the replacements
    if exchange:
        assert not missing


def test_leftovers_of_running_processes_or_other_names_are_kept(tmp_path):
    mine = tmp_path / f".step-00000002.tmp-{os.getpid()}-ab"  # this process: in use
    old = tmp_path / f".step-00000004.tmp-{dead_pid()}-cd"
    huge = tmp_path / f".step-00000008.tmp-{2 ** 70}-ef"  # no pid: kept (OverflowError)
    for p in (mine, old, huge):
        p.mkdir()
    assert remove_stale(tmp_path, ["step-00000002"]) == []
    assert remove_stale(tmp_path, ["step-00000006"]) == []
    assert remove_stale(tmp_path) == [old] and leftovers(tmp_path) == [mine.name, huge.name]


def test_a_running_writer_keeps_its_temporary_folder(tmp_path):
    """A process is mid-write: a process started later, removing leftovers and writing the
    same folder, leaves its temporary folder alone; once it is killed, it is removed."""
    target = tmp_path / "model"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from bridgegan.files import write_folder_atomic
        def held(path):
            path.write_text("A")
            print("writing", flush=True)
            sys.stdin.readline()
        write_folder_atomic({str(target)!r}, {{"a.txt": held}})
    """)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
        held = leftovers(tmp_path)
        assert len(held) == 1 and f".tmp-{child.pid}-" in held[0]
        later = python(f"import bridgegan.files as f; print(f.remove_stale({str(tmp_path)!r})); "
                       f"f.write_folder_atomic({str(target)!r}, "
                       f"{{'a.txt': lambda p: p.write_text('B')}})")
        assert later.returncode == 0 and later.stdout == "[]\n", later.stderr[-2000:]
        assert leftovers(tmp_path) == held and (target / "a.txt").read_text() == "B"
    finally:
        child.kill()
        child.wait()
    assert remove_stale(tmp_path) == [tmp_path / held[0]] and leftovers(tmp_path) == []


@pytest.mark.parametrize("other, found", [
    ("thesis.txt", "thesis.txt"),              # the user's file beside the written ones
    ("2/model.onnx", "2/model.onnx"),          # an extra version in a model folder
    ("sub/a.txt/x", "sub/a.txt/x"),            # a folder where a written file goes
])
def test_a_folder_holding_other_files_is_refused_and_kept(tmp_path, other, found):
    target = tmp_path / "out"
    (target / other).parent.mkdir(parents=True)
    (target / other).write_text("user data")
    with pytest.raises(ValueError, match=rf"{target} holds {found}, which is not a file this "
                                         rf"write produces.*choose another path"):
        write_folder_atomic(target, {"a.txt": lambda p: p.write_text("new"),
                                     "sub/a.txt": lambda p: p.write_text("new")})
    assert (target / other).read_text() == "user data" and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_or_link_at_the_target_is_refused_and_kept(tmp_path, kind):
    target, notes = tmp_path / "out", tmp_path / "notes.txt"
    notes.write_text("user data")
    if kind == "link":
        (tmp_path / "folder").mkdir()
        target.symlink_to(tmp_path / "folder")
    else:
        target = notes
    with pytest.raises(ValueError, match=rf"{target} is a (file|symbolic link), not a folder"
                                         rf".*choose another path or remove it"):
        write_folder_atomic(target, {"a.txt": lambda p: p.write_text("new")})
    assert notes.read_text() == "user data" and target.exists()
    assert kind == "file" or target.is_symlink()


def test_a_write_protected_folder_is_refused_and_a_leftover_that_stays_is_named(tmp_path,
                                                                               monkeypatch):
    """Replacing a write-protected earlier write (chmod -R a-w) swapped it out and left its
    files behind under a hidden name, which every later write then failed to remove with
    a bare "Permission denied". (os.access faked: this suite may run as root, whom no mode
    stops.)"""
    import shutil as shutil_module

    target = tmp_path / "out"
    write_folder_atomic(target, {"a.txt": lambda p: p.write_text("1"),
                                 "sub/b.txt": lambda p: p.write_text("1")})
    access = os.access
    monkeypatch.setattr(files.os, "access",
                        lambda p, mode: Path(p) != target / "sub" and access(p, mode))
    with pytest.raises(ValueError, match=rf"{target} cannot be replaced: {target / 'sub'} is "
                                         rf"write-protected, so its files could not be removed"):
        write_folder_atomic(target, {"a.txt": lambda p: p.write_text("2")}, replaces=["sub/b.txt"])
    assert (target / "a.txt").read_text() == "1" and leftovers(tmp_path) == []
    monkeypatch.undo()
    stale = tmp_path / f".out.tmp-{dead_pid()}-0000"
    stale.mkdir()

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path / "x"))
    monkeypatch.setattr(shutil_module, "rmtree", denied)
    with pytest.raises(OSError, match=rf"cannot remove {stale}, what an earlier write left: "
                                      rf"Permission denied; remove it"):
        remove_stale(tmp_path, ["out"])


def test_folders_written_together_are_all_written_before_any_is_replaced(tmp_path):
    """A model repository's models: a full disk while the second was written left the
    first of the new checkpoint beside the others of the old one. Now nothing is replaced
    until every folder is on disk; a failure leaves them all old, and no temporaries."""
    import errno

    from bridgegan.files import write_folders_atomic

    def folders(text, fail=False):
        def second(p):
            if fail:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            p.write_text(text)
        return {tmp_path / "a": ({"x.txt": lambda p: p.write_text(text)}, ()),
                tmp_path / "b": ({"x.txt": second}, ())}

    assert write_folders_atomic(folders("old")) == [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(OSError, match="No space left"):
        write_folders_atomic(folders("new", fail=True))
    assert [(tmp_path / f / "x.txt").read_text() for f in "ab"] == ["old", "old"]
    assert leftovers(tmp_path) == []
    write_folders_atomic(folders("new"))
    assert [(tmp_path / f / "x.txt").read_text() for f in "ab"] == ["new", "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_an_earlier_write_or_an_empty_folder_is_replaced(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    write_folder_atomic(target, {"a.txt": lambda p: p.write_text("1"),
                                 "sub/b.txt": lambda p: p.write_text("1")})
    with pytest.raises(ValueError, match="holds sub/b.txt"):  # not declared: refused
        write_folder_atomic(target, {"a.txt": lambda p: p.write_text("2")})
    write_folder_atomic(target, {"a.txt": lambda p: p.write_text("2")}, replaces=["sub/b.txt"])
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["a.txt"]
    assert (target / "a.txt").read_text() == "2" and leftovers(tmp_path) == []


def test_writes_are_on_disk_renames_included(tmp_path, monkeypatch):
    """A rename is durable only once its folder is fsynced: each file, then the temporary
    folder's entries (sub-folders first), then the parent after the swap (the new folder
    in place by then); a file write fsyncs the parent after its rename."""
    import bridgegan.files as files

    synced, real = [], files._fsync
    target = tmp_path / "out" / "a.txt"

    def fsync(path):  # what was fsynced, and whether the write's result was in place
        real(path)
        synced.append((path.relative_to(tmp_path).as_posix(), target.exists()))

    monkeypatch.setattr(files, "_fsync", fsync)
    write_folder_atomic(tmp_path / "out", {"a.txt": lambda p: p.write_text("1"),
                                           "sub/b.txt": lambda p: p.write_text("2")})
    tmp = synced[0][0].split("/")[0]
    assert tmp.startswith(".out.tmp-")
    assert synced == [(f"{tmp}/a.txt", False), (f"{tmp}/sub/b.txt", False),
                      (f"{tmp}/sub", False), (tmp, False), (".", True)]
    synced.clear()
    target = tmp_path / "out" / "c.txt"
    files.write_file_atomic(target, b"3")
    assert synced == [("out", True)] and target.read_bytes() == b"3"
    synced.clear()  # files only in sub-folders: every folder up to the temporary one
    target = tmp_path / "deep" / "x" / "y" / "c.txt"
    write_folder_atomic(tmp_path / "deep", {"x/y/c.txt": lambda p: p.write_text("4")})
    tmp = synced[0][0].split("/")[0]
    assert synced == [(f"{tmp}/x/y/c.txt", False), (f"{tmp}/x/y", False), (f"{tmp}/x", False),
                      (tmp, False), (".", True)]


def test_a_file_system_that_cannot_fsync_folders_keeps_the_write(tmp_path, monkeypatch):
    """Some FUSE and network mounts refuse fsync on a folder (EINVAL): the write is done and
    stays done; any other failure is raised."""
    import errno

    import bridgegan.files as files

    real = files._fsync

    def fsync(path, error=errno.EINVAL):
        if path.is_dir():
            raise OSError(error, os.strerror(error))
        real(path)

    monkeypatch.setattr(files, "_fsync", fsync)
    write_folder_atomic(tmp_path / "out", {"a.txt": lambda p: p.write_text("1")})
    files.write_file_atomic(tmp_path / "b.txt", b"2")
    assert (tmp_path / "out" / "a.txt").read_text() == "1" and (tmp_path / "b.txt").exists()
    monkeypatch.setattr(files, "_fsync", lambda path: fsync(path, errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        files.write_file_atomic(tmp_path / "c.txt", b"3")


def test_a_file_put_into_the_folder_during_a_write_is_kept(tmp_path):
    target = write_folder_atomic(tmp_path / "out", {"a.txt": lambda p: p.write_text("old")})

    def write(path):  # the user saves a file there while the new folder is written
        (target / "notes.txt").write_text("user data")
        path.write_text("new")

    with pytest.raises(ValueError, match="holds notes.txt"):
        write_folder_atomic(target, {"a.txt": write})
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "notes.txt"]
    assert (target / "a.txt").read_text() == "old" and leftovers(tmp_path) == []


def test_written_files_and_folders_respect_the_umask(ckpt, tmp_path):
    old = os.umask(0o022)
    try:
        saved = save_checkpoint(tmp_path / "ck", BridgeGAN(small_config(32)))
        from bridgegan.engine.export.triton_repo import write_triton_repo

        pytest.importorskip("onnx")
        repo = write_triton_repo(ckpt, tmp_path / "repo", onnx_dir=tmp_path / "onnx")[0]
    finally:
        os.umask(old)
    for root in (saved, repo, tmp_path / "onnx"):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


@pytest.mark.parametrize("mode, linked", [(0o600, False), (0o644, True)])
def test_a_repository_links_a_checkpoint_only_as_readable_as_it_writes(ckpt, tmp_path, mode,
                                                                       linked):
    """The user's checkpoint keeps its mode: a private one (0600) is copied into the
    repository (readable there, 0644), a readable one is hard-linked; the models share
    one copy (the first model's, linked while every folder is still being written)."""
    from bridgegan.serve.repo_python import write_python_repo

    source = Path(shutil.copytree(ckpt, tmp_path / "ck"))
    for f in source.iterdir():
        f.chmod(mode)
    old = os.umask(0o022)
    try:
        folders = write_python_repo(source, tmp_path / "repo")
    finally:
        os.umask(old)
    for f in source.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == mode, f
        for folder in folders:
            placed = folder / "1" / "checkpoint" / f.name
            assert placed.read_bytes() == f.read_bytes()
            assert stat.S_IMODE(placed.stat().st_mode) == 0o644
            assert os.path.samefile(placed, f) == linked
            assert os.path.samefile(placed, folders[0] / "1" / "checkpoint" / f.name)


def test_a_repository_model_folder_holding_other_files_is_refused_before_writing(ckpt,
                                                                                 tmp_path):
    from bridgegan.serve.names import MODELS
    from bridgegan.serve.repo_python import write_python_repo

    notes = tmp_path / "repo" / MODELS[-1] / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("user data")
    with pytest.raises(ValueError, match=rf"{notes.parent} holds notes.txt"):
        write_python_repo(ckpt, tmp_path / "repo")
    assert [p.name for p in (tmp_path / "repo").iterdir()] == [MODELS[-1]]  # none written
    assert notes.read_text() == "user data"


def _random_bytes(n: int, seed: int) -> bytes:
    return torch.randint(0, 256, (n,), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed)).numpy().tobytes()


def test_a_file_write_stopped_by_the_file_size_limit_keeps_the_old_file(tmp_path):
    """write_file_atomic in a process whose file-size limit (RLIMIT_FSIZE) stops its write
    part way through (EFBIG once the first 64 KiB of 1 MiB are in its temporary file): the
    old file is byte for byte what it was and no temporary file is left in the folder."""
    target = tmp_path / "data.bin"
    old = _random_bytes(4096, 1)
    target.write_bytes(old)
    code = textwrap.dedent(f"""
        import errno, os, resource, signal, sys, torch
        from bridgegan.files import write_file_atomic
        real_unlink = os.unlink
        def unlink(path):  # what the failed write had put in its temporary file
            print(os.path.basename(path), os.path.getsize(path))
            real_unlink(path)
        os.unlink = unlink
        new = torch.randint(0, 256, (1 << 20,), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(2)).numpy().tobytes()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            write_file_atomic({str(target)!r}, new)
        except OSError as exc:
            print(errno.errorcode.get(exc.errno))
    """)
    out = python(code, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (temporary, size), error = [line.split() for line in out.stdout.splitlines()]
    assert temporary.startswith(".data.bin.tmp-") and int(size) == 1 << 16, out.stdout
    assert error == ["EFBIG"]
    assert target.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_a_folder_write_stopped_by_the_file_size_limit_names_the_file(tmp_path):
    """A folder write (an export, a model repository) whose file write fails (EFBIG here,
    ENOSPC alike) said only "[Errno 27] File too large": the error names the file in the
    folder it was for, and the earlier folder stays as it was."""
    out = tmp_path / "export"
    write_folder_atomic(out, {"a.onnx": lambda p: p.write_bytes(b"old a")})
    code = textwrap.dedent(f"""
        import resource, signal
        from bridgegan.files import write_folder_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (1 << 16, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            write_folder_atomic({str(out)!r}, {{"a.onnx": lambda p: p.write_bytes(b"new a"),
                                              "b.onnx": lambda p: p.write_bytes(bytes(1 << 20))}})
        except OSError as exc:
            print(exc)
    """)
    got = python(code, timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    assert got.stdout.strip() == f"[Errno 27] cannot write {out / 'b.onnx'}: File too large"
    assert (out / "a.onnx").read_bytes() == b"old a" and sorted(os.listdir(out)) == ["a.onnx"]
    assert leftovers(tmp_path) == []


def test_a_folder_write_names_a_copys_missing_source_too(tmp_path):
    """Naming the file a folder write failed on dropped the name of the file it copies
    from, where that was the one missing."""
    from bridgegan.files import link_or_copy

    source = tmp_path / "plans" / "trunk.plan"
    with pytest.raises(FileNotFoundError) as failed:
        write_folder_atomic(tmp_path / "repo", {"1/model.plan": link_or_copy(source)})
    assert str(failed.value) == (f"[Errno 2] cannot write {tmp_path / 'repo' / '1/model.plan'}: "
                                 f"No such file or directory ({source})")
    assert sorted(os.listdir(tmp_path)) == []


def test_files_written_together_are_all_old_or_all_new(tmp_path, monkeypatch):
    """bench's table, data and plot were written one by one: a full disk at the plot left
    the new table beside the last run's plot. Written together, a failure keeps all three;
    a table of skipped rows only removes the last run's plot (it showed other rows)."""
    from bridgegan.engine.bench_results import RESULT_FILES, write_results

    gen = torch.Generator().manual_seed(11)

    def rows(metric="latency"):
        return [dict(what="translate", resolution=32, variant="torch-float32", batch=b,
                     metric=metric, images_per_s=float(torch.rand(1, generator=gen)) * 100)
                for b in (1, 2, 4)]

    assert [p.name for p in write_results(rows(), {"device": "cpu"}, tmp_path)] \
        == list(RESULT_FILES)
    old = {n: (tmp_path / n).read_bytes() for n in RESULT_FILES}
    real, synced = files.os.fsync, []

    def fsync(fd):  # the third file staged (the plot) finds the disk full
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError, match=rf"cannot write {re.escape(str(tmp_path / 'bench.png'))}: "
                                      r"No space left on device"):
        write_results(rows(), {"device": "cpu"}, tmp_path)
    monkeypatch.setattr(files.os, "fsync", real)
    assert {n: (tmp_path / n).read_bytes() for n in RESULT_FILES} == old
    assert sorted(os.listdir(tmp_path)) == sorted(RESULT_FILES)  # no temporary left
    skipped = rows("skipped")
    assert [p.name for p in write_results(skipped, {}, tmp_path)] == list(RESULT_FILES[:2])
    assert sorted(os.listdir(tmp_path)) == sorted(RESULT_FILES[:2])
    assert (tmp_path / "bench.csv").read_bytes() != old["bench.csv"]


def test_rows_written_into_a_link_go_there_once_with_no_partial_file(tmp_path):
    """parity --json accepts what a write goes into (a link, /dev/stdout): its rows go
    there once, complete, and no NAME.partial is made beside it (/dev/stdout.partial
    would be a file in /dev)."""
    from bridgegan.files import RowsFile

    target, link = tmp_path / "kept" / "rows.json", tmp_path / "rows.json"
    target.parent.mkdir()
    link.symlink_to(target)
    rows = RowsFile(link)
    rows.save([{"case": "a"}])
    assert sorted(os.listdir(tmp_path)) == ["kept", "rows.json"] and not target.exists()
    rows.done([{"case": "a"}, {"case": "b"}])
    assert link.is_symlink() and json.loads(target.read_text()) == [{"case": "a"}, {"case": "b"}]
    assert sorted(os.listdir(tmp_path)) == ["kept", "rows.json"]


def test_a_rows_file_drops_an_earlier_runs_rows_as_a_run_starts(tmp_path):
    """An earlier run's complete rows (and its partial ones) would pass for this run's
    if this one stops before its first row."""
    from bridgegan.files import RowsFile

    path = tmp_path / "rows.json"
    path.write_text('[{"status": "PASS"}]')
    RowsFile.partial_of(path).write_text('[{"status": "PASS"}]')
    RowsFile(path)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0,
                    reason="needs root to give a file to another user")
def test_another_users_leftovers_stay(tmp_path):
    """In a shared folder (/tmp, sticky) another user's leftover of a dead process cannot
    be removed: it stopped the command ("cannot remove ..."); it is theirs, and left."""
    from bridgegan.path_checks import prepare_file_targets

    theirs, mine = (tmp_path / f".grid.png.tmp-{dead_pid()}-{k}" for k in ("ab", "cd"))
    theirs.write_bytes(b"part")
    mine.write_bytes(b"part")
    os.chown(theirs, 65534, 65534)
    prepare_file_targets(tmp_path, ["grid.png"])
    assert os.listdir(tmp_path) == [theirs.name]


def test_a_commands_output_folder_loses_what_killed_writes_left(tmp_path):
    """A killed single-file write (demo's grid, translate's images, bench's tables) leaves
    .NAME.tmp-<pid>-<random> beside NAME, which nothing removed: a command's first look
    at its output folder removes those of its own files whose writer is gone."""
    from bridgegan.path_checks import prepare_file_targets

    dead, alive = dead_pid(), os.getpid()
    names = [f".grid.png.tmp-{dead}-ab", f".grid.png.tmp-{alive}-cd", f".notes.txt.tmp-{dead}-ef"]
    for name in names:
        (tmp_path / name).write_bytes(b"part of a file")
    prepare_file_targets(tmp_path, ["grid.png", "face_edit1.png"])
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])  # another file's or a live one's


@pytest.mark.parametrize("fails", ["fsync", "replace", "interrupt"])
def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch,
                                                                        fails):
    """The new bytes go to .NAME.tmp-<pid>-<random> beside NAME; when the write fails after
    they are there (fsync or the rename raise; a KeyboardInterrupt too), NAME keeps its old
    bytes and the temporary file is removed. The next write succeeds and replaces them."""
    from bridgegan.files import write_file_atomic

    target = tmp_path / "data.bin"
    old, new = _random_bytes(4096, 3), _random_bytes(3 * 4096 + 17, 4)
    target.write_bytes(old)
    (tmp_path / "other.txt").write_text("not this write's")
    seen = []  # (temporary files beside the target, their bytes) when the failure comes
    real_fsync, real_replace = os.fsync, os.replace

    def temporaries():
        return sorted(n for n in os.listdir(tmp_path) if n not in ("data.bin", "other.txt"))

    def fail(*args):
        seen.append((temporaries(), [(tmp_path / n).read_bytes() for n in temporaries()]))
        raise KeyboardInterrupt if fails == "interrupt" else OSError(5, "Input/output error")

    def fsync(fd):
        real_fsync(fd)
        fail()

    if fails == "replace":
        monkeypatch.setattr(files.os, "replace", lambda src, dst: fail())
    else:
        monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt if fails == "interrupt" else OSError) as failed:
        write_file_atomic(target, new)
    if fails != "interrupt":  # the error names the file (a full disk's text names none)
        assert str(failed.value) == f"[Errno 5] cannot write {target}: Input/output error"
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    monkeypatch.setattr(files.os, "replace", real_replace)
    (names, contents), = seen
    assert len(names) == 1 and re.fullmatch(rf"\.data\.bin\.tmp-{os.getpid()}-[0-9a-f]+",
                                            names[0]), names
    assert contents == [new]  # the whole new file was written, to the temporary
    assert target.read_bytes() == old
    assert temporaries() == [] and (tmp_path / "other.txt").read_text() == "not this write's"
    assert write_file_atomic(target, new) == target
    assert target.read_bytes() == new and temporaries() == []
    assert write_file_atomic(str(tmp_path / "fresh.bin"), old) == tmp_path / "fresh.bin"
    assert (tmp_path / "fresh.bin").read_bytes() == old


def test_an_output_file_through_a_dangling_link_is_checked_at_its_target(tmp_path):
    """``eval --json`` named a link to a file in a missing folder: accepted, the whole
    evaluation ran, and the write failed; a link to a new file in an existing folder is
    written through; a loop is refused."""
    import argparse

    from bridgegan.argtypes import output_file

    (tmp_path / "lost.json").symlink_to(tmp_path / "missing" / "eval.json")
    with pytest.raises(argparse.ArgumentTypeError, match=r"lost.json is a link to .*missing"
                                                         r"/eval.json, in a folder that does "
                                                         r"not exist"):
        output_file(str(tmp_path / "lost.json"))
    (tmp_path / "new.json").symlink_to(tmp_path / "eval.json")
    assert output_file(str(tmp_path / "new.json")) == str(tmp_path / "new.json")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(argparse.ArgumentTypeError, match="a link that leads nowhere"):
        output_file(str(tmp_path / "a"))


def test_a_file_write_goes_into_links_pipes_and_descriptors_and_keeps_modes(tmp_path,
                                                                           monkeypatch):
    """``--json`` named a link, a pipe or (as root) /dev/null: the write replaced it by a
    regular file (root's /dev/null among them), and a 0o600 file became 0o644. A link is
    written through (the system's rules for links in shared folders apply), never
    resolved and replaced. Also what the command line takes up front
    (``argtypes.output_file``)."""
    import threading

    from bridgegan.argtypes import output_file
    from bridgegan.files import write_file_atomic

    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    real.chmod(0o600)
    write_file_atomic(real, b"newer")
    assert real.read_bytes() == b"newer" and stat.S_IMODE(real.stat().st_mode) == 0o600
    (tmp_path / "link.json").symlink_to(real)
    assert output_file(str(tmp_path / "link.json")) == str(tmp_path / "link.json")
    write_file_atomic(tmp_path / "link.json", b"new")
    assert (tmp_path / "link.json").is_symlink() and real.read_bytes() == b"new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    assert output_file(str(pipe)) == str(pipe)
    read = []
    reader = threading.Thread(target=lambda: read.append(pipe.read_bytes()), daemon=True)
    reader.start()
    write_file_atomic(pipe, b"through")
    reader.join(60)
    assert read == [b"through"] and stat.S_ISFIFO(pipe.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "pipe", "real.json"]
    # a user's /dev/null: writable, in a folder that is not
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) == pipe)
    assert output_file(str(pipe)) == str(pipe)


def test_dev_stdout_appends_to_a_redirected_log(tmp_path):
    """`... --json /dev/stdout >> log`: /dev/stdout led through /proc/self/fd/1 to the log,
    which was then replaced (its earlier lines and the command's later output lost); it
    is written through the descriptor, after what Python buffered."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier\n")
    code = ("import sys\nfrom bridgegan.files import write_file_atomic\nprint('before')\n"
            "write_file_atomic('/dev/stdout', b'{\"json\": 1}\\n')\nprint('after')\n")
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=120,
                       env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert log.read_bytes() == b'earlier\nbefore\n{"json": 1}\nafter\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt"]


# ----------------------------------------------------------------------------- ONNX export cache

def _translate_with_ort(ckpt: Path, cache: Path) -> str:
    """Child code: an onnxruntime engine on the default cache; prints the output's sum."""
    return textwrap.dedent(f"""
        from bridgegan.engine import Engine
        from conftest import images
        eng = Engine.from_checkpoint({str(ckpt)!r}, backend="onnxruntime")
        print(repr(eng.translate(images(2, 32, 1), {{"Male": 1}}, seed=0).double().sum().item()))
    """)


def test_kill_mid_export_leaves_nothing_that_later_engines_refuse(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {"BRIDGEGAN_CACHE": str(tmp_path), "KILL_AT": ".tmp-"}
    killed = python(KILLER + _translate_with_ort(ckpt, tmp_path), env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    onnx_root = tmp_path / "onnx"
    assert [p.name for p in onnx_root.iterdir() if not p.name.startswith(".")] == []
    assert leftovers(onnx_root)  # the half-written folder, under a temporary name
    first = python(_translate_with_ort(ckpt, tmp_path), {"BRIDGEGAN_CACHE": str(tmp_path)})
    assert first.returncode == 0, first.stderr[-3000:]
    again = python(_translate_with_ort(ckpt, tmp_path), {"BRIDGEGAN_CACHE": str(tmp_path)})
    assert again.returncode == 0 and again.stdout == first.stdout
    assert leftovers(onnx_root) == []


def test_concurrent_first_uses_wait_for_one_another(ckpt, tmp_path):
    pytest.importorskip("onnxruntime")
    env = {**ENV, "BRIDGEGAN_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", _translate_with_ort(ckpt, tmp_path)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [p.communicate() + (p.returncode,) for p in procs]
    assert [rc for _, _, rc in results] == [0, 0, 0], [err[-2000:] for _, err, _ in results]
    assert len({out for out, _, _ in results}) == 1
    folders = [p for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and leftovers(tmp_path / "onnx") == []


def test_graph_files_of_another_export_are_refused(ckpt, tmp_path):
    pytest.importorskip("onnx")
    from bridgegan.engine.export.onnx_export import OnnxFileError, export_model, export_onnx

    mine = export_onnx(ckpt, tmp_path / "mine", graphs=["trunk"], precisions=["fp32"])
    other = export_model(randomize(BridgeGAN(small_config(32)), seed=7), tmp_path / "other",
                         ["trunk"], ["fp32"])
    shutil.copy(other / "trunk.onnx", mine / "trunk.onnx")
    with pytest.raises(OnnxFileError, match=r"trunk.onnx does not match its sha256 in .*"
                                            r"manifest.json.*remove"):
        export_onnx(ckpt, mine, graphs=["trunk"], precisions=["fp32"])


def test_an_export_without_hashes_is_exported_again(ckpt, tmp_path):
    pytest.importorskip("onnx")
    from bridgegan.engine.export.onnx_export import export_onnx

    out = export_onnx(ckpt, tmp_path / "x", graphs=["trunk", "map"], precisions=["fp32"])
    manifest = json.loads((out / "manifest.json").read_text())
    digest = manifest["graphs"]["map"]["sha256"]["fp32"]
    del manifest["graphs"]["trunk"]["sha256"]  # as written before files had hashes
    (out / "manifest.json").write_text(json.dumps(manifest))
    export_onnx(ckpt, out, graphs=["trunk", "map"], precisions=["fp32"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["graphs"]["trunk"]["sha256"]) == {"fp32"}
    assert manifest["graphs"]["map"]["sha256"]["fp32"] == digest


def test_export_onnx_without_the_extra_names_it(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    out = tmp_path / "new" / "export"
    assert main(["export", "onnx", str(ckpt), str(out)]) == 2
    assert "pip install 'bridgegan[onnx]'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- unwritable outputs

@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write, root included (chattr +i where chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            pytest.skip("cannot make a folder read-only for this user")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


UNWRITABLE_COMMANDS = {
    "train": ["train", "--data", "synthetic:8", "--resolution", "16", "--out", "{out}"],
    "translate": ["translate", "--checkpoint", "{ckpt}", "--input", "x.png", "--set", "Male=1",
                  "--out", "{out}"],
    "export": ["export", "onnx", "{ckpt}", "{out}"],  # without onnx it stops at the extra
}


@pytest.mark.parametrize("command, where", [
    *((name, where) for name in UNWRITABLE_COMMANDS for where in ("read-only", "file")),
    ("train", "read-only checkpoints"),  # only training writes a checkpoints folder
])
def test_unwritable_out_is_refused_before_any_work(command, where, ckpt, read_only, tmp_path,
                                                   capsys):
    if command == "export":
        pytest.importorskip("onnx", reason="needs onnx (pip install 'bridgegan[onnx]'): without it "
                            "export onnx stops at the missing extra, before its --out check")
    command = UNWRITABLE_COMMANDS[command]
    out = {"read-only": read_only / "out", "file": tmp_path / "file.txt",
           "read-only checkpoints": read_only.parent / "run"}[where]
    (tmp_path / "file.txt").write_text("a file")
    if where == "read-only checkpoints":  # the run folder is writable, its checkpoints not
        out.mkdir()
        (out / "checkpoints").symlink_to(read_only)
    argv = [a.format(out=out, ckpt=ckpt) for a in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(out) in err and ("not writable" in err or "is a file, not a folder" in err), err
    assert not list(tmp_path.glob("**/samples"))


# ----------------------------------------------------------------------------- training

SIZE = 32
TRAIN_ARGS = ["--data", "synthetic:16", "--resolution", str(SIZE), "--g-width", "8",
              "--e-width", "4", "--e-blocks", "1", "--latent-channels", "8", "--spade-hidden",
              "16", "--mapping-channels", "16", "--noise-dim", "8", "--d-width", "4",
              "--d-downs", "3", "--batch", "8", "--n-d", "1", "--workers", "0",
              "--sample-every", "0", "--log-every", "1", "--ckpt-every", "2", "--steps", "6",
              "--no-progress", "--threads", "1"]


def test_kill_mid_checkpoint_then_resume(tmp_path):
    """A kill while step 4's checkpoint is written: the resumed run (a new process) starts
    from step 2, removes the half-written folder, and metrics.jsonl has each step once."""
    run = ["from bridgegan.cli import main", f"raise SystemExit(main(['train', *{TRAIN_ARGS!r}, "
           f"'--out', {str(tmp_path)!r}, '--resume', 'auto']))"]
    killed = python(KILLER + "\n".join(run), {"KILL_AT": ".step-00000004.tmp-"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert any(n.startswith(".step-00000004.tmp-") for n in leftovers(ckpts))
    steps = [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    resumed = python("\n".join(run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and leftovers(ckpts) == []
    steps = [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_kill_while_pruning_leaves_no_checkpoint_part_that_resume_auto_picks(tmp_path,
                                                                              monkeypatch):
    """A removal stopped after its first file (a kill while a resumed run drops the
    abandoned course above its checkpoint, or prunes an old one) leaves nothing that
    --resume auto takes for a checkpoint: the folder goes aside first."""
    from bridgegan.reference.run_folder import prune_checkpoints

    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 4):
        (ckpts / f"step-{step:08d}").mkdir(parents=True)
        for name in ("config.json", "model.safetensors", STATE_TENSORS, STATE_JSON):
            (ckpts / f"step-{step:08d}" / name).write_text("x")

    def killed(path, *args, **kwargs):  # deletes one file, then the process dies
        (Path(path) / STATE_TENSORS).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, 1, ckpts / "step-00000002")  # step 4 is of a left course
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, 1, ckpts / "step-00000002")  # step 1 is beyond keep
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == [
        "step-00000002"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training checkpoint of 1 step and what it takes to resume it."""
    data = make_dataset("synthetic:16", SIZE)
    cfg = small_config(SIZE, attributes=data.attributes)
    tc = TrainConfig(batch=8, n_d=1, steps=1, workers=0, log_every=0, sample_every=0,
                     ckpt_every=0)
    t = Trainer(cfg, tc, data, out_dir=tmp_path_factory.mktemp("run"), progress=False)
    t.train()
    return latest_checkpoint(t.out_dir), cfg, tc, data


def _damaged(trained, tmp_path, damage):
    src, cfg, tc, data = trained
    ck = Path(shutil.copytree(src, tmp_path / src.name))
    damage(ck)
    return lambda: Trainer(cfg, tc, data, progress=False).load(ck), ck


def _edit_state(fn):
    def damage(ck):
        meta = json.loads((ck / STATE_JSON).read_text())
        (ck / STATE_JSON).write_text(json.dumps(fn(meta)))
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda ck: (ck / STATE_JSON).write_text("{}"), r"unknown format None"),
    (_edit_state(lambda m: {k: v for k, v in m.items() if k != "opt_g"}),
     r"lacks or has damaged entries \['opt_g'\]"),
    (_edit_state(lambda m: {**m, "opt_d": {"param_groups": []}}),
     r"lacks or has damaged entries \['opt_d.scalars', 'opt_d.tensor_keys'\]"),
    (lambda ck: (ck / STATE_JSON).write_text((ck / STATE_JSON).read_text()[:100]),
     r"train_state.json is corrupt \(truncated or not JSON\)"),
])
def test_corrupt_training_state_is_named(trained, tmp_path, damage, message):
    load, ck = _damaged(trained, tmp_path, damage)
    with pytest.raises(CheckpointError, match=message) as exc:
        load()
    assert str(ck / STATE_JSON) in str(exc.value)


def _edit_tensors(fn):
    def damage(ck):
        from safetensors.torch import load_file, save_file

        save_file(fn(load_file(ck / STATE_TENSORS)), ck / STATE_TENSORS)
    return damage


def _first(tensors, prefix):
    return next(k for k in sorted(tensors) if k.startswith(prefix) and tensors[k].dim() > 1)


@pytest.mark.parametrize("damage, message", [
    (_edit_state(lambda m: {**m, "step": [1]}), r"lacks or has damaged entries \['step'\]"),
    (_edit_state(lambda m: {**m, "batches": -5}), r"lacks or has damaged entries \['batches'\]"),
    (_edit_state(lambda m: {**m, "train_config": 5}),
     r"lacks or has damaged entries \['train_config'\]"),
    (_edit_state(lambda m: {**m, "rng": {**m["rng"], "python": 5}}),
     r"train_state.json: its scaler or RNG entries are damaged \(TypeError"),
    (_edit_state(lambda m: {**m, "rng": {**m["rng"], "numpy": {"kind": "x"}}}),
     r"train_state.json: its scaler or RNG entries are damaged \(KeyError"),
    (_edit_state(lambda m: {**m, "opt_g": {**m["opt_g"], "param_groups": [5]}}),
     r"lacks or has damaged entries \['opt_g.param_groups'\]"),
    (_edit_state(lambda m: {**m, "opt_g": {**m["opt_g"], "scalars": [1]}}),
     r"lacks or has damaged entries \['opt_g.scalars'\]"),
    (_edit_state(lambda m: {**m, "opt_d": {**m["opt_d"], "tensor_keys": ["x"]}}),
     r"lacks or has damaged entries \['opt_d.tensor_keys'\]"),
    (_edit_tensors(lambda t: {**t, _first(t, "opt_g."): t[_first(t, "opt_g.")] * math.nan}),
     r"NaN or Inf values in optimiser tensor\(s\) opt_g.state.\d+.exp_avg"),
    (_edit_tensors(lambda t: {**t, "noise_memory": t["noise_memory"].to(torch.int8)}),
     r"noise memory in the checkpoint holds torch.int8 values"),
])
def test_a_hostile_training_state_is_a_checkpoint_error(trained, tmp_path, damage, message):
    """What a downloaded train_state.* may hold: each a CheckpointError naming the
    checkpoint (they were tracebacks, a message without the file, or a run that reported
    divergence two steps later)."""
    load, ck = _damaged(trained, tmp_path, damage)
    with pytest.raises(CheckpointError, match=message) as exc:
        load()
    assert str(ck) in str(exc.value)


def test_a_resume_runs_under_its_own_optimiser_settings(trained, tmp_path):
    """The file's param groups could turn on maximize (gradient ascent) or a weight decay;
    the resumed optimisers keep this run's hyperparameters."""
    def hostile(m):
        for opt in ("opt_g", "opt_d"):
            for g in m[opt]["param_groups"]:
                g.update(maximize=True, weight_decay=1e6, lr=5.0)
        return m

    src, cfg, tc, data = trained
    ck = Path(shutil.copytree(src, tmp_path / src.name))
    _edit_state(hostile)(ck)
    t = Trainer(cfg, tc, data, progress=False)
    t.load(ck)
    for opt in (t.opt_g, t.opt_d):
        for g in opt.param_groups:
            assert not g["maximize"] and g["weight_decay"] == 0 and g["lr"] == tc.lr
    assert t.opt_g.state  # the per-parameter state was taken

def test_optimiser_state_of_the_wrong_shape_fails_at_load(trained, tmp_path):
    from safetensors.torch import load_file, save_file

    def damage(ck):
        tensors = load_file(ck / STATE_TENSORS)
        name = next(k for k in sorted(tensors) if k.startswith("opt_g.") and tensors[k].dim() > 1)
        tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
        save_file(tensors, ck / STATE_TENSORS)

    load, ck = _damaged(trained, tmp_path, damage)
    with pytest.raises(CheckpointError, match=r"train_state.safetensors: optimiser tensor "
                                              r"opt_g.state.\d+.exp_avg\w* has shape"):
        load()


def test_resume_from_the_cli_names_a_truncated_state(trained, tmp_path, capsys):
    _, ck = _damaged(trained, tmp_path,
                     lambda ck: (ck / STATE_JSON).write_text('{"format": "bridgegan-tr'))
    assert main(["train", *TRAIN_ARGS, "--out", str(tmp_path / "run"), "--resume", str(ck)]) == 2
    assert f"{ck / STATE_JSON} is corrupt" in capsys.readouterr().err


# ----------------------------------------------------------------------------- threads

def test_threads_option_sets_torch_threads(tmp_path):
    code = textwrap.dedent(f"""
        import torch
        from bridgegan.cli import main
        main(['bench', '--threads', '3', '--variants', 'torch:float32', '--batches', '1',
              '--resolutions', '64', '--workloads', 'translate', '--reps', '1', '--warmup', '0',
              '--out', {str(tmp_path)!r}])
        print('threads', torch.get_num_threads())
    """)
    proc = python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("threads 3")


def test_default_threads_leave_out_the_busy_cores(monkeypatch):
    from bridgegan import threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert threads.default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert threads.default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert threads.default_threads() == 4


def test_an_export_of_other_exporter_code_is_not_reused(ckpt, tmp_path, monkeypatch):
    """The export key covers the code the graphs are traced from: after an upgrade that
    changes it, the cache folder differs and a given folder is refused, saying why."""
    pytest.importorskip("onnx")
    from bridgegan.engine.export import onnx_export
    from bridgegan.reference import load_checkpoint

    model = load_checkpoint(ckpt)
    rw = onnx_export.Rewrites()
    key = onnx_export.export_key(model, rw, onnx_export.OPSET)
    assert key == onnx_export.export_key(model, rw, onnx_export.OPSET)
    out = onnx_export.export_onnx(ckpt, tmp_path / "x", graphs=["map"], precisions=["fp32"])
    monkeypatch.setattr(onnx_export, "_traced_code", lambda: "0" * 64)  # as after an upgrade
    assert onnx_export.export_key(model, rw, onnx_export.OPSET) != key
    with pytest.raises(CheckpointError, match="other weights, export settings .* or exporter code"):
        onnx_export.export_onnx(ckpt, out, graphs=["map"], precisions=["fp32"])
