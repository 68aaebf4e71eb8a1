"""CelebA's split modes (see ``celeba``); torch-free, for the command line."""

SPLIT_MODES = ("index", "official")  # the official code's first rows / the partition file
# index mode: the official code's training and validation rows (the rest are test rows)
INDEX_TRAIN, INDEX_VAL = 182_000, 637
