"""The training precisions: autocast modes (``--amp``) and parameter dtypes (``--dtype``).

Torch-free, so that the command line offers them without importing torch; TrainConfig
checks its fields against the same tuples.
"""

AMP_MODES = ("none", "bf16", "fp16")  # fp16: CUDA only, with gradient scaling
TRAIN_DTYPES = ("float32", "float64")  # float64: numerical reference runs
