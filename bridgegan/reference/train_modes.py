"""The training modes: autocast (``--amp``), parameter dtypes (``--dtype``), learning-rate
schedules (``--lr-schedule``) and weight initialisations (``--init``).

Torch-free, so that the command line offers them without importing torch; TrainConfig
checks its fields against the same tuples.
"""

AMP_MODES = ("none", "bf16", "fp16")  # fp16: CUDA only, with gradient scaling
TRAIN_DTYPES = ("float32", "float64")  # float64: numerical reference runs
LR_SCHEDULES = ("constant", "cosine")  # cosine: from lr at step 0 to 0 at the last step
# torch: PyTorch's layer defaults; xavier: the authors' code (TensorFlow slim's defaults:
# Glorot-uniform weights, zero biases)
INIT_SCHEMES = ("torch", "xavier")
