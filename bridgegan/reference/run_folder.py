"""A run folder (``--out`` of `bridgegan train`): ``checkpoints/step-NNNNNNNN/`` (the
newest ``keep_checkpoints``), ``samples/step-NNNNNNNN.png`` and ``metrics.jsonl``; where a
step's checkpoint goes, which is the latest, pruning, and the course a resumed run leaves
(checkpoints and records past its step). The checkpoints' own format: ``train_state``."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from pathlib import Path

from ..files import check_replaceable, remove_folder, write_file_atomic
from .checkpoint import CHECKPOINT_FILES, STATE_JSON

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"  # the sample grids, step-NNNNNNNN.png
_CKPT_RE = re.compile(r"^step-(\d+)$")


def step_name(step: int) -> str:
    """A step's name in a run folder: its checkpoint's folder, its sample grid's stem."""
    return f"step-{step:08d}"


def numbered_checkpoint(out_dir: str | os.PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` goes in run folder ``out_dir``."""
    return Path(out_dir) / CHECKPOINTS / step_name(step)


def sample_grid(out_dir: str | os.PathLike, step: int) -> Path:
    """Where the sample grid of ``step`` goes in run folder ``out_dir``."""
    return Path(out_dir) / SAMPLES / f"{step_name(step)}.png"


def _numbered(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of the numbered checkpoints under ``out_dir/checkpoints``, by step."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CKPT_RE.match(p.name)))


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder with the highest step under ``out_dir/checkpoints``."""
    found = [p for _, p in _numbered(out_dir) if (p / STATE_JSON).is_file()]
    return found[-1] if found else None


def earlier_run(out_dir: str | os.PathLike) -> list[Path]:
    """What a run left in run folder ``out_dir``: its newest numbered checkpoint and
    ``metrics.jsonl``, those present."""
    metrics = Path(out_dir) / METRICS_FILE
    return [p for _, p in _numbered(out_dir)][-1:] + ([metrics] if metrics.exists() else [])


def prune_checkpoints(out_dir: str | os.PathLike, keep: int, written: Path) -> None:
    """Keep ``written`` (the checkpoint just saved: the run's latest) and the ``keep - 1``
    highest-step numbered checkpoints below it; remove the rest (``keep`` 0 keeps them
    all). Numbered checkpoints above ``written`` always go: they are of a course the run
    left when it resumed from an earlier checkpoint (``Trainer.load`` drops them, and the
    metrics past that step, as it resumes; here for a save without a load), and
    ``--resume auto`` would otherwise pick them up. A ``written`` with
    another name (``Trainer.save(out/"checkpoints"/"best")``) is no step of the course:
    it stays, nothing above anything goes, and ``keep - 1`` numbered ones are kept.
    Each goes as a whole (``files.remove_folder``): a kill mid-removal leaves no part of a
    checkpoint that ``--resume auto`` would pick (a leftover the next run removes)."""
    m = _CKPT_RE.match(written.name)
    step = int(m.group(1)) if m else None
    if step is not None:
        drop_checkpoints_after(out_dir, step)
    numbered = _numbered(out_dir)
    if not keep:
        return
    older = [p for s, p in numbered if (s < step if step is not None else p != written)]
    for p in older[:max(len(older) - (keep - 1), 0)]:
        _remove(p)


def drop_checkpoints_after(out_dir: str | os.PathLike, step: int) -> list[Path]:
    """Remove the numbered checkpoints past ``step``: a run resumed from an earlier one
    left their course (as ``drop_metrics_after`` drops its records), and ``--resume auto``
    would otherwise take it up again after a kill before the run's next checkpoint.
    Returns the folders removed."""
    return [p for s, p in _numbered(out_dir) if s > step and _remove(p)]


def check_checkpoints(out_dir: str | os.PathLike) -> None:
    """Refuse (ValueError), before a run starts, numbered checkpoints under ``out_dir``
    that hold anything no checkpoint holds (a file of the user's) or are no folder: the
    run may replace or remove them (a save, pruning, a resume's dropped course)."""
    for _, folder in _numbered(out_dir):
        check_replaceable(folder, CHECKPOINT_FILES)


def _remove(folder: Path) -> bool:
    """Remove checkpoint ``folder`` as a whole, unless something no checkpoint holds was
    put there since the run began (``check_checkpoints``): then its training state goes
    (no resume picks it) and the rest stays, with a warning (once: the state is gone the
    next time). Returns whether the folder went."""
    try:
        check_replaceable(folder, CHECKPOINT_FILES)
    except (ValueError, OSError) as exc:
        state = folder / STATE_JSON
        if state.is_file():
            with contextlib.suppress(OSError):
                state.unlink()
            warnings.warn(f"kept {folder} (the run removes this checkpoint, its training state "
                          f"removed): {exc}", stacklevel=2)
        return False
    try:
        remove_folder(folder)
    except OSError:
        return False
    return True


def metrics_line(record: dict) -> str:
    """``record`` as one line of strict JSON for ``metrics.jsonl``: a non-finite value (a
    diverged loss) as the string "NaN", "Infinity" or "-Infinity" (``float`` reads them
    back), not the bare tokens Python writes, which jq and JavaScript refuse."""
    def strict(v):
        return json.dumps(v) if isinstance(v, float) and not math.isfinite(v) else v
    return json.dumps({k: strict(v) for k, v in record.items()}, allow_nan=False) + "\n"


def drop_metrics_after(out_dir: str | os.PathLike, step: int) -> None:
    """Rewrite ``metrics.jsonl`` (atomically) without the records past ``step``: a resumed
    run logs those steps again. Lines cut short by a kill go too, and so do the "partial"
    records a run writes where it stops between two --log-every steps (the resumed run's
    next record averages those steps, as an uninterrupted run's does)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step and not record.get("partial"):
            kept.append(line if line.endswith("\n") else line + "\n")
    write_file_atomic(path, "".join(kept).encode())

