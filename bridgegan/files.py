"""Files that survive a kill: atomic file and folder writes (files that belong together
too, and a check's rows as they come: ``RowsFile``), cleanup of what killed writes leave,
whole-folder removal, and the check that a folder may be replaced. The one place for
these, used by checkpoints, exports, model repositories and the commands' outputs (locks
between processes: ``locks``; checks of output paths before any work: ``path_checks``).

Durability: a write returns once its files, the folders holding their names and the
rename that put it in place are fsynced, so what a write returned survives a power loss
too (a checkpoint the trainer pruned older ones after is on disk).

Replacing: a folder write replaces an existing folder only when every file in it is one
the write produces or declares it may replace (an earlier write of the same kind), or
the folder is empty; anything else there (a file, a link, a folder holding other files)
is refused with a ValueError naming it, before anything is written and again just
before the swap, so no write deletes what it did not make.

Modes: files and folders get modes 0o666 / 0o777 trimmed by the umask (typically 0o644 /
0o755), so a server running as another user can read what was written
(``tempfile.mkstemp`` / ``mkdtemp`` would give 0o600 / 0o700, and so do some writers). A
file placed as a hard link is never chmodded (that would change the other name's mode
too): ``link_or_copy`` links only a source already that readable, and copies otherwise.

Digests: ``sha256_hex`` names what a manifest, a plan sidecar or a training run records
of a file it depends on (so a changed file is noticed).

Names: a write of ``NAME`` works in ``.NAME.tmp-<pid>-<random>`` beside it, and puts it in
place of an old folder by exchanging the two (Linux's renameat2; the old folder is then
removed from the temporary name) or, where the system cannot, by moving the old folder
aside into ``.NAME.old-<pid>-<random>`` first; ``remove_stale`` removes such leftovers
once the process ``<pid>`` has died (processes writing one folder must share a machine, or
at least its process ids), never while it runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^/]+$")
_MOVED = "ckpt"  # the moved-aside folder inside .NAME.old-* (the name it always had)


def temp_name(path: Path, kind: str) -> Path:
    """The temporary name a write of ``path`` works in ("tmp") or moves an old folder to
    ("old"), beside it (see Names above)."""
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


def _file_mode() -> int:
    """The mode written files get: 0o666 trimmed by the umask."""
    return 0o666 & ~_umask()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: Path) -> None:
    """fsync a folder's entries (a rename or a new name in it is on disk only once its
    folder is, ext4 and xfs included); file systems that cannot (some FUSE and network
    mounts refuse with EINVAL) are let be: the write itself is done."""
    try:
        _fsync(path)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
            raise


def sha256_hex(data: bytes) -> str:
    """The sha256 of ``data`` in hex."""
    return hashlib.sha256(data).hexdigest()


class RowsFile:
    """A check's rows as JSON in ``path``, which only ever holds one complete run's rows:
    whatever reads it (a CI job checking that every row passed) never takes a part of a
    run, nor an earlier run's rows, for this run's. An earlier run's ``path`` is removed as
    the run starts; the rows so far go to ``PATH.partial`` after each row (``save``), so
    that a run stopped part-way (a device call's limit, Ctrl-C) keeps what it checked,
    named as a part (an earlier run's partial file goes as the run starts too); ``done``
    writes ``path`` and removes the partial file. A path written into rather than replaced
    (/dev/stdout, a pipe, a link) gets the rows once, at the end; the others are written
    atomically (``write_file_atomic``; what killed writes of both left is removed as the
    run starts). Without ``path`` nothing is written."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.partial = None
        if self.path is not None and not _written_into(self.path):
            self.partial = self.partial_of(self.path)
            self.path.unlink(missing_ok=True)
            self.partial.unlink(missing_ok=True)
            remove_stale(self.path.parent, [self.path.name, self.partial.name])

    @staticmethod
    def partial_of(path: str | os.PathLike) -> Path:
        """Where a run's rows so far go, beside ``path``."""
        return Path(path).with_name(Path(path).name + ".partial")

    def save(self, rows: list) -> None:
        if self.partial is not None:
            self._write(self.partial, rows)

    def done(self, rows: list) -> None:
        if self.path is not None:
            self._write(self.path, rows)
        if self.partial is not None:
            self.partial.unlink(missing_ok=True)

    @staticmethod
    def _write(path: Path, rows: list) -> None:
        write_file_atomic(path, json.dumps(rows, indent=1).encode())


JSON_LIMIT = 1 << 20  # the bytes a configuration file (JSON) that the project reads may hold


def read_small_text(path: str | os.PathLike, limit: int = JSON_LIMIT) -> str:
    """The UTF-8 text of file ``path``, a configuration a folder from elsewhere may hold:
    a ValueError (for the caller to name the file) when it is larger than ``limit``
    bytes, found reading no more than that (a 240 MB config.json took 3.6 GB to parse)."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit:,} bytes, more than such a file of this project "
                         f"holds (accepted: at most {limit:,} bytes)")
    return data.decode("utf-8")


_DESCRIPTOR = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")  # a descriptor's own path
_STANDARD = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def _written_into(path: Path) -> bool:
    """Whether a write goes into ``path`` rather than replacing it (``write_file_atomic``):
    a descriptor's path, a link, a device or a pipe."""
    return _descriptor(path) is not None or path.is_symlink() or (
        path.exists() and not path.is_file() and not path.is_dir())


def _descriptor(path: Path) -> int | None:
    """The file descriptor that ``path`` names (/dev/stdout, /dev/fd/N, /proc/self/fd/N):
    None for any other path."""
    text = os.path.abspath(path)
    m = _DESCRIPTOR.match(text)
    return int(m.group(1)) if m else _STANDARD.get(text)


def write_file_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder (then
    ``os.replace``): readers see the old file or the new one, never a part; an existing
    file keeps its permissions. What is not a plain file is written into, never replaced:
    a descriptor's path (/dev/stdout: the descriptor itself, so a redirected log is
    appended to, not truncated), a device or pipe (/dev/null), a link (opened through:
    the system's rules for links in shared folders apply, and the link stays). An OSError
    names ``path`` (a full disk's "No space left on device" names no file)."""
    return write_files_atomic({path: data})[0]


def write_files_atomic(contents: Mapping[str | os.PathLike, bytes | None]) -> list[Path]:
    """Files that belong together (a table, its data and its plot; a plan and its
    sidecar), each written as ``write_file_atomic`` writes one, and none put in place
    before every one is complete: a failure while writing (a full disk) leaves them all as
    they were, not some new and some old. A None removes a file the set no longer holds,
    once the others are in place. Returns the paths. (A file written into rather than
    replaced, a link say, is written as the set is staged; and only a failure among the
    renames could leave the earlier ones new.)"""
    paths = [Path(p) for p in contents]
    staged: list[tuple[Path, Path]] = []  # (temporary, path)
    try:
        for path, data in zip(paths, contents.values()):
            tmp = None if data is None else _named(path, _stage, path, data)
            if tmp is not None:
                staged.append((tmp, path))
        for tmp, path in staged:
            _named(path, os.replace, tmp, path)
        removed = set()  # the folders of removed files
        for path, data in zip(paths, contents.values()):
            if data is None:
                _named(path, lambda p: p.unlink(missing_ok=True), path)
                if path.parent.is_dir():
                    removed.add(path.parent)
    except BaseException:
        for tmp, _ in staged:  # those put in place are gone from their temporary names
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for folder in {path.parent for _, path in staged} | removed:
        _fsync_folder(folder)  # the renames and removals themselves on disk
    return paths


def _named(path: Path, fn: Callable, *args):
    """``fn(*args)``, an OSError of it raised naming ``path``, and the file it names where
    that is neither ``path`` nor a temporary one (a copy's missing source)."""
    try:
        return fn(*args)
    except OSError as exc:
        about = exc.filename
        other = isinstance(about, str) and Path(about) != path and not any(
            _LEFTOVER.match(part) for part in Path(about).parts)
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}"
                                 + (f" ({about})" if other else "")) from None


def _stage(path: Path, data: bytes) -> Path | None:
    """``data`` in a temporary file beside ``path``, complete on disk (None: written into
    ``path`` itself, which is no plain file; see ``write_file_atomic``)."""
    fd = _descriptor(path)
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):  # what Python buffered goes first
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return None
    if _written_into(path):
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError as exc:  # a pipe or a device cannot be synced: written
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.EROFS):
                    raise
        return None
    mode = path.stat().st_mode & 0o777 if path.is_file() else None
    tmp = temp_name(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.chmod(tmp, mode)
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def link_or_copy(source: str | os.PathLike) -> Callable[[Path], None]:
    """A folder writer placing ``source``: a hard link (no second copy of big weights)
    where ``source`` already grants group and others what written files get, else a copy
    with written files' mode (a server running as another user reads it), so placing it
    never changes the mode of ``source``."""
    source = Path(source)

    def write(path: Path) -> None:
        wanted = _file_mode() & 0o077
        if os.stat(source).st_mode & wanted == wanted:
            with contextlib.suppress(OSError):  # another file system: copy
                os.link(source, path)
                return
        shutil.copyfile(source, path)
    return write


def check_replaceable(path: str | os.PathLike, names: Iterable[str]) -> Path:
    """Refuse (ValueError) to replace ``path`` by a folder of the files ``names``
    (relative paths) unless it does not exist or is a folder whose every file (a link
    counts as one) is among ``names``: a write never deletes what it did not make; nor a
    folder this process could not empty (write-protected: the swap would succeed and the
    old files stay behind under a hidden name). The error names the path, one file in the
    way and what to do."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        kind = "a symbolic link" if path.is_symlink() else "a file"
        raise ValueError(f"{path} is {kind}, not a folder this program wrote: writing there "
                         f"would replace it; choose another path or remove it")
    if not path.exists():
        return path
    files = {Path(n) for n in names}
    for root, dirs, entries in os.walk(path, onerror=_raise):
        if not os.access(root, os.W_OK | os.X_OK):
            raise ValueError(f"{path} cannot be replaced: {root} is write-protected, so its "
                             f"files could not be removed; make it writable (chmod -R u+w "
                             f"{path}) or choose another path")
        dirs.sort()
        links = [d for d in dirs if Path(root, d).is_symlink()]
        for entry in sorted(entries + links):
            rel = Path(root, entry).relative_to(path)
            if rel not in files:
                raise ValueError(
                    f"{path} holds {rel}, which is not a file this write produces: a folder "
                    f"is replaced only when it holds nothing but files of an earlier write "
                    f"of the same kind ({', '.join(sorted(map(str, files)))}); choose another "
                    f"path, or move or remove {path / rel}")
    return path


def _raise(error: OSError) -> None:
    """os.walk's onerror: a folder that cannot be listed is not known to be replaceable."""
    raise error


def write_folder_atomic(path: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]],
                        replaces: Iterable[str] = ()) -> Path:
    """Create folder ``path`` holding one file per ``writers`` entry (relative name ->
    fn(file_path); sub-folders are created).

    The files are written and fsynced into a temporary sibling folder first; the old
    folder, if any, is swapped out only once every file is complete on disk. An existing
    ``path`` must pass ``check_replaceable`` for the written names and ``replaces`` (names
    an earlier write of this kind may hold that this one does not write), checked before
    writing and again before the swap. Leftovers of killed writes of ``path`` beside it
    are removed first (``remove_stale``).
    """
    return write_folders_atomic({path: (writers, replaces)})[0]


def write_folders_atomic(folders: Mapping[str | os.PathLike,
                                          tuple[Mapping[str, Callable[[Path], None]],
                                                Iterable[str]]]) -> list[Path]:
    """Folders that belong together (a model repository's models), each path -> (writers,
    replaces) written as ``write_folder_atomic`` writes one, in order, and every one
    written and fsynced before the first is swapped in: a failure while writing (a full
    disk) leaves them all as they were, not some new and some old. (Only a failure among
    the swaps, renames, could leave the earlier ones new.) Returns the paths."""
    staged: list[tuple[Path, Path, list[str]]] = []
    try:
        for path, (writers, replaces) in folders.items():
            path = Path(path)
            names = [*writers, *replaces]
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(path.parent, [path.name])
            check_replaceable(path, names)
            tmp = temp_name(path, "tmp")
            os.mkdir(tmp, 0o777)
            staged.append((path, tmp, names))
            _fill(tmp, writers, path)
        for path, tmp, names in staged:
            check_replaceable(path, names)  # something may have been put there meanwhile
            _swap(tmp, path)
            _fsync_folder(path.parent)  # the swap itself on disk
    except BaseException:
        for _, tmp, _ in staged:  # those swapped in are gone from their temporary names
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [path for path, _, _ in staged]


def _fill(tmp: Path, writers: Mapping[str, Callable[[Path], None]], path: Path) -> None:
    """Write every file of ``writers`` into folder ``tmp`` and fsync them and their
    folders; an OSError names the file by its place in ``path``, the folder ``tmp``
    becomes (a full disk's "No space left on device" names no file)."""
    for name, write in writers.items():
        _named(path / name, _write_into, tmp / name, write)
    folders = {tmp, *(p for n in writers for p in (tmp / n).parents if tmp in p.parents)}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        _fsync_folder(folder)  # every name written, the deepest folders first


def _write_into(file: Path, write: Callable[[Path], None]) -> None:
    """``write(file)``, the file then given written files' mode and fsynced."""
    file.parent.mkdir(parents=True, exist_ok=True)
    write(file)
    if os.stat(file).st_nlink == 1:  # a link shares its mode with its source
        os.chmod(file, _file_mode())  # some writers (safetensors) make 0o600
    _fsync(file)


@functools.cache
def _renameat2():
    """The C library's renameat2 (glibc's from 2.28), None where it has none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}  # the kernel or file system


def _exchange(a: Path, b: Path) -> bool:
    """Swap paths ``a`` and ``b`` in one step (Linux's renameat2 RENAME_EXCHANGE): no
    instant without ``b``. False where the C library, kernel or file system lacks it."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap(tmp: Path, path: Path) -> None:
    """Put folder ``tmp`` in place of ``path``: exchanged in one step where the system can
    (a reader loading ``path``'s files meanwhile finds them, the old ones or the new), the
    old folder then removed from ``tmp``'s name; else the old folder (if any) moved aside
    first and removed after (put back if the new one cannot go in)."""
    if path.exists() and _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # a kill here leaves it to remove_stale
        return
    old = None
    if path.exists():
        old = temp_name(path, "old")
        os.mkdir(old, 0o700)
        os.replace(path, old / _MOVED)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old / _MOVED, path)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_folder(path: str | os.PathLike) -> None:
    """Remove folder ``path`` as a whole: renamed aside first (no reader finds a part of
    it), then deleted; a kill mid-way leaves a leftover ``remove_stale`` deletes."""
    path = Path(path)
    aside = temp_name(path, "tmp")
    os.replace(path, aside)
    shutil.rmtree(aside)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts: PermissionError)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's; no pid a process can have
        return True
    return True


def remove_stale(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the leftovers of killed atomic writes in ``folder`` (of ``names`` only, when
    given): temporary files and folders whose writing process (the pid in their name) is
    gone; those of running processes, this one included, are in use and kept, and so are
    another user's (theirs to remove, in a shared folder: temporary names never collide).
    A folder moved aside whose replacement never arrived is moved back first. Returns what
    was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names, removed = None if names is None else set(names), []
    for p in folder.iterdir():
        m = _LEFTOVER.match(p.name)
        if not m or (names is not None and m.group("name") not in names) \
                or _alive(int(m.group("pid"))):
            continue
        try:
            if p.lstat().st_uid != os.getuid():
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
        except OSError as exc:
            raise OSError(exc.errno, f"cannot remove {p}, what an earlier write left: "
                                     f"{exc.strerror}; remove it (make it writable first)"
                          ) from None
    return removed
