"""BridgeGANConfig: every size and name of the model, with JSON round-trip and presets."""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .attributes import DEFAULT_ATTRIBUTES, resolve_attributes
from .presets import PAPER_RESOLUTION, PRESET_RESOLUTIONS
from .records import from_fields, unique_keys

# Upper bounds, far above the paper's sizes (128 px, at most 256 channels, 3 blocks): a
# mistyped config is refused before anything is allocated (g_width 1e6 asks for terabytes).
MAX_IMAGE_SIZE = 1024
MAX_CHANNELS = 512  # every layer's channels, derived widths (g_width * 2**g_downs) included
MAX_DOWNS = MAX_IMAGE_SIZE.bit_length() - 1  # log2(MAX_IMAGE_SIZE)
MAX_E_BLOCKS = 16
# Weights of each of D's two head convolutions: (d_width * 2**d_downs)**2 channels times
# a kernel of (image_size / 2**d_downs)**2, so (d_width * image_size)**2. 512 px at the
# paper's d_width fits.
MAX_HEAD_WEIGHTS = 2 ** 26
# Integer fields and their accepted [low, high] ranges (the downs are further bounded by
# the image size and MAX_CHANNELS).
INT_RANGES = {
    "image_size": (16, MAX_IMAGE_SIZE), "g_width": (1, MAX_CHANNELS),
    "g_downs": (1, MAX_DOWNS), "e_width": (1, MAX_CHANNELS // 2),
    "e_blocks": (0, MAX_E_BLOCKS), "latent_channels": (1, MAX_CHANNELS),
    "spade_hidden": (1, MAX_CHANNELS), "mapping_channels": (1, MAX_CHANNELS),
    "noise_dim": (1, MAX_CHANNELS), "d_width": (1, MAX_CHANNELS),
    "d_downs": (1, MAX_DOWNS),
}
# the norms' epsilon: a small positive number, a normal float32 well above 0 (1e-100 is 0
# in float32: a flat plane's 1 / sqrt(0 + eps) is Inf, its normalised values NaN)
MIN_EPS, MAX_EPS = 1e-12, 0.1
# The edit strength scales d = strength * (y_t - y_s) (spec sections 7-8): the model is trained
# at 1 and the official test uses 1.5; a config may name another default for its model.
DEFAULT_STRENGTH = 1.5
# Largest |strength| (and |alpha|, which also scales an edit): far beyond, the edits
# saturate (unbounded, 1e38 overflows to NaN images).
MAX_SCALE = 10.0
# Lists / objects nested in config.extra: a bound this project sets, well below the depth
# at which saving (json, Python's recursion limit) would fail; a config nested deeper is
# refused (ValueError) when it is made.
MAX_EXTRA_DEPTH = 32


def _nesting(value, limit: int) -> int:
    """How deeply lists and dicts nest in ``value`` (0: a scalar), counted without
    recursion and only up to ``limit`` + 1."""
    depth, level = 0, [value]
    while depth <= limit and any(isinstance(v, (dict, list)) for v in level):
        depth += 1
        level = [c for v in level if isinstance(v, (dict, list))
                 for c in (v.values() if isinstance(v, dict) else v)]
    return depth


@dataclass(frozen=True)
class BridgeGANConfig:
    """Architecture of G, E, M and D (spec sections 2-4) and the default edit strength.
    Defaults are the paper's.

    Widths derive from a base width and the number of resampling blocks:
    G's encoder goes g_width -> g_width * 2**g_downs, the latent is ``latent_channels``
    at half the image size, M starts at ``mapping_channels`` x 4 x 4, D goes d_width ->
    d_width * 2**d_downs.
    """

    image_size: int = PAPER_RESOLUTION
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES
    g_width: int = 32
    g_downs: int = 3
    e_width: int = 16
    e_blocks: int = 3
    latent_channels: int = 32
    spade_hidden: int = 128
    mapping_channels: int = 64
    noise_dim: int = 16
    d_width: int = 16
    d_downs: int = 4
    eps: float = 1e-5
    # the strength inference uses when a call names none: an operating point measured on
    # the trained model (`bridgegan eval --strength`), not architecture, so configs that
    # differ only here hold interchangeable weights
    edit_strength: float = field(default=DEFAULT_STRENGTH, compare=False)
    # a user's own notes kept with the model (JSON; saved and read with config.json, never
    # read by bridgegan, no part of the architecture)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        """Check every field's type and range, naming the field, before anything is built."""
        object.__setattr__(self, "attributes", resolve_attributes(self.attributes))
        for name, (low, high) in INT_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"config.{name} must be an integer in [{low}, {high}], "
                                 f"got {reprlib.repr(value)}")
        eps = self.eps
        if (isinstance(eps, bool) or not isinstance(eps, (int, float))
                or not MIN_EPS <= eps <= MAX_EPS):
            raise ValueError(f"config.eps must be a number in [{MIN_EPS:g}, {MAX_EPS:g}], "
                             f"got {reprlib.repr(eps)}")
        strength = self.edit_strength
        if (isinstance(strength, bool) or not isinstance(strength, (int, float))
                or not 0 < strength <= MAX_SCALE):
            raise ValueError(f"config.edit_strength must be a number in (0, {MAX_SCALE:g}], "
                             f"got {reprlib.repr(strength)}")
        extra = self.extra
        if not isinstance(extra, dict) or _nesting(extra, MAX_EXTRA_DEPTH) > MAX_EXTRA_DEPTH:
            raise ValueError(f"config.extra must be an object (dict) nested at most "
                             f"{MAX_EXTRA_DEPTH} deep, got {reprlib.repr(extra)}")
        size = self.image_size
        if size & (size - 1):
            raise ValueError(f"config.image_size must be a power of two, got {size}")
        if size % (2 ** self.g_downs) or size % (2 ** self.d_downs):
            raise ValueError(
                f"image_size {size} must be divisible by 2**g_downs ({2 ** self.g_downs}) "
                f"and 2**d_downs ({2 ** self.d_downs})"
            )
        if size >> self.g_downs < 2:  # instance norm of one pixel per channel: no variance
            raise ValueError(f"image_size {size} with g_downs {self.g_downs} leaves G's middle "
                             f"blocks at 1x1, where instance norm is degenerate (its output "
                             f"is its shift); accepted: g_downs <= {size.bit_length() - 2} "
                             f"at this size")
        for what, channels in (("g_width * 2**g_downs", self.g_channels()[-1]),
                               ("d_width * 2**d_downs", self.d_width * 2 ** self.d_downs)):
            if channels > MAX_CHANNELS:
                raise ValueError(f"config: {what} = {channels} channels; accepted: at most "
                                 f"{MAX_CHANNELS}")
        head = (self.d_width * size) ** 2
        if head > MAX_HEAD_WEIGHTS:
            raise ValueError(f"config: D's head convolutions would hold (d_width * image_size)**2 "
                             f"= {head:,} weights each; accepted: at most {MAX_HEAD_WEIGHTS:,} "
                             f"(lower d_width)")

    # ----- derived sizes -------------------------------------------------------------
    @property
    def n_attrs(self) -> int:
        return len(self.attributes)

    @property
    def latent_size(self) -> int:
        """Spatial size of the latent code S: half the image size."""
        return self.image_size // 2

    @property
    def mapping_ups(self) -> int:
        """Number of 2x up blocks in M from 4x4 to the latent size."""
        return int(math.log2(self.latent_size // 4))

    @property
    def bottleneck_size(self) -> int:
        """Spatial size of G's bottleneck, after its g_downs 2x down blocks."""
        return self.image_size // 2 ** self.g_downs

    @property
    def d_head_kernel(self) -> int:
        return self.image_size // 2 ** self.d_downs

    def g_channels(self) -> list[int]:
        """Channels at each G resolution, from the stem to the bottleneck."""
        return [self.g_width * 2 ** i for i in range(self.g_downs + 1)]

    # ----- presets -------------------------------------------------------------------
    @classmethod
    def paper(cls) -> "BridgeGANConfig":
        """The paper configuration: 128x128, the 14 default attributes."""
        return cls()

    @classmethod
    def preset(cls, resolution: int, **overrides: Any) -> "BridgeGANConfig":
        """Resolution presets 64 / 128 / 256 at the paper widths."""
        if resolution not in PRESET_RESOLUTIONS:
            raise ValueError(f"resolution preset must be one of "
                             f"{', '.join(map(str, PRESET_RESOLUTIONS))}, got {resolution}")
        return cls(image_size=resolution, **overrides)

    def replace(self, **changes: Any) -> "BridgeGANConfig":
        return dataclasses.replace(self, **changes)

    # ----- JSON ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["attributes"] = list(self.attributes)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BridgeGANConfig":
        return from_fields(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> "BridgeGANConfig":
        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from None
        except RecursionError:
            raise ValueError("config JSON is nested too deeply; a config is an object of "
                             "numbers, strings and one list of attribute names") from None
        return cls.from_dict(data)

    def strength(self, strength: float | None) -> float:
        """The edit strength of a call: ``strength``, or ``edit_strength`` when it names none."""
        return self.edit_strength if strength is None else strength

    def label_difference(self, y_s, y_t, strength: float | None = None):
        """The label difference the generator is conditioned on: d = strength * (y_t - y_s)
        (spec sections 7-8), ``strength`` as in :meth:`strength`."""
        return self.strength(strength) * (y_t - y_s)

    def architecture(self) -> dict[str, Any]:
        """The fields that shape the weights and the graphs: all but ``edit_strength`` and
        ``extra`` (the fields equality compares)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}

    def differences(self, other: "BridgeGANConfig") -> list[str]:
        """Human-readable list of architecture fields that differ (empty when equal)."""
        mine, theirs = self.architecture(), other.architecture()
        return [f"{k}: {mine[k]!r} != {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]
