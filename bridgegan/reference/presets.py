"""The resolutions of the configuration presets (``BridgeGANConfig.preset``), torch-free so
that the command line offers them without importing the model."""

PRESET_RESOLUTIONS = (64, 128, 256)
PAPER_RESOLUTION = 128  # the paper's, every command's default
