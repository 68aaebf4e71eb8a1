"""`bridgegan cache`: the export cache's entries, and removing those not used lately.

The exported backends (onnxruntime, tensorrt) export a model on first use into
``<cache>/onnx/<key>/`` (``onnx_export.default_onnx_dir``): one folder per distinct
checkpoint, export settings and traced source code (``onnx_export.export_key``; the
bridgegan version is not in the key), its ONNX graphs and the TensorRT plans built beside
them. Nothing removes them on its own (a folder may be in use by a running process), so a
machine evaluating many checkpoints gathers them; this command lists them with their size
and last use (the manifest's mtime, touched by each use) and removes those unused for a
number of days.

A removal takes the folder's export lock (an export or a TensorRT plan build filling it
finishes first), moves it aside as a whole, then deletes it: no process sees a part of an
export, and a kill leaves a leftover that the next write or listing removes
(``files.remove_stale``). A process
already running from an export keeps the graphs it loaded; one that is about to load a
removed folder's file fails with FileNotFoundError, so prune between runs.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ...files import remove_folder, remove_stale
from ...locks import locked, locked_paths, remove_lock
from ...reference.checkpoint import CheckpointError
from .onnx_export import MANIFEST, cache_folder, read_manifest

DAY_S = 86400


@dataclass(frozen=True)
class Entry:
    """One export folder of the cache; ``about`` describes its model and contents."""

    path: Path
    size: int
    last_used: float  # seconds since the epoch
    about: str


def _describe(path: Path) -> str:
    try:
        manifest = read_manifest(path)
    except CheckpointError as exc:
        return f"unreadable ({exc})"
    if manifest is None:
        return f"no {MANIFEST}"
    config = manifest.get("config", {})
    onnx = sum(len(g.get("files", {})) for g in manifest.get("graphs", {}).values())
    plans = len(list(path.glob("*.plan")))
    return (f"bridgegan {manifest.get('bridgegan_version', '?')}, "
            f"{config.get('image_size', '?')} px, {onnx} ONNX files, {plans} TensorRT plans")


def _last_used(path: Path) -> float:
    stamp = path / MANIFEST
    return (stamp if stamp.is_file() else path).stat().st_mtime


def entries(root: Path | None = None) -> list[Entry]:
    """The export folders under ``root`` (default: the cache's), least recently used first;
    leftovers of killed writes are removed first."""
    root = root or cache_folder()
    if not root.is_dir():
        return []
    with contextlib.suppress(OSError):  # a read-only cache is still listed
        remove_stale(root)
    found = []
    for path in sorted(p for p in root.iterdir()  # links are not exports: never followed
                       if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        try:
            found.append(Entry(path, _size(path), _last_used(path), _describe(path)))
        except FileNotFoundError:  # moved meanwhile: another prune, an export's swap
            continue
    return sorted(found, key=lambda e: e.last_used)


def _size(path: Path) -> int:
    """Bytes in the files under ``path``; a file removed while it is walked counts 0."""
    total = 0
    for f in path.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            if f.is_file():
                total += f.stat().st_size
    return total


def prune(days: float, root: Path | None = None) -> list[Entry]:
    """Remove the export folders under ``root`` not used for ``days`` days (0: all), each
    with its lock file, and the lock files of folders gone (removed by hand, or by a
    version that left them: one empty file per export ever made); returns the folders."""
    root = root or cache_folder()
    cutoff = time.time() - days * DAY_S
    removed = []
    for entry in entries(root):
        if entry.last_used > cutoff:
            continue
        with locked(entry.path):  # then look again: removed or used meanwhile?
            if entry.path.is_dir() and _last_used(entry.path) <= cutoff:
                remove_folder(entry.path)
                remove_lock(entry.path)
                removed.append(entry)
    for folder in locked_paths(root):  # lock files of folders gone
        if not folder.exists():
            with locked(folder):  # an export filling it finishes first (and keeps it)
                if not folder.exists():
                    remove_lock(folder)
    return removed


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def run(args: argparse.Namespace) -> int:
    """List the cache's exports, or remove those unused for ``--prune`` days."""
    root = cache_folder()
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():  # else listed as empty, the setting never named
        raise ValueError(f"the export cache {root} cannot be a folder: {existing} is a file; "
                         f"set BRIDGEGAN_CACHE to a folder")
    if args.prune is not None:
        if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
            raise ValueError(f"--prune: the export cache {root} is not writable by this user: "
                             f"nothing removed (prune it as its owner, or set BRIDGEGAN_CACHE "
                             f"to a cache of your own)")
        removed = prune(args.prune, root)
        print(f"removed {len(removed)} export(s) not used for {args.prune} day(s) from {root}, "
              f"{_mb(sum(e.size for e in removed))}")
    found = entries(root)
    print(f"{root}: {len(found)} export(s), {_mb(sum(e.size for e in found))}")
    for e in found:
        used = datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
        print(f"  {e.path.name}  {_mb(e.size):>9}  last used {used}  {e.about}")
    return 0
