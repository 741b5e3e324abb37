"""The four T-MSPR training views and the eval transform (``docs/reference.md`` §1).

Every view starts from the same decoded RGB ``uint8`` image ``[h, w, 3]`` of any size and returns ``float32``
``[H, W, 3]`` normalised as ``(x/255 - mean)/std`` at ``img_size = (H, W)``:

* **based**: PIL bicubic resize to ``(H, W)``.
* **amplifying**: bicubic resize, 30 px black padding, normalise, torchvision ``RandomResizedCrop`` sampling
  (scale 0.08..1, ratio 3/4..4/3, 10 attempts + central fallback) and a half-pixel bilinear resize of the crop to
  ``(H, W)`` without antialiasing (torch tensor semantics).
* **covering**: bicubic resize, normalise, paste an occluder crop (ColorJitter, bicubic, h-flip) as a full-height strip
  or full-width band, then timm ``RandomErasing(p=1, mode='pixel')``. By default the occluder is pasted un-normalised in
  ``[0, 1]`` (reference quirk); ``occluder_normalize=True`` normalises it like the image.
  Occluders of any size serve: a side under 4 px (where the reference's crop range is empty) gets a 1-px crop.
* **shrinking**: bicubic resize, shrink by ``s ~ U(0.8, 1)`` (half-pixel bilinear, OpenCV ``INTER_LINEAR`` semantics),
  pad back to ``(H, W)`` by edge replication, normalise.

All randomness comes from an explicit ``np.random.Generator`` (same seed, same views). The reference draws from
Python's ``random`` / torch; we reproduce the distributions, not the streams.

``python -m tmspr_jax.tools.views --dataset NAME --data_dir DIR --out views.png`` (or ``--images DIR``) renders a grid
of samples x views for inspection.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageEnhance

VIEW_NAMES = ("based", "amplifying", "covering", "shrinking")

# Reference constants that do not scale with the image size.
AMPLIFY_PAD = 30  # Pad(30) at the reference's 256-pixel height; scaled with the height for other sizes
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER_STRENGTH = 0.5  # ColorJitter(brightness=.5, contrast=.5, saturation=.5, hue=0)
STRIP_ASPECT = 2.0  # crop_h / crop_w > 2 -> vertical strip
ERASE_AREA = (0.02, 1.0 / 3.0)
ERASE_MIN_ASPECT = 0.3
SHRINK_SCALE = (0.8, 1.0)
ATTEMPTS = 10


# --------------------------------------------------------------------------------------------- parameters


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in pixel units: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int


@dataclasses.dataclass(frozen=True)
class AmplifyParams:
    """Geometry of one amplifying view: the crop box in the padded image and whether the fallback was used."""

    padded_size: tuple[int, int]
    crop: Box
    fallback: bool


@dataclasses.dataclass(frozen=True)
class JitterParams:
    """ColorJitter factors and the order (names from ``brightness``/``contrast``/``saturation``) they were applied
    in."""

    order: tuple[str, ...]
    brightness: float
    contrast: float
    saturation: float


@dataclasses.dataclass(frozen=True)
class CoverParams:
    """Everything sampled for one covering view (``erase`` is ``None`` when all erasing attempts failed)."""

    occluder_index: int
    occluder_size: tuple[int, int]  # (h, w) of the occluder image
    crop: Box  # in occluder pixels
    strip: bool  # True: full-height strip; False: full-width band
    jitter: JitterParams
    flipped: bool
    paste: Box  # in view pixels
    erase: Box | None


@dataclasses.dataclass(frozen=True)
class ShrinkParams:
    """Sampled shrink factor, the shrunk size ``(h, w)`` and the padding ``(top, bottom, left, right)``."""

    scale: float
    new_size: tuple[int, int]
    pad: tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------- validation


def _check_image(image: Any, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what}: expected a numpy uint8 array [h, w, 3], got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what}: expected a uint8 RGB array [h, w, 3], got dtype {image.dtype} shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what}: empty image of shape {image.shape}")
    return image


def _check_size(img_size: Sequence[int]) -> tuple[int, int]:
    vals = tuple(img_size) if isinstance(img_size, (tuple, list)) else ()
    # >= 4 so that the covering view's H//4 and W//4 are at least 1 pixel.
    if len(vals) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 4 for v in vals):
        raise ValueError(f"img_size: expected (H, W), two integers >= 4, got {img_size!r}")
    return int(vals[0]), int(vals[1])


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    if m.shape != (3,) or s.shape != (3,):
        raise ValueError(f"mean/std: expected 3 values each, got mean={mean!r} std={std!r}")
    if not np.all(s > 0):
        raise ValueError(f"std: expected positive values, got {std!r}")
    return m, s


# --------------------------------------------------------------------------------------------- primitives


def pil_resize(image: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """Resize a uint8 RGB array to ``size = (H, W)`` with PIL (antialiased like torchvision's Resize on PIL images)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image  # PIL returns a copy of the same pixels
    return np.asarray(Image.fromarray(image).resize((w, h), resample))


class _Workspace(threading.local):
    """Per-thread scratch buffers reused from sample to sample.

    Fresh 0.2-0.4 MB temporaries per view cost about as much as the arithmetic itself: glibc serves them by mmap or
    trims them back to the OS, so every sample page-faults them in again (measured: 1.8x slower without reuse).
    Results handed to callers never alias these buffers.
    """

    def __init__(self) -> None:
        self.bufs: dict[tuple[str, np.dtype], np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        n = math.prod(shape)
        buf = self.bufs.get((key, np.dtype(dtype)))
        if buf is None or buf.size < n:
            buf = self.bufs[(key, np.dtype(dtype))] = np.empty(max(n, 1), dtype)
        return buf[:n].reshape(shape)


_WS = _Workspace()


@functools.lru_cache(maxsize=16)
def _normalize_luts(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    # One float32 table per channel holding (v/255 - mean)/std for v = 0..255, computed with the reference's float32
    # op order, so a lookup is bit-identical to the arithmetic and about 4x faster.
    v = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return tuple((v - np.float32(m)) / np.float32(s) for m, s in zip(mean, std))


def normalize(image: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """ToTensor + Normalize of a uint8 HWC image in float32: ``(x/255 - mean)/std`` (into ``out`` if given)."""
    luts = _normalize_luts(tuple(np.asarray(mean, np.float32).tolist()), tuple(np.asarray(std, np.float32).tolist()))
    if out is None:
        out = np.empty(image.shape, np.float32)
    for c in range(3):
        np.take(luts[c], image[..., c], out=out[..., c])
    return out


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-pixel (align_corners=False) linear taps, computed in float32 as torch does."""
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))  # torch / cv2 clamp negative source coords to 0
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int, out: np.ndarray | None = None) -> np.ndarray:
    """Half-pixel bilinear resize of an HWC array without antialiasing, float32 result (into ``out`` if given).

    Same sampling as ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False, antialias=False)`` and
    OpenCV ``INTER_LINEAR`` (which torchvision tensors and ``cv2.resize`` use in the reference).
    """
    h, w, c = x.shape
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((out_h, out_w, c), np.float32)
    elif out.shape != (out_h, out_w, c) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"resize_bilinear: out must be C-contiguous float32 {(out_h, out_w, c)}, got {out.shape}")
    y0, y1, ly = _linear_taps(h, out_h)
    x0, x1, lx = _linear_taps(w, out_w)
    one = np.float32(1.0)
    # Channels folded into the columns so each pass is a 2-D gather; columns first, then rows: torch's order of
    # operations (and the cheaper order when the crop is wider than the output).
    flat = x.reshape(h, w * c)
    chan = np.arange(c)
    i0, i1 = (x0[:, None] * c + chan).ravel(), (x1[:, None] * c + chan).ravel()
    l1 = np.repeat(lx, c)
    cols, tmp = _WS.get("bilinear_cols", (h, out_w * c)), _WS.get("bilinear_tmp", (h, out_w * c))
    np.take(flat, i0, axis=1, out=cols, mode="clip")
    cols *= one - l1
    np.take(flat, i1, axis=1, out=tmp, mode="clip")
    tmp *= l1
    cols += tmp
    res, tmp = out.reshape(out_h, out_w * c), _WS.get("bilinear_tmp", (out_h, out_w * c))
    np.take(cols, y0, axis=0, out=res, mode="clip")
    res *= (one - ly)[:, None]
    np.take(cols, y1, axis=0, out=tmp, mode="clip")
    tmp *= ly[:, None]
    res += tmp
    return out


def random_resized_crop_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = RRC_SCALE,
    ratio: tuple[float, float] = RRC_RATIO,
    attempts: int = ATTEMPTS,
) -> tuple[Box, bool]:
    """torchvision ``RandomResizedCrop.get_params``: returns ``(box, used_fallback)``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Box(top, left, h, w), False
    # Central-crop fallback, clamping the aspect ratio into [ratio[0], ratio[1]].
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return Box((height - h) // 2, (width - w) // 2, h, w), True


def random_erasing_params(
    rng: np.random.Generator,
    height: int,
    width: int,
    area_range: tuple[float, float] = ERASE_AREA,
    min_aspect: float = ERASE_MIN_ASPECT,
    attempts: int = ATTEMPTS,
) -> Box | None:
    """timm ``RandomErasing`` (probability 1, max_count 1) box sampling; ``None`` when all attempts fail."""
    area = height * width
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    for _ in range(attempts):
        target_area = rng.uniform(area_range[0], area_range[1]) * area
        aspect = math.exp(rng.uniform(log_aspect[0], log_aspect[1]))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return Box(top, left, h, w)
    return None


_JITTER_OPS = ("brightness", "contrast", "saturation")


def sample_color_jitter(rng: np.random.Generator, strength: float = JITTER_STRENGTH) -> JitterParams:
    """torchvision ``ColorJitter.get_params`` for brightness=contrast=saturation=strength, hue=0 (hue is a no-op)."""
    order = tuple(_JITTER_OPS[i] for i in rng.permutation(3))
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    b, c, s = (float(rng.uniform(lo, hi)) for _ in range(3))
    return JitterParams(order=order, brightness=b, contrast=c, saturation=s)


def apply_color_jitter(image: Image.Image, params: JitterParams) -> Image.Image:
    """Apply the jitter to an RGB PIL image exactly as torchvision's PIL functional ops do (PIL ImageEnhance)."""
    enhancers = {
        "brightness": (ImageEnhance.Brightness, params.brightness),
        "contrast": (ImageEnhance.Contrast, params.contrast),  # blends with the mean of the L image
        "saturation": (ImageEnhance.Color, params.saturation),  # blends with the L image
    }
    for name in params.order:
        enhancer, factor = enhancers[name]
        image = enhancer(image).enhance(factor)
    return image


# --------------------------------------------------------------------------------------------- occluders


class OccluderSource(Protocol):
    """Anything indexable giving decoded RGB uint8 ``[h, w, 3]`` occluder images, with a length."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def decode_rgb(data: bytes, what: str) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array, naming ``what`` if the bytes are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt data
        raise ValueError(f"{what}: cannot decode image bytes ({type(e).__name__}: {e})") from e


class OccluderBank:
    """Random-access occluder images for the covering view.

    Build it from decoded arrays (:meth:`from_arrays`), a folder of image files (:meth:`from_dir`), a random-access
    source of records with encoded image bytes such as a ``ReIDSplit`` (:meth:`from_records`), or a callable
    ``index -> array`` plus a length.
    Records are decoded on access, so the bank is cheap to build and to pickle into data-loader workers.
    """

    def __init__(self, get: Callable[[int], np.ndarray], length: int, name: str = "occluders"):
        if not callable(get):
            raise TypeError(f"OccluderBank({name}): expected a callable index -> image, got {type(get).__name__}")
        self._setup("callable", get, int(length), name)

    def _setup(self, kind: str, source: Any, length: int, name: str, image_key: str = "image") -> None:
        # Plain attributes (no closures) so the bank pickles into grain worker processes.
        self._kind, self._source, self._length, self.name, self._image_key = kind, source, length, name, image_key
        if length <= 0:
            raise ValueError(f"OccluderBank({name}): needs at least one occluder image, got {length}")

    @classmethod
    def from_arrays(cls, images: Sequence[np.ndarray], name: str = "occluder arrays") -> OccluderBank:
        """A bank over decoded uint8 RGB arrays (each checked now)."""
        images = list(images)
        for i, im in enumerate(images):
            _check_occluder(im, f"{name}[{i}]")
        bank = cls.__new__(cls)
        bank._setup("arrays", images, len(images), name)
        return bank

    @classmethod
    def from_records(cls, source: Any, image_key: str = "image", name: str | None = None) -> OccluderBank:
        """A bank over a random-access source of records (``len`` and ``[i]``) whose ``image_key`` holds encoded
        bytes."""
        bank = cls.__new__(cls)
        bank._setup("records", source, len(source), name or type(source).__name__, image_key)
        return bank

    @classmethod
    def from_dir(cls, path: str, name: str | None = None) -> OccluderBank:
        """A bank over every image file in the folder ``path`` (decoded now; e.g. object crops), in name order."""
        return cls.from_arrays(read_image_dir(path, "occluder folder"), name=name or path)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._length:
            raise IndexError(f"OccluderBank({self.name}): index {index} out of range [0, {self._length})")
        what = f"OccluderBank({self.name})[{index}]"
        if self._kind == "arrays":
            return self._source[index]
        if self._kind == "records":
            record = self._source[index]
            if self._image_key not in record:
                raise KeyError(f"{what}: record has no key {self._image_key!r} (keys: {sorted(record)})")
            name = record.get("file_name", b"")
            name = name.decode() if isinstance(name, bytes) else str(name)
            image = decode_rgb(record[self._image_key], f"{what} {name}".strip())
        else:
            image = self._source(index)
        return _check_occluder(image, what)


def _check_occluder(image: Any, what: str) -> np.ndarray:
    # Any size serves: a side under 4 px gets a 1-px crop in _cover (the reference's randint[h//4, h//2] is empty).
    return _check_image(image, what)


# --------------------------------------------------------------------------------------------- views


def based_view(image: np.ndarray, img_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """View 1: PIL bicubic resize to ``img_size``, normalise."""
    size = _check_size(img_size)
    m, s = _check_stats(mean, std)
    return normalize(pil_resize(_check_image(image), size, Image.Resampling.BICUBIC), m, s)


def amplify_pad(height: int) -> int:
    """The amplifying view's black border: 30 px at the reference's 256x128, in proportion for other sizes (at
    128x64 an absolute 30 px would leave the person only a third of the padded canvas)."""
    return max(1, int(round(AMPLIFY_PAD * height / 256)))


def _amplify(resized: np.ndarray, rng: np.random.Generator, m, s, out: np.ndarray) -> AmplifyParams:
    h, w = resized.shape[:2]
    p = amplify_pad(h)
    padded = _WS.get("amplify_padded", (h + 2 * p, w + 2 * p, 3), np.uint8)
    padded[:p], padded[-p:], padded[:, :p], padded[:, -p:] = 0, 0, 0, 0  # black border
    padded[p:-p, p:-p] = resized
    box, fallback = random_resized_crop_params(rng, padded.shape[0], padded.shape[1])
    # Normalising only the crop equals cropping the normalised padded tensor (the border becomes (0 - mean)/std).
    crop = normalize(
        padded[box.top : box.top + box.height, box.left : box.left + box.width],
        m,
        s,
        out=_WS.get("amplify_crop", (box.height, box.width, 3)),
    )
    # The crop (aspect 3/4..4/3) is stretched to (H, W): bilinear, half-pixel, no antialias (torch tensor path).
    resize_bilinear(crop, h, w, out=out)
    return AmplifyParams(padded_size=padded.shape[:2], crop=box, fallback=fallback)


def _single_view(kernel, image, rng, img_size, mean, std, return_params: bool):
    """Checks the inputs, bicubic-resizes once and runs one view's ``kernel(resized, rng, m, s, out) -> params``."""
    size = _check_size(img_size)
    m, s = _check_stats(mean, std)
    resized = pil_resize(_check_image(image), size, Image.Resampling.BICUBIC)
    out = np.empty(size + (3,), np.float32)
    params = kernel(resized, rng, m, s, out)
    return (out, params) if return_params else out


def amplifying_view(
    image: np.ndarray,
    rng: np.random.Generator,
    img_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, AmplifyParams]:
    """View 2: bicubic resize, Pad(30) black, normalise, RandomResizedCrop(0.08..1, 3/4..4/3) back to ``img_size``."""
    return _single_view(_amplify, image, rng, img_size, mean, std, return_params)


def _cover(
    normed: np.ndarray,
    rng: np.random.Generator,
    occluders: OccluderSource,
    m,
    s,
    occluder_normalize: bool,
    out: np.ndarray,
) -> CoverParams:
    h, w = normed.shape[:2]
    n = len(occluders)
    if n <= 0:
        raise ValueError("covering view: the occluder source is empty")
    index = int(rng.integers(0, n))
    occ = _check_occluder(occluders[index], f"occluder {index}")
    oh, ow = occ.shape[:2]
    # Crop sides randint[side // 4, side // 2] as the reference; an occluder side under 4 px (which the reference
    # cannot crop: an empty range) gives a 1-px crop. Sides of 4 px and more draw exactly as the reference.
    ch = int(rng.integers(max(1, oh // 4), max(1, oh // 2) + 1))
    cw = int(rng.integers(max(1, ow // 4), max(1, ow // 2) + 1))
    ct = int(rng.integers(0, oh - ch + 1))
    cl = int(rng.integers(0, ow - cw + 1))
    crop = Box(ct, cl, ch, cw)
    strip = ch / cw > STRIP_ASPECT
    # Reference constants [32, 64] / [64, 128] at 256x128 generalised to [W/4, W/2] / [H/4, H/2].
    if strip:
        th, tw = h, int(rng.integers(w // 4, w // 2 + 1))
    else:
        th, tw = int(rng.integers(h // 4, h // 2 + 1)), w
    jitter = sample_color_jitter(rng)
    flipped = bool(rng.random() < 0.5)
    patch_img = apply_color_jitter(Image.fromarray(occ[ct : ct + ch, cl : cl + cw]), jitter)
    patch_img = patch_img.resize((tw, th), Image.Resampling.BICUBIC)
    patch = np.asarray(patch_img)
    if flipped:
        patch = patch[:, ::-1]
    patch = normalize(patch, m, s) if occluder_normalize else patch.astype(np.float32) / np.float32(255.0)
    top = int(rng.integers(0, h - th + 1))
    left = int(rng.integers(0, w - tw + 1))
    if out is not normed:
        out[...] = normed
    out[top : top + th, left : left + tw] = patch  # hard overwrite, no blending
    erase = random_erasing_params(rng, h, w)
    if erase is not None:
        out[erase.top : erase.top + erase.height, erase.left : erase.left + erase.width] = rng.standard_normal(
            (erase.height, erase.width, 3), dtype=np.float32
        )
    params = CoverParams(
        occluder_index=index,
        occluder_size=(oh, ow),
        crop=crop,
        strip=strip,
        jitter=jitter,
        flipped=flipped,
        paste=Box(top, left, th, tw),
        erase=erase,
    )
    return params


def covering_view(
    image: np.ndarray,
    rng: np.random.Generator,
    occluders: OccluderSource,
    img_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    occluder_normalize: bool = False,
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, CoverParams]:
    """View 3: bicubic resize, normalise, occluder strip/band paste, then pixel-mode random erasing."""
    size = _check_size(img_size)
    m, s = _check_stats(mean, std)
    out = normalize(pil_resize(_check_image(image), size, Image.Resampling.BICUBIC), m, s)
    params = _cover(out, rng, occluders, m, s, occluder_normalize, out=out)
    return (out, params) if return_params else out


def _shrink(resized: np.ndarray, rng: np.random.Generator, m, s, out: np.ndarray) -> ShrinkParams:
    h, w = resized.shape[:2]
    scale = float(rng.uniform(SHRINK_SCALE[0], SHRINK_SCALE[1]))
    nh, nw = int(h * scale), int(w * scale)
    src = _WS.get("shrink_src", (h, w, 3))
    src[...] = resized
    small = resize_bilinear(src, nh, nw, out=_WS.get("shrink_small", (nh, nw, 3)))
    # cv2.resize(INTER_LINEAR) on uint8 returns uint8, rounded half up; bilinear of 0..255 stays in [0, 255], so
    # adding 0.5 and truncating is that rounding. (OpenCV's 11-bit fixed point may differ by 1 grey level.)
    small += np.float32(0.5)
    small_u8 = _WS.get("shrink_small_u8", (nh, nw, 3), np.uint8)
    np.copyto(small_u8, small, casting="unsafe")
    dh, dw = max(0, h - nh), max(0, w - nw)
    pad = (dh // 2, dh - dh // 2, dw // 2, dw - dw // 2)
    padded = np.pad(small_u8, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)), mode="edge")  # cv2.BORDER_REPLICATE
    normalize(padded, m, s, out=out)
    return ShrinkParams(scale=scale, new_size=(nh, nw), pad=pad)


def shrinking_view(
    image: np.ndarray,
    rng: np.random.Generator,
    img_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    return_params: bool = False,
) -> np.ndarray | tuple[np.ndarray, ShrinkParams]:
    """View 4: bicubic resize, shrink by U(0.8, 1) (bilinear), edge-replicate pad back to ``img_size``, normalise."""
    return _single_view(_shrink, image, rng, img_size, mean, std, return_params)


def train_views(
    image: np.ndarray,
    rng: np.random.Generator,
    occluders: OccluderSource,
    img_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    occluder_normalize: bool = False,
) -> np.ndarray:
    """The four training views of one image as float32 ``[4, H, W, 3]`` (based, amplifying, covering, shrinking).

    Args:
      image: decoded RGB uint8 ``[h, w, 3]`` of any size.
      rng: the sample's generator; the same seed gives the same views.
      occluders: occluder images for the covering view (an :class:`OccluderBank` or a list of arrays).
      img_size: ``(H, W)``.
      mean, std: per-channel normalisation.
      occluder_normalize: False reproduces the reference's un-normalised [0, 1] occluder.
    """
    size = _check_size(img_size)
    m, s = _check_stats(mean, std)
    resized = pil_resize(_check_image(image), size, Image.Resampling.BICUBIC)  # shared by all four views
    out = np.empty((4, size[0], size[1], 3), np.float32)
    normalize(resized, m, s, out=out[0])
    _amplify(resized, rng, m, s, out[1])
    _cover(out[0], rng, occluders, m, s, occluder_normalize, out[2])
    _shrink(resized, rng, m, s, out[3])
    return out


def eval_view(image: np.ndarray, img_size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Test transform: PIL bilinear resize (antialiased on downscale, as torchvision Resize on PIL), normalise."""
    size = _check_size(img_size)
    m, s = _check_stats(mean, std)
    return normalize(pil_resize(_check_image(image), size, Image.Resampling.BILINEAR), m, s)


# --------------------------------------------------------------------------------------------- image folders


_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_image_dir(path: str, what: str = "image folder") -> list[np.ndarray]:
    """Every image file (``.jpg .jpeg .png .bmp .webp``) in ``path``, in name order, as RGB uint8 arrays.

    A missing or image-less folder, or a file that does not decode, raises an error naming ``what`` and the path.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: {path!r} is not a directory")
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(_IMAGE_EXTS))
    if not names:
        raise FileNotFoundError(f"{what}: no image files ({', '.join(_IMAGE_EXTS)}) in {path!r}")
    out = []
    for n in names:
        with open(os.path.join(path, n), "rb") as f:
            out.append(decode_rgb(f.read(), os.path.join(path, n)))
    return out
