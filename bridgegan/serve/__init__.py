"""Serving on Triton Inference Server: ``bridgegan serve`` (the bundled tritonserver on a
python-backend model repository, dynamic batching, behind a checking front), and that
repository for a plain ``tritonserver``. Serving needs the ``serve`` extra (``pip install
'bridgegan[serve]'``); modules import it only when used."""
