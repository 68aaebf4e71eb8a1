"""The fused ops of this package, one ``Kernel`` row each: what the op computes, the op
module that holds it beside its plain torch path, the Triton module it launches, the
``impl`` values it takes and what checks it against float64. A new kernel joins with a row
here; tests/test_layout.py, the parity table's test and the GPU script's dry run say what
else it still lacks (its parity rows and benchmark are written by hand). The dispatch
(``dispatch.triton_module``, ``check_impl``) and the package's docstring read the rows.

Torch-free, and imports nothing of this package.
"""
from __future__ import annotations

from dataclasses import dataclass

IMPLS = ("auto", "triton", "torch")
OP_PARITY = "kernels.parity"  # the op table of `bridgegan parity --ops` (kernels/parity.py)


@dataclass(frozen=True)
class Kernel:
    """One fused op, ``bridgegan.kernels.<name>``."""

    name: str  # the public function, defined in ``module``
    module: str  # the op module of this package: the function and its plain torch path
    triton: str  # its Triton code, the module ``_triton_<triton>`` (ops may share one)
    computes: str  # what it returns, as a formula (its module's docstring says the rest)
    impls: tuple[str, ...] = IMPLS  # the ``impl=`` values it takes ("auto" first)
    parity: str = OP_PARITY  # what checks it against float64: OP_PARITY or a test file
    timed: bool = True  # timed alone by benchmarks/bench_kernels.py (else in the engine's rows)


KERNELS = {k.name: k for k in (
    Kernel("spade_modulate", "norm_act", "norm",
           "act(instance_norm(x) * (1 + gamma + bias[c]) + beta + bias[C + c])"),
    Kernel("instance_norm_act", "norm_act", "norm", "act(instance_norm(x) * weight + bias)",
           timed=False),
    Kernel("rgb_tail", "tail", "tail", "tanh(conv1x1(relu(h + up(shortcut))) + bias)"),
    Kernel("conv2d_relu", "conv_act", "conv", "relu(conv2d(x, weight) + bias)",
           impls=("auto", "torch"), parity="tests/test_conv_act.py", timed=False),
)}
