"""`bridgegan cache`: real exports in a temporary cache, listed, used and pruned."""
from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time

import pytest
import torch

from bridgegan import locks
from bridgegan.cli import main
from bridgegan.engine.export import cache, onnx_export
from bridgegan.engine.export.onnx_export import MANIFEST, cache_folder, export_model
from bridgegan.locks import lock_file, locked, remove_lock
from bridgegan.reference.checkpoint import CheckpointError
from bridgegan.reference.model import BridgeGAN

from conftest import dead_pid, randomize, small_config

pytest.importorskip("onnx", reason="the export cache is filled by ONNX exports: onnx is missing")


def _export(seed: int):
    """One small model's `map` graph into the cache (the backends' first use)."""
    torch.manual_seed(seed)
    return export_model(randomize(BridgeGAN(small_config(16)), seed).eval(),
                        graphs=("map",), precisions=("fp32",))


@pytest.fixture
def two_exports(tmp_path, monkeypatch):
    """Two exports, the first last used ten days ago."""
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path))
    old, new = _export(1), _export(2)
    ten_days_ago = time.time() - 10 * cache.DAY_S
    os.utime(old / MANIFEST, (ten_days_ago, ten_days_ago))
    return old, new


def test_listing_names_each_export_with_its_size_and_last_use(two_exports, capsys):
    old, new = two_exports
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert f"{cache_folder()}: 2 export(s)" in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in lines] == [old.name, new.name]  # least recent first
    assert all("16 px, 1 ONNX files, 0 TensorRT plans" in line for line in lines)
    size = sum(f.stat().st_size for f in old.iterdir())
    assert cache.entries()[0].size == size and f"{size / 2**20:.1f} MB" in lines[0]


def test_prune_removes_only_exports_unused_for_the_days_given(two_exports, capsys):
    old, new = two_exports
    new_files = {f.name: f.read_bytes() for f in new.iterdir()}
    assert main(["cache", "--prune", "7"]) == 0
    assert "removed 1 export(s)" in capsys.readouterr().out
    assert not old.exists() and {f.name: f.read_bytes() for f in new.iterdir()} == new_files
    assert [p.name for p in cache_folder().iterdir() if not p.name.startswith(".")] == [new.name]
    assert main(["cache", "--prune", "0"]) == 0 and not new.exists()


def test_a_use_counts_as_recent(two_exports):
    """A cache hit (the exported backends' every engine) touches the manifest, so an
    export in use is not pruned."""
    old, _ = two_exports
    assert _export(1) == old
    assert cache.prune(7) == [] and old.is_dir()


def test_prune_leaves_no_lock_files_behind(two_exports):
    """An export's lock file goes with its folder, and so do those of folders already
    gone (an earlier version left one empty file per export ever made, for good)."""
    old, new = two_exports
    root = cache_folder()
    orphan = root / "0123456789abcdef"  # removed by hand, or by a version that kept locks
    lock_file(orphan).touch()
    assert {p.name for p in root.glob(".*.lock")} == {
        f".{old.name}.lock", f".{new.name}.lock", f".{orphan.name}.lock"}
    assert [e.path for e in cache.prune(7)] == [old]
    assert [p.name for p in root.glob(".*.lock")] == [f".{new.name}.lock"]  # in use: kept
    assert [e.path for e in cache.prune(0)] == [new]
    assert list(root.iterdir()) == []
    assert _export(2) == new and new.is_dir()  # exported again, with a lock file anew


def test_a_lock_file_removed_while_waited_for_is_locked_anew(tmp_path, monkeypatch):
    """A process waiting for a lock whose file its holder removes (``remove_lock``) takes
    the file there now, so that it excludes those who come later: locking the removed
    file would lock nothing anyone else can see."""
    target = tmp_path / "export"
    waiting, inside, release = threading.Event(), threading.Event(), threading.Event()
    flock = fcntl.flock

    def flock_opened(fd, op):  # the waiter has the lock file open: it waits on that one
        if threading.current_thread() is not threading.main_thread():
            waiting.set()
        return flock(fd, op)

    monkeypatch.setattr(locks.fcntl, "flock", flock_opened)

    def waiter():
        with locked(target):
            inside.set()
            release.wait(60)

    with locked(target):
        worker = threading.Thread(target=waiter)
        worker.start()
        waiting.wait(60)
        remove_lock(target)
    try:
        assert inside.wait(60)
        fd = os.open(lock_file(target), os.O_RDWR)  # the waiter's lock is this file's
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        release.set()
        worker.join(60)


def test_prune_waits_for_an_export_filling_the_folder(two_exports):
    """A removal takes the folder's export lock: an export in progress finishes first,
    and an export done meanwhile keeps its folder (its use is then recent)."""
    old, _ = two_exports
    result = []
    with locked(old):
        worker = threading.Thread(target=lambda: result.append(cache.prune(7)))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and old.is_dir()  # waits on the lock
        os.utime(old / MANIFEST)  # what the export holding the lock does
    worker.join(60)
    assert result == [[]] and old.is_dir()


def test_leftovers_of_a_killed_removal_are_cleaned_up(two_exports):
    old, _ = two_exports
    aside = old.parent / f".{old.name}.tmp-999999999-dead"
    os.replace(old, aside)  # a removal killed after its rename (pid 999999999: gone)
    assert [e.path for e in cache.entries()] == [two_exports[1]] and not aside.exists()


def test_listing_skips_a_folder_removed_meanwhile_and_lists_a_read_only_cache(two_exports,
                                                                               monkeypatch):
    """Another prune (or an export's swap) may move a folder between the listing's look at
    the cache and its walk of that folder; a read-only cache cannot lose its leftovers but
    is still listed."""
    old, new = two_exports
    last_used = cache._last_used

    def removed_first(path):
        if path == old:
            os.replace(old, old.parent / f".{old.name}.tmp-999999999-gone")
        return last_used(path)

    monkeypatch.setattr(cache, "_last_used", removed_first)

    def read_only(*_):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache, "remove_stale", read_only)
    assert [e.path for e in cache.entries()] == [new]


def test_a_link_in_the_cache_is_neither_listed_nor_followed(two_exports, tmp_path):
    """A link to a folder elsewhere is no export of the cache: pruning everything leaves
    it and what it points to alone."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the cache's")
    (cache_folder() / "linked").symlink_to(elsewhere)
    assert [e.path.name for e in cache.entries()] == [p.name for p in two_exports]
    assert len(cache.prune(0)) == 2
    assert (elsewhere / "keep.txt").read_text() == "not the cache's"
    assert (cache_folder() / "linked").is_symlink()


def test_the_cache_folder_expands_a_home_tilde(monkeypatch, tmp_path):
    """$BRIDGEGAN_CACHE given as ~/... (a service's environment file, not a shell) is the
    home folder's, not a folder named "~" in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("BRIDGEGAN_CACHE", "~/models-cache")
    assert cache_folder() == tmp_path / "models-cache" / "onnx"


def test_a_relative_export_folder_is_made_absolute(monkeypatch, tmp_path):
    """A relative $BRIDGEGAN_CACHE or export folder is the working directory's when the
    export is made: the path returned (which an engine keeps) does not move with it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGEGAN_CACHE", "models-cache")
    cached = _export_precisions(("fp32",))
    torch.manual_seed(1)
    model = randomize(BridgeGAN(small_config(16)), 1).eval()
    given = export_model(model, "exports", ["map"], ["fp32"])
    monkeypatch.chdir("/")
    assert cached.is_absolute() and cached.parent == (tmp_path / "models-cache" / "onnx").resolve()
    assert given == (tmp_path / "exports").resolve() and (given / "map.onnx").is_file()


# ----------------------------------------------------------------------------- damaged caches

def _export_precisions(precisions, seed: int = 1):
    torch.manual_seed(seed)
    return export_model(randomize(BridgeGAN(small_config(16)), seed).eval(),
                        graphs=("map",), precisions=precisions)


def test_a_swap_killed_midway_is_undone_before_another_precision_is_added(tmp_path, monkeypatch):
    """A process adding the fp16 graphs was killed between moving the fp32 folder aside and
    moving the new one in: the next export puts the fp32 folder back and adds to it (it
    refused the folder put back, "holds map.onnx, which is not a file this write
    produces")."""
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path))
    folder = _export_precisions(("fp32",))
    fp32 = (folder / "map.onnx").read_bytes()
    dead = dead_pid()
    aside = folder.parent / f".{folder.name}.old-{dead}-0a1b2c3d"
    aside.mkdir()
    os.replace(folder, aside / "ckpt")  # what files._swap does first
    (folder.parent / f".{folder.name}.tmp-{dead}-4e5f6a7b").mkdir()  # the new folder, unplaced
    assert _export_precisions(("fp16",)) == folder  # an fp16 engine's first use
    assert (folder / "map.onnx").read_bytes() == fp32 and (folder / "map_fp16.onnx").is_file()
    assert [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []


def test_leftovers_of_a_killed_plan_build_do_not_block_adding_graphs(tmp_path, monkeypatch):
    """A TensorRT plan build writes beside the graphs (write_file_atomic); killed, it leaves
    .NAME.tmp-PID-* inside the export folder, which the next replacement of the folder
    refused for good ("holds .map_fp16.plan.tmp-..., which is not a file this write
    produces"): an onnxruntime fp16 engine of that model could never be built."""
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path))
    folder = _export_precisions(("fp32",))
    dead = dead_pid()
    for name in ("map_fp16_nvidia-h100-sm90.plan", "timing_nvidia-h100-sm90.cache"):
        (folder / f".{name}.tmp-{dead}-0a1b2c3d").write_bytes(b"half written")
    assert _export_precisions(("fp16",)) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "map.onnx",
                                                        "map_fp16.onnx"]


def _damage(manifest: dict, how: str) -> None:
    entry = manifest["graphs"]["map"]
    if how in ("key", "config", "graphs", "opset"):
        del manifest[how]
    elif how == "inputs null":
        entry["inputs"] = None
    elif how == "graphs list":
        manifest["graphs"] = list(manifest["graphs"])
    elif how == "graph null":
        manifest["graphs"]["map"] = None
    elif how == "files list":
        entry["files"] = list(entry["files"].values())
    elif how == "config null":
        manifest["config"] = None
    elif how == "config invalid":
        manifest["config"]["image_size"] = "large"
    elif how == "file outside":
        entry["files"]["fp32"] = "../../elsewhere/map.onnx"
    elif how == "name injected":  # would be written into a config.pbtxt as it is
        entry["inputs"][0]["name"] = 'noise"\n}\n]\nbackend: "python"\ninput [\n{\nname: "x'
    elif how == "dtype unknown":
        entry["inputs"][0]["dtype"] = "float128"
    elif how == "dtype list":  # unhashable: a TypeError from `in TRITON_TYPES`
        entry["inputs"][0]["dtype"] = ["float32"]
    elif how == "dim injected":
        entry["inputs"][0]["shape"][-1] = "3 ] } ] #"


@pytest.mark.parametrize("how", ["key", "config", "graphs", "opset", "inputs null",
                                 "graphs list", "graph null", "files list", "config null",
                                 "config invalid", "file outside", "name injected",
                                 "dtype unknown", "dtype list", "dim injected"])
def test_a_malformed_manifest_is_named_and_still_listed_and_pruned(tmp_path, monkeypatch, how):
    """A manifest of the right format with a field missing or of the wrong type: the export
    (an engine's first use) says the manifest is corrupt, naming it (it raised KeyError,
    AttributeError or the config's ValueError), and `bridgegan cache` lists it as
    unreadable and prunes it (one such folder made the listing, and so every prune, fail
    with AttributeError)."""
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path))
    folder = _export_precisions(("fp32",))
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    _damage(manifest, how)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is corrupt"):
        _export_precisions(("fp32",))
    entry, = cache.entries()
    assert entry.path == folder
    if how != "config invalid":  # its fields' values are the model's check, not the listing's
        assert entry.about.startswith(f"unreadable ({path} is corrupt")
    assert main(["cache"]) == 0
    assert [e.path for e in cache.prune(0)] == [folder] and not folder.exists()


def test_a_cache_root_that_is_a_file_is_refused_before_exporting(tmp_path, monkeypatch):
    """$BRIDGEGAN_CACHE naming a file: a ValueError naming the cache and the file, before
    any graph is traced (it was a bare NotADirectoryError from making the lock file)."""
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path / "file"))

    def traced(*_):
        raise AssertionError("exported before the cache folder was checked")

    monkeypatch.setattr(onnx_export, "export_graph", traced)
    with pytest.raises(ValueError, match=r"export cache \(\$BRIDGEGAN_CACHE\) folder .* cannot "
                                         rf"be created: {re.escape(str(tmp_path / 'file'))} is a "
                                         r"file, not a folder"):
        _export_precisions(("fp32",))


def test_the_cache_command_names_a_cache_root_that_is_a_file(tmp_path, monkeypatch, capsys):
    """`bridgegan cache` (and --prune) listed "0 export(s)" under a $BRIDGEGAN_CACHE naming a
    file, never saying the setting was wrong."""
    from bridgegan.cli import main

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path / "file"))
    for extra in ([], ["--prune", "0"]):
        assert main(["cache", *extra]) == 2
        assert (f"the export cache {tmp_path / 'file' / 'onnx'} cannot be a folder: "
                f"{tmp_path / 'file'} is a file; set BRIDGEGAN_CACHE to a folder") \
            in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "not a folder"


def test_a_read_only_cache_is_not_pruned_and_says_why(two_exports, monkeypatch, capsys):
    """--prune in a cache this user may not write failed on a lock file with a bare
    "[Errno 13] Permission denied"; now named before anything is tried."""
    access = os.access
    monkeypatch.setattr(cache.os, "access", lambda p, mode: p != cache_folder() and
                        access(p, mode))
    assert main(["cache", "--prune", "0"]) == 2
    assert (f"--prune: the export cache {cache_folder()} is not writable by this user: nothing "
            f"removed") in capsys.readouterr().err
    assert all(p.is_dir() for p in two_exports)


def test_a_file_where_a_cache_entry_goes_is_named_as_the_caches(tmp_path, monkeypatch):
    """A file at the cache folder of a model's key: told to remove it or change the cache
    (it was told "give a folder", which the user never named)."""
    from bridgegan.engine import Rewrites

    monkeypatch.setenv("BRIDGEGAN_CACHE", str(tmp_path))
    torch.manual_seed(3)
    model = randomize(BridgeGAN(small_config(16)), 3).eval()
    entry = onnx_export.default_onnx_dir(onnx_export.export_key(model, Rewrites(),
                                                                onnx_export.OPSET))
    entry.parent.mkdir(parents=True)
    entry.write_text("in the way")
    with pytest.raises(ValueError, match=rf"the export cache's entry {re.escape(str(entry))} "
                                         r"is a file, not a folder: remove it \(the cache "
                                         r"holds folders only\) or set BRIDGEGAN_CACHE"):
        export_model(model, graphs=("map",), precisions=("fp32",))
    assert entry.read_text() == "in the way"
