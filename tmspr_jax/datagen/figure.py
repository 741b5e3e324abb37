"""Drawing one synthetic person: the render-id map of an articulated front-facing figure, its colours, a background.

:func:`draw_person` draws the figure's parts as LIP ids (:mod:`tmspr_jax.datagen.appearance`) into a map the size
of the image, with per-image pose, scale and position; :func:`colour_person` paints those pixels with the identity's
colours, pattern and shading over a :func:`background`. The figure faces the camera, so its left side (LIP
``Left-*``) is on the image's right.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tmspr_jax.datagen.appearance import (
    BAG,
    FACE,
    HAIR,
    HAT,
    L_ARM,
    L_LEG,
    L_SHOE,
    PANTS,
    R_ARM,
    R_LEG,
    R_SHOE,
    SKIRT,
    UPPER,
    Identity,
)


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


@dataclasses.dataclass(frozen=True)
class _Figure:
    """Where one figure stands: ``fh`` is its height (head top to soles) in pixels; figure coordinates ``(u, v)`` are
    in figure heights from the centre line ``cx`` and the head top ``top``."""

    draw: ImageDraw.ImageDraw
    fh: float
    top: float
    cx: float
    lean: float
    build: float  # width factor

    @property
    def sw(self) -> float:  # half width at the shoulders
        return 0.12 * self.build

    @property
    def hw(self) -> float:  # half width at the hips
        return 0.092 * self.build

    def at(self, u: float, v: float) -> np.ndarray:
        """Figure coordinates -> pixels ``(x, y)``."""
        return np.array([self.cx + u * self.fh, self.top + v * self.fh])

    def upper(self, u: float, v: float) -> np.ndarray:
        """:meth:`at` for the upper body, which leans with the pose."""
        return self.at(u + self.lean * (0.5 - v) / 0.5, v)


def draw_person(ident: Identity, size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Render ids ``[H, W]`` uint8 of one figure (LIP ids, :data:`BAG` for bags, 0 elsewhere) and its geometry."""
    h, w = size
    fh = h * rng.uniform(0.8, 0.93) * ident.height  # figure height, head top to soles
    fh = min(fh, h * 0.98)
    top = rng.uniform(0.005 * h, h - 0.985 * fh)
    cx = w / 2 + rng.uniform(-0.09, 0.09) * w
    im = Image.new("L", (w, h), 0)
    fig = _Figure(ImageDraw.Draw(im), fh, top, cx, lean=rng.uniform(-0.02, 0.02), build=ident.build)
    _draw_legs(fig, ident, rng)  # first: the torso, skirt and shoes overlap them
    _draw_torso(fig)
    _draw_arms(fig, ident, rng)
    _draw_bag(fig, ident)
    _draw_head(fig, ident)
    rid = np.asarray(im, dtype=np.uint8).copy()
    head, torso = fig.upper(0, 0.075), fig.upper(0, 0.33)
    geometry = {
        "top": float(top),
        "cx": float(cx),
        "fig_h": float(fh),
        "head_center": [float(head[1]), float(head[0])],  # (y, x) pixels
        "torso_center": [float(torso[1]), float(torso[0])],
    }
    return rid, geometry


def _draw_legs(fig: _Figure, ident: Identity, rng: np.random.Generator) -> None:
    """Legs, pelvis, skirt and shoes."""
    dr, fh, b, hw, P = fig.draw, fig.fh, fig.build, fig.hw, fig.at
    leg_swing = rng.uniform(-0.26, 0.26)
    knee_bend = rng.uniform(0.0, 0.2)
    lower_cls = SKIRT if ident.lower_type == "skirt" else PANTS
    legs = []
    for side, leg_cls, shoe_cls in ((+1, L_LEG, L_SHOE), (-1, R_LEG, R_SHOE)):
        hip = P(side * hw * 0.5, 0.5)
        a = side * 0.05 + (leg_swing if side > 0 else -leg_swing)
        knee = _limb(hip, a, 0.225 * fh)
        ankle = _limb(knee, a - np.sign(a + 1e-9) * knee_bend * 0.5, 0.215 * fh)
        legs.append((side, shoe_cls, ankle))
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
    for side, shoe_cls, ankle in legs:
        c = ankle + np.array([side * 0.012 * fh, 0.018 * fh])
        rx, ry = 0.045 * fh, 0.024 * fh
        dr.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=shoe_cls)


def _draw_torso(fig: _Figure) -> None:
    dr, fh, sw, hw, U = fig.draw, fig.fh, fig.sw, fig.hw, fig.upper
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


def _draw_arms(fig: _Figure, ident: Identity, rng: np.random.Generator) -> None:
    """Arms in sleeves (long or short) and hands."""
    dr, fh, b, sw, U = fig.draw, fig.fh, fig.build, fig.sw, fig.upper
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


def _draw_bag(fig: _Figure, ident: Identity) -> None:
    """A backpack's straps or a shoulder bag (render id :data:`BAG`, LIP label 0)."""
    dr, fh, sw, hw, U = fig.draw, fig.fh, fig.sw, fig.hw, fig.upper
    if ident.bag == "backpack":
        for side in (+1, -1):
            _segment(dr, U(side * sw * 0.55, 0.19), U(side * hw * 0.8, 0.42), 0.022 * fh, 0.022 * fh, BAG)
    elif ident.bag == "shoulder":
        s = ident.bag_side
        _segment(dr, U(-s * sw * 0.6, 0.19), U(s * (hw + 0.02), 0.47), 0.018 * fh, 0.018 * fh, BAG)
        x0, x1 = sorted((s * (hw - 0.01), s * (hw + 0.1)))
        a, c = U(x0, 0.44), U(x1, 0.57)
        dr.rounded_rectangle([a[0], a[1], c[0], c[1]], radius=0.015 * fh, fill=BAG)


def _draw_head(fig: _Figure, ident: Identity) -> None:
    """Neck, hair, face and hat."""
    dr, fh, U = fig.draw, fig.fh, fig.upper
    neck = U(0, 0.13), U(0, 0.19)
    _segment(dr, neck[0], neck[1], 0.045 * fh, 0.05 * fh, FACE)
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


def background(size: tuple[int, int], rng: np.random.Generator, saturation: float = 1.0) -> np.ndarray:
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


def colour_person(img: np.ndarray, rid: np.ndarray, ident: Identity, geom: dict, rng: np.random.Generator) -> None:
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
