"""Moved: plans run in ``engine.backends.tensorrt``, sidecars are read in
``tensorrt_build``. Only ``triton_repo`` (another helper's file) still imports
``read_sidecar`` from here; delete this module once it imports it from
``tensorrt_build`` (issue 15)."""
from .tensorrt_build import read_sidecar  # noqa: F401
