"""The engine's ``--backend`` option; torch-free, so that the command line lists the
backends (from the registry, ``backends``) without importing the engine."""
from __future__ import annotations

import argparse

from .backends import AUTO, BACKENDS


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend NAME`` (the engine backend) to a command's options."""
    parser.add_argument("--backend", default="torch",
                        help=f"engine backend: {AUTO} (the fastest measured that runs here), "
                             f"{', '.join(BACKENDS)} (default: %(default)s)")
