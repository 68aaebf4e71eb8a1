"""Draws one procedural face (``render_face``): labels and nuisance uniforms in, uint8 out.

The face is resolved once into a palette and a geometry (landmarks in unit coordinates, y
down), then drawn part by part, back to front, with Pillow's ImageDraw at 2x (4x below
64 px); the canvas is downsampled with LANCZOS and a smooth lighting gradient applied.
Each part draws only when its attributes ask for it. The exact pixels are pinned: trained
models and tests depend on them, so a change here must keep every face bit-identical.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..attributes import HAIR_COLOURS

PROCEDURAL_ATTRIBUTES: tuple[str, ...] = (
    "Young", "Mouth_Slightly_Open", "Smiling", "Black_Hair", "Blond_Hair", "Brown_Hair",
    "Gray_Hair", "Receding_Hairline", "Bangs", "Male", "No_Beard", "Mustache", "Goatee",
    "Sideburns", "Bald", "Bushy_Eyebrows", "Eyeglasses", "Pale_Skin",
)
ATTRIBUTE_INDEX = {n: i for i, n in enumerate(PROCEDURAL_ATTRIBUTES)}

PARAM_NAMES = (
    "cx", "cy", "scale", "width", "height", "skin_t", "skin_j", "hair_j", "bg_h", "bg_s",
    "bg_v", "cl_h", "cl_s", "cl_v", "iris", "eye_size", "eye_gap", "mouth_w", "nose_l",
    "light_a", "light_s", "glass_c", "glass_shape", "hair_vol", "bangs_phase", "hair_len",
    "brow_tilt", "lip", "neck_w", "shoulder_w",
)
_P = {n: i for i, n in enumerate(PARAM_NAMES)}

_HAIR_RGB = {
    "Black_Hair": (28, 24, 24),
    "Blond_Hair": (228, 192, 112),
    "Brown_Hair": (112, 66, 36),
    "Gray_Hair": (168, 168, 174),
    None: (150, 62, 30),  # auburn: no hair-colour label set
}
_IRIS_RGB = ((96, 60, 30), (60, 110, 170), (70, 120, 70), (40, 30, 25))
_SKIN_PALE = (250, 232, 220)
_SKIN_LIGHT = (226, 176, 140)
_SKIN_DARK = (112, 70, 46)
_WHITE = (250, 250, 250)
_PUPIL = (10, 10, 10)
_LASH = (30, 20, 20)
_MOUTH_INSIDE = (70, 18, 24)
_TEETH = (245, 245, 240)
_LENS = (200, 225, 255, 45)
_UPPER_ARC = np.linspace(math.pi, 2 * math.pi, 17)  # angles of a top half ellipse


def _mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))


def _scale(c, f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(round(x * f)))) for x in c)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass(frozen=True)
class _Palette:
    """Every colour of one face."""

    skin: tuple
    skin_shade: tuple
    line: tuple  # wrinkles, nostrils, dimples: darker on old faces
    hair: tuple
    hair_dark: tuple  # beard, goatee, moustache, sideburns, strands
    brow: tuple
    bg: tuple
    clothes: tuple
    iris: tuple
    lip: tuple
    lip_dark: tuple
    frame: tuple  # glasses

    @classmethod
    def of(cls, on: dict, p: dict) -> _Palette:
        if on["Pale_Skin"]:
            skin = _scale(_SKIN_PALE, 0.98 + 0.03 * p["skin_j"])
        else:
            skin = _scale(_mix(_SKIN_LIGHT, _SKIN_DARK, p["skin_t"]), 0.95 + 0.08 * p["skin_j"])
        hair_name = next((h for h in HAIR_COLOURS if on[h]), None)
        hair = _scale(_HAIR_RGB[hair_name], 0.9 + 0.2 * p["hair_j"])
        lip = _mix(skin, (200, 60, 70) if not on["Male"] else (170, 80, 75),
                   0.55 + 0.25 * p["lip"])
        return cls(
            skin=skin,
            skin_shade=_scale(skin, 0.80),
            line=_scale(skin, 0.55 if on["Young"] else 0.5),
            hair=hair,
            hair_dark=_scale(hair, 0.72),
            brow=_scale(hair, 0.62 if hair_name in ("Blond_Hair", "Gray_Hair") else 0.85),
            bg=_hsv(p["bg_h"], 0.12 + 0.35 * p["bg_s"], 0.50 + 0.42 * p["bg_v"]),
            clothes=_hsv(p["cl_h"], 0.25 + 0.55 * p["cl_s"], 0.25 + 0.6 * p["cl_v"]),
            iris=_IRIS_RGB[min(int(p["iris"] * 4), 3)],
            lip=lip,
            lip_dark=_scale(lip, 0.7),
            frame=_hsv(p["glass_c"] * 3.0, 0.5, 0.25) if p["glass_c"] > 0.5 else (20, 20, 24),
        )


@dataclass(frozen=True)
class _Geometry:
    """Landmarks of one face in unit coordinates (y down)."""

    cx: float
    cy: float  # centre of the head oval
    a: float  # half width
    b: float  # half height of the upper half
    bl: float  # half height of the lower half
    a_low: float  # half width of the jaw
    n_low: float  # jaw superellipse exponent (square for males)
    eye_y: float
    eye_dx: float  # eye centre to face centre
    eye_rx: float
    eye_ry: float
    brow_y: float
    nose_y: float
    mouth_y: float
    mw: float  # half mouth width
    chin_y: float
    ear_y: float
    temple_y: float
    hair_top: float
    hair_rx: float  # half width of the hair cap
    hair_end_y: float  # where long hair ends, on the shoulders

    @classmethod
    def of(cls, male: bool, p: dict) -> _Geometry:
        sc = 0.92 + 0.14 * p["scale"]
        cx = 0.5 + 0.07 * (p["cx"] - 0.5)
        cy = 0.45 + 0.05 * (p["cy"] - 0.5)
        a = 0.21 * sc * (0.92 + 0.16 * p["width"]) * (1.04 if male else 1.0)
        b = 0.275 * sc * (0.93 + 0.14 * p["height"])
        bl = b * 1.02
        eye_y = cy + 0.02 * b
        eye_rx = a * (0.16 + 0.04 * p["eye_size"])
        chin_y = cy + bl
        return cls(
            cx=cx, cy=cy, a=a, b=b, bl=bl,
            a_low=a * (1.0 if male else 0.94),
            n_low=3.2 if male else 1.85,
            eye_y=eye_y,
            eye_dx=a * (0.38 + 0.06 * p["eye_gap"]),
            eye_rx=eye_rx,
            eye_ry=eye_rx * 0.62,
            brow_y=eye_y - 0.24 * b,
            nose_y=cy + (0.30 + 0.06 * p["nose_l"]) * b,
            mouth_y=cy + 0.58 * b,
            mw=a * (0.27 + 0.08 * p["mouth_w"]),
            chin_y=chin_y,
            ear_y=eye_y + 0.14 * b,
            temple_y=eye_y - 0.16 * b,
            hair_top=cy - b * (1.07 + (0.05 if male else 0.12) * (0.5 + p["hair_vol"])),
            hair_rx=a * (1.07 if male else 1.13) * (0.98 + 0.06 * p["hair_vol"]),
            hair_end_y=chin_y + 0.06 + 0.10 * p["hair_len"],
        )

    def jaw(self, t: np.ndarray, grow: float = 1.0, drop: float = 0.0) -> list:
        """Points of the lower-face superellipse at angles ``t`` in [0, pi], scaled by
        ``grow`` and moved down by ``drop`` (the beard's outline is a larger jaw)."""
        c, s = np.cos(t), np.sin(t)
        return list(zip(
            self.cx + grow * self.a_low * np.sign(c) * np.abs(c) ** (2 / self.n_low),
            self.cy + drop + grow * self.bl * np.abs(s) ** (2 / self.n_low),
        ))


@dataclass(frozen=True)
class _Face:
    """One face resolved: attribute flags, nuisance values, colours, landmarks."""

    on: dict
    p: dict
    colour: _Palette
    geo: _Geometry
    size: int

    @property
    def long_hair(self) -> bool:
        return not self.on["Male"] and not self.on["Bald"]


class _Canvas:
    """The supersampled RGB image, drawn on in unit coordinates (RGBA fills blend)."""

    def __init__(self, size: int, bg: tuple) -> None:
        self.W = size * (2 if size >= 64 else 4)
        self.img = Image.new("RGB", (self.W, self.W), bg)
        self.draw = ImageDraw.Draw(self.img, "RGBA")

    def X(self, x: float) -> float:
        return x * self.W

    def pts(self, seq) -> list[tuple[float, float]]:
        return [(x * self.W, y * self.W) for x, y in seq]

    def px(self, v: float) -> int:
        return max(1, int(round(v * self.W)))

    def ellipse(self, x0, y0, rx, ry, **kw) -> None:
        X = self.X
        self.draw.ellipse([X(x0 - rx), X(y0 - ry), X(x0 + rx), X(y0 + ry)], **kw)

    def curve(self, xs, ys, width, fill) -> None:
        self.draw.line(self.pts(zip(xs, ys)), fill=fill, width=self.px(width), joint="curve")

    def polygon(self, seq, fill) -> None:
        self.draw.polygon(self.pts(seq), fill=fill)

    def band(self, xs, top, bottom, fill) -> None:
        """The polygon between two curves over the same ``xs``."""
        self.polygon(list(zip(xs, top)) + list(zip(xs[::-1], bottom[::-1])), fill)


def _draw_shoulders(c: _Canvas, f: _Face) -> None:
    g = f.geo
    w = (0.40 if f.on["Male"] else 0.34) * (0.92 + 0.16 * f.p["shoulder_w"])
    top = g.chin_y + 0.07
    c.draw.rounded_rectangle([c.X(g.cx - w), c.X(top), c.X(g.cx + w), c.X(top + 0.6)],
                             radius=c.X(0.12), fill=f.colour.clothes)


def _draw_back_hair(c: _Canvas, f: _Face) -> None:
    """Long hair behind the head, down to the shoulders."""
    if not f.long_hair:
        return
    g = f.geo
    cx, hl, hw = g.cx, g.hair_end_y, g.a * 1.42
    back = [(cx - hw, hl)]
    back += list(zip(cx + hw * np.cos(_UPPER_ARC), g.cy + (g.cy - g.hair_top) * np.sin(_UPPER_ARC)))
    back += [(cx + hw, hl)]
    back += [(cx + hw * 0.5, hl + 0.03), (cx - hw * 0.5, hl + 0.03)]
    c.polygon(back, f.colour.hair)


def _draw_neck(c: _Canvas, f: _Face) -> None:
    g, X, skin = f.geo, c.X, f.colour.skin
    cx = g.cx
    w = g.a * (0.46 if f.on["Male"] else 0.38) * (0.92 + 0.16 * f.p["neck_w"])
    top = g.chin_y + 0.07  # of the shoulders
    c.draw.rectangle([X(cx - w), X(g.cy + 0.3 * g.b), X(cx + w), X(top + 0.05)], fill=skin)
    c.polygon([(cx - w, top + 0.005), (cx + w, top + 0.005), (cx, top + 0.09)], skin)
    c.draw.rectangle([X(cx - w), X(g.chin_y - 0.02), X(cx + w), X(g.chin_y + 0.025)],
                     fill=f.colour.skin_shade)


def _draw_head(c: _Canvas, f: _Face) -> None:
    """Ears, then the head: upper half ellipse, lower half the jaw superellipse."""
    g, col = f.geo, f.colour
    cx, a, b = g.cx, g.a, g.b
    for sgn in (-1, 1):
        ex = cx + sgn * a * 0.97
        c.ellipse(ex, g.ear_y, a * 0.15, b * 0.22, fill=col.skin)
        c.ellipse(ex + sgn * a * 0.03, g.ear_y, a * 0.07, b * 0.13, fill=col.skin_shade)
    head = list(zip(cx + a * np.cos(_UPPER_ARC), g.cy + b * np.sin(_UPPER_ARC)))
    c.polygon(head + g.jaw(np.linspace(0.0, math.pi, 25)), col.skin)


def _draw_age_lines(c: _Canvas, f: _Face) -> None:
    """Not Young: forehead lines, nose-to-mouth folds, crow's feet, eye bags."""
    if f.on["Young"]:
        return
    g, line = f.geo, f.colour.line
    cx, cy, a, b = g.cx, g.cy, g.a, g.b
    eye_y, eye_dx, eye_rx = g.eye_y, g.eye_dx, g.eye_rx
    wl = 0.011
    for k, yy in enumerate((cy - 0.56 * b, cy - 0.46 * b, cy - 0.36 * b)):
        xs = np.linspace(cx - 0.45 * a, cx + 0.45 * a, 7)
        c.curve(xs, yy - 0.05 * b * (1 - ((xs - cx) / (0.45 * a)) ** 2) + 0.01 * k, wl, line)
    for sgn in (-1, 1):
        c.curve([cx + sgn * 0.22 * a, cx + sgn * 0.40 * a, cx + sgn * (g.mw / a + 0.12) * a],
                [g.nose_y - 0.08 * b, g.nose_y + 0.12 * b, g.mouth_y + 0.10 * b], wl, line)
        ox = cx + sgn * (eye_dx + eye_rx + 0.05 * a)
        for dy in (-0.05, 0.0, 0.05):
            c.curve([ox, ox + sgn * 0.13 * a], [eye_y + dy * b, eye_y + dy * 2.2 * b], wl, line)
        xs = np.linspace(cx + sgn * eye_dx - eye_rx, cx + sgn * eye_dx + eye_rx, 6)
        bag = 1 - ((xs - cx - sgn * eye_dx) / eye_rx) ** 2
        c.curve(xs, eye_y + g.eye_ry + 0.05 * b + 0.05 * b * bag, wl, line)


def _draw_beard(c: _Canvas, f: _Face) -> None:
    """Not No_Beard: a semi-transparent beard along the jaw, around the mouth."""
    if f.on["No_Beard"]:
        return
    g = f.geo
    cx, a, b, mw, mouth_y = g.cx, g.a, g.b, g.mw, g.mouth_y
    outer = g.jaw(np.linspace(0.12, math.pi - 0.12, 21), grow=1.04, drop=0.03 * b)
    inner = [(cx - 0.92 * a, g.eye_y + 0.30 * b), (cx - 0.62 * a, g.nose_y + 0.04 * b),
             (cx - mw - 0.06 * a, mouth_y), (cx - mw * 0.6, mouth_y + 0.17 * b),
             (cx, mouth_y + 0.20 * b), (cx + mw * 0.6, mouth_y + 0.17 * b),
             (cx + mw + 0.06 * a, mouth_y), (cx + 0.62 * a, g.nose_y + 0.04 * b),
             (cx + 0.92 * a, g.eye_y + 0.30 * b)]
    c.polygon(outer + inner, f.colour.hair_dark + (200,))


def _draw_goatee(c: _Canvas, f: _Face) -> None:
    if not f.on["Goatee"]:
        return
    g = f.geo
    cx, b, mw, mouth_y, chin_y = g.cx, g.b, g.mw, g.mouth_y, g.chin_y
    c.polygon([(cx - mw * 0.75, mouth_y + 0.10 * b), (cx + mw * 0.75, mouth_y + 0.10 * b),
               (cx + mw * 0.62, chin_y - 0.10 * b), (cx + mw * 0.3, chin_y + 0.03 * b),
               (cx - mw * 0.3, chin_y + 0.03 * b), (cx - mw * 0.62, chin_y - 0.10 * b)],
              f.colour.hair_dark)


def _draw_hair_cap(c: _Canvas, f: _Face) -> None:
    """Hair on top of the head down to the temples, its hairline M-shaped when
    Receding_Hairline, with a few strands for texture; Bald draws _draw_bald_head."""
    if f.on["Bald"]:
        return
    g, col = f.geo, f.colour
    cx, cy, a, b, temple_y = g.cx, g.cy, g.a, g.b, g.temple_y
    hr_x, hr_ry = g.hair_rx, cy - g.hair_top
    side_y = temple_y + (0.02 if f.on["Male"] else 0.25) * b
    phi = math.asin(min(0.95, (side_y - cy) / hr_ry)) if side_y > cy else 0.0
    t = np.linspace(math.pi - phi, 2 * math.pi + phi, 29)
    outer = list(zip(cx + hr_x * np.cos(t), cy + hr_ry * np.sin(t)))
    s = np.linspace(1.0, -1.0, 21)  # hairline from the right temple to the left one
    hl_y = cy - 0.62 * b
    line_y = hl_y + (temple_y - hl_y) * np.abs(s) ** 3
    if f.on["Receding_Hairline"]:
        line_y = line_y - 0.26 * b * np.exp(-(((np.abs(s) - 0.58) / 0.2) ** 2)) - 0.05 * b
    hairline = list(zip(cx + s * 0.96 * a, line_y))
    c.polygon(outer + [(cx + 0.98 * a, side_y)] + hairline + [(cx - 0.98 * a, side_y)], col.hair)
    for k in (-0.5, 0.0, 0.5):
        y0 = cy - hr_ry * math.sqrt(1 - (0.9 * k * a / hr_x) ** 2) + 0.08 * b
        c.curve([cx + k * a * 0.9, cx + k * a * 1.1], [y0, hl_y - 0.05 * b],
                0.005, col.hair_dark + (110,))


def _draw_bald_head(c: _Canvas, f: _Face) -> None:
    """Bald: tufts above the ears and a shine on the scalp."""
    if not f.on["Bald"]:
        return
    g = f.geo
    cx, a, b, eye_y, ear_y = g.cx, g.a, g.b, g.eye_y, g.ear_y
    for sgn in (-1, 1):
        c.polygon([(cx + sgn * 1.02 * a, eye_y - 0.40 * b), (cx + sgn * 1.08 * a, eye_y - 0.15 * b),
                   (cx + sgn * 1.06 * a, ear_y), (cx + sgn * 0.97 * a, ear_y + 0.05 * b),
                   (cx + sgn * 0.93 * a, eye_y - 0.2 * b)], f.colour.hair)
    c.ellipse(cx - 0.25 * a, g.cy - 0.78 * b, 0.22 * a, 0.08 * b, fill=(255, 255, 255, 70))


def _draw_bangs(c: _Canvas, f: _Face) -> None:
    """A zigzag fringe over the forehead, down to the eyebrows."""
    if not f.on["Bangs"]:
        return
    g, col = f.geo, f.colour
    cx, cy, a, b, brow_y, temple_y = g.cx, g.cy, g.a, g.b, g.brow_y, g.temple_y
    xs = np.linspace(cx - 0.95 * a, cx + 0.95 * a, 15)
    base = brow_y - 0.07 * b + 0.04 * b * (1 - ((xs - cx) / a) ** 2)
    zig = np.where(np.arange(15) % 2 == 0, 0.0, -0.07 * b)
    zig = np.roll(zig, int(f.p["bangs_phase"] * 2))
    top = [(cx + 0.98 * a, temple_y), (cx + 0.7 * a, cy - 0.85 * b), (cx, cy - 0.98 * b),
           (cx - 0.7 * a, cy - 0.85 * b), (cx - 0.98 * a, temple_y)]
    c.polygon(list(zip(xs, base + zig)) + top, col.hair)
    for k in (-0.6, -0.2, 0.2, 0.6):
        c.curve([cx + k * a * 0.8, cx + k * a], [cy - 0.75 * b, brow_y - 0.12 * b], 0.005,
                col.hair_dark + (120,))


def _draw_locks(c: _Canvas, f: _Face) -> None:
    """Long hair: locks falling in front of the ears down to the shoulders."""
    if not f.long_hair:
        return
    g = f.geo
    cx, cy, a, b, hl, eye_y, temple_y = g.cx, g.cy, g.a, g.b, g.hair_end_y, g.eye_y, g.temple_y
    for sgn in (-1, 1):
        c.polygon([(cx + sgn * 0.95 * a, temple_y - 0.1 * b),
                   (cx + sgn * 0.86 * a, eye_y + 0.2 * b),
                   (cx + sgn * 0.90 * a, eye_y + 0.6 * b),
                   (cx + sgn * 1.05 * a, g.chin_y - 0.05 * b),
                   (cx + sgn * 1.20 * a, hl), (cx + sgn * 1.42 * a, hl),
                   (cx + sgn * 1.42 * a, cy), (cx + sgn * g.hair_rx, temple_y - 0.2 * b)],
                  f.colour.hair)


def _draw_sideburns(c: _Canvas, f: _Face) -> None:
    if not f.on["Sideburns"]:
        return
    g = f.geo
    cx, a, b, temple_y, eye_y = g.cx, g.a, g.b, g.temple_y, g.eye_y
    for sgn in (-1, 1):
        c.polygon([(cx + sgn * 0.99 * a, temple_y - 0.05 * b),
                   (cx + sgn * 0.80 * a, temple_y - 0.05 * b),
                   (cx + sgn * 0.80 * a, eye_y + 0.38 * b),
                   (cx + sgn * 0.96 * a, eye_y + 0.42 * b)], f.colour.hair_dark)


def _draw_eye(c: _Canvas, f: _Face, sgn: int) -> None:
    """White, iris, pupil, highlight and upper lid; a lash on female faces."""
    g, male = f.geo, f.on["Male"]
    ex, eye_y, rx, ry = g.cx + sgn * g.eye_dx, g.eye_y, g.eye_rx, g.eye_ry
    c.ellipse(ex, eye_y, rx, ry, fill=_WHITE)
    c.ellipse(ex, eye_y, ry * 0.95, ry * 0.95, fill=f.colour.iris)
    c.ellipse(ex, eye_y, ry * 0.45, ry * 0.45, fill=_PUPIL)
    c.ellipse(ex + ry * 0.3, eye_y - ry * 0.3, ry * 0.16, ry * 0.16, fill=(255, 255, 255))
    xs = np.linspace(ex - rx, ex + rx, 7)
    lid = eye_y - ry * np.sqrt(np.clip(1 - ((xs - ex) / rx) ** 2, 0, 1))
    c.curve(xs, lid, 0.008 if male else 0.014, _LASH)
    if not male:
        c.curve([ex + sgn * rx * 0.9, ex + sgn * rx * 1.25],
                [eye_y - ry * 0.3, eye_y - ry * 0.75], 0.008, _LASH)


def _draw_brow(c: _Canvas, f: _Face, sgn: int) -> None:
    """An arched brow, thicker for males and Bushy_Eyebrows, tilted by ``brow_tilt``."""
    g, bushy = f.geo, f.on["Bushy_Eyebrows"]
    a, b, ex = g.a, g.b, g.cx + sgn * g.eye_dx
    width = 0.035 * a * (1.4 if f.on["Male"] else 1.0) * (2.6 if bushy else 1.0)
    half = 0.23 * a * (1.2 if bushy else 1.0)
    tilt = 0.05 * b * (f.p["brow_tilt"] - 0.5)
    bx = np.linspace(ex - half, ex + half, 7)
    by = g.brow_y - 0.06 * b * (1 - ((bx - ex) / half) ** 2) + sgn * tilt * (bx - ex) / half
    c.curve(bx, by, width, f.colour.brow)


def _draw_eyes_and_brows(c: _Canvas, f: _Face) -> None:
    for sgn in (-1, 1):
        _draw_eye(c, f, sgn)
        _draw_brow(c, f, sgn)


def _draw_nose(c: _Canvas, f: _Face) -> None:
    """Bridge shadow, the tip's lower edge, nostrils."""
    g, col = f.geo, f.colour
    cx, b, nose_y = g.cx, g.b, g.nose_y
    nw = 0.12 * g.a
    c.curve([cx + 0.03 * g.a, cx + 0.07 * g.a, cx + nw],
            [g.eye_y + 0.08 * b, nose_y - 0.12 * b, nose_y - 0.02 * b], 0.007, col.skin_shade)
    xs = np.linspace(cx - nw, cx + nw, 7)
    c.curve(xs, nose_y + 0.03 * b * (1 - ((xs - cx) / nw) ** 2), 0.008, col.line)
    c.ellipse(cx - nw * 0.55, nose_y - 0.01 * b, nw * 0.18, nw * 0.12, fill=col.line)
    c.ellipse(cx + nw * 0.55, nose_y - 0.01 * b, nw * 0.18, nw * 0.12, fill=col.line)


def _draw_grin(c: _Canvas, f: _Face) -> None:
    """Smiling and Mouth_Slightly_Open: a wide open smile with teeth."""
    g, lip = f.geo, f.colour.lip
    b, mwx = g.b, g.mw * 1.18
    xs = np.linspace(g.cx - mwx, g.cx + mwx, 13)
    q = 1 - ((xs - g.cx) / mwx) ** 2
    top = g.mouth_y - 0.03 * b + 0.04 * b * q
    bot = g.mouth_y - 0.03 * b + 0.26 * b * q
    c.band(xs, top, bot, _MOUTH_INSIDE)
    c.band(xs, top, top + 0.07 * b * np.sqrt(np.clip(q, 0.0, 1.0)), _TEETH)
    c.curve(xs, bot, 0.010, lip)
    c.curve(xs, top, 0.008, lip)


def _draw_smile(c: _Canvas, f: _Face) -> None:
    """Smiling, mouth closed: an upturned line with dimples at the corners."""
    g = f.geo
    cx, b, mouth_y, mwx = g.cx, g.b, g.mouth_y, g.mw * 1.18
    xs = np.linspace(cx - mwx, cx + mwx, 13)
    q = 1 - ((xs - cx) / mwx) ** 2
    c.curve(xs, mouth_y - 0.06 * b + 0.17 * b * q, 0.018, f.colour.lip_dark)
    for sgn in (-1, 1):
        c.curve([cx + sgn * mwx * 1.0, cx + sgn * mwx * 1.1],
                [mouth_y - 0.06 * b, mouth_y - 0.12 * b], 0.007, f.colour.line)


def _draw_open_mouth(c: _Canvas, f: _Face) -> None:
    """Mouth_Slightly_Open, not smiling: an oval of lips, the inside and upper teeth."""
    g = f.geo
    cx, b, mw, mouth_y, ry = g.cx, g.b, g.mw, g.mouth_y, 0.13 * g.b
    c.ellipse(cx, mouth_y + 0.03 * b, mw * 0.62, ry, fill=f.colour.lip)
    c.ellipse(cx, mouth_y + 0.03 * b, mw * 0.50, ry * 0.78, fill=_MOUTH_INSIDE)
    c.ellipse(cx, mouth_y - 0.04 * b, mw * 0.36, ry * 0.22, fill=_TEETH)


def _draw_closed_mouth(c: _Canvas, f: _Face) -> None:
    """Neutral: closed lips and the line between them."""
    g, col = f.geo, f.colour
    cx, b, mw, mouth_y = g.cx, g.b, g.mw, g.mouth_y
    xs = np.linspace(cx - mw, cx + mw, 9)
    q = 1 - ((xs - cx) / mw) ** 2
    c.band(xs, mouth_y - 0.05 * b * q, mouth_y + 0.06 * b * q, col.lip)
    c.curve(xs, mouth_y + 0.015 * b * q, 0.009, col.lip_dark)


_MOUTHS = {  # (Smiling, Mouth_Slightly_Open) -> part
    (True, True): _draw_grin,
    (True, False): _draw_smile,
    (False, True): _draw_open_mouth,
    (False, False): _draw_closed_mouth,
}


def _draw_mouth(c: _Canvas, f: _Face) -> None:
    _MOUTHS[f.on["Smiling"], f.on["Mouth_Slightly_Open"]](c, f)


def _draw_mustache(c: _Canvas, f: _Face) -> None:
    if not f.on["Mustache"]:
        return
    g = f.geo
    b, half = g.b, g.mw * 1.25
    xs = np.linspace(g.cx - half, g.cx + half, 11)
    r = (xs - g.cx) / half
    top = g.nose_y + 0.07 * b + 0.02 * b * r ** 2
    bot = g.mouth_y - 0.07 * b + 0.10 * b * r ** 4 - 0.02 * b * (1 - r ** 2)
    c.band(xs, top, bot, f.colour.hair_dark)


def _draw_glasses(c: _Canvas, f: _Face) -> None:
    """Eyeglasses: round or rectangular tinted lenses, arms to the ears, a bridge."""
    if not f.on["Eyeglasses"]:
        return
    g, X, frame = f.geo, c.X, f.colour.frame
    cx, eye_y, eye_dx = g.cx, g.eye_y, g.eye_dx
    gw = c.px(0.012 * (1.0 if f.size >= 64 else 1.3))
    grx, gry = g.eye_rx * 1.55, g.eye_rx * 1.15
    for sgn in (-1, 1):
        ex = cx + sgn * eye_dx
        box = [X(ex - grx), X(eye_y - gry), X(ex + grx), X(eye_y + gry)]
        if f.p["glass_shape"] < 0.5:
            c.draw.ellipse(box, fill=_LENS, outline=frame, width=gw)
        else:
            c.draw.rounded_rectangle(box, radius=X(gry * 0.5), fill=_LENS, outline=frame, width=gw)
        c.draw.line(c.pts([(ex + sgn * grx, eye_y - gry * 0.3),
                           (cx + sgn * g.a * 0.98, g.ear_y - 0.1 * g.b)]), fill=frame, width=gw)
    bridge_y = eye_y - 0.1 * gry
    c.draw.line(c.pts([(cx - eye_dx + grx, bridge_y), (cx + eye_dx - grx, bridge_y)]),
                fill=frame, width=gw)


_PARTS = (  # back to front
    _draw_shoulders, _draw_back_hair, _draw_neck, _draw_head, _draw_age_lines, _draw_beard,
    _draw_goatee, _draw_hair_cap, _draw_bald_head, _draw_bangs, _draw_locks, _draw_sideburns,
    _draw_eyes_and_brows, _draw_nose, _draw_mouth, _draw_mustache, _draw_glasses,
)


def _downsample_and_light(img: Image.Image, size: int, p: dict) -> np.ndarray:
    """LANCZOS down to ``size``, then a linear lighting gradient (direction ``light_a``)."""
    arr = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float32)
    ang = 2 * math.pi * p["light_a"]
    strength = 0.22 * p["light_s"]
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = 1.0 + strength * (g[None, :] * math.cos(ang) + g[:, None] * math.sin(ang))
    return np.clip(arr * shade[:, :, None] + 0.5, 0, 255).astype(np.uint8)


def render_face(labels: np.ndarray, params: np.ndarray, size: int) -> np.ndarray:
    """Draw one face: ``labels`` over PROCEDURAL_ATTRIBUTES (0/1), ``params`` the nuisance
    uniforms (len(PARAM_NAMES) values in [0, 1)). Returns uint8 (size, size, 3)."""
    on = {n: bool(labels[i] > 0.5) for n, i in ATTRIBUTE_INDEX.items()}
    p = {n: float(params[i]) for n, i in _P.items()}
    face = _Face(on, p, _Palette.of(on, p), _Geometry.of(on["Male"], p), size)
    canvas = _Canvas(size, face.colour.bg)
    for part in _PARTS:
        part(canvas, face)
    return _downsample_and_light(canvas.img, size, p)
