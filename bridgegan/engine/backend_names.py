"""The engine's ``--backend`` option; torch-free, so that the command line lists the
backends (from the registry, ``backends``) without importing the engine."""
from __future__ import annotations

import argparse

from .backends import AUTO, BACKENDS


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend NAME`` (the engine backend) to a command's options. The default is
    torch, not auto: on a CPU auto picks onnxruntime, which exports the graphs into the
    cache folder on first use (files a default should not write) and made `bridgegan demo`
    slower, 6.3 s with a cold cache and 4.8 s warm against 4.4 s (one thread, 32 px)."""
    parser.add_argument("--backend", default="torch",
                        help=f"engine backend: {AUTO} (the fastest measured that runs here), "
                             f"{', '.join(BACKENDS)} (default: %(default)s)")
