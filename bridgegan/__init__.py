"""BridgeGAN: label- and reference-based multi-attribute face editing through SPADE.

Subpackages: ``reference`` (the PyTorch model, the oracle), ``kernels`` (Triton SPADE
kernels, each with a plain torch path, impl="torch"), ``engine`` (optimised inference
and export), ``serve`` (`bridgegan serve`, on Triton Inference Server).
"""

__version__ = "0.1.0"
