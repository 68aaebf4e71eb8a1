"""ProceduralFaces: an embedded, deterministic cartoon-face dataset with CelebA attribute names.

Every item ``i`` is generated on demand from its own random generator seeded with
``(seed, split, i)``, so any item is identical across runs, processes and DataLoader
workers, and nothing is cached. A face is drawn with Pillow's ImageDraw at 2x (4x below
64 px) and downsampled with LANCZOS for antialiasing, then a smooth lighting gradient is
applied.

Attributes (``PROCEDURAL_ATTRIBUTES``, the default list) and how they are drawn:

    Young                 0: forehead lines, nose-to-mouth folds, crow's feet, eye bags
    Mouth_Slightly_Open   dark open mouth (with teeth)
    Smiling               mouth corners curve up (open: a wide grin)
    Black_Hair, Blond_Hair, Brown_Hair, Gray_Hair
                          hair colour, exactly one is set when sampled (none set renders
                          auburn hair, as CelebA's "other" colours)
    Receding_Hairline     hairline pushed up at the temples (M shape)
    Bangs                 a fringe over the forehead, down to the eyebrows
    Male                  short hair and a squarer jaw, thicker brows and neck; 0: long
                          hair down to the shoulders, rounder chin, lashes, redder lips
    No_Beard              0: a full (semi-transparent) beard along the jaw and chin
    Mustache              a moustache over the upper lip
    Goatee                a solid patch on the chin under the mouth
    Sideburns             strips of hair in front of the ears, down to the ear lobes
    Bald                  no hair on top (only a fringe above the ears) and a shiny scalp
    Bushy_Eyebrows        thick, wide eyebrows
    Eyeglasses            dark frames around the eyes, arms to the ears
    Pale_Skin             very light skin (otherwise a light-to-dark brown range)

Nuisance factors that an edit should preserve: face position (small shifts), head size,
oval width and height, skin tone within its class, background colour, clothes colour,
eye size / spacing / iris colour, mouth width, lighting direction and strength.

Sampling: Male, Young, Smiling, Mouth_Slightly_Open 0.5; one hair colour uniformly;
Bald 0.25 of males; Receding_Hairline 0.2 of the non-bald; Bangs 0.45 of the rest;
beard 0.4, Mustache 0.4, Goatee 0.35, Sideburns 0.4 of males (never for females);
Eyeglasses 0.35; Pale_Skin 0.3; Bushy_Eyebrows 0.3. Labels always match what is drawn.

Render the sample grids with::

    python -m bridgegan.reference.data.synthetic --out docs/procedural_faces.png --size 64 --count 48
    python -m bridgegan.reference.data.synthetic --attribute-sweep --out docs/procedural_sweep.png
"""
from __future__ import annotations

import argparse
import colorsys
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from ..attributes import HAIR_COLOURS, apply_edits, resolve_attributes

PROCEDURAL_ATTRIBUTES: tuple[str, ...] = (
    "Young", "Mouth_Slightly_Open", "Smiling", "Black_Hair", "Blond_Hair", "Brown_Hair",
    "Gray_Hair", "Receding_Hairline", "Bangs", "Male", "No_Beard", "Mustache", "Goatee",
    "Sideburns", "Bald", "Bushy_Eyebrows", "Eyeglasses", "Pale_Skin",
)
_INDEX = {n: i for i, n in enumerate(PROCEDURAL_ATTRIBUTES)}
SPLITS = {"train": 0, "val": 1, "test": 2}

_N_LABEL_U = 16
_PARAM_NAMES = (
    "cx", "cy", "scale", "width", "height", "skin_t", "skin_j", "hair_j", "bg_h", "bg_s",
    "bg_v", "cl_h", "cl_s", "cl_v", "iris", "eye_size", "eye_gap", "mouth_w", "nose_l",
    "light_a", "light_s", "glass_c", "glass_shape", "hair_vol", "bangs_phase", "hair_len",
    "brow_tilt", "lip", "neck_w", "shoulder_w",
)
_P = {n: i for i, n in enumerate(_PARAM_NAMES)}
_N_U = _N_LABEL_U + len(_PARAM_NAMES)

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


def _item_uniforms(seed: int, split_code: int, index: int) -> np.ndarray:
    return np.random.default_rng([int(seed), int(split_code), int(index)]).random(_N_U)


def _labels_from_uniforms(u: np.ndarray) -> np.ndarray:
    """All PROCEDURAL_ATTRIBUTES labels (float32 0/1) from the first _N_LABEL_U uniforms."""
    male = u[0] < 0.5
    young = u[1] < 0.5
    hair = HAIR_COLOURS[min(int(u[2] * 4), 3)]
    bald = male and u[3] < 0.25
    receding = (not bald) and u[4] < 0.2
    bangs = (not bald) and (not receding) and u[5] < 0.45
    beard = male and u[8] < 0.4
    v = {
        "Young": young,
        "Mouth_Slightly_Open": u[7] < 0.5,
        "Smiling": u[6] < 0.5,
        "Black_Hair": hair == "Black_Hair",
        "Blond_Hair": hair == "Blond_Hair",
        "Brown_Hair": hair == "Brown_Hair",
        "Gray_Hair": hair == "Gray_Hair",
        "Receding_Hairline": receding,
        "Bangs": bangs,
        "Male": male,
        "No_Beard": not beard,
        "Mustache": male and u[9] < 0.4,
        "Goatee": male and u[10] < 0.35,
        "Sideburns": male and u[11] < 0.4,
        "Bald": bald,
        "Bushy_Eyebrows": u[14] < 0.3,
        "Eyeglasses": u[12] < 0.35,
        "Pale_Skin": u[13] < 0.3,
    }
    return np.array([float(v[n]) for n in PROCEDURAL_ATTRIBUTES], dtype=np.float32)


def _mix(c1, c2, t: float) -> tuple[int, int, int]:
    return tuple(int(round(a + (b - a) * t)) for a, b in zip(c1, c2))


def _scale(c, f: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(round(x * f)))) for x in c)


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def render_face(labels: np.ndarray, params: np.ndarray, size: int) -> np.ndarray:
    """Draw one face: ``labels`` over PROCEDURAL_ATTRIBUTES (0/1), ``params`` the nuisance
    uniforms (len(_PARAM_NAMES) values in [0, 1)). Returns uint8 (size, size, 3)."""
    on = {n: bool(labels[i] > 0.5) for n, i in _INDEX.items()}
    p = {n: float(params[i]) for n, i in _P.items()}
    ss = 2 if size >= 64 else 4
    W = size * ss
    male, bald = on["Male"], on["Bald"]
    long_hair = not male and not bald

    # ---- colours -------------------------------------------------------------------
    if on["Pale_Skin"]:
        skin = _scale(_SKIN_PALE, 0.98 + 0.03 * p["skin_j"])
    else:
        skin = _mix(_SKIN_LIGHT, _SKIN_DARK, p["skin_t"])
        skin = _scale(skin, 0.95 + 0.08 * p["skin_j"])
    skin_shade = _scale(skin, 0.80)
    line_c = _scale(skin, 0.55)
    hair_name = next((h for h in HAIR_COLOURS if on[h]), None)
    hair = _scale(_HAIR_RGB[hair_name], 0.9 + 0.2 * p["hair_j"])
    hair_dark = _scale(hair, 0.72)
    brow_c = _scale(hair, 0.62 if hair_name in ("Blond_Hair", "Gray_Hair") else 0.85)
    bg = _hsv(p["bg_h"], 0.12 + 0.35 * p["bg_s"], 0.50 + 0.42 * p["bg_v"])
    clothes = _hsv(p["cl_h"], 0.25 + 0.55 * p["cl_s"], 0.25 + 0.6 * p["cl_v"])
    iris = _IRIS_RGB[min(int(p["iris"] * 4), 3)]
    lip = _mix(skin, (200, 60, 70) if not male else (170, 80, 75), 0.55 + 0.25 * p["lip"])
    lip_dark = _scale(lip, 0.7)

    # ---- geometry (unit coordinates, y down) ---------------------------------------
    sc = 0.92 + 0.14 * p["scale"]
    cx = 0.5 + 0.07 * (p["cx"] - 0.5)
    cy = 0.45 + 0.05 * (p["cy"] - 0.5)
    a = 0.21 * sc * (0.92 + 0.16 * p["width"]) * (1.04 if male else 1.0)  # half width
    b = 0.275 * sc * (0.93 + 0.14 * p["height"])  # half height (upper half)
    bl = b * 1.02  # lower half height
    eye_y = cy + 0.02 * b
    eye_dx = a * (0.38 + 0.06 * p["eye_gap"])
    eye_rx = a * (0.16 + 0.04 * p["eye_size"])
    eye_ry = eye_rx * 0.62
    brow_y = eye_y - 0.24 * b
    nose_y = cy + (0.30 + 0.06 * p["nose_l"]) * b
    mouth_y = cy + 0.58 * b
    mw = a * (0.27 + 0.08 * p["mouth_w"])
    chin_y = cy + bl
    hair_top = cy - b * (1.07 + (0.05 if male else 0.12) * (0.5 + p["hair_vol"]))
    temple_y = eye_y - 0.16 * b

    def X(x: float) -> float:
        return x * W

    def pts(seq) -> list[tuple[float, float]]:
        return [(x * W, y * W) for x, y in seq]

    def px(v: float) -> int:
        return max(1, int(round(v * W)))

    img = Image.new("RGB", (W, W), bg)
    d = ImageDraw.Draw(img, "RGBA")

    def ellipse(x0, y0, rx, ry, **kw):
        d.ellipse([X(x0 - rx), X(y0 - ry), X(x0 + rx), X(y0 + ry)], **kw)

    def curve(xs, ys, width, fill):
        d.line(pts(zip(xs, ys)), fill=fill, width=px(width), joint="curve")

    # head outline: upper half ellipse, lower half superellipse (square jaw for males)
    n_low = 3.2 if male else 1.85
    a_low = a * (1.0 if male else 0.94)
    t_up = np.linspace(math.pi, 2 * math.pi, 17)
    t_lo = np.linspace(0.0, math.pi, 25)
    c, s = np.cos(t_lo), np.sin(t_lo)
    head = list(zip(cx + a * np.cos(t_up), cy + b * np.sin(t_up)))
    lower_x = cx + a_low * np.sign(c) * np.abs(c) ** (2 / n_low)
    lower_y = cy + bl * np.abs(s) ** (2 / n_low)
    head += list(zip(lower_x, lower_y))

    # ---- body ------------------------------------------------------------------------
    sh_w = (0.40 if male else 0.34) * (0.92 + 0.16 * p["shoulder_w"])
    sh_top = chin_y + 0.07
    d.rounded_rectangle(
        [X(cx - sh_w), X(sh_top), X(cx + sh_w), X(sh_top + 0.6)], radius=X(0.12), fill=clothes
    )
    if long_hair:  # hair behind the head, down to the shoulders
        hl = chin_y + 0.06 + 0.10 * p["hair_len"]
        hw = a * 1.42
        back = [(cx - hw, hl)]
        back += list(zip(cx + hw * np.cos(t_up), cy + (cy - hair_top) * np.sin(t_up)))
        back += [(cx + hw, hl)]
        back += [(cx + hw * 0.5, hl + 0.03), (cx - hw * 0.5, hl + 0.03)]
        d.polygon(pts(back), fill=hair)
    neck_w = a * (0.46 if male else 0.38) * (0.92 + 0.16 * p["neck_w"])
    d.rectangle([X(cx - neck_w), X(cy + 0.3 * b), X(cx + neck_w), X(sh_top + 0.05)], fill=skin)
    d.polygon(
        pts([(cx - neck_w, sh_top + 0.005), (cx + neck_w, sh_top + 0.005),
             (cx, sh_top + 0.09)]), fill=skin)
    d.rectangle([X(cx - neck_w), X(chin_y - 0.02), X(cx + neck_w), X(chin_y + 0.025)],
                fill=skin_shade)

    # ---- ears and head ----------------------------------------------------------------
    ear_y = eye_y + 0.14 * b
    for sgn in (-1, 1):
        ex = cx + sgn * a * 0.97
        ellipse(ex, ear_y, a * 0.15, b * 0.22, fill=skin)
        ellipse(ex + sgn * a * 0.03, ear_y, a * 0.07, b * 0.13, fill=skin_shade)
    d.polygon(pts(head), fill=skin)

    # ---- age ---------------------------------------------------------------------------
    if not on["Young"]:
        wl = 0.011
        line_c = _scale(skin, 0.5)
        for k, yy in enumerate((cy - 0.56 * b, cy - 0.46 * b, cy - 0.36 * b)):
            xs = np.linspace(cx - 0.45 * a, cx + 0.45 * a, 7)
            curve(xs, yy - 0.05 * b * (1 - ((xs - cx) / (0.45 * a)) ** 2) + 0.01 * k, wl, line_c)
        for sgn in (-1, 1):
            # nose-to-mouth folds
            curve([cx + sgn * 0.22 * a, cx + sgn * 0.40 * a, cx + sgn * (mw / a + 0.12) * a],
                  [nose_y - 0.08 * b, nose_y + 0.12 * b, mouth_y + 0.10 * b], wl, line_c)
            # crow's feet
            ox = cx + sgn * (eye_dx + eye_rx + 0.05 * a)
            for dy in (-0.05, 0.0, 0.05):
                curve([ox, ox + sgn * 0.13 * a], [eye_y + dy * b, eye_y + dy * 2.2 * b], wl, line_c)
            # eye bags
            xs = np.linspace(cx + sgn * eye_dx - eye_rx, cx + sgn * eye_dx + eye_rx, 6)
            bag = 1 - ((xs - cx - sgn * eye_dx) / eye_rx) ** 2
            curve(xs, eye_y + eye_ry + 0.05 * b + 0.05 * b * bag,
                  wl, line_c)

    # ---- beard (semi-transparent, under the mouth) -------------------------------------
    if not on["No_Beard"]:
        k = np.linspace(0.12, math.pi - 0.12, 21)
        ck, sk = np.cos(k), np.sin(k)
        outer = list(zip(cx + 1.04 * a_low * np.sign(ck) * np.abs(ck) ** (2 / n_low),
                         cy + 0.03 * b + 1.04 * bl * np.abs(sk) ** (2 / n_low)))
        inner = [(cx - 0.92 * a, eye_y + 0.30 * b), (cx - 0.62 * a, nose_y + 0.04 * b),
                 (cx - mw - 0.06 * a, mouth_y), (cx - mw * 0.6, mouth_y + 0.17 * b),
                 (cx, mouth_y + 0.20 * b), (cx + mw * 0.6, mouth_y + 0.17 * b),
                 (cx + mw + 0.06 * a, mouth_y), (cx + 0.62 * a, nose_y + 0.04 * b),
                 (cx + 0.92 * a, eye_y + 0.30 * b)]
        d.polygon(pts(outer + inner), fill=hair_dark + (200,))
    if on["Goatee"]:
        g = [(cx - mw * 0.75, mouth_y + 0.10 * b), (cx + mw * 0.75, mouth_y + 0.10 * b),
             (cx + mw * 0.62, chin_y - 0.10 * b), (cx + mw * 0.3, chin_y + 0.03 * b),
             (cx - mw * 0.3, chin_y + 0.03 * b), (cx - mw * 0.62, chin_y - 0.10 * b)]
        d.polygon(pts(g), fill=hair_dark)

    # ---- hair ----------------------------------------------------------------------
    hr_x = a * (1.07 if male else 1.13) * (0.98 + 0.06 * p["hair_vol"])
    hr_cy = cy
    hr_ry = cy - hair_top
    if not bald:
        side_y = temple_y + (0.02 if male else 0.25) * b
        phi = math.asin(min(0.95, (side_y - hr_cy) / hr_ry)) if side_y > hr_cy else 0.0
        t = np.linspace(math.pi - phi, 2 * math.pi + phi, 29)
        outer = list(zip(cx + hr_x * np.cos(t), hr_cy + hr_ry * np.sin(t)))
        # hairline from the right temple to the left one
        s_ = np.linspace(1.0, -1.0, 21)
        hl_y = cy - 0.62 * b
        line_y = hl_y + (temple_y - hl_y) * np.abs(s_) ** 3
        if on["Receding_Hairline"]:
            line_y = line_y - 0.26 * b * np.exp(-(((np.abs(s_) - 0.58) / 0.2) ** 2)) - 0.05 * b
        hairline = list(zip(cx + s_ * 0.96 * a, line_y))
        poly = outer + [(cx + 0.98 * a, side_y)] + hairline + [(cx - 0.98 * a, side_y)]
        d.polygon(pts(poly), fill=hair)
        # a few strands for texture
        for k in (-0.5, 0.0, 0.5):
            y0 = hr_cy - hr_ry * math.sqrt(1 - (0.9 * k * a / hr_x) ** 2) + 0.08 * b
            curve([cx + k * a * 0.9, cx + k * a * 1.1], [y0, hl_y - 0.05 * b],
                  0.005, hair_dark + (110,))
    else:
        for sgn in (-1, 1):
            tuft = [(cx + sgn * 1.02 * a, eye_y - 0.40 * b), (cx + sgn * 1.08 * a, eye_y - 0.15 * b),
                    (cx + sgn * 1.06 * a, ear_y), (cx + sgn * 0.97 * a, ear_y + 0.05 * b),
                    (cx + sgn * 0.93 * a, eye_y - 0.2 * b)]
            d.polygon(pts(tuft), fill=hair)
        ellipse(cx - 0.25 * a, cy - 0.78 * b, 0.22 * a, 0.08 * b, fill=(255, 255, 255, 70))
    if on["Bangs"]:
        xs = np.linspace(cx - 0.95 * a, cx + 0.95 * a, 15)
        base = brow_y - 0.07 * b + 0.04 * b * (1 - ((xs - cx) / a) ** 2)
        zig = np.where(np.arange(15) % 2 == 0, 0.0, -0.07 * b)
        zig = np.roll(zig, int(p["bangs_phase"] * 2))
        bottom = list(zip(xs, base + zig))
        top = [(cx + 0.98 * a, temple_y), (cx + 0.7 * a, cy - 0.85 * b), (cx, cy - 0.98 * b),
               (cx - 0.7 * a, cy - 0.85 * b), (cx - 0.98 * a, temple_y)]
        d.polygon(pts(bottom + top), fill=hair)
        for k in (-0.6, -0.2, 0.2, 0.6):
            curve([cx + k * a * 0.8, cx + k * a], [cy - 0.75 * b, brow_y - 0.12 * b], 0.005,
                  hair_dark + (120,))
    if long_hair:  # locks falling in front of the ears down to the shoulders
        hl = chin_y + 0.06 + 0.10 * p["hair_len"]
        for sgn in (-1, 1):
            lock = [(cx + sgn * 0.95 * a, temple_y - 0.1 * b), (cx + sgn * 0.86 * a, eye_y + 0.2 * b),
                    (cx + sgn * 0.90 * a, eye_y + 0.6 * b), (cx + sgn * 1.05 * a, chin_y - 0.05 * b),
                    (cx + sgn * 1.20 * a, hl), (cx + sgn * 1.42 * a, hl),
                    (cx + sgn * 1.42 * a, cy), (cx + sgn * hr_x, temple_y - 0.2 * b)]
            d.polygon(pts(lock), fill=hair)
    if on["Sideburns"]:
        for sgn in (-1, 1):
            sb = [(cx + sgn * 0.99 * a, temple_y - 0.05 * b), (cx + sgn * 0.80 * a, temple_y - 0.05 * b),
                  (cx + sgn * 0.80 * a, eye_y + 0.38 * b), (cx + sgn * 0.96 * a, eye_y + 0.42 * b)]
            d.polygon(pts(sb), fill=hair_dark)

    # ---- eyes and brows ----------------------------------------------------------------
    brow_w = 0.035 * a * (1.4 if male else 1.0) * (2.6 if on["Bushy_Eyebrows"] else 1.0)
    brow_len = 0.23 * a * (1.2 if on["Bushy_Eyebrows"] else 1.0)
    tilt = 0.05 * b * (p["brow_tilt"] - 0.5)
    for sgn in (-1, 1):
        ex = cx + sgn * eye_dx
        ellipse(ex, eye_y, eye_rx, eye_ry, fill=(250, 250, 250))
        ellipse(ex, eye_y, eye_ry * 0.95, eye_ry * 0.95, fill=iris)
        ellipse(ex, eye_y, eye_ry * 0.45, eye_ry * 0.45, fill=(10, 10, 10))
        ellipse(ex + eye_ry * 0.3, eye_y - eye_ry * 0.3, eye_ry * 0.16, eye_ry * 0.16,
                fill=(255, 255, 255))
        xs = np.linspace(ex - eye_rx, ex + eye_rx, 7)
        lid = eye_y - eye_ry * np.sqrt(np.clip(1 - ((xs - ex) / eye_rx) ** 2, 0, 1))
        curve(xs, lid, 0.008 if male else 0.014, (30, 20, 20))
        if not male:
            curve([ex + sgn * eye_rx * 0.9, ex + sgn * eye_rx * 1.25],
                  [eye_y - eye_ry * 0.3, eye_y - eye_ry * 0.75], 0.008, (30, 20, 20))
        bx = np.linspace(ex - brow_len, ex + brow_len, 7)
        by = brow_y - 0.06 * b * (1 - ((bx - ex) / brow_len) ** 2) + sgn * tilt * (bx - ex) / brow_len
        curve(bx, by, brow_w, brow_c)

    # ---- nose ------------------------------------------------------------------------
    nw = 0.12 * a
    curve([cx + 0.03 * a, cx + 0.07 * a, cx + nw],
          [eye_y + 0.08 * b, nose_y - 0.12 * b, nose_y - 0.02 * b],
          0.007, skin_shade)
    xs = np.linspace(cx - nw, cx + nw, 7)
    curve(xs, nose_y + 0.03 * b * (1 - ((xs - cx) / nw) ** 2), 0.008, line_c)
    ellipse(cx - nw * 0.55, nose_y - 0.01 * b, nw * 0.18, nw * 0.12, fill=line_c)
    ellipse(cx + nw * 0.55, nose_y - 0.01 * b, nw * 0.18, nw * 0.12, fill=line_c)

    # ---- mouth -------------------------------------------------------------------------
    smile, open_ = on["Smiling"], on["Mouth_Slightly_Open"]
    if smile:
        mwx = mw * 1.18
        xs = np.linspace(cx - mwx, cx + mwx, 13)
        q = 1 - ((xs - cx) / mwx) ** 2
        if open_:
            top = mouth_y - 0.03 * b + 0.04 * b * q
            bot = mouth_y - 0.03 * b + 0.26 * b * q
            d.polygon(pts(list(zip(xs, top)) + list(zip(xs[::-1], bot[::-1]))), fill=(70, 18, 24))
            teeth = top + 0.07 * b * np.sqrt(np.clip(q, 0.0, 1.0))
            d.polygon(pts(list(zip(xs, top)) + list(zip(xs[::-1], teeth[::-1]))), fill=(245, 245, 240))
            curve(xs, bot, 0.010, lip)
            curve(xs, top, 0.008, lip)
        else:
            ys = mouth_y - 0.06 * b + 0.17 * b * q
            curve(xs, ys, 0.018, lip_dark)
            for sgn in (-1, 1):  # dimples at the raised corners
                curve([cx + sgn * mwx * 1.0, cx + sgn * mwx * 1.1],
                      [mouth_y - 0.06 * b, mouth_y - 0.12 * b], 0.007, line_c)
    else:
        if open_:
            ry = 0.13 * b
            ellipse(cx, mouth_y + 0.03 * b, mw * 0.62, ry, fill=lip)
            ellipse(cx, mouth_y + 0.03 * b, mw * 0.50, ry * 0.78, fill=(70, 18, 24))
            ellipse(cx, mouth_y - 0.04 * b, mw * 0.36, ry * 0.22, fill=(245, 245, 240))
        else:
            xs = np.linspace(cx - mw, cx + mw, 9)
            q = 1 - ((xs - cx) / mw) ** 2
            upper, lower = mouth_y - 0.05 * b * q, mouth_y + 0.06 * b * q
            d.polygon(pts(list(zip(xs, upper)) + list(zip(xs[::-1], lower[::-1]))),
                      fill=lip)
            curve(xs, mouth_y + 0.015 * b * q, 0.009, lip_dark)
    if on["Mustache"]:
        xs = np.linspace(cx - mw * 1.25, cx + mw * 1.25, 11)
        r = (xs - cx) / (mw * 1.25)
        top = nose_y + 0.07 * b + 0.02 * b * r ** 2
        bot = mouth_y - 0.07 * b + 0.10 * b * r ** 4 - 0.02 * b * (1 - r ** 2)
        d.polygon(pts(list(zip(xs, top)) + list(zip(xs[::-1], bot[::-1]))), fill=hair_dark)

    # ---- glasses ---------------------------------------------------------------------
    if on["Eyeglasses"]:
        gc = _hsv(p["glass_c"] * 3.0, 0.5, 0.25) if p["glass_c"] > 0.5 else (20, 20, 24)
        gw = px(0.012 * (1.0 if size >= 64 else 1.3))
        grx, gry = eye_rx * 1.55, eye_rx * 1.15
        for sgn in (-1, 1):
            ex = cx + sgn * eye_dx
            box = [X(ex - grx), X(eye_y - gry), X(ex + grx), X(eye_y + gry)]
            if p["glass_shape"] < 0.5:
                d.ellipse(box, fill=(200, 225, 255, 45), outline=gc, width=gw)
            else:
                d.rounded_rectangle(box, radius=X(gry * 0.5), fill=(200, 225, 255, 45),
                                    outline=gc, width=gw)
            d.line(pts([(ex + sgn * grx, eye_y - gry * 0.3), (cx + sgn * a * 0.98, ear_y - 0.1 * b)]),
                   fill=gc, width=gw)
        d.line(pts([(cx - eye_dx + grx, eye_y - 0.1 * gry), (cx + eye_dx - grx, eye_y - 0.1 * gry)]),
               fill=gc, width=gw)

    # ---- downsample, lighting ----------------------------------------------------------
    img = img.resize((size, size), Image.LANCZOS)
    arr = np.asarray(img, dtype=np.float32)
    ang = 2 * math.pi * p["light_a"]
    strength = 0.22 * p["light_s"]
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = 1.0 + strength * (g[None, :] * math.cos(ang) + g[:, None] * math.sin(ang))
    arr = arr * shade[:, :, None]
    return np.clip(arr + 0.5, 0, 255).astype(np.uint8)


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def _check_attributes(attributes) -> tuple[str, ...]:
    if attributes is None:
        return PROCEDURAL_ATTRIBUTES
    try:
        names = resolve_attributes(attributes)
    except ValueError as exc:
        raise ValueError(
            f"{exc}\nProceduralFaces supports: {', '.join(PROCEDURAL_ATTRIBUTES)}"
        ) from None
    unsupported = [n for n in names if n not in _INDEX]
    if unsupported:
        raise ValueError(
            f"ProceduralFaces does not draw attribute(s) {unsupported}; supported attributes "
            f"are: {', '.join(PROCEDURAL_ATTRIBUTES)}"
        )
    return names


class ProceduralFaces(Dataset):
    """Deterministic procedural cartoon faces; item ``i`` depends only on (seed, split, i).

    Returns (image float32 (3, size, size) in [-1, 1], labels float32 (A,) of 0/1) with
    labels in the order of ``attributes`` (a preset name, a comma list or a sequence of
    names, all in PROCEDURAL_ATTRIBUTES; default PROCEDURAL_ATTRIBUTES). Attributes that
    are not requested still vary in the images (as unlabelled factors).
    """

    def __init__(
        self,
        size: int = 64,
        count: int = 20000,
        seed: int = 0,
        attributes: str | Sequence[str] | None = None,
        split: str = "train",
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 32:
            raise ValueError(f"ProceduralFaces size must be an integer >= 32, got {size!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"ProceduralFaces count must be a positive integer, got {count!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.size = size
        self.count = count
        self.seed = int(seed)
        self.split = split
        self.attributes = _check_attributes(attributes)
        self._cols = [_INDEX[n] for n in self.attributes]
        self._labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.count

    def _index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for {self.count} items")
        return index

    def _uniforms(self, index: int) -> np.ndarray:
        return _item_uniforms(self.seed, SPLITS[self.split], index)

    def full_labels(self, index: int) -> np.ndarray:
        """All PROCEDURAL_ATTRIBUTES labels of item ``index`` (float32 numpy)."""
        return _labels_from_uniforms(self._uniforms(self._index(index)))

    @property
    def labels(self) -> torch.Tensor:
        """(len, A) float tensor of every item's labels (computed once, without drawing)."""
        if self._labels is None:
            rows = np.stack([
                _labels_from_uniforms(_item_uniforms(self.seed, SPLITS[self.split], i))
                for i in range(self.count)
            ])
            self._labels = torch.from_numpy(rows[:, self._cols].copy())
        return self._labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        img = render_face(full, u[_N_LABEL_U:], self.size)
        return _to_tensor(img), torch.from_numpy(full[self._cols].copy())

    def render(
        self, index: int, edits: Mapping[str, float | int | bool] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``index`` with attributes set by name (ground truth for an edit).

        ``edits`` maps PROCEDURAL_ATTRIBUTES names to 0/1; the conflict rules of
        ``attributes.apply_edits`` apply (hair colours exclusive, Bald / Receding_Hairline
        clear Bangs). All nuisance factors (pose, colours, lighting...) are unchanged.
        Returns (image, labels over ``self.attributes``).
        """
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        if edits:
            t = apply_edits(torch.from_numpy(full)[None], PROCEDURAL_ATTRIBUTES, dict(edits))
            full = t[0].numpy().astype(np.float32)
        img = render_face(full, u[_N_LABEL_U:], self.size)
        return _to_tensor(img), torch.from_numpy(full[self._cols].copy())

    def render_labels(self, index: int, labels: torch.Tensor) -> torch.Tensor:
        """Item ``index`` drawn with ``labels`` (A,) over ``self.attributes`` (0/1, e.g. another
        item's labels) instead of its own, with every nuisance factor unchanged: the true
        result of translating the item to those labels (the trainer's paired target)."""
        u = self._uniforms(self._index(index))
        full = _labels_from_uniforms(u)
        full[self._cols] = (torch.as_tensor(labels, dtype=torch.float32).cpu().numpy() > 0.5)
        return _to_tensor(render_face(full, u[_N_LABEL_U:], self.size))


def procedural_batch(
    n: int,
    size: int = 64,
    seed: int = 0,
    attributes: str | Sequence[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training items of ProceduralFaces(size, seed=seed) as tensors:
    images (n, 3, size, size) in [-1, 1] and labels (n, A)."""
    ds = ProceduralFaces(size=size, count=n, seed=seed, attributes=attributes)
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def attribute_sweep(
    index: int = 0, size: int = 64, seed: int = 0, attributes: Sequence[str] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """The item ``index`` followed by one image per attribute, that attribute flipped.

    Returns (images (1 + A, 3, size, size), captions). A hair colour that is already set
    is flipped to the next colour in HAIR_COLOURS rather than to "none".
    """
    ds = ProceduralFaces(size=size, count=index + 1, seed=seed)
    names = _check_attributes(attributes)
    full = ds.full_labels(index)
    images = [ds[index][0]]
    captions = ["original"]
    for n in names:
        value = full[_INDEX[n]]
        if n in HAIR_COLOURS and value > 0.5:
            nxt = HAIR_COLOURS[(HAIR_COLOURS.index(n) + 1) % len(HAIR_COLOURS)]
            edits, cap = {nxt: 1}, f"{nxt}=1"
        else:
            edits, cap = {n: 1 - int(value)}, f"{n}={1 - int(value)}"
        images.append(ds.render(index, edits)[0])
        captions.append(cap)
    return torch.stack(images), captions


def main(argv: Sequence[str] | None = None) -> int:
    from .grid import save_grid

    ap = argparse.ArgumentParser(
        prog="python -m bridgegan.reference.data.synthetic",
        description="Render a grid of procedural faces (rows of faces, no captions).",
    )
    ap.add_argument("--out", required=True, help="output PNG path")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--count", type=int, default=48, help="number of faces (grid mode)")
    ap.add_argument("--nrow", type=int, default=None, help="faces per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attribute-sweep", action="store_true",
                    help="rows: one identity, then each attribute flipped (first column "
                         "the original); --count identities")
    args = ap.parse_args(argv)
    if args.attribute_sweep:
        rows = []
        for i in range(args.count):
            imgs, caps = attribute_sweep(i, args.size, args.seed)
            rows.append(imgs)
        images = torch.cat(rows)
        nrow = rows[0].shape[0]
        print("columns: original, then each attribute flipped (a set hair colour goes to "
              "the next one):", ", ".join(PROCEDURAL_ATTRIBUTES))
    else:
        images, _ = procedural_batch(args.count, args.size, args.seed)
        nrow = args.nrow or 8
    w, h = save_grid(images, args.out, nrow=args.nrow or nrow)
    print(f"wrote {args.out} ({w}x{h})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
