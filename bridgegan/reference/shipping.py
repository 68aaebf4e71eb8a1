"""The shipped model folder (``checkpoint.SHIPPED``, what ``bridgegan demo`` loads): how a
trained checkpoint becomes one (``ship``, which benchmarks/train_default.py calls)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import classifier
from .checkpoint import EVAL_FILE, SHIPPED, TRAINING_FILE, load_checkpoint, save_checkpoint

# what benchmarks/train_default.py adds to a shipped folder after ``ship``: its model card
# and the judge it was evaluated with (a classifier folder)
SHIPPED_EXTRAS = ("MODEL_CARD.md", *(f"judge/{f}" for f in classifier.SAVED_FILES))


def ship(checkpoint: str | Path, report: dict, training: dict, dest: str | Path = SHIPPED) -> Path:
    """Write ``checkpoint`` as a shipped model folder: fp16 weights, config.json, its eval
    numbers (eval.json) and how it was trained (training.json: the exact commands). The
    config's ``edit_strength`` becomes the strength ``report`` was measured at, so the
    shipped model edits by default as its numbers say."""
    if "strength" not in report:
        raise ValueError("the eval report names no 'strength' (the edit strength it was measured "
                         "at): pass the JSON that `bridgegan eval --json` wrote")
    model = load_checkpoint(checkpoint)
    model.config = model.config.replace(edit_strength=report["strength"])
    extra = {
        EVAL_FILE: lambda p: p.write_text(json.dumps(report, indent=2) + "\n"),
        TRAINING_FILE: lambda p: p.write_text(json.dumps(training, indent=2) + "\n"),
    }
    return save_checkpoint(dest, model, dtype=torch.float16, extra=extra,
                           replaces=SHIPPED_EXTRAS)
