"""The noise memory's modes (see ``noise_memory``); torch-free, for the command line."""

MODES = ("off", "official", "descent")
