"""Progress of long work, on stderr. On a terminal a tqdm bar; where stderr is a file or
a pipe (a log, ``nohup``), each of a bar's redraws stays in it, so the bar redraws at most
every LOG_REDRAW_S there (training prints a plain line per --log-every instead: ``lines``)."""
from __future__ import annotations

import sys

LOG_REDRAW_S = 30.0  # a bar's redraws where stderr is no terminal (tqdm's default: 0.1 s)


def lines() -> bool:
    """Whether stderr is no terminal, where progress is better written as lines."""
    return not sys.stderr.isatty()


def bar(iterable=None, *, show: bool = True, **kw):
    """A tqdm bar on stderr (``show`` False: none), redrawn at most every LOG_REDRAW_S
    where stderr is no terminal."""
    from tqdm import tqdm

    if show and lines():  # miniters 1: tqdm's monitor thread would redraw every 10 s
        kw.update(mininterval=LOG_REDRAW_S, miniters=1)
    return tqdm(iterable, disable=not show, **kw)
