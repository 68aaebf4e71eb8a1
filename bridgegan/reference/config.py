"""BridgeGANConfig: every size and name of the model, with JSON round-trip and presets."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .attributes import DEFAULT_ATTRIBUTES, resolve_attributes


@dataclass(frozen=True)
class BridgeGANConfig:
    """Architecture of G, E, M and D (spec sections 2-4). Defaults are the paper's.

    Widths derive from a base width and the number of resampling blocks:
    G's encoder goes g_width -> g_width * 2**g_downs, the latent is ``latent_channels``
    at half the image size, M starts at ``mapping_channels`` x 4 x 4, D goes d_width ->
    d_width * 2**d_downs.
    """

    image_size: int = 128
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
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", resolve_attributes(self.attributes))
        positive = ("image_size", "g_width", "g_downs", "e_width", "latent_channels",
                    "spade_hidden", "mapping_channels", "noise_dim", "d_width", "d_downs")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
        if self.e_blocks < 0:
            raise ValueError(f"config.e_blocks must be >= 0, got {self.e_blocks}")
        size = self.image_size
        if size < 16 or size & (size - 1):
            raise ValueError(f"config.image_size must be a power of two >= 16, got {size}")
        if size % (2 ** self.g_downs) or size % (2 ** self.d_downs) or size // 2 < 4:
            raise ValueError(
                f"image_size {size} must be divisible by 2**g_downs ({2 ** self.g_downs}) "
                f"and 2**d_downs ({2 ** self.d_downs})"
            )

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
        if resolution not in (64, 128, 256):
            raise ValueError(f"resolution preset must be 64, 128 or 256, got {resolution}")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        if "attributes" in data:
            data["attributes"] = tuple(data["attributes"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "BridgeGANConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("config JSON must be an object")
        return cls.from_dict(data)

    def differences(self, other: "BridgeGANConfig") -> list[str]:
        """Human-readable list of fields that differ (empty when equal)."""
        out = []
        for f in dataclasses.fields(self):
            if not f.compare:
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a!r} != {b!r}")
        return out
