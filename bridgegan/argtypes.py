"""argparse value types shared by the commands."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1, refused with the value given otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value
