"""SCHP's image pipeline around the network, as its ``simple_extractor.py`` runs it.

1. The whole image is the person box: centre ``((w-1)/2, (h-1)/2)``, box ``(w-1) x (h-1)`` widened to the input's
   aspect ratio (:func:`whole_image_box`).
2. An affine warp maps the box onto the input (473x473 for LIP), aspect ratio kept, bilinear, black border, on the
   ``uint8`` BGR image (:func:`warp_to_input`).
3. Network input: ``(bgr / 255 - mean) / std`` with SCHP's BGR mean/std (:data:`BGR_MEAN`, :data:`BGR_STD`).
4. The fusion logits, upsampled to the input size (align-corners bilinear, done on device), are warped back to the
   image by the inverse affine, bilinear, border 0, channel by channel (:func:`warp_to_image`).

The warps are OpenCV's ``warpAffine`` itself: its fixed-point coordinate rounding (1/32 pixel) and ``uint8`` rounding
are part of the result, and no other library reproduces them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BGR_MEAN = (0.406, 0.456, 0.485)
BGR_STD = (0.225, 0.224, 0.229)


def _cv2():
    import cv2

    return cv2


def whole_image_box(h: int, w: int, input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(center, scale)`` float32 of the box ``[0, 0, w-1, h-1]`` widened to ``input_size``'s aspect ratio."""
    aspect = input_size[1] * 1.0 / input_size[0]
    bw, bh = float(w - 1), float(h - 1)
    if bw > aspect * bh:
        bh = bw / aspect
    elif bw < aspect * bh:
        bw = bh * aspect
    return np.array([(w - 1) * 0.5, (h - 1) * 0.5], np.float32), np.array([bw, bh], np.float32)


def affine(center: np.ndarray, scale: np.ndarray, input_size: Sequence[int], inverse: bool = False) -> np.ndarray:
    """The 2x3 matrix mapping the box onto the input (or back): three point pairs in float32 solved by
    ``cv2.getAffineTransform``, as SCHP computes it, so the matrix is bit-identical to SCHP's."""
    out_h, out_w = int(input_size[0]), int(input_size[1])
    half = np.float32(scale[0]) * np.float32(-0.5)
    c = np.asarray(center, np.float32)
    d0 = np.array([(out_w - 1) * 0.5, (out_h - 1) * 0.5], np.float32)
    dh = np.float32((out_w - 1) * -0.5)
    src = np.stack([c, c + np.array([0, half], np.float32), np.zeros(2, np.float32)]).astype(np.float32)
    dst = np.stack([d0, d0 + np.array([0, dh], np.float32), np.zeros(2, np.float32)]).astype(np.float32)
    for pts in (src, dst):  # third point: the second rotated by 90 degrees about the first
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    cv2 = _cv2()
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def warp_to_input(img_bgr: np.ndarray, input_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(warped uint8 [H, W, 3], center, scale)`` for a ``uint8`` BGR image."""
    cv2 = _cv2()
    h, w = img_bgr.shape[:2]
    center, scale = whole_image_box(h, w, input_size)
    warped = cv2.warpAffine(
        img_bgr,
        affine(center, scale, input_size),
        (int(input_size[1]), int(input_size[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return warped, center, scale


def warp_to_image(
    logits: np.ndarray, center: np.ndarray, scale: np.ndarray, height: int, width: int, input_size: Sequence[int]
) -> np.ndarray:
    """Input-sized logits ``[H, W, C]`` float32 -> the image's ``[height, width, C]`` (inverse affine, border 0)."""
    cv2 = _cv2()
    trans = affine(center, scale, input_size, inverse=True)
    logits = np.asarray(logits, np.float32)
    out = np.empty((height, width, logits.shape[2]), np.float32)
    for i in range(logits.shape[2]):  # one channel at a time, as SCHP (OpenCV's kernels differ by channel count)
        out[:, :, i] = cv2.warpAffine(
            np.ascontiguousarray(logits[:, :, i]),
            trans,
            (int(width), int(height)),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0,),
        )
    return out


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> ``uint8`` BGR ``[h, w, 3]`` as ``cv2.imread(..., IMREAD_COLOR)`` reads the file;
    a corrupt or unreadable image is a ``ValueError`` naming it."""
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if len(data) else None
    if img is None:
        raise ValueError(f"{name}: cannot decode the image (corrupt, truncated or not an image)")
    if img.shape[0] < 2 and img.shape[1] < 2:
        raise ValueError(f"{name}: a {img.shape[0]}x{img.shape[1]} image has no extent to parse (need 2 pixels)")
    return img


def read_image(path: str) -> np.ndarray:
    """Reads an image file as ``uint8`` BGR (:func:`decode_image`); unreadable files are errors naming them."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the file ({e.strerror or e})") from None
    return decode_image(data, path)


def palette(num_classes: int) -> list[int]:
    """SCHP's ``get_palette``: class ``j``'s colour from the bits of ``j`` (the PASCAL VOC colour map)."""
    pal = [0] * (num_classes * 3)
    for j in range(num_classes):
        lab, i = j, 0
        while lab:
            pal[j * 3 + 0] |= ((lab >> 0) & 1) << (7 - i)
            pal[j * 3 + 1] |= ((lab >> 1) & 1) << (7 - i)
            pal[j * 3 + 2] |= ((lab >> 2) & 1) << (7 - i)
            i += 1
            lab >>= 3
    return pal
