"""Fused kernels for the BridgeGAN generator, each with a plain torch path beside it.

Public ops (one entry point each, ``impl="auto" | "triton" | "torch"``):

* :func:`spade_modulate` -- ``act(instance_norm(x) * (1 + gamma) + beta)``
* :func:`instance_norm_act` -- ``act(instance_norm(x) * weight + bias)``

``python -m bridgegan.kernels.parity`` checks them against a float64 reference.
Importing this package never imports triton; the kernels are loaded on first use.
"""

from .norm_act import (
    ACTS,
    IMPLS,
    KernelFallbackWarning,
    LaunchPlan,
    instance_norm_act,
    plan_launch,
    spade_modulate,
    triton_available,
    triton_interpreted,
)

__all__ = [
    "ACTS",
    "IMPLS",
    "KernelFallbackWarning",
    "LaunchPlan",
    "instance_norm_act",
    "plan_launch",
    "spade_modulate",
    "triton_available",
    "triton_interpreted",
]
