"""Locks between processes on one machine: an exclusive lock beside a path
(``locked``: processes doing the same first-time work wait for one another), whether one
is held (``held``), and the paths that have one (``locked_paths``). The kernel drops a
lock when its holder dies, so a kill never leaves one held."""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of ``path`` that ``locked`` takes: ``.NAME.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def locked(path: str | os.PathLike, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (``lock_file``) for the duration:
    processes doing the same first-time work wait for one another. The kernel drops the
    lock when its holder dies, so a kill never leaves it held. A lock file removed
    (``remove_lock``) while a process waited for it is not the lock any more: the waiter
    then locks the file now there, made anew if need be. ``remove``: the lock file goes
    as the lock is released (beside a folder the user named: no ``.NAME.lock`` left)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_file(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_file(fd, lock):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed while we waited: lock the one there now
    try:
        yield
    finally:
        if remove:
            remove_lock(path)  # still held: a waiter then locks a new file
        os.close(fd)  # releases the lock


def held(lock: str | os.PathLike) -> bool:
    """Whether a process holds a lock (``flock``) on the existing file ``lock``: it is
    tried and, when free, dropped at once. OSError when the file cannot be opened."""
    fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _is_file(fd: int, path: Path) -> bool:
    """Whether open file ``fd`` is the file at ``path`` now (not one removed since)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def locked_paths(folder: str | os.PathLike) -> list[Path]:
    """The paths in ``folder`` that have a lock file (``lock_file``'s inverse), whether
    or not they exist."""
    folder = Path(folder)
    names = [p.name[1:-len(".lock")] for p in folder.glob(".*.lock")] if folder.is_dir() else []
    return [folder / n for n in names if n and not n.startswith(".")]


def remove_lock(path: str | os.PathLike) -> None:
    """Remove ``path``'s lock file, from inside ``locked(path)`` (once ``path`` is gone: a
    removed folder's lock file would otherwise stay for good, one per folder ever locked;
    or as the lock is released: ``locked``'s ``remove``). Those waiting for it then lock a
    new one; the caller must do nothing more that needs the lock."""
    with contextlib.suppress(FileNotFoundError):
        lock_file(path).unlink()

