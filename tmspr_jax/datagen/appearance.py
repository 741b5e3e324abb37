"""What the synthetic people look like: their LIP part ids, the attribute palettes, identities and cameras.

An identity is one draw of ten categorical attributes (:data:`ATTRIBUTES`) plus continuous jitter (skin, build,
height, colour noise); two identities differ in at least ``min_diff`` of the ten. A camera shifts colour, brightness
and contrast and may blur. :mod:`tmspr_jax.datagen.figure` draws them, :mod:`tmspr_jax.datagen.synthetic` writes the
dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

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
