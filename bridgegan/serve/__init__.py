"""Serving on Triton Inference Server: ``bridgegan serve`` (PyTriton, dynamic batching)
and a python-backend model repository for a plain ``tritonserver``. Needs the ``serve``
extra (``pip install 'bridgegan[serve]'``); modules import PyTriton only when used."""
