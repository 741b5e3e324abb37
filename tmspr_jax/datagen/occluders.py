"""Occluders for the synthetic set: the objects drawn over a person, sized to cover a measured fraction of them.

The kinds (:data:`OCCLUDERS`) stand for the things that hide people in street scenes: a box, bin or low wall from the
bottom, a wall edge or passer-by from one side, a pole, a car, a bush, a sign from the top. :func:`place_occluder`
bisects an occluder's extent until it covers a target fraction of the person's pixels; :func:`render_occluder` draws
one on its own, for the covering view's occluder folder.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from tmspr_jax.datagen.figure import background

OCCLUDERS = ("box", "side", "pole", "car", "bush", "top")


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


def colour_occluder(img: np.ndarray, occ: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    """Paints the occluder's pixels into ``img`` in place: a colour by kind, a darker detail, texture."""
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
        img = background(size, rng, background_saturation)
        colour_occluder(img, occ, kind, rng)
        ys, xs = np.nonzero(occ)
        if len(ys) and ys.max() - ys.min() >= 7 and xs.max() - xs.min() >= 7:  # the covering view needs >= 4 px
            crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            return np.clip(crop, 0, 255).astype(np.uint8), kind
    raise RuntimeError(f"no occluder of at least 8x8 px drawn in 20 tries at size {size}")
