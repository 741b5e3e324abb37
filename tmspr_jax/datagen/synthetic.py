"""A synthetic occluded person re-ID dataset in the Market-1501 layout, with LIP label maps for its training images.

Each identity is a distinct combination of part appearances (hair colour and style, skin, upper clothes colour and
pattern, sleeves, lower clothes colour and type, shoes, optional hat and bag), drawn as an articulated front-facing
figure with per-image pose, scale and position, on a random background texture, then shifted in colour and
brightness by its camera. Queries are occluded (an object covering 20-50 % of the body, measured and enforced),
the gallery and the training set are mostly whole (a fraction is occluded the same way), as in Occluded-Duke.
Every query identity has gallery images in cameras other than its queries'. The same seed gives the same bytes
(with the same NumPy and Pillow versions).

Layout written to ``out_dir`` (read by the ``synthetic_occluded`` TFDS builder)::

    bounding_box_train/PPPP_cCs1_FFFFFF_00.jpg   train (pids 1..num_train_ids)
    query/...  bounding_box_test/...             test ids (pids after the train ids), disjoint from train
    parsing_lip/<stem>.png                       LIP label map of each TRAINING image (mode 'L', class 0..19)
    meta.json                                    parameters and per-image metadata (camera, occluder, coverage ...)
    occluders/occ_NNNN.png                       with num_occluder_images > 0: occluder objects of the same kinds,
                                                 drawn independently of every dataset image (covering-view bank)

Label maps label exactly what is drawn: hat 1, hair 2, upper clothes and sleeves 5, pants and shorts 9, skirt 12,
face and neck 13, bare arms and hands 14/15, bare legs 16/17, shoes 18/19. The figure faces the camera, so its left
side (LIP ``Left-*``) is on the image's right. Bags and occluders are not in LIP's label space: they are labelled
0 (background), as a LIP parser would label them.

CLI::

    python -m tmspr_jax.datagen.synthetic --out DIR [--num_ids 100 --images_per_id 8 --num_test_ids 50 --seed 0 ...]
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TRAIN_DIR, QUERY_DIR, GALLERY_DIR, LABEL_DIR = "bounding_box_train", "query", "bounding_box_test", "parsing_lip"
OCCLUDER_DIR = "occluders"  # optional: object crops for the covering view (``num_occluder_images``)
NUM_CAMERAS = 6
BAG = 20  # render id of bags: drawn, but LIP label 0 (LIP has no bag class)

# LIP ids used by the drawing (tmspr_jax.data.parsing.LIP_CLASSES).
HAT, HAIR, UPPER, PANTS, SKIRT, FACE = 1, 2, 5, 9, 12, 13
L_ARM, R_ARM, L_LEG, R_LEG, L_SHOE, R_SHOE = 14, 15, 16, 17, 18, 19

HAIR_COLOURS = ((25, 20, 18), (65, 42, 25), (115, 75, 40), (205, 175, 105), (155, 155, 150), (145, 55, 30))
SKIN_COLOURS = ((240, 205, 175), (225, 175, 140), (190, 140, 100), (140, 95, 65), (95, 65, 45))
CLOTH_COLOURS = (
    (20, 20, 24),
    (235, 235, 230),
    (128, 128, 128),
    (30, 40, 95),
    (40, 90, 200),
    (130, 180, 230),
    (200, 30, 35),
    (110, 20, 30),
    (40, 130, 60),
    (110, 115, 50),
    (230, 200, 40),
    (235, 120, 30),
    (110, 50, 140),
    (235, 140, 170),
    (205, 185, 150),
    (105, 70, 45),
)
SHOE_COLOURS = ((15, 15, 15), (240, 240, 240), (100, 60, 35), (120, 120, 125), (190, 30, 30), (40, 60, 160))
HAIR_STYLES = ("short", "long", "bun", "buzz")
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "twotone", "logo")
SLEEVES = ("long", "short")
LOWER_TYPES = ("pants", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder")
OCCLUDERS = ("box", "side", "pole", "car", "bush", "top")
# The 10 categorical attributes two identities must differ in (``min_attribute_diff``), in Identity.attributes order,
# and the drawn regions (render ids) that show each one.
ATTRIBUTES = (
    "hair colour",
    "hair style",
    "upper colour",
    "pattern",
    "sleeves",
    "lower colour",
    "lower type",
    "shoe colour",
    "hat",
    "bag",
)
ATTRIBUTE_REGIONS = (
    (HAIR,),
    (HAIR,),
    (UPPER,),
    (UPPER,),
    (UPPER, L_ARM, R_ARM),
    (PANTS, SKIRT),
    (PANTS, SKIRT, L_LEG, R_LEG),
    (L_SHOE, R_SHOE),
    (HAT, HAIR, FACE),
    (BAG, UPPER),
)


@dataclasses.dataclass(frozen=True)
class Identity:
    """The appearance of one person (colours are RGB 0..255)."""

    pid: int
    skin: tuple[float, float, float]
    hair_colour: tuple[float, float, float]
    hair_style: str
    upper_colour: tuple[float, float, float]
    upper_colour2: tuple[float, float, float]
    pattern: str
    stripe_period: float  # in figure heights
    sleeves: str
    lower_colour: tuple[float, float, float]
    lower_type: str
    shoe_colour: tuple[float, float, float]
    hat_colour: tuple[float, float, float] | None
    bag: str
    bag_colour: tuple[float, float, float]
    bag_side: int  # +1 image right, -1 image left
    build: float  # width factor
    height: float  # height factor
    attributes: tuple[int, ...] = ()  # the categorical draw behind the fields above, one index per ATTRIBUTES entry


@dataclasses.dataclass(frozen=True)
class Camera:
    """Per-camera colour and brightness shift: ``out = (img - 128) * contrast + 128 + offset``, per channel gain."""

    gain: tuple[float, float, float]
    offset: float
    contrast: float
    blur: float


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(colour, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_identities(
    n: int, rng: np.random.Generator, first_pid: int = 1, min_diff: int = 2, avoid: Sequence[Identity] = ()
) -> list[Identity]:
    """``n`` identities whose categorical attributes differ pairwise, and from every identity in ``avoid``, in at least
    ``min_diff`` places."""
    sizes = (
        len(HAIR_COLOURS),
        len(HAIR_STYLES),
        len(CLOTH_COLOURS),
        len(PATTERNS),
        len(SLEEVES),
        len(CLOTH_COLOURS),
        len(LOWER_TYPES),
        len(SHOE_COLOURS),
        len(CLOTH_COLOURS) + 1,
        len(BAGS),
    )
    keys = np.array([ident.attributes for ident in avoid], np.int64).reshape(-1, len(sizes))
    out: list[Identity] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError(f"could not draw {n} identities differing in >= {min_diff} attributes")
        k = np.array([rng.integers(s) for s in sizes])
        # hats on ~25 %: index len(CLOTH_COLOURS) means "no hat"
        k[8] = rng.integers(len(CLOTH_COLOURS)) if rng.random() < 0.25 else len(CLOTH_COLOURS)
        c2 = int(rng.integers(len(CLOTH_COLOURS))) if PATTERNS[k[3]] != "plain" else int(k[2])
        if PATTERNS[k[3]] != "plain" and c2 == k[2]:
            continue  # a pattern needs two different colours
        if len(keys) and ((keys != k).sum(1) < min_diff).any():
            continue
        keys = np.vstack([keys, k])
        out.append(
            Identity(
                pid=first_pid + len(out),
                skin=_jitter(rng, SKIN_COLOURS[rng.integers(len(SKIN_COLOURS))], 8),
                hair_colour=_jitter(rng, HAIR_COLOURS[k[0]], 10),
                hair_style=HAIR_STYLES[k[1]],
                upper_colour=_jitter(rng, CLOTH_COLOURS[k[2]], 12),
                upper_colour2=_jitter(rng, CLOTH_COLOURS[c2], 12),
                pattern=PATTERNS[k[3]],
                stripe_period=float(rng.choice([0.035, 0.05, 0.07])),
                sleeves=SLEEVES[k[4]],
                lower_colour=_jitter(rng, CLOTH_COLOURS[k[5]], 12),
                lower_type=LOWER_TYPES[k[6]],
                shoe_colour=_jitter(rng, SHOE_COLOURS[k[7]], 10),
                hat_colour=None if k[8] == len(CLOTH_COLOURS) else _jitter(rng, CLOTH_COLOURS[k[8]], 10),
                bag=BAGS[k[9]],
                bag_colour=_jitter(rng, CLOTH_COLOURS[rng.integers(len(CLOTH_COLOURS))], 12),
                bag_side=int(rng.choice([-1, 1])),
                build=float(rng.uniform(0.88, 1.12)),
                height=float(rng.uniform(0.94, 1.04)),
                attributes=tuple(int(v) for v in k),
            )
        )
    return out


def sample_cameras(rng: np.random.Generator, strength: float = 1.0) -> list[Camera]:
    """The six cameras' colour casts, brightness, contrast and blur (``strength`` scales the shifts)."""
    if strength < 0:
        raise ValueError(f"camera_strength must be >= 0, got {strength}")
    return [
        Camera(
            gain=tuple(float(1 + strength * (g - 1)) for g in rng.uniform(0.82, 1.18, 3)),
            offset=float(strength * rng.uniform(-22, 22)),
            contrast=float(1 + strength * (rng.uniform(0.8, 1.15) - 1)),
            blur=float(rng.choice([0.0, 0.0, 0.6, 0.9])),
        )
        for _ in range(NUM_CAMERAS)
    ]


# ---------------------------------------------------------------------------------------------- drawing


def _segment(draw: ImageDraw.ImageDraw, p, q, w0: float, w1: float, value: int) -> None:
    """A tapered limb from ``p`` to ``q`` (widths ``w0`` -> ``w1``) with rounded joints."""
    d = np.subtract(q, p)
    n = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9)
    poly = [tuple(p + n * w0 / 2), tuple(q + n * w1 / 2), tuple(q - n * w1 / 2), tuple(p - n * w0 / 2)]
    draw.polygon(poly, fill=value)
    for c, w in ((p, w0), (q, w1)):
        r = w / 2
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=value)


def _limb(start: np.ndarray, angle: float, length: float) -> np.ndarray:
    """End point of a limb hanging from ``start`` at ``angle`` radians from straight down (positive: to image right)."""
    return start + length * np.array([np.sin(angle), np.cos(angle)])


def draw_person(ident: Identity, size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Render ids ``[H, W]`` uint8 of one figure (LIP ids, :data:`BAG` for bags, 0 elsewhere) and its geometry."""
    h, w = size
    fh = h * rng.uniform(0.8, 0.93) * ident.height  # figure height, head top to soles
    fh = min(fh, h * 0.98)
    top = rng.uniform(0.005 * h, h - 0.985 * fh)
    cx = w / 2 + rng.uniform(-0.09, 0.09) * w

    def P(u: float, v: float) -> np.ndarray:  # figure coordinates (figure heights) -> pixels
        return np.array([cx + u * fh, top + v * fh])

    im = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(im)
    b = ident.build
    sw, hw = 0.12 * b, 0.092 * b  # half widths at shoulders and hips
    lean = rng.uniform(-0.02, 0.02)

    def U(u: float, v: float) -> np.ndarray:  # upper body leans with the pose
        return P(u + lean * (0.5 - v) / 0.5, v)

    # legs (drawn first: the torso, skirt and shoes overlap them)
    leg_swing = rng.uniform(-0.26, 0.26)
    knee_bend = rng.uniform(0.0, 0.2)
    lower_cls = SKIRT if ident.lower_type == "skirt" else PANTS
    legs = []
    for side, leg_cls, shoe_cls in ((+1, L_LEG, L_SHOE), (-1, R_LEG, R_SHOE)):
        hip = P(side * hw * 0.5, 0.5)
        a = side * 0.05 + (leg_swing if side > 0 else -leg_swing)
        knee = _limb(hip, a, 0.225 * fh)
        ankle = _limb(knee, a - np.sign(a + 1e-9) * knee_bend * 0.5, 0.215 * fh)
        legs.append((side, leg_cls, shoe_cls, hip, knee, ankle))
        bare = ident.lower_type in ("shorts", "skirt")
        _segment(dr, hip, knee, 0.082 * fh * b, 0.062 * fh, leg_cls if bare else PANTS)
        _segment(dr, knee, ankle, 0.062 * fh, 0.048 * fh, leg_cls if bare else PANTS)
        if ident.lower_type == "shorts":
            _segment(dr, hip, hip + 0.55 * (knee - hip), 0.09 * fh * b, 0.075 * fh, PANTS)
    pelvis = [
        tuple(P(-hw * 1.02, 0.48)),
        tuple(P(hw * 1.02, 0.48)),
        tuple(P(hw * 0.85, 0.58)),
        tuple(P(-hw * 0.85, 0.58)),
    ]
    dr.polygon(pelvis, fill=PANTS if lower_cls == PANTS else L_LEG)
    if lower_cls == SKIRT:
        # centre strip below the pelvis stays bare leg only where the skirt does not cover it
        hem = rng.uniform(0.66, 0.74)
        dr.polygon(
            [
                tuple(P(-hw * 1.02, 0.47)),
                tuple(P(hw * 1.02, 0.47)),
                tuple(P(hw * 1.55, hem)),
                tuple(P(-hw * 1.55, hem)),
            ],
            fill=SKIRT,
        )
    for side, _, shoe_cls, _, _, ankle in legs:
        c = ankle + np.array([side * 0.012 * fh, 0.018 * fh])
        rx, ry = 0.045 * fh, 0.024 * fh
        dr.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=shoe_cls)

    # torso
    torso = [
        tuple(U(-sw, 0.185)),
        tuple(U(sw, 0.185)),
        tuple(U(sw * 0.98, 0.25)),
        tuple(U(hw * 1.05, 0.5)),
        tuple(U(-hw * 1.05, 0.5)),
        tuple(U(-sw * 0.98, 0.25)),
    ]
    dr.polygon(torso, fill=UPPER)
    for side in (+1, -1):  # rounded shoulders
        c, r = U(side * (sw - 0.03), 0.215), 0.035 * fh
        dr.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=UPPER)

    # arms
    arm_swing = rng.uniform(-0.3, 0.3)
    for side, arm_cls in ((+1, L_ARM), (-1, R_ARM)):
        shoulder = U(side * (sw - 0.025), 0.21)
        a = side * rng.uniform(0.08, 0.22) + (-arm_swing if side > 0 else arm_swing)
        elbow = _limb(shoulder, a, 0.165 * fh)
        wrist = _limb(elbow, a - side * rng.uniform(0.0, 0.35), 0.155 * fh)
        fore = UPPER if ident.sleeves == "long" else arm_cls
        if ident.sleeves == "long":
            _segment(dr, shoulder, elbow, 0.058 * fh * b, 0.05 * fh, UPPER)
        else:
            _segment(dr, shoulder, elbow, 0.05 * fh * b, 0.045 * fh, arm_cls)
            _segment(dr, shoulder, shoulder + 0.45 * (elbow - shoulder), 0.066 * fh * b, 0.058 * fh, UPPER)
        _segment(dr, elbow, wrist, 0.05 * fh if fore == UPPER else 0.045 * fh, 0.04 * fh, fore)
        hand = _limb(wrist, a, 0.025 * fh)
        r = 0.024 * fh
        dr.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=arm_cls)

    # bag (LIP label 0)
    if ident.bag == "backpack":
        for side in (+1, -1):
            _segment(dr, U(side * sw * 0.55, 0.19), U(side * hw * 0.8, 0.42), 0.022 * fh, 0.022 * fh, BAG)
    elif ident.bag == "shoulder":
        s = ident.bag_side
        _segment(dr, U(-s * sw * 0.6, 0.19), U(s * (hw + 0.02), 0.47), 0.018 * fh, 0.018 * fh, BAG)
        x0, x1 = sorted((s * (hw - 0.01), s * (hw + 0.1)))
        a, c = U(x0, 0.44), U(x1, 0.57)
        dr.rounded_rectangle([a[0], a[1], c[0], c[1]], radius=0.015 * fh, fill=BAG)

    # neck, hair, face, hat
    neck = U(0, 0.13), U(0, 0.19)
    _segment(dr, neck[0], neck[1], 0.045 * fh, 0.05 * fh, FACE)
    head = U(0, 0.075)
    if ident.hair_style == "long":
        for side in (+1, -1):
            dr.polygon(
                [
                    tuple(U(side * 0.035, 0.06)),
                    tuple(U(side * 0.068, 0.06)),
                    tuple(U(side * 0.08, 0.26)),
                    tuple(U(side * 0.045, 0.25)),
                ],
                fill=HAIR,
            )
    hr = (0.052, 0.063) if ident.hair_style == "buzz" else (0.062, 0.07)
    hc = U(0, 0.07 if ident.hair_style == "buzz" else 0.064)
    dr.ellipse([hc[0] - hr[0] * fh, hc[1] - hr[1] * fh, hc[0] + hr[0] * fh, hc[1] + hr[1] * fh], fill=HAIR)
    if ident.hair_style == "bun":
        c, r = U(0, 0.0), 0.03 * fh
        dr.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=HAIR)
    fr = (0.048, 0.058)
    fc = U(0, 0.082)
    dr.ellipse([fc[0] - fr[0] * fh, fc[1] - fr[1] * fh, fc[0] + fr[0] * fh, fc[1] + fr[1] * fh], fill=FACE)
    if ident.hat_colour is not None:
        a, c = U(-0.066, -0.005), U(0.066, 0.11)
        dr.pieslice([a[0], a[1], c[0], c[1]], 180, 360, fill=HAT)
        a, c = U(-0.08, 0.045), U(0.08, 0.058)
        dr.rectangle([a[0], a[1], c[0], c[1]], fill=HAT)

    rid = np.asarray(im, dtype=np.uint8).copy()
    geometry = {
        "top": float(top),
        "cx": float(cx),
        "fig_h": float(fh),
        "head_center": [float(head[1]), float(head[0])],  # (y, x) pixels
        "torso_center": [float(U(0, 0.33)[1]), float(U(0, 0.33)[0])],
    }
    return rid, geometry


def _background(size: tuple[int, int], rng: np.random.Generator, saturation: float = 1.0) -> np.ndarray:
    """A random background ``[H, W, 3]`` float: gradient, stripes, blotches or wall-and-floor.

    ``saturation`` scales each colour's distance from its own grey (1 = any RGB colour, 0 = greys only).
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    if saturation != 1.0:
        c1, c2 = (c.mean() + saturation * (c - c.mean()) for c in (c1, c2))
    kind = rng.integers(4)
    if kind == 0:  # linear gradient in a random direction
        t = np.cos(rng.uniform(0, np.pi)) * yy / h + np.sin(rng.uniform(0, np.pi)) * xx / w
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:  # stripes (fences, facades)
        period = rng.uniform(3, 14)
        t = ((yy if rng.random() < 0.5 else xx) // period % 2).astype(np.float32)
    elif kind == 2:  # low-frequency blotches
        small = rng.random((max(2, h // 12), max(2, w // 12))).astype(np.float32)
        t = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    else:  # wall and floor
        horizon = rng.uniform(0.55, 0.85) * h
        t = (yy > horizon).astype(np.float32) + 0.3 * (xx / w) * (yy <= horizon)
    bg = c1 + (c2 - c1) * t[..., None]
    return bg + rng.normal(0, 6, (h, w, 1)).astype(np.float32)


def _colour_person(img: np.ndarray, rid: np.ndarray, ident: Identity, geom: dict, rng: np.random.Generator) -> None:
    """Paints the figure's pixels into ``img`` in place: part colours, the upper-clothes pattern, shading."""
    h, w = rid.shape
    lut = np.zeros((BAG + 1, 3), np.float32)
    lut[[FACE, L_ARM, R_ARM, L_LEG, R_LEG]] = ident.skin
    lut[HAIR], lut[UPPER] = ident.hair_colour, ident.upper_colour
    lut[[PANTS, SKIRT]] = ident.lower_colour
    lut[[L_SHOE, R_SHOE]] = ident.shoe_colour
    lut[BAG] = ident.bag_colour
    if ident.hat_colour is not None:
        lut[HAT] = ident.hat_colour
    lut = np.clip(lut + rng.uniform(-6, 6, (1, 3)), 0, 255)  # small per-image colour drift
    person = rid > 0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - geom["cx"]) / geom["fig_h"]
    v = (yy - geom["top"]) / geom["fig_h"]
    col = lut[rid]
    if ident.pattern != "plain":
        p = ident.stripe_period
        mask = {
            "hstripes": (v // p) % 2 == 1,
            "vstripes": (u // p) % 2 == 1,
            "checks": ((v // p) + (u // p)) % 2 == 1,
            "twotone": v > 0.33,
            "logo": (np.abs(u) < 0.045) & (v > 0.24) & (v < 0.31),
        }[ident.pattern]
        col = np.where(((rid == UPPER) & mask)[..., None], np.asarray(ident.upper_colour2, np.float32), col)
    light = 1.0 + rng.uniform(-0.15, 0.15) * u / 0.15  # light from one side
    shade = (1.0 - 0.22 * np.clip((u / 0.13) ** 2, 0, 1)) * light  # rounded body
    col = col * shade[..., None] + rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    img[person] = col[person]


# ---------------------------------------------------------------------------------------------- occluders


def _occluder_shape(kind: str, s: float, size: tuple[int, int], q: dict) -> Image.Image:
    """Occluder part ids (1 body, 2 detail, 3 dark detail) for extent ``s`` in (0, 1]; area grows with ``s``."""
    h, w = size
    im = Image.new("L", (w, h), 0)
    dr = ImageDraw.Draw(im)
    if kind == "box":  # bin, low wall, bench: from the bottom
        x0, x1 = q["cx"] - q["half"] * w, q["cx"] + q["half"] * w
        y = h - s * h
        dr.rectangle([x0, y, x1, h], fill=1)
        dr.rectangle([x0, y, x1, y + max(1.0, 0.06 * s * h)], fill=2)
    elif kind == "side":  # wall edge or a passer-by entering from one side
        y0, y1 = q["y0"] * h, q["y1"] * h
        if q["left"]:
            dr.rectangle([0, y0, s * w, y1], fill=1)
        else:
            dr.rectangle([w - s * w, y0, w, y1], fill=1)
    elif kind == "pole":  # pole or tree trunk, full height
        half = s * 0.32 * w
        dr.rectangle([q["cx"] - half, 0, q["cx"] + half, h], fill=1)
        dr.rectangle([q["cx"] - half * 0.3, 0, q["cx"] + half * 0.1, h], fill=2)
    elif kind == "car":  # from the bottom: body, windows, wheels
        top = h - s * 0.85 * h
        x0, x1 = q["cx"] - q["half"] * w, q["cx"] + q["half"] * w
        dr.rounded_rectangle([x0, top, x1, h + 10], radius=max(1.0, 0.25 * (h - top)), fill=1)
        win = top + 0.12 * (h - top), top + 0.4 * (h - top)
        dr.rectangle([x0 + 0.15 * (x1 - x0), win[0], x1 - 0.15 * (x1 - x0), win[1]], fill=2)
        r = 0.18 * (h - top)
        for wx in (x0 + 0.2 * (x1 - x0), x1 - 0.2 * (x1 - x0)):
            dr.ellipse([wx - r, h - r, wx + r, h + r], fill=3)
    elif kind == "bush":  # blob of foliage / another texture anywhere on the body
        ry, rx = s * 0.38 * h, s * 0.75 * w
        cy, cx = q["cy"] * h, q["cx"]
        dr.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif kind == "top":  # sign, umbrella, foreground object from the top
        x0, x1 = q["cx"] - q["half"] * w, q["cx"] + q["half"] * w
        dr.rectangle([x0, 0, x1, s * 0.7 * h], fill=1)
    else:
        raise ValueError(f"unknown occluder kind {kind!r}")
    return im


def _occluder_params(kind: str, size: tuple[int, int], geom: dict, rng: np.random.Generator) -> dict:
    h, w = size
    return {
        "cx": geom["cx"] + rng.uniform(-0.3, 0.3) * w,
        "cy": (geom["top"] + rng.uniform(0.15, 0.85) * geom["fig_h"]) / h,
        "half": rng.uniform(0.35, 0.8),
        "y0": rng.uniform(0.0, 0.3),
        "y1": rng.uniform(0.7, 1.0),
        "left": bool(rng.random() < 0.5),
    }


def place_occluder(
    person: np.ndarray, geom: dict, coverage: tuple[float, float], rng: np.random.Generator, max_tries: int = 50
) -> tuple[np.ndarray, str, float]:
    """Occluder ids ``[H, W]`` covering a fraction of ``person`` (bool mask) inside ``coverage``, its kind, fraction.

    A kind and placement are drawn, then the occluder's extent is bisected towards a target fraction drawn in the
    range; a placement that cannot reach the range is redrawn.
    """
    lo, hi = coverage
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"occlusion range must satisfy 0 <= lo < hi <= 1, got {coverage}")
    n = int(person.sum())
    if n == 0:
        raise ValueError("cannot occlude an empty person mask")
    size = person.shape
    for _ in range(max_tries):
        kind = OCCLUDERS[rng.integers(len(OCCLUDERS))]
        q = _occluder_params(kind, size, geom, rng)
        margin = 0.1 * (hi - lo)  # aim inside the range: the pixel grid makes the reachable fractions discrete
        target = rng.uniform(lo + margin, hi - margin)

        def frac(s: float) -> tuple[float, np.ndarray]:
            occ = np.asarray(_occluder_shape(kind, s, size, q))  # noqa: B023  (only called in this iteration)
            return float((person & (occ > 0)).sum()) / n, occ

        f_max, occ = frac(1.0)
        if f_max < lo:
            continue
        a, b = 0.0, 1.0
        best = (f_max, occ)
        for _ in range(14):
            m = (a + b) / 2
            f, o = frac(m)
            if lo <= f <= hi:
                best = (f, o)
                if abs(f - target) < 0.02:
                    break
            if f < target:
                a = m
            else:
                b = m
        if lo <= best[0] <= hi:
            return best[1], kind, best[0]
    raise RuntimeError(f"no occluder covering {lo:.0%}-{hi:.0%} of the person found in {max_tries} tries")


def _colour_occluder(img: np.ndarray, occ: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    h, w = occ.shape
    base = rng.uniform(30, 220, 3).astype(np.float32)
    if kind == "bush":
        base = np.array([rng.uniform(20, 80), rng.uniform(80, 160), rng.uniform(20, 70)], np.float32)
    if kind == "pole":
        base = np.full(3, rng.uniform(60, 170), np.float32)
    lut = np.stack([base, base, base * 0.55 + 30, np.full(3, 25.0, np.float32)])
    col = lut[occ]
    # texture: fine noise for every kind, coarse leaves for bushes
    tex = rng.normal(0, 10 if kind != "bush" else 28, (h, w, 1)).astype(np.float32)
    col = col + tex
    m = occ > 0
    img[m] = col[m]


def render_occluder(
    rng: np.random.Generator, size: tuple[int, int] = (128, 64), background_saturation: float = 1.0
) -> tuple[np.ndarray, str]:
    """One occluder object of a random kind, cropped to its bounding box: ``(rgb uint8 [h, w, 3], kind)``.

    The same kinds, extents and colours as the occluders drawn over people (:func:`place_occluder`), placed in a
    figure-sized frame of ``size`` without a person; the box's corners keep the frame's background.
    """
    h, w = size
    geom = {"cx": w / 2, "top": 0.1 * h, "fig_h": 0.8 * h}  # where a centred figure would stand
    for _ in range(20):
        kind = OCCLUDERS[rng.integers(len(OCCLUDERS))]
        q = _occluder_params(kind, size, geom, rng)
        occ = np.asarray(_occluder_shape(kind, float(rng.uniform(0.5, 1.0)), size, q))
        img = _background(size, rng, background_saturation)
        _colour_occluder(img, occ, kind, rng)
        ys, xs = np.nonzero(occ)
        if len(ys) and ys.max() - ys.min() >= 7 and xs.max() - xs.min() >= 7:  # the covering view needs >= 4 px
            crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            return np.clip(crop, 0, 255).astype(np.uint8), kind
    raise RuntimeError(f"no occluder of at least 8x8 px drawn in 20 tries at size {size}")


# ---------------------------------------------------------------------------------------------- one image


def render_image(
    ident: Identity,
    camera: Camera,
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 64),
    occlusion: tuple[float, float] | None = None,
    background_saturation: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One image of ``ident`` seen by ``camera``: ``(rgb uint8 [H, W, 3], LIP labels uint8 [H, W], metadata)``.

    ``occlusion=(lo, hi)`` places an occluder covering that fraction of the person (labelled 0 underneath).
    """
    img, labels, meta, _, _ = _render(ident, camera, rng, size, occlusion, background_saturation)
    return img, labels, meta


def _render(ident, camera, rng, size, occlusion, background_saturation):
    """:func:`render_image` plus the render ids (bags included) and the occluder mask (zeros when none)."""
    rid, geom = draw_person(ident, size, rng)
    img = _background(size, rng, background_saturation)
    _colour_person(img, rid, ident, geom, rng)
    labels = np.where(rid == BAG, 0, rid).astype(np.uint8)
    person = labels > 0
    meta: dict[str, Any] = {"occluder": None, "coverage": 0.0, "person_pixels": int(person.sum()), **geom}
    occ = np.zeros(size, np.uint8)
    if occlusion is not None:
        occ, kind, frac = place_occluder(person, geom, occlusion, rng)
        _colour_occluder(img, occ, kind, rng)
        labels[occ > 0] = 0
        meta.update(occluder=kind, coverage=frac)
    img = (img - 128.0) * camera.contrast + 128.0 + camera.offset + rng.uniform(-10, 10)
    img = np.clip(img * np.asarray(camera.gain, np.float32), 0, 255).astype(np.uint8)
    if camera.blur > 0:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(camera.blur)))
    return img, labels, meta, rid, occ


# ---------------------------------------------------------------------------------------------- the dataset


def market_name(pid: int, cam: int, frame: int) -> str:
    """``PPPP_cCs1_FFFFFF_00.jpg`` (Market-1501 naming)."""
    return f"{pid:04d}_c{cam}s1_{frame:06d}_00.jpg"


def _prepare_out(out_dir: str, overwrite: bool) -> None:
    owned = (TRAIN_DIR, QUERY_DIR, GALLERY_DIR, LABEL_DIR, OCCLUDER_DIR, "meta.json")
    present = [p for p in owned if os.path.exists(os.path.join(out_dir, p))]
    if present and not overwrite:
        raise FileExistsError(f"{out_dir} already holds {present}; pass overwrite=True (--overwrite) to replace them")
    for p in present:
        path = os.path.join(out_dir, p)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for d in (TRAIN_DIR, QUERY_DIR, GALLERY_DIR, LABEL_DIR):
        os.makedirs(os.path.join(out_dir, d))


def _identities(
    seed: int, num_train: int, num_test: int, min_diff: int, independent_test_set: bool
) -> tuple[list[Identity], list[Identity]]:
    """The training and test identities (pids 1..num_train, then the test ones), as :func:`generate` draws them."""
    if not independent_test_set:
        idents = sample_identities(num_train + num_test, np.random.default_rng([seed, 1]), min_diff=min_diff)
        return idents[:num_train], idents[num_train:]
    # the test identities first, from their own stream; the training ones must differ from them as well
    test = sample_identities(num_test, np.random.default_rng([seed, 1, 1]), first_pid=num_train + 1, min_diff=min_diff)
    train = sample_identities(num_train, np.random.default_rng([seed, 1]), min_diff=min_diff, avoid=test)
    return train, test


def _image_rng(seed: int, index: int, num_train_images: int, independent_test_set: bool) -> np.random.Generator:
    """The random stream of the ``index``-th image in writing order (training images first)."""
    if independent_test_set and index >= num_train_images:
        return np.random.default_rng([seed, 7, index - num_train_images])
    return np.random.default_rng([seed, 5, index])


def _pick(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    """Exactly ``round(fraction * n)`` indices out of ``n``."""
    return set(rng.permutation(n)[: int(round(fraction * n))].tolist())


def generate(
    out_dir: str,
    *,
    num_train_ids: int = 100,
    images_per_id: int = 8,
    num_test_ids: int = 50,
    queries_per_id: int = 2,
    gallery_per_id: int = 6,
    height: int = 128,
    width: int = 64,
    query_occlusion: tuple[float, float] = (0.2, 0.5),
    train_occluded_fraction: float = 0.1,
    gallery_occluded_fraction: float = 0.1,
    jpeg_quality: int = 90,
    seed: int = 0,
    overwrite: bool = False,
    camera_strength: float = 1.0,
    min_attribute_diff: int = 2,
    background_saturation: float = 1.0,
    num_occluder_images: int = 0,
    independent_test_set: bool = False,
) -> dict[str, Any]:
    """Writes the dataset into ``out_dir`` and returns a summary (counts, seconds, per-image metadata).

    Occluded images of every split (all queries; ``train_occluded_fraction`` / ``gallery_occluded_fraction`` of the
    others) have an occluder covering ``query_occlusion`` of the body. The same seed gives the same bytes.
    ``camera_strength`` scales the cameras' colour cast, brightness and contrast shifts (0 = identical cameras);
    ``min_attribute_diff`` is how many of the 10 appearance attributes any two identities differ in, at least;
    ``background_saturation`` in [0, 1] mutes the background colours towards grey (street scenes are mostly muted;
    1 keeps any RGB colour). ``num_occluder_images`` > 0 also writes that many occluder objects
    (:func:`render_occluder`) into ``occluders/``, for the covering view (``config.data.occluder_dir``).

    ``independent_test_set=True`` draws the test identities, their cameras and their images from random streams of
    their own, and the training identities so that they differ from the test ones too: the query and gallery images
    are then the same pixels whatever ``num_train_ids``, ``images_per_id`` and ``train_occluded_fraction`` are (only
    their pids, which follow the training ones, shift), so training sets of different sizes compare on one test set.
    With the default (False) the test set is drawn after the training set, from the same streams, so it changes with
    the training set's size (the shared-stream set of docs/experiments.md).
    """
    t0 = time.perf_counter()
    checks = {
        "num_train_ids": num_train_ids >= 1,
        "num_test_ids": num_test_ids >= 1,
        "images_per_id": images_per_id >= 2,
        "queries_per_id": 1 <= queries_per_id <= NUM_CAMERAS - 1,
        "gallery_per_id": gallery_per_id >= 1,
        "height": height >= 32,
        "width": width >= 16,
        "num ids": num_train_ids + num_test_ids <= 9999,  # four-digit Market pids
        "train_occluded_fraction": 0 <= train_occluded_fraction <= 1,
        "gallery_occluded_fraction": 0 <= gallery_occluded_fraction <= 1,
        "jpeg_quality": 1 <= jpeg_quality <= 100,
        "camera_strength": camera_strength >= 0,
        "min_attribute_diff": 0 <= min_attribute_diff <= 10,
        "background_saturation": 0 <= background_saturation <= 1,
        "num_occluder_images": num_occluder_images >= 0,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(
            f"invalid synthetic dataset settings {bad}: need num_train_ids, num_test_ids >= 1, images_per_id >= 2, "
            f"1 <= queries_per_id <= {NUM_CAMERAS - 1}, gallery_per_id >= 1, height >= 32, width >= 16, "
            "at most 9999 ids, fractions in [0, 1], 1 <= jpeg_quality <= 100, camera_strength >= 0, "
            "0 <= min_attribute_diff <= 10, 0 <= background_saturation <= 1, num_occluder_images >= 0"
        )
    size = (int(height), int(width))
    _prepare_out(out_dir, overwrite)
    train_ids, test_ids = _identities(seed, num_train_ids, num_test_ids, min_attribute_diff, independent_test_set)
    idents = train_ids + test_ids
    cameras = sample_cameras(np.random.default_rng([seed, 2]), strength=camera_strength)

    # (split, identity, camera 1..6, occluded) for every image, in writing order
    plan: list[tuple[str, Identity, int, bool]] = []
    rng = np.random.default_rng([seed, 3])
    for ident in train_ids:
        cams = rng.integers(1, NUM_CAMERAS + 1, images_per_id)
        while len(set(cams.tolist())) < 2:  # every train id in at least two cameras
            cams = rng.integers(1, NUM_CAMERAS + 1, images_per_id)
        plan += [("train", ident, int(c), False) for c in cams]
    if independent_test_set:  # the test set's cameras from a stream the training plan does not advance
        rng = np.random.default_rng([seed, 3, 1])
    for ident in test_ids:
        qcams = rng.permutation(np.arange(1, NUM_CAMERAS + 1))[:queries_per_id]
        others = np.setdiff1d(np.arange(1, NUM_CAMERAS + 1), qcams)
        plan += [("query", ident, int(c), True) for c in qcams]
        plan += [("gallery", ident, int(c), False) for c in rng.choice(others, gallery_per_id)]
    for split, frac in (("train", train_occluded_fraction), ("gallery", gallery_occluded_fraction)):
        idx = [i for i, p in enumerate(plan) if p[0] == split]
        for j in _pick(np.random.default_rng([seed, 4, len(split)]), len(idx), frac):
            s, ident, cam, _ = plan[idx[j]]
            plan[idx[j]] = (s, ident, cam, True)

    folders = {"train": TRAIN_DIR, "query": QUERY_DIR, "gallery": GALLERY_DIR}
    frames = {"train": 0, "query": 0, "gallery": 0}
    records = []
    for i, (split, ident, cam, occluded) in enumerate(plan):
        frames[split] += 1
        name = market_name(ident.pid, cam, frames[split])
        img_rng = _image_rng(seed, i, num_train_ids * images_per_id, independent_test_set)
        img, labels, meta = render_image(
            ident, cameras[cam - 1], img_rng, size, query_occlusion if occluded else None, background_saturation
        )
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=jpeg_quality)
        with open(os.path.join(out_dir, folders[split], name), "wb") as f:
            f.write(buf.getvalue())
        if split == "train":
            Image.fromarray(labels, mode="L").save(os.path.join(out_dir, LABEL_DIR, name[:-4] + ".png"))
        records.append({"file_name": name, "split": split, "pid": ident.pid, "cam": cam, **meta})
    occluder_kinds = []
    if num_occluder_images:
        os.makedirs(os.path.join(out_dir, OCCLUDER_DIR))
    for i in range(num_occluder_images):  # their own random streams: the dataset's images do not change
        occ_img, kind = render_occluder(np.random.default_rng([seed, 6, i]), size, background_saturation)
        Image.fromarray(occ_img).save(os.path.join(out_dir, OCCLUDER_DIR, f"occ_{i:04d}.png"))
        occluder_kinds.append(kind)

    counts = {s: sum(r["split"] == s for r in records) for s in folders}
    params = dict(
        num_train_ids=num_train_ids,
        images_per_id=images_per_id,
        num_test_ids=num_test_ids,
        queries_per_id=queries_per_id,
        gallery_per_id=gallery_per_id,
        height=height,
        width=width,
        query_occlusion=list(query_occlusion),
        train_occluded_fraction=train_occluded_fraction,
        gallery_occluded_fraction=gallery_occluded_fraction,
        jpeg_quality=jpeg_quality,
        seed=seed,
        camera_strength=camera_strength,
        min_attribute_diff=min_attribute_diff,
        background_saturation=background_saturation,
        num_occluder_images=num_occluder_images,
        independent_test_set=independent_test_set,
    )
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(
            {
                "params": params,
                "identities": [dataclasses.asdict(x) for x in idents],
                "images": records,
                "occluder_images": occluder_kinds,
            },
            f,
        )
    return {
        "out_dir": out_dir,
        "params": params,
        "num_images": counts,
        "num_ids": {"train": len(train_ids), "test": len(test_ids)},
        "num_occluded": {s: sum(r["split"] == s and r["occluder"] is not None for r in records) for s in folders},
        "num_occluder_images": num_occluder_images,
        "seconds": time.perf_counter() - t0,
        "images": records,
    }


# ---------------------------------------------------------------------------------------------- analysis


def query_ambiguity(out_dir: str, visible_fraction: float = 0.7) -> dict[str, Any]:
    """How well a generated dataset's queries can be told apart at all, from what their occluders leave visible.

    Each query is drawn again from its recorded random stream (checked against ``meta.json``'s occluder kind and
    coverage) to find which attributes stay visible: an attribute counts as visible when at least
    ``visible_fraction`` of the pixels of its body regions (:data:`ATTRIBUTE_REGIONS`) are uncovered. A test identity
    is *consistent* with the query when it has the query identity's value in every visible attribute.

    Returns ``{'file_names', 'consistent' (int per query, >= 1: the identity itself), 'unique_fraction' (queries only
    their own identity is consistent with), 'expected_rank1' (mean of 1/consistent: the Rank-1 of a reader that sees
    the visible attributes exactly and guesses among the consistent identities)}``.
    """
    if not 0 <= visible_fraction <= 1:
        raise ValueError(f"visible_fraction must be in [0, 1], got {visible_fraction}")
    meta_path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{meta_path}: no meta.json; is {out_dir!r} a folder written by synthetic.generate?")
    with open(meta_path) as f:
        meta = json.load(f)
    p = meta["params"]
    seed, size = int(p["seed"]), (int(p["height"]), int(p["width"]))
    independent = bool(p.get("independent_test_set", False))  # no key in meta.json: the default
    train_ids, test_ids = _identities(seed, p["num_train_ids"], p["num_test_ids"], p["min_attribute_diff"], independent)
    cameras = sample_cameras(np.random.default_rng([seed, 2]), strength=p["camera_strength"])
    by_pid = {ident.pid: ident for ident in train_ids + test_ids}
    test = np.array([ident.attributes for ident in test_ids])  # [num_test_ids, 10]
    num_train_images = p["num_train_ids"] * p["images_per_id"]
    names, consistent = [], []
    for i, record in enumerate(meta["images"]):
        if record["split"] != "query":
            continue
        ident = by_pid[record["pid"]]
        _, _, drawn, rid, occ = _render(
            ident,
            cameras[record["cam"] - 1],
            _image_rng(seed, i, num_train_images, independent),
            size,
            tuple(p["query_occlusion"]),
            p["background_saturation"],
        )
        if drawn["occluder"] != record["occluder"] or abs(drawn["coverage"] - record["coverage"]) > 1e-9:
            raise ValueError(
                f"{meta_path}: query {record['file_name']} records occluder {record['occluder']!r} covering "
                f"{record['coverage']:.4f}, but its random stream draws {drawn['occluder']!r} covering "
                f"{drawn['coverage']:.4f}: the file does not match this generator"
            )
        visible = []
        for regions in ATTRIBUTE_REGIONS:
            region = np.isin(rid, regions)
            visible.append(region.any() and (region & (occ == 0)).sum() >= visible_fraction * region.sum())
        own = np.asarray(ident.attributes)
        agree = (test[:, visible] == own[visible]).all(axis=1)
        names.append(record["file_name"])
        consistent.append(int(agree.sum()))
    counts = np.asarray(consistent, np.int64)
    return {
        "file_names": names,
        "consistent": counts,
        "unique_fraction": float(np.mean(counts == 1)),
        "expected_rank1": float(np.mean(1.0 / counts)),
    }


# ---------------------------------------------------------------------------------------------- CLI


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("out", None, "output folder (Market-1501 layout)", required=True)
    flags.DEFINE_integer("num_ids", 100, "training identities")
    flags.DEFINE_integer("images_per_id", 8, "training images per identity")
    flags.DEFINE_integer("num_test_ids", 50, "test identities (disjoint from the training ones)")
    flags.DEFINE_integer("queries_per_id", 2, "occluded query images per test identity (each in its own camera)")
    flags.DEFINE_integer("gallery_per_id", 6, "gallery images per test identity (in cameras other than its queries')")
    flags.DEFINE_integer("height", 128, "image height")
    flags.DEFINE_integer("width", 64, "image width")
    flags.DEFINE_float("occlusion_min", 0.2, "smallest covered fraction of the body for occluded images")
    flags.DEFINE_float("occlusion_max", 0.5, "largest covered fraction of the body for occluded images")
    flags.DEFINE_float("train_occluded", 0.1, "fraction of training images that are occluded")
    flags.DEFINE_float("gallery_occluded", 0.1, "fraction of gallery images that are occluded")
    flags.DEFINE_float(
        "camera_strength", 1.0, "scale of the cameras' colour, brightness and contrast shifts (0 = none)"
    )
    flags.DEFINE_integer("min_attribute_diff", 2, "attributes (of 10) any two identities differ in, at least")
    flags.DEFINE_float("background_saturation", 1.0, "background colour saturation in [0, 1] (0 = greys)")
    flags.DEFINE_integer("occluder_images", 0, "occluder objects to write into occluders/ (covering-view bank)")
    flags.DEFINE_bool(
        "independent_test_set",
        False,
        "draw the test set from its own random streams (unchanged by the training set's size)",
    )
    flags.DEFINE_integer("seed", 0, "random seed (same seed, same bytes)")
    flags.DEFINE_bool("overwrite", False, "replace an existing dataset in --out")


def _main(argv: Sequence[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    s = generate(
        f.out,
        num_train_ids=f.num_ids,
        images_per_id=f.images_per_id,
        num_test_ids=f.num_test_ids,
        queries_per_id=f.queries_per_id,
        gallery_per_id=f.gallery_per_id,
        height=f.height,
        width=f.width,
        query_occlusion=(f.occlusion_min, f.occlusion_max),
        train_occluded_fraction=f.train_occluded,
        gallery_occluded_fraction=f.gallery_occluded,
        seed=f.seed,
        overwrite=f.overwrite,
        camera_strength=f.camera_strength,
        min_attribute_diff=f.min_attribute_diff,
        background_saturation=f.background_saturation,
        num_occluder_images=f.occluder_images,
        independent_test_set=f.independent_test_set,
    )
    n, o = s["num_images"], s["num_occluded"]
    cov = [r["coverage"] for r in s["images"] if r["split"] == "query"]
    print(
        f"synthetic dataset -> {s['out_dir']}: train {s['num_ids']['train']} ids / {n['train']} images "
        f"({o['train']} occluded), query {n['query']} (coverage {min(cov):.0%}-{max(cov):.0%}), "
        f"gallery {n['gallery']} ({o['gallery']} occluded), test ids {s['num_ids']['test']}; "
        f"{n['train']} label maps; {s['num_occluder_images']} occluder images; {s['seconds']:.1f}s"
    )


if __name__ == "__main__":
    from absl import app

    from tmspr_jax.utils import one_line_errors

    _define_flags()
    app.run(one_line_errors()(_main))  # a bad flag or config value: one line, no traceback
