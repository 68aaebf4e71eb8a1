"""Fused kernels for the BridgeGAN generator, each with a plain torch path beside it.

Public ops, one entry point each (``impl=`` as listed: "auto" the fused path where it can
run, else the torch path), one row each in :data:`registry.KERNELS` (where each lives,
its Triton module, what checks it):

{ops}

``python -m bridgegan.kernels.parity`` checks the ops of its table against a float64
reference; the engine's parity (``bridgegan parity``) checks all of them inside the
generator. Importing this package never imports triton; the kernels are loaded on first use.
"""

from . import conv_act, norm_act, tail
from .conv_act import *  # noqa: F401,F403  (each module's __all__: its public names)
from .norm_act import *  # noqa: F401,F403
from .registry import KERNELS
from .tail import *  # noqa: F401,F403

if __doc__:  # None under python -OO
    __doc__ = __doc__.format(ops="\n".join(
        f"* :func:`{k.name}` -- ``{k.computes}``, ``impl={' | '.join(map(repr, k.impls))}``"
        for k in KERNELS.values()))
__all__ = [*norm_act.__all__, *tail.__all__, *conv_act.__all__]
