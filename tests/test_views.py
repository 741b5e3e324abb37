"""Tests for tmspr_jax.data.views: geometry on coordinate-coded images, independent oracles (torch, NumPy formulas);
and the picture of the views (tmspr_jax.tools.views)."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tmspr_jax.data import views as V
from tmspr_jax.tools import views as view_tool

HALF = (0.5, 0.5, 0.5)
IMNET_MEAN = (0.485, 0.456, 0.406)
IMNET_STD = (0.229, 0.224, 0.225)
SIZE = (256, 128)


def coord_image(h: int, w: int) -> np.ndarray:
    """R codes the row, G the column, B a checker: each pixel tells where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    r = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    g = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    b = (((y // 4 + x // 4) % 2) * 200 + 20).astype(np.uint8)
    return np.stack([r, g, b], -1)


def ref_normalize(a: np.ndarray, mean, std) -> np.ndarray:
    """ToTensor + Normalize written out directly (float32)."""
    return (a.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)


def torch_bilinear(x_hwc: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x_hwc, dtype=np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).numpy()


# ------------------------------------------------------------------ independent torchvision/PIL ColorJitter formulas


def np_gray(a: np.ndarray) -> np.ndarray:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point)."""
    a = a.astype(np.int64)
    return ((a[..., 0] * 19595 + a[..., 1] * 38470 + a[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def np_blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
    """PIL Image.blend: float32 ``d + f*(i - d)``, truncated, clipped to [0, 255]."""
    d = degenerate.astype(np.float32)
    v = d + np.float32(factor) * (image.astype(np.float32) - d)
    return np.clip(np.trunc(v), 0, 255).astype(np.uint8)


def np_jitter(a: np.ndarray, order, b: float, c: float, s: float) -> np.ndarray:
    for op in order:
        if op == "brightness":
            a = np_blend(np.zeros_like(a), a, b)
        elif op == "contrast":
            mean = int(np_gray(a).astype(np.float64).mean() + 0.5)
            a = np_blend(np.full_like(a, mean), a, c)
        elif op == "saturation":
            a = np_blend(np.repeat(np_gray(a)[..., None], 3, -1), a, s)
        else:
            raise AssertionError(op)
    return a


# ------------------------------------------------------------------ based / eval


@pytest.mark.parametrize("src", [(37, 23), (128, 64), (300, 140)])
def test_based_view_is_pil_bicubic_normalised(src):
    img = np.random.default_rng(0).integers(0, 256, src + (3,), dtype=np.uint8)
    out = V.based_view(img, SIZE, IMNET_MEAN, IMNET_STD)
    expect = ref_normalize(np.asarray(Image.fromarray(img).resize((128, 256), Image.BICUBIC)), IMNET_MEAN, IMNET_STD)
    assert out.dtype == np.float32 and out.shape == (256, 128, 3)
    np.testing.assert_array_equal(out, expect)


def test_eval_view_is_pil_bilinear_with_antialias():
    img = np.random.default_rng(1).integers(0, 256, (400, 200, 3), dtype=np.uint8)
    out = V.eval_view(img, SIZE, HALF, HALF)
    expect = ref_normalize(np.asarray(Image.fromarray(img).resize((128, 256), Image.BILINEAR)), HALF, HALF)
    np.testing.assert_array_equal(out, expect)
    # PIL's bilinear downscale averages (antialias): on noise it is much smoother than point-sampled bilinear.
    no_aa = ref_normalize(np.round(torch_bilinear(img.astype(np.float32), 256, 128)).astype(np.uint8), HALF, HALF)
    assert out.std() < 0.8 * no_aa.std()


def test_amplify_pad_is_the_reference_30px_at_256_and_scales_with_height():
    assert V.amplify_pad(256) == 30
    assert V.amplify_pad(128) == 15
    assert V.amplify_pad(64) == 8


def test_sizes_follow_img_size():
    img = coord_image(50, 30)
    occ = V.OccluderBank.from_arrays([coord_image(40, 20)])
    out = V.train_views(img, np.random.default_rng(0), occ, (96, 48), HALF, HALF)
    assert out.shape == (4, 96, 48, 3) and out.dtype == np.float32
    assert V.eval_view(img, (96, 48), HALF, HALF).shape == (96, 48, 3)


# ------------------------------------------------------------------ amplifying


@pytest.mark.parametrize("seed", range(6))
def test_amplifying_equals_torch_crop_and_interpolate(seed):
    img = coord_image(128, 64)
    out, p = V.amplifying_view(img, np.random.default_rng(seed), SIZE, HALF, HALF, return_params=True)
    assert p.padded_size == (316, 188)
    resized = np.asarray(Image.fromarray(img).resize((128, 256), Image.BICUBIC))
    padded = ref_normalize(np.pad(resized, ((30, 30), (30, 30), (0, 0))), HALF, HALF)
    b = p.crop
    assert 0 <= b.top and b.top + b.height <= 316 and 0 <= b.left and b.left + b.width <= 188
    expect = torch_bilinear(padded[b.top : b.top + b.height, b.left : b.left + b.width], 256, 128)
    np.testing.assert_allclose(out, expect, atol=1e-5, rtol=0)


def test_amplifying_border_is_normalised_black():
    # A white image: wherever the crop reaches into the padding, the output holds (0 - mean)/std.
    img = np.full((64, 32, 3), 255, np.uint8)
    seen_border = False
    for seed in range(20):
        out, p = V.amplifying_view(img, np.random.default_rng(seed), (64, 32), IMNET_MEAN, IMNET_STD, True)
        black = (0 - np.float32(IMNET_MEAN)) / np.float32(IMNET_STD)
        white = (1 - np.float32(IMNET_MEAN)) / np.float32(IMNET_STD)
        assert np.all(out >= black - 1e-5) and np.all(out <= white + 1e-5)
        pad = 8  # 30 px at height 256 -> 7.5 -> 8 at height 64
        assert p.padded_size == (64 + 2 * pad, 32 + 2 * pad)
        if p.crop.top < pad - 1:  # the first output row samples fully from the top padding
            np.testing.assert_allclose(out[0, 0], black, atol=1e-5)
            seen_border = True
    assert seen_border


def test_random_resized_crop_sampling_constraints():
    rng = np.random.default_rng(0)
    H, W = 316, 188
    boxes, fallbacks = [], 0
    for _ in range(3000):
        b, fb = V.random_resized_crop_params(rng, H, W)
        fallbacks += fb
        boxes.append((b.top, b.left, b.height, b.width))
    t, l, h, w = np.array(boxes).T
    assert np.all((h > 0) & (h <= H) & (w > 0) & (w <= W))
    assert np.all((t >= 0) & (t <= H - h) & (l >= 0) & (l <= W - w))
    # Aspect and area before rounding lie in [3/4, 4/3] and [0.08, 1] * H * W; allow the half-pixel rounding.
    assert np.all((w + 0.5) / (h - 0.5) >= 3 / 4) and np.all((w - 0.5) / (h + 0.5) <= 4 / 3)
    assert np.all((w + 0.5) * (h + 0.5) >= 0.08 * H * W) and np.all((w - 0.5) * (h - 0.5) <= H * W)
    frac = h * w / (H * W)
    assert frac.min() < 0.1 and frac.max() > 0.75  # the whole scale range is used
    assert fallbacks < 0.01 * len(boxes)
    # Positions are uniform: both extremes occur for small crops.
    assert (t == 0).any() and (l == 0).any()


@pytest.mark.parametrize(
    "H,W,expect",
    [
        (316, 188, (32, 0, 251, 188)),  # W/H < 3/4: full width, h = round(188 / 0.75) = 251, centred
        (101, 300, (0, 82, 101, 135)),  # W/H > 4/3: full height, w = round(101 * 4/3) = round(134.67) = 135
        (100, 110, (0, 0, 100, 110)),  # ratio inside [3/4, 4/3]: whole image
    ],
)
def test_random_resized_crop_fallback(H, W, expect):
    # scale >= 5 can never fit, so all 10 attempts fail and the central fallback is used.
    b, fb = V.random_resized_crop_params(np.random.default_rng(0), H, W, scale=(5.0, 6.0))
    assert fb and (b.top, b.left, b.height, b.width) == expect


# ------------------------------------------------------------------ shrinking


@pytest.mark.parametrize("seed", range(8))
def test_shrinking_scale_edge_replication_and_interior(seed):
    img = coord_image(128, 64)
    H, W = SIZE
    out, p = V.shrinking_view(img, np.random.default_rng(seed), SIZE, HALF, HALF, return_params=True)
    assert 0.8 <= p.scale <= 1.0
    nh, nw = p.new_size
    assert (nh, nw) == (int(H * p.scale), int(W * p.scale))
    top, bottom, left, right = p.pad
    assert (top, bottom) == ((H - nh) // 2, H - nh - (H - nh) // 2)
    assert (left, right) == ((W - nw) // 2, W - nw - (W - nw) // 2)
    # Borders replicate the edge rows / columns of the shrunk image.
    np.testing.assert_array_equal(out[:top], np.broadcast_to(out[top], out[:top].shape))
    np.testing.assert_array_equal(out[H - bottom :], np.broadcast_to(out[H - bottom - 1], out[H - bottom :].shape))
    np.testing.assert_array_equal(out[:, :left], np.broadcast_to(out[:, left : left + 1], out[:, :left].shape))
    np.testing.assert_array_equal(
        out[:, W - right :], np.broadcast_to(out[:, W - right - 1 : W - right], out[:, W - right :].shape)
    )
    # Interior: half-pixel bilinear (torch oracle) of the bicubic-resized uint8 image, rounded to uint8.
    resized = np.asarray(Image.fromarray(img).resize((W, H), Image.BICUBIC)).astype(np.float32)
    small = np.clip(np.floor(torch_bilinear(resized, nh, nw) + 0.5), 0, 255).astype(np.uint8)
    interior = out[top : top + nh, left : left + nw]
    diff = np.abs(interior - ref_normalize(small, HALF, HALF)) * 0.5 * 255  # in grey levels
    assert diff.max() <= 1.0 + 1e-4 and (diff < 1e-4).mean() > 0.99


def test_shrinking_scale_range_is_used():
    scales = [
        V.shrinking_view(coord_image(32, 16), np.random.default_rng(s), (64, 32), HALF, HALF, True)[1].scale
        for s in range(200)
    ]
    assert min(scales) < 0.82 and max(scales) > 0.98 and all(0.8 <= s <= 1.0 for s in scales)


# ------------------------------------------------------------------ covering


def expected_patch(occ: np.ndarray, p: V.CoverParams) -> np.ndarray:
    """Crop, jitter (independent formulas), PIL bicubic resize, flip, [0, 1]."""
    c = p.crop
    a = occ[c.top : c.top + c.height, c.left : c.left + c.width]
    a = np_jitter(a, p.jitter.order, p.jitter.brightness, p.jitter.contrast, p.jitter.saturation)
    a = np.asarray(Image.fromarray(a).resize((p.paste.width, p.paste.height), Image.BICUBIC))
    if p.flipped:
        a = a[:, ::-1]
    return a.astype(np.float32) / 255


def erase_mask(p: V.CoverParams, shape) -> np.ndarray:
    m = np.zeros(shape[:2], bool)
    if p.erase is not None:
        e = p.erase
        m[e.top : e.top + e.height, e.left : e.left + e.width] = True
    return m


@pytest.mark.parametrize("kind", ["strip", "band"])
def test_covering_geometry_and_content(kind):
    H, W = SIZE
    rng0 = np.random.default_rng(3)
    # Tall occluders give crop_h/crop_w >= 2.5 (always a strip); wide ones give bands.
    shape = (200, 40) if kind == "strip" else (40, 200)
    occs = [rng0.integers(0, 256, shape + (3,), dtype=np.uint8) for _ in range(3)]
    bank = V.OccluderBank.from_arrays(occs)
    img = np.zeros((128, 64, 3), np.uint8)  # normalised base value is exactly -1
    used = set()
    for seed in range(25):
        out, p = V.covering_view(img, np.random.default_rng(seed), bank, SIZE, HALF, HALF, return_params=True)
        used.add(p.occluder_index)
        oh, ow = p.occluder_size
        assert (oh, ow) == shape
        assert oh // 4 <= p.crop.height <= oh // 2 and ow // 4 <= p.crop.width <= ow // 2
        assert 0 <= p.crop.top <= oh - p.crop.height and 0 <= p.crop.left <= ow - p.crop.width
        assert p.strip == (kind == "strip") == (p.crop.height / p.crop.width > 2)
        q = p.paste
        if kind == "strip":
            assert (q.top, q.height) == (0, H) and W // 4 <= q.width <= W // 2
            assert 0 <= q.left <= W - q.width
        else:
            assert (q.left, q.width) == (0, W) and H // 4 <= q.height <= H // 2
            assert 0 <= q.top <= H - q.height
        expect = np.full((H, W, 3), -1.0, np.float32)
        expect[q.top : q.top + q.height, q.left : q.left + q.width] = expected_patch(occs[p.occluder_index], p)
        keep = ~erase_mask(p, out.shape)
        np.testing.assert_allclose(out[keep], expect[keep], atol=1e-6, rtol=0)
    assert used == {0, 1, 2}


def test_strip_or_band_follows_crop_aspect():
    bank = V.OccluderBank.from_arrays([coord_image(120, 60)])  # crops of aspect 1..4: both cases occur
    kinds = []
    for seed in range(60):
        _, p = V.covering_view(
            coord_image(64, 32), np.random.default_rng(seed), bank, SIZE, HALF, HALF, return_params=True
        )
        assert p.strip == (p.crop.height / p.crop.width > 2)
        kinds.append(p.strip)
    assert any(kinds) and not all(kinds)


def test_covering_size_ranges_are_inclusive():
    # randint bounds are inclusive: crop sides reach oh//4 and oh//2, strip widths W//4 and W//2, band heights H//4,
    # H//2.
    H, W = 32, 16
    img = np.zeros((16, 8, 3), np.uint8)
    bank = V.OccluderBank.from_arrays([np.zeros((48, 8, 3), np.uint8), np.zeros((8, 48, 3), np.uint8)])
    seen = {"strip": set(), "band": set(), "crop_h": set()}
    flips = 0
    for seed in range(300):
        _, p = V.covering_view(img, np.random.default_rng(seed), bank, (H, W), HALF, HALF, return_params=True)
        flips += p.flipped
        if p.strip:
            seen["strip"].add(p.paste.width)
        else:
            seen["band"].add(p.paste.height)
        if p.occluder_size == (48, 8):
            seen["crop_h"].add(p.crop.height)
    assert seen["strip"] == set(range(W // 4, W // 2 + 1))
    assert seen["band"] == set(range(H // 4, H // 2 + 1))
    assert seen["crop_h"] == set(range(12, 25))
    assert 0.4 < flips / 300 < 0.6  # RandomHorizontalFlip(p=0.5)


def test_occluder_quirk_vs_normalised():
    bank = V.OccluderBank.from_arrays([np.random.default_rng(9).integers(0, 256, (160, 50, 3), dtype=np.uint8)])
    img = coord_image(128, 64)
    mean, std = np.float32(IMNET_MEAN), np.float32(IMNET_STD)
    for seed in range(5):
        raw, p = V.covering_view(
            img, np.random.default_rng(seed), bank, SIZE, IMNET_MEAN, IMNET_STD, return_params=True
        )
        nrm, p2 = V.covering_view(
            img,
            np.random.default_rng(seed),
            bank,
            SIZE,
            IMNET_MEAN,
            IMNET_STD,
            occluder_normalize=True,
            return_params=True,
        )
        assert p == p2
        q = p.paste
        in_paste = np.zeros(raw.shape[:2], bool)
        in_paste[q.top : q.top + q.height, q.left : q.left + q.width] = True
        region = in_paste & ~erase_mask(p, raw.shape)
        assert region.any()
        assert raw[region].min() >= 0 and raw[region].max() <= 1  # quirk: pasted in [0, 1]
        np.testing.assert_allclose(nrm[region], (raw[region] - mean) / std, atol=1e-5)
        np.testing.assert_array_equal(raw[~in_paste], nrm[~in_paste])


def test_random_erasing_area_and_aspect():
    rng = np.random.default_rng(0)
    H, W = SIZE
    boxes = [V.random_erasing_params(rng, H, W) for _ in range(3000)]
    assert all(b is not None for b in boxes)  # at 256x128 an attempt practically always fits
    t, l, h, w = np.array([(b.top, b.left, b.height, b.width) for b in boxes]).T
    assert np.all((w < W) & (h < H) & (t >= 0) & (t + h <= H) & (l >= 0) & (l + w <= W))
    # area in [0.02, 1/3] * H*W and aspect h/w in [0.3, 1/0.3] before rounding to whole pixels
    assert np.all((h + 0.5) * (w + 0.5) >= 0.02 * H * W) and np.all((h - 0.5) * (w - 0.5) <= H * W / 3)
    assert np.all((h + 0.5) / (w - 0.5) >= 0.3) and np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3)
    frac = h * w / (H * W)
    assert frac.min() < 0.03 and frac.max() > 0.3
    log_ar = np.log(h / w)
    assert log_ar.min() < math.log(0.35) and log_ar.max() > math.log(1 / 0.35)  # the whole aspect range is used
    # On a square image the rejection is symmetric, so the log-uniform aspect averages to 0 (on 256x128 it does not:
    # wide boxes are rejected more often, as in timm).
    sq = [V.random_erasing_params(rng, 256, 256) for _ in range(3000)]
    assert abs(np.mean([math.log(b.height / b.width) for b in sq])) < 0.05
    # When no attempt can fit, nothing is erased.
    assert V.random_erasing_params(rng, 10, 10, area_range=(0.99, 1.0)) is None


def test_erased_region_is_standard_normal_per_pixel_and_channel():
    bank = V.OccluderBank.from_arrays([np.zeros((40, 200, 3), np.uint8)])
    vals = []
    for seed in range(10):
        out, p = V.covering_view(
            np.zeros((64, 32, 3), np.uint8), np.random.default_rng(seed), bank, SIZE, HALF, HALF, return_params=True
        )
        e = p.erase
        r = out[e.top : e.top + e.height, e.left : e.left + e.width]
        assert not np.allclose(r[..., 0], r[..., 1])  # channels are drawn independently
        vals.append(r.ravel())
    v = np.concatenate(vals)
    assert abs(v.mean()) < 0.02 and abs(v.std() - 1) < 0.02


# ------------------------------------------------------------------ ColorJitter


@pytest.mark.parametrize(
    "order",
    [
        ("brightness",),
        ("contrast",),
        ("saturation",),
        ("saturation", "brightness", "contrast"),
        ("contrast", "saturation", "brightness"),
    ],
)
@pytest.mark.parametrize("factor", [0.5, 0.83, 1.0, 1.37, 1.5])
def test_color_jitter_matches_torchvision_formulas(order, factor):
    a = np.random.default_rng(7).integers(0, 256, (23, 17, 3), dtype=np.uint8)
    p = V.JitterParams(order=order, brightness=factor, contrast=2.0 - factor, saturation=factor * 0.9 + 0.1)
    got = np.asarray(V.apply_color_jitter(Image.fromarray(a), p))
    np.testing.assert_array_equal(got, np_jitter(a, order, p.brightness, p.contrast, p.saturation))


def test_color_jitter_known_values_on_constant_images():
    grey = np.full((4, 4, 3), 201, np.uint8)
    only = lambda op, f: np.asarray(V.apply_color_jitter(Image.fromarray(grey), V.JitterParams((op,), f, f, f)))
    assert np.all(only("brightness", 0.5) == 100)  # trunc(100.5)
    assert np.all(only("brightness", 1.5) == 255)  # clipped
    assert np.all(only("contrast", 0.5) == 201) and np.all(only("saturation", 1.5) == 201)  # no-ops on grey
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200  # L = (200*19595 + 32768) >> 16 = 60
    sat = np.asarray(V.apply_color_jitter(Image.fromarray(red), V.JitterParams(("saturation",), 1, 1, 0.5)))
    assert tuple(sat[0, 0]) == (130, 30, 30)  # 60 + 0.5*(200-60), 60 + 0.5*(0-60)


def test_color_jitter_sampling():
    rng = np.random.default_rng(0)
    ps = [V.sample_color_jitter(rng) for _ in range(300)]
    assert {p.order for p in ps} == {tuple(o) for o in __import__("itertools").permutations(V._JITTER_OPS)}
    f = np.array([(p.brightness, p.contrast, p.saturation) for p in ps])
    assert f.min() >= 0.5 and f.max() <= 1.5 and f.min() < 0.55 and f.max() > 1.45


# ------------------------------------------------------------------ train_views, reproducibility


def test_train_views_composition_and_reproducibility():
    img = coord_image(128, 64)
    bank = V.OccluderBank.from_arrays([coord_image(150, 50), coord_image(50, 150)])
    a = V.train_views(img, np.random.default_rng(11), bank, SIZE, HALF, HALF)
    b = V.train_views(img, np.random.default_rng(11), bank, SIZE, HALF, HALF)
    c = V.train_views(img, np.random.default_rng(12), bank, SIZE, HALF, HALF)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], c[0])  # the based view is deterministic
    for v in (1, 2, 3):
        assert not np.array_equal(a[v], c[v])
    # train_views = based + the per-view functions drawing from the same generator in view order.
    rng = np.random.default_rng(11)
    np.testing.assert_array_equal(a[0], V.based_view(img, SIZE, HALF, HALF))
    np.testing.assert_array_equal(a[1], V.amplifying_view(img, rng, SIZE, HALF, HALF))
    np.testing.assert_array_equal(a[2], V.covering_view(img, rng, bank, SIZE, HALF, HALF))
    np.testing.assert_array_equal(a[3], V.shrinking_view(img, rng, SIZE, HALF, HALF))


# ------------------------------------------------------------------ occluder bank and errors


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_occluder_bank_from_records_and_callable():
    arrs = [coord_image(40, 20), coord_image(30, 60)]
    recs = [{"image": png_bytes(a), "file_name": f"{i}.png"} for i, a in enumerate(arrs)]
    bank = pickle.loads(pickle.dumps(V.OccluderBank.from_records(recs, name="recs")))
    assert len(bank) == 2
    np.testing.assert_array_equal(bank[1], arrs[1])
    cb = V.OccluderBank(lambda i: arrs[i], 2)
    np.testing.assert_array_equal(cb[0], arrs[0])
    # A bank, a callable bank and a plain list of arrays give the same covering view.
    img = coord_image(64, 32)
    outs = [V.covering_view(img, np.random.default_rng(4), o, (64, 32), HALF, HALF) for o in (bank, cb, arrs)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    with pytest.raises(IndexError, match="out of range"):
        bank[2]


def test_occluder_bank_from_a_folder(tmp_path):
    arrs = {"b.png": coord_image(40, 20), "a.jpg": np.full((30, 60, 3), 200, np.uint8)}
    for name, a in arrs.items():
        Image.fromarray(a).save(tmp_path / name, quality=100)
    (tmp_path / "notes.txt").write_text("not an image")  # other files are not occluders
    bank = pickle.loads(pickle.dumps(V.OccluderBank.from_dir(str(tmp_path))))
    assert len(bank) == 2 and bank.name == str(tmp_path)
    np.testing.assert_array_equal(bank[1], arrs["b.png"])  # name order: a.jpg, b.png
    assert bank[0].shape == (30, 60, 3) and np.abs(bank[0].astype(int) - 200).max() <= 2  # JPEG, nearly lossless
    # The covering view pastes from the folder's images: the recorded occluder is one of them.
    _, params = V.covering_view(
        coord_image(64, 32), np.random.default_rng(2), bank, (64, 32), HALF, HALF, return_params=True
    )
    assert params.occluder_size == bank[params.occluder_index].shape[:2]

    with pytest.raises(FileNotFoundError, match="occluder folder.*not a directory"):
        V.OccluderBank.from_dir(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="occluder folder: no image files"):
        V.OccluderBank.from_dir(str(empty))
    (empty / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot decode"):
        V.OccluderBank.from_dir(str(empty))


def test_bad_inputs_give_clear_errors():
    img = coord_image(20, 10)
    bank = V.OccluderBank.from_arrays([coord_image(40, 20)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        V.based_view(img.astype(np.float32), SIZE, HALF, HALF)
    with pytest.raises(ValueError, match="uint8 RGB"):
        V.train_views(img[..., 0], np.random.default_rng(0), bank, SIZE, HALF, HALF)
    with pytest.raises(ValueError, match="img_size"):
        V.eval_view(img, (256,), HALF, HALF)
    with pytest.raises(ValueError, match="img_size"):
        V.eval_view(img, (256.5, 128), HALF, HALF)
    with pytest.raises(ValueError, match="std"):
        V.eval_view(img, SIZE, HALF, (0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="at least one"):
        V.OccluderBank.from_arrays([])
    corrupt = V.OccluderBank.from_records([{"image": b"not an image", "file_name": "bad.jpg"}], name="split")
    with pytest.raises(ValueError, match=r"split\)\[0\] bad.jpg: cannot decode"):
        V.covering_view(img, np.random.default_rng(0), corrupt, SIZE, HALF, HALF)
    with pytest.raises(KeyError, match="no key 'image'"):
        V.OccluderBank.from_records([{"img": b""}])[0]


def test_occluders_under_4_px_give_a_1_px_crop():
    # The reference's crop range randint[side // 4, side // 2] is empty under 4 px; here such a side crops 1 px.
    img = coord_image(64, 32)
    for shape in ((1, 1), (3, 20), (20, 2)):
        bank = V.OccluderBank.from_arrays([coord_image(*shape)], name="tiny")
        for seed in range(5):
            out, p = V.covering_view(img, np.random.default_rng(seed), bank, (64, 32), HALF, HALF, return_params=True)
            assert np.isfinite(out).all() and p.occluder_size == shape
            assert (p.crop.height == 1) == (shape[0] < 4) and (p.crop.width == 1) == (shape[1] < 4)
    # 4 px and more: the reference's draws, unchanged.
    big = V.OccluderBank.from_arrays([coord_image(40, 20)])
    _, p = V.covering_view(img, np.random.default_rng(0), big, (64, 32), HALF, HALF, return_params=True)
    assert 10 <= p.crop.height <= 20 and 5 <= p.crop.width <= 10


def test_cli_renders_grid_from_image_folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        Image.fromarray(coord_image(60 + 10 * i, 30)).save(d / f"{i}.png")
    out = tmp_path / "grid.png"
    view_tool.main(["--images", str(d), "--out", str(out), "--num", "2", "--img_size", "64", "32"])
    grid = np.asarray(Image.open(out))
    assert grid.shape == (14 + 2 * (64 + 4) + 4, 5 * (32 + 4) + 4, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        view_tool.main(["--images", str(tmp_path / "empty"), "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        view_tool.main(["--images", str(tmp_path / "missing"), "--out", str(out)])
    # as a command: one line on stderr, no traceback
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tmspr_jax.tools.views", "--images", str(tmp_path / "missing"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: --images:") and "Traceback" not in r.stderr, r.stderr


def test_cli_and_occluder_bank_on_a_prepared_split(tmp_path):
    # A real (tiny) TFDS dataset read through tmspr_jax.data.sources.open_split.
    from tmspr_jax.data import sources
    from tmspr_jax.datagen import synthetic

    synthetic.generate(
        str(tmp_path / "raw"),
        num_train_ids=3,
        images_per_id=2,
        num_test_ids=1,
        gallery_per_id=1,
        queries_per_id=1,
        height=48,
        width=24,
    )
    sources.prepare_dataset("synthetic_occluded", tmp_path / "tfds", tmp_path / "raw")
    split = sources.open_split("synthetic_occluded", "train", tmp_path / "tfds")
    bank = V.OccluderBank.from_records(split)
    assert len(bank) == len(split) == 6
    np.testing.assert_array_equal(bank[4], sources.decode_image(split[4]))
    out = tmp_path / "grid.png"
    view_tool.main(
        [
            "--dataset",
            "synthetic_occluded",
            "--data_dir",
            str(tmp_path / "tfds"),
            "--out",
            str(out),
            "--num",
            "3",
            "--img_size",
            "64",
            "32",
        ]
    )
    grid = np.asarray(Image.open(out))
    assert grid.shape == (14 + 3 * (64 + 4) + 4, 5 * (32 + 4) + 4, 3)
    # Column 1 (based) of each row is the denormalised based view of some training image.
    cell = grid[14 + 4 : 14 + 4 + 64, 4 + 36 : 4 + 36 + 32]
    candidates = [view_tool.denormalize(V.based_view(bank[i], (64, 32), HALF, HALF), HALF, HALF) for i in range(6)]
    assert any(np.array_equal(cell, c) for c in candidates)


def test_results_do_not_alias_scratch_buffers_and_threads_agree():
    # Scratch buffers are reused per thread: earlier results must stay intact, and threads must not interfere.
    from concurrent.futures import ThreadPoolExecutor

    bank = V.OccluderBank.from_arrays([coord_image(150, 50), coord_image(50, 150)])
    imgs = [coord_image(100 + 7 * i, 50 + 3 * i) for i in range(8)]
    run = lambda i: V.train_views(imgs[i], np.random.default_rng(i), bank, (64, 32), HALF, HALF)
    first = [run(i) for i in range(8)]
    kept = [f.copy() for f in first]
    amp = V.amplifying_view(imgs[0], np.random.default_rng(0), (64, 32), HALF, HALF)
    amp_kept = amp.copy()
    V.amplifying_view(imgs[1], np.random.default_rng(1), (64, 32), HALF, HALF)
    np.testing.assert_array_equal(amp, amp_kept)
    for f, k in zip(first, kept):
        np.testing.assert_array_equal(f, k)
    with ThreadPoolExecutor(4) as ex:
        threaded = list(ex.map(run, list(range(8)) * 3))
    for i, t in enumerate(threaded):
        np.testing.assert_array_equal(t, kept[i % 8])
