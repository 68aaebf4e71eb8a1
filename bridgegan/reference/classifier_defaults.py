"""The attribute classifier's kernel sizes and the defaults of its architecture and
training (``classifier``); torch-free, so that the command line offers them without
importing torch."""

KERNELS = (3, 4)  # of its four stride-2 convolutions
WIDTH, KERNEL = 32, 4  # base width and kernel size
STEPS, BATCH, LR = 1500, 64, 1e-3  # Adam steps, images per step, learning rate
