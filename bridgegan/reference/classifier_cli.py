"""`bridgegan train-classifier`: the attribute classifier (``classifier``) trained on a
dataset and saved; stopped by Ctrl-C or SIGTERM with its state, which ``--resume``
continues."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from ..devices import check_device
from ..exits import signal_status, stop_on_signals
from ..files import check_replaceable, remove_stale
from ..path_checks import check_writable_folder
from .classifier import (SAVED_FILES, STATE_FILES, STATE_FOLDER, STATE_JSON, ClassifierStopped,
                         train_classifier)
from .data import dataset_options, make_dataset
from .data.folder import unsplit_note


def run(args) -> int:
    """`bridgegan train-classifier`: Ctrl-C or SIGTERM stops it after the step under way
    with its state in OUT/state (kept every SAVE_EVERY steps too), which ``--resume``
    continues."""
    check_device(args.device)
    check_writable_folder(args.out, replaced=True)
    remove_stale(args.out, [STATE_FOLDER])  # a state write a SIGKILL cut short
    check_replaceable(args.out, SAVED_FILES + STATE_FILES)  # before training, not after
    state = Path(args.out) / STATE_FOLDER
    kept = (state / STATE_JSON).is_file()
    if args.resume and not kept:
        raise ValueError(f"--resume: {args.out} holds no interrupted run's state ({state}); "
                         f"leave out --resume to start a run")
    if not args.resume and kept:
        raise ValueError(f"--out {args.out} holds an interrupted run's state ({state}): pass "
                         f"--resume to continue it, or remove {state} to start afresh")
    kw = dataset_options(args.data, seed=args.seed)
    train = make_dataset(args.data, args.resolution, args.attributes, split="train", **kw)
    val = make_dataset(args.data, args.resolution, args.attributes, split="val", **kw)
    if note := unsplit_note(args.data, val, "val"):
        print(note)
    stop: list[int] = []
    try:
        with stop_on_signals(stop.append):
            model, report = train_classifier(
                train, val, steps=args.steps, batch=args.batch, lr=args.lr, width=args.width,
                kernel=args.kernel, device=args.device, seed=args.seed, workers=args.workers,
                state=state, resume=args.resume,
                settings={"data": args.data},
                stop=lambda: bool(stop))
    except ClassifierStopped as exc:
        print(f"stopped by {signal.Signals(stop[0]).name} at step {exc.step} with its state in "
              f"{state}; continue with --resume", file=sys.stderr)
        return signal_status(stop[0])
    model.save(args.out, report)
    worst, accuracy = min(report["val_accuracy"].items(), key=lambda kv: kv[1])
    print(f"validation accuracy {report['val_accuracy_mean']:.1%} (worst: {worst} "
          f"{accuracy:.1%}); wrote {args.out}")
    return 0
