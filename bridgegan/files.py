"""Files that survive a kill: atomic file and folder writes, a lock between processes,
cleanup of what killed writes leave, and an up-front check that an output folder is
writable. The one place for these, used by checkpoints, exports and model repositories.

Modes: files and folders get modes 0o666 / 0o777 trimmed by the umask (typically 0o644 /
0o755), so a server running as another user can read what was written
(``tempfile.mkstemp`` / ``mkdtemp`` would give 0o600 / 0o700, and so do some writers).

Names: a write of ``NAME`` works in ``.NAME.tmp-<pid>-<random>`` beside it (and moves an
old folder aside into ``.NAME.old-<pid>-<random>``); ``remove_stale`` removes such leftovers
of processes that were killed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

_STARTED = time.time()  # leftovers older than this process's start are stale
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[^/]+$")
_MOVED = "ckpt"  # the moved-aside folder inside .NAME.old-* (the name it always had)


def _temp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _umask() -> int:
    """This process's umask (Linux: read, not set, so no other thread sees it change)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (then
    ``os.replace``): readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = _temp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_folder_atomic(path: str | os.PathLike,
                        writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """Create folder ``path`` holding one file per ``writers`` entry (relative name ->
    fn(file_path); sub-folders are created).

    The files are written and fsynced into a temporary sibling folder first; the old
    folder, if any, is swapped out only once every file is complete on disk. Leftovers of
    killed writes of ``path`` beside it are removed first (``remove_stale``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    tmp = _temp_name(path, "tmp")
    os.mkdir(tmp, 0o777)
    try:
        mode = 0o666 & ~_umask()
        for name, write in writers.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            write(tmp / name)
            os.chmod(tmp / name, mode)  # some writers (safetensors) create files 0o600
            _fsync(tmp / name)
        old = None
        if path.exists():
            old = _temp_name(path, "old")
            os.mkdir(old, 0o700)
            os.replace(path, old / _MOVED)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:  # put the old folder back
                os.replace(old / _MOVED, path)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def remove_stale(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the leftovers of killed atomic writes in ``folder`` (of ``name`` only, when
    given): temporary files and folders older than this process. A folder moved aside
    whose replacement never arrived is moved back first. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        try:
            if not m or name not in (None, m.group("name")) or p.lstat().st_mtime >= _STARTED:
                continue
            target = folder / m.group("name")
            if m.group("kind") == "old" and (p / _MOVED).is_dir() and not target.exists():
                os.replace(p / _MOVED, target)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another process cleaned it up
            continue
    return removed


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``.NAME.lock`` beside it) for the
    duration: processes doing the same first-time work wait for one another. The kernel
    drops the lock when its holder dies, so a kill never leaves it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_writable_folder(path: str | os.PathLike, what: str = "--out",
                          replaced: bool = False) -> Path:
    """Refuse, before any work starts, an output folder that cannot be written: ``path``
    names an existing non-folder, or it (with ``replaced``, a folder written as a whole by
    ``write_folder_atomic``: the folder above it) is not writable, or, where it does not
    exist yet, the nearest existing folder above it is not. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder: give a folder (new or "
                         f"existing) to write into")
    existing = path.parent if replaced else path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (it is written in {existing})"
        raise ValueError(f"{what} {path} is not writable{where}: give a folder you can "
                         f"write to")
    return path
