"""Dataclass records read back from JSON (configs, loss weights, training options):
one check for all of them. Torch-free."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_fields(cls: type[T], data: Any, what: str) -> T:
    """``cls(**data)`` for the dataclass ``cls``; a ValueError naming ``what`` when ``data``
    is not a dict or has keys that are not fields (listing the known ones)."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object (dict) of fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; known fields: {sorted(known)}")
    return cls(**data)
