"""Fused kernels for the BridgeGAN generator, each with a plain torch path beside it.

Public ops (one entry point each, ``impl="auto" | "triton" | "torch"``):

* :func:`spade_modulate` --
  ``act(instance_norm(x) * (1 + gamma + bias[c]) + beta + bias[C + c])``
* :func:`instance_norm_act` -- ``act(instance_norm(x) * weight + bias)``
* :func:`rgb_tail` -- ``tanh(conv1x1(relu(h + up(shortcut))) + bias)``, G's last pass
* :func:`conv2d_relu` -- ``relu(conv2d(x, weight) + bias)`` as one cuDNN / oneDNN call
  (``impl="auto" | "torch"``; the convolution stays the library's, a Triton epilogue
  carries bias and ReLU only where cuDNN cannot: its transposed convolution)

``python -m bridgegan.kernels.parity`` checks the first three against a float64 reference;
the engine's parity (``bridgegan parity``) checks all of them inside the generator.
Importing this package never imports triton; the kernels are loaded on first use.
"""

from . import conv_act, norm_act, tail
from .conv_act import *  # noqa: F401,F403  (each module's __all__: its public names)
from .norm_act import *  # noqa: F401,F403
from .tail import *  # noqa: F401,F403

__all__ = [*norm_act.__all__, *tail.__all__, *conv_act.__all__]
