"""The engine's backend names and the ``--backend`` option; torch-free, so that the
command line lists the backends without importing the engine (``backends`` builds them)."""
from __future__ import annotations

import argparse

BACKENDS = ("reference", "torch", "triton", "compile", "onnxruntime", "tensorrt")


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend NAME`` (the engine backend) to a command's options."""
    parser.add_argument("--backend", default="torch",
                        help=f"engine backend: {', '.join(BACKENDS)} (default: %(default)s)")
