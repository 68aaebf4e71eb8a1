"""Checks of the paths a command is given, made before any work so that a bad one fails
at once, not after minutes of work: an output apart from the inputs (``check_apart``), a
writable output folder (``check_writable_folder``), names that fit their file system
once a write works in its temporary name (``check_name_fits``), no folder where a file
goes (``prepare_file_targets``), paths a shell would split (``shell_unsafe``)."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from .files import temp_name, remove_stale


def check_apart(outputs: str | os.PathLike | Iterable[str | os.PathLike], what: str,
                inputs: Iterable[tuple[str, str | os.PathLike | None]],
                holds: bool = True) -> None:
    """Refuse (ValueError), before any work, an output ``what`` (a path, or several: each
    resolved once, so a translation of many inputs checks in linear time) that is one of
    ``inputs`` ((option, path) pairs; a None path: not given), lies inside one (a
    checkpoint folder) or, where ``holds``, holds one (a folder replaced as a whole; one
    written into may hold what it reads): writing it would overwrite, replace or add to
    what the command reads. Paths are compared resolved (links followed)."""
    if isinstance(outputs, (str, os.PathLike)):
        outputs = [outputs]
    outs = {Path(o).resolve(): o for o in outputs}
    ins = {Path(g).resolve(): (option, g) for option, g in inputs if g is not None}
    found = [("is", o, out) for out, o in outs.items() if out in ins]
    found += [("is inside", o, p) for out, o in outs.items() for p in out.parents if p in ins]
    found += [("holds", outs[p], source) for source in ins for p in source.parents
              if p in outs and holds]
    if found:
        relation, output, source = found[0]
        option, given = ins[source]
        raise ValueError(f"{what} {output} {relation} {option} {given}: a command writes "
                         f"nothing over, into or around what it reads; choose another path")


def prepare_file_targets(folder: str | os.PathLike, names: Iterable[str],
                         what: str = "--out") -> None:
    """Before any work: refuse (ValueError) a folder (or a link to one) where a command
    will write the file ``folder / name``, found otherwise only when the file is put in
    place, after the work; then remove what killed writes of these files left in
    ``folder`` (``remove_stale``), which nothing else would."""
    names = list(names)
    for name in names:
        if (Path(folder) / name).is_dir():
            raise ValueError(f"{what} {folder} holds a folder {name} where this command "
                             f"writes a file: move it, or choose another {what}")
        check_name_fits(Path(folder) / name, what)
    remove_stale(folder, names)


_SHELL_SPECIAL = re.compile(r"[\s'\"$`\\!*?\[\]{}()<>|&;#~]")


def shell_unsafe(path: str | os.PathLike) -> str | None:
    """The first character of ``path`` that a shell command line pasting it unquoted would
    split at or expand (a space, a quote, $...), or None: tools that build such command
    lines (Triton's python backend starting its model processes, inductor's C++ builds)
    break on those paths."""
    m = _SHELL_SPECIAL.search(os.fspath(path))
    return m.group() if m else None


def check_name_fits(path: str | os.PathLike, what: str = "") -> None:
    """Refuse (ValueError), before any work, a file or folder name too long for its file
    system once a write works in its temporary name (``temp_name``, a few bytes longer):
    it would fail only as the result is put in place, after the work."""
    path = Path(path)
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255  # every common file system's
    longest = len(os.fsencode(temp_name(path, "tmp").name))
    if longest > limit:
        extra = longest - len(os.fsencode(path.name))
        raise ValueError(f"{what} {path}".lstrip() + f": the name is too long for its "
                         f"file system ({limit} bytes a name, and a write goes through a "
                         f"temporary name {extra} bytes longer): give a name of at most "
                         f"{limit - extra} bytes")


class NotWritableError(ValueError):
    """A folder this process may not write in (``check_writable_folder``)."""


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
        raise NotWritableError(f"{what} {path} is not writable{where}: give a folder you "
                               f"can write to")
    if replaced:
        check_name_fits(path, what)
    return path

