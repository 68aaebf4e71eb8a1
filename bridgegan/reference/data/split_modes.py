"""CelebA's split modes (see ``celeba``); torch-free, for the command line."""

SPLIT_MODES = ("index", "official")  # the official code's first 182,000 / the partition file
