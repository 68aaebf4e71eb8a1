"""argparse value types shared by the commands: each refuses a bad value with a message
naming it and what is accepted (argparse then exits with status 2); and the commands'
parser class (``Parser``)."""
from __future__ import annotations

import argparse
import os
import re
import textwrap
from pathlib import Path

from .path_checks import check_name_fits


def _int_at_least(text: str, low: int) -> int:
    """``text`` as an integer >= ``low``, refused with the value given otherwise."""
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def int_between(low: int, high: int):
    """The type of an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = _int_at_least(text, low)
        except argparse.ArgumentTypeError:
            value = None
        if value is None or value > high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got "
                                             f"{text!r}")
        return value
    return parse


SEEDS = 2 ** 64  # seeds are integers in [0, SEEDS): torch.Generator's 64 bits
SEED = int_between(0, SEEDS - 1)  # a --seed


def split_device(text: str) -> tuple[str, int | None]:
    """("cpu" or "cuda", GPU index or None) of "cpu", "cuda" or "cuda:N"; a ValueError
    naming what is accepted otherwise."""
    # torch.device's own grammar: no empty index ("cuda:"), no leading zero ("cuda:01")
    match = re.fullmatch(r"(cpu|cuda)(?::(0|[1-9][0-9]*))?", text, re.ASCII)
    if match is None or (match[1] == "cpu" and match[2] is not None):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {text!r}")
    return match[1], None if match[2] is None else int(match[2])


def device_spec(text: str) -> str:
    """A device the commands run on (``split_device``), kept as written."""
    try:
        split_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_device(parser, default: str | None = "cpu", note: str = "") -> None:
    """The ``--device`` option of a command (``device_spec``); ``default`` None: CUDA where
    torch sees it (the command resolves it); ``note``: what the command adds."""
    shown = "cuda when available, else cpu" if default is None else "%(default)s"
    parser.add_argument("--device", type=device_spec, default=default,
                        help=f"cpu, cuda or cuda:N{note} (default: {shown})")


def positive_int_list(text: str) -> list[int]:
    """A comma list of integers >= 1 (``1,8,64``)."""
    try:
        return [_int_at_least(item, 1) for item in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a comma list of integers >= 1, got "
                                         f"{text!r}") from None


def _finite_float(text: str, low: float, inclusive: bool) -> float:
    """``text`` as a finite number above ``low`` (or equal to it, where ``inclusive``),
    refused with the value given otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (low <= value if inclusive else low < value) or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>=' if inclusive else '>'} "
                                         f"{low:g}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _finite_float(text, 0, inclusive=False)


def positive_float_up_to(high: float):
    """A type: a finite number > 0 and <= ``high``."""
    def parse(text: str) -> float:
        value = positive_float(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be a number > 0 and <= {high:g}, got {text!r}")
        return value
    return parse


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _finite_float(text, 0, inclusive=True)


def output_file(text: str) -> str:
    """A file to write: not a folder, in an existing folder this process can write to, or
    what a write goes into (``files.write_file_atomic``): a link, device or pipe this
    process can write to (/dev/null, /dev/stdout); checked before the command does its
    work."""
    path = Path(text)
    if path.exists() and not path.is_dir() and (path.is_symlink() or not path.is_file()):
        if os.access(path, os.W_OK):
            return text
    if path.is_symlink() and not path.exists():  # a write goes through it, to its target
        try:
            path = path.resolve()
        except (OSError, RuntimeError):  # a loop
            raise argparse.ArgumentTypeError(f"{text} is a link that leads nowhere (a loop): "
                                             f"give a file path") from None
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a link to {path}, in a folder that "
                                             f"does not exist: create it, or give another "
                                             f"path")
    folder = path.parent
    if path.is_dir():
        problem = "is a folder"
    elif not folder.is_dir():
        problem = f"is in {folder}, which is not an existing folder"
    elif not os.access(folder, os.W_OK | os.X_OK) or (path.exists()
                                                       and not os.access(path, os.W_OK)):
        problem = "cannot be written"
    else:
        try:
            check_name_fits(path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text
    raise argparse.ArgumentTypeError(f"{text} {problem}: give a file path in an existing "
                                     f"folder you can write to")


def absolute_path(text: str) -> str:
    """``text`` made absolute against the working folder (links kept as given): for a
    path that a run records and that a later run, started from anywhere, reads again
    ("" stays "": none)."""
    return os.path.abspath(text) if text else text


def input_file(text: str) -> str:
    """An existing file to read (not a folder)."""
    if not Path(text).is_file():
        problem = "is a folder" if Path(text).is_dir() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {problem}: give an existing file")
    return text


class _Formatter(argparse.HelpFormatter):
    """Help wrapped at spaces only: a variant's form or a path is not cut inside."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_long_words=False,
                             break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """The commands' parsers (their subcommands' too: argparse makes them of this class):
    help wrapped at spaces only; an empty value given to any argument refused (``--out ""``
    wrote into the current folder, ``--variants ""`` ran the default table, ``--checkpoint
    ""`` loaded the shipped model: an unset shell variable taken for a choice)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(namespace, action.dest, None)
            if value != action.default and "" in (value if isinstance(value, list) else [value]):
                name = "/".join(action.option_strings) or action.metavar or action.dest
                self.error(f"argument {name}: empty; give a value")
        return namespace, extras
