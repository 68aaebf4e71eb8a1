"""Fused kernels for the BridgeGAN generator, each with a plain torch path beside it.

Public ops (one entry point each, ``impl="auto" | "triton" | "torch"``):

* :func:`spade_modulate` --
  ``act(instance_norm(x) * (1 + gamma + bias[c]) + beta + bias[C + c])``
* :func:`instance_norm_act` -- ``act(instance_norm(x) * weight + bias)``

``python -m bridgegan.kernels.parity`` checks them against a float64 reference.
Importing this package never imports triton; the kernels are loaded on first use.
"""

from .norm_act import *  # noqa: F401,F403  (its __all__: the public ops and names)
from .norm_act import __all__  # noqa: F401
