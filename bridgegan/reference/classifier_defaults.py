"""The attribute classifier's kernel sizes and the defaults of its architecture and
training (``classifier``); torch-free, so that the command line offers them without
importing torch."""
from .config import MAX_CHANNELS

KERNELS = (3, 4)  # of its four stride-2 convolutions
WIDTH, KERNEL = 32, 4  # base width and kernel size
# its largest base width: the last convolution has 8x, the model's MAX_CHANNELS at most
MAX_WIDTH = MAX_CHANNELS // 8
STEPS, BATCH, LR = 1500, 64, 1e-3  # Adam steps, images per step, learning rate
# steps between the kept states of a run (about 80 s at 64 px, batch 64 on this workplace's
# 2-core CPU), which `train-classifier --resume` continues
SAVE_EVERY = 500
