"""Dataclass records read back from JSON (configs, loss weights, training options):
one check for all of them. Torch-free."""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, TypeVar

T = TypeVar("T")


def listed(names: list[str], limit: int = 8) -> str:
    """The first ``limit`` names, and how many more (a message stays short whatever a file
    held)."""
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def unique_keys(pairs: list[tuple[str, Any]], error: type[Exception] = ValueError) -> dict:
    """``json.loads`` object hook: the object, or ``error`` naming a key that repeats
    (Python's json would keep the last, tritonserver the first)."""
    obj = dict(pairs)
    if len(obj) < len(pairs):
        repeated = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise error(f"the JSON repeats the key {repeated!r} in an object; give each key once")
    return obj


def from_fields(cls: type[T], data: Any, what: str) -> T:
    """``cls(**data)`` for the dataclass ``cls``; a ValueError naming ``what`` when ``data``
    is not a dict or has keys that are not fields (listing the known ones)."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object (dict) of fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {listed(unknown)}; known fields: "
                         f"{', '.join(sorted(known))}")
    return cls(**data)
