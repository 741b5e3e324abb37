"""Tests for tmspr_jax.datagen (the synthetic set): layout, names, label maps, occlusion, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from tmspr_jax.datagen import appearance as A
from tmspr_jax.datagen import occluders as O
from tmspr_jax.datagen import synthetic as S

SMALL = dict(num_train_ids=6, images_per_id=4, num_test_ids=4, queries_per_id=2, gallery_per_id=3)
NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_00\.jpg$")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    summary = S.generate(out, seed=3, **SMALL)
    return out, summary


def _names(out, folder):
    return sorted(os.listdir(os.path.join(out, folder)))


def test_layout_names_cameras_and_ids(small):
    out, summary = small
    pids = {}
    for folder in (S.TRAIN_DIR, S.QUERY_DIR, S.GALLERY_DIR):
        names = _names(out, folder)
        assert names, folder
        for n in names:
            m = NAME.match(n)
            assert m, n
            # the reference's Market regex, applied as it does
            pid, cam = (int(g) for g in re.search(r"([-\d]+)_c(\d)", n).groups())
            assert (pid, cam) == (int(m.group(1)), int(m.group(2)))
            assert 1 <= cam <= 6 and pid >= 1
            with Image.open(os.path.join(out, folder, n)) as im:
                assert im.format == "JPEG" and im.size == (64, 128)
        pids[folder] = {int(n[:4]) for n in names}
    assert pids[S.TRAIN_DIR] == set(range(1, 7))
    assert pids[S.QUERY_DIR] == pids[S.GALLERY_DIR] == set(range(7, 11))
    assert not pids[S.TRAIN_DIR] & pids[S.QUERY_DIR]
    assert len(_names(out, S.TRAIN_DIR)) == 24 and len(_names(out, S.QUERY_DIR)) == 8
    assert len(_names(out, S.GALLERY_DIR)) == 12
    assert summary["num_images"] == {"train": 24, "query": 8, "gallery": 12}


def test_every_query_has_gallery_in_another_camera(small):
    out, _ = small
    gallery = [(int(n[:4]), int(n[6])) for n in _names(out, S.GALLERY_DIR)]
    for n in _names(out, S.QUERY_DIR):
        pid, cam = int(n[:4]), int(n[6])
        assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery), n


def test_label_maps_for_training_images_only(small):
    out, _ = small
    train = _names(out, S.TRAIN_DIR)
    maps = _names(out, S.LABEL_DIR)
    assert maps == sorted(n[:-4] + ".png" for n in train)
    for n in train:
        with (
            Image.open(os.path.join(out, S.LABEL_DIR, n[:-4] + ".png")) as lab,
            Image.open(os.path.join(out, S.TRAIN_DIR, n)) as im,
        ):
            assert lab.mode == "L" and lab.size == im.size
            a = np.asarray(lab)
        assert a.max() <= 19 and (a > 0).sum() > 500  # a person is labelled


def test_head_is_labelled_where_the_head_is(small):
    out, summary = small
    for r in summary["images"]:
        if r["split"] != "train" or r["occluder"] is not None:
            continue
        lab = np.asarray(Image.open(os.path.join(out, S.LABEL_DIR, r["file_name"][:-4] + ".png")))
        y, x = (int(round(v)) for v in r["head_center"])
        assert lab[y, x] in (A.FACE, A.HAIR, A.HAT), r["file_name"]
        y, x = (int(round(v)) for v in r["torso_center"])
        assert lab[y, x] in (A.UPPER, 0), r["file_name"]  # 0: a bag strap may cross the chest


def _pure_identity(**kw) -> A.Identity:
    base = dict(
        pid=1,
        skin=(250, 20, 20),
        hair_colour=(20, 20, 250),
        hair_style="long",
        upper_colour=(20, 250, 20),
        upper_colour2=(20, 250, 20),
        pattern="plain",
        stripe_period=0.05,
        sleeves="short",
        lower_colour=(250, 250, 20),
        lower_type="shorts",
        shoe_colour=(20, 250, 250),
        hat_colour=None,
        bag="none",
        bag_colour=(128, 128, 128),
        bag_side=1,
        build=1.0,
        height=1.0,
    )
    base.update(kw)
    return A.Identity(**base)


@pytest.mark.parametrize(
    "ident",
    [
        _pure_identity(),
        _pure_identity(hat_colour=(250, 20, 250), lower_type="skirt", hair_style="bun", sleeves="long"),
        _pure_identity(lower_type="pants", hair_style="short", bag="shoulder"),
    ],
)
def test_label_map_matches_what_is_drawn(ident):
    # Each part has a pure colour; every pixel labelled as that part must show it.
    neutral = A.Camera(gain=(1.0, 1.0, 1.0), offset=0.0, contrast=1.0, blur=0.0)
    for k in range(5):
        img, lab, _ = S.render_image(ident, neutral, np.random.default_rng(k))
        img = img.astype(int)
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        hi, lo = 110, 70  # after shading and noise: pure 250 stays above, 20 stays below
        expect = {
            A.FACE: (r > hi) & (g < lo) & (b < lo),
            A.HAIR: (b > hi) & (r < lo) & (g < lo),
            A.UPPER: (g > hi) & (r < lo) & (b < lo),
            A.L_SHOE: (g > hi) & (b > hi) & (r < lo),
            A.HAT: (r > hi) & (b > hi) & (g < lo),
        }
        expect[A.L_ARM] = expect[A.R_ARM] = expect[A.L_LEG] = expect[A.R_LEG] = expect[A.FACE]
        expect[A.R_SHOE] = expect[A.L_SHOE]
        expect[A.PANTS] = expect[A.SKIRT] = (r > hi) & (g > hi) & (b < lo)
        present = set(np.unique(lab).tolist()) - {0}
        assert {A.FACE, A.HAIR, A.UPPER, A.L_SHOE, A.R_SHOE, A.L_ARM, A.R_ARM} <= present
        assert (A.HAT in present) == (ident.hat_colour is not None)
        assert ({A.SKIRT, A.PANTS} & present) == ({A.SKIRT} if ident.lower_type == "skirt" else {A.PANTS})
        for cls in present:
            assert expect[cls][lab == cls].all(), (cls, k)
        # and what is not labelled as a part is not painted in a part's colour where the figure is
        assert not (expect[A.UPPER] & (lab != A.UPPER) & (lab > 0)).any()


def test_occlusion_fraction_in_range_and_measured_correctly(small):
    _, summary = small
    queries = [r for r in summary["images"] if r["split"] == "query"]
    assert all(r["occluder"] in O.OCCLUDERS and 0.2 <= r["coverage"] <= 0.5 for r in queries)
    # Independent measurement: the same image drawn without the occluder (same rng draws up to the occluder).
    ident = _pure_identity(bag="backpack")
    cam = A.Camera(gain=(1.0, 1.0, 1.0), offset=0.0, contrast=1.0, blur=0.0)
    kinds = set()
    for k in range(30):
        _, whole, _ = S.render_image(ident, cam, np.random.default_rng(k))
        _, occluded, meta = S.render_image(ident, cam, np.random.default_rng(k), occlusion=(0.2, 0.5))
        person = whole > 0
        assert not (occluded[~person] > 0).any()  # the occluder only removes labels
        covered = (person & (occluded == 0)).sum() / person.sum()
        assert 0.2 <= covered <= 0.5 and abs(covered - meta["coverage"]) < 1e-9
        kinds.add(meta["occluder"])
    assert len(kinds) >= 4  # the different occluder kinds are all in use


def test_gallery_and_train_mostly_whole(small):
    _, summary = small
    for split, n in (("train", 24), ("gallery", 12)):
        occ = [r for r in summary["images"] if r["split"] == split and r["occluder"] is not None]
        assert len(occ) == round(0.1 * n)
        assert all(0.2 <= r["coverage"] <= 0.5 for r in occ)


def test_train_occluded_fraction_changes_only_training_images(small, tmp_path):
    """The demo occludes 30% of its training images: the test set must stay the same bytes, so that figures measured
    with other training sets compare on the same queries and gallery."""
    out, summary = small
    more = S.generate(str(tmp_path / "more"), seed=3, train_occluded_fraction=0.5, **SMALL)
    occluded = [r for r in more["images"] if r["split"] == "train" and r["occluder"] is not None]
    assert len(occluded) == 12 and all(0.2 <= r["coverage"] <= 0.5 for r in occluded)
    before, after = _digest(out), _digest(str(tmp_path / "more"))
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert set(before) == set(after) and changed
    assert all(k.startswith((S.TRAIN_DIR, S.LABEL_DIR)) or k == "meta.json" for k in changed), changed
    # every training image that was occluded already is unchanged, and exactly the newly occluded ones differ
    was = {r["file_name"] for r in summary["images"] if r["split"] == "train" and r["occluder"] is not None}
    now = {r["file_name"] for r in occluded}
    assert was < now
    assert {k for k in changed if k.startswith(S.TRAIN_DIR)} == {os.path.join(S.TRAIN_DIR, n) for n in now - was}


def test_identities_distinct():
    ids = A.sample_identities(60, np.random.default_rng(0))
    keys = [
        (
            i.hair_colour,
            i.hair_style,
            i.upper_colour,
            i.pattern,
            i.sleeves,
            i.lower_colour,
            i.lower_type,
            i.shoe_colour,
            i.hat_colour,
            i.bag,
        )
        for i in ids
    ]
    assert len(set(keys)) == 60 and [i.pid for i in ids] == list(range(1, 61))
    cats = np.array([[i.hair_style, i.pattern, i.sleeves, i.lower_type, i.bag, i.hat_colour is None] for i in ids])
    assert all(len(set(col)) > 1 for col in cats.T)  # every attribute actually varies


def _digest(out):
    h = {}
    for root, _, files in os.walk(out):
        for f in files:
            p = os.path.join(root, f)
            h[os.path.relpath(p, out)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return h


def test_deterministic_for_a_seed(small, tmp_path):
    out, _ = small
    S.generate(str(tmp_path / "again"), seed=3, **SMALL)
    assert _digest(str(tmp_path / "again")) == _digest(out)
    S.generate(str(tmp_path / "other"), seed=4, **SMALL)
    other = _digest(str(tmp_path / "other"))
    same = [k for k, v in _digest(out).items() if other.get(k) == v]
    assert not [k for k in same if k.endswith((".jpg", ".png"))]


def test_meta_json(small):
    out, summary = small
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["images"] == json.loads(json.dumps(summary["images"]))
    assert meta["params"]["seed"] == 3


def test_refuses_to_overwrite_and_bad_settings(small, tmp_path):
    out, _ = small
    with pytest.raises(FileExistsError, match="overwrite"):
        S.generate(out, seed=3, **SMALL)
    with pytest.raises(ValueError, match="queries_per_id"):
        S.generate(str(tmp_path / "x"), queries_per_id=6)


def test_identity_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _pure_identity().pid = 3  # type: ignore[misc]


@pytest.mark.slow
def test_default_build_time(tmp_path):
    summary = S.generate(str(tmp_path / "default"))
    n = summary["num_images"]
    print(f"\ndefault synthetic dataset: {n} in {summary['seconds']:.1f}s")
    assert n == {"train": 800, "query": 100, "gallery": 300}


def test_camera_shift_and_pose_jitter():
    ident = _pure_identity()
    dark = A.Camera(gain=(0.8, 0.8, 0.8), offset=-20.0, contrast=1.0, blur=0.0)
    bright = A.Camera(gain=(1.2, 1.2, 1.2), offset=20.0, contrast=1.0, blur=0.0)
    a, lab_a, _ = S.render_image(ident, dark, np.random.default_rng(0))
    b, lab_b, _ = S.render_image(ident, bright, np.random.default_rng(0))
    np.testing.assert_array_equal(lab_a, lab_b)  # same scene ...
    assert b.astype(float).mean() > a.astype(float).mean() + 40  # ... seen brighter
    cams = A.sample_cameras(np.random.default_rng(0))
    assert len(cams) == 6 and len({c.gain for c in cams}) == 6
    geoms = [S.render_image(ident, dark, np.random.default_rng(k))[2] for k in range(6)]
    for key in ("fig_h", "cx", "top"):
        assert np.ptp([g[key] for g in geoms]) > 1.0, key  # pixels: scale and position vary per image


def test_cli(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [
        "--out",
        str(tmp_path / "d"),
        "--num_ids",
        "3",
        "--images_per_id",
        "2",
        "--num_test_ids",
        "2",
        "--gallery_per_id",
        "2",
        "--seed",
        "5",
        "--background_saturation",
        "0.5",
        "--camera_strength",
        "0.2",
        "--min_attribute_diff",
        "3",
        "--independent_test_set",
    ]
    cmd = [sys.executable, "-m", "tmspr_jax.tools.synthetic", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "train 3 ids / 6 images" in r.stdout and "query 4" in r.stdout and "gallery 4" in r.stdout
    assert len(os.listdir(tmp_path / "d" / S.LABEL_DIR)) == 6
    params = json.load(open(tmp_path / "d" / "meta.json"))["params"]
    assert (params["background_saturation"], params["camera_strength"], params["min_attribute_diff"]) == (0.5, 0.2, 3)
    assert params["independent_test_set"] is True


def test_camera_strength_scales_the_camera_shifts():
    import numpy as np

    from tmspr_jax.datagen.appearance import sample_cameras

    full = sample_cameras(np.random.default_rng(5))
    none = sample_cameras(np.random.default_rng(5), strength=0.0)
    half = sample_cameras(np.random.default_rng(5), strength=0.5)
    assert all(c.gain == (1.0, 1.0, 1.0) and c.offset == 0.0 and c.contrast == 1.0 for c in none)
    for f, h in zip(full, half):
        np.testing.assert_allclose(np.subtract(h.gain, 1), 0.5 * np.subtract(f.gain, 1), atol=1e-12)
        assert abs(h.offset - 0.5 * f.offset) < 1e-9


def test_background_saturation_mutes_the_background_only():
    ident = _pure_identity()
    cam = A.Camera(gain=(1.0, 1.0, 1.0), offset=0.0, contrast=1.0, blur=0.0)
    full, lab_full, _ = S.render_image(ident, cam, np.random.default_rng(7))
    grey, lab_grey, _ = S.render_image(ident, cam, np.random.default_rng(7), background_saturation=0.0)
    np.testing.assert_array_equal(lab_full, lab_grey)  # same scene and figure
    bg = lab_grey == 0
    chroma = lambda img: np.ptp(img.astype(float), axis=-1)  # max - min over RGB: 0 for greys
    assert chroma(grey)[bg].mean() < 12 < chroma(full)[bg].mean()  # greys up to the per-pixel noise
    person = lab_grey > 0
    np.testing.assert_array_equal(grey[person], full[person])  # the person is painted identically


def test_options_are_validated_and_recorded(small, tmp_path):
    out, _ = small
    params = json.load(open(os.path.join(out, "meta.json")))["params"]
    assert {"camera_strength", "min_attribute_diff", "background_saturation"} <= set(params)
    for bad in (dict(background_saturation=1.5), dict(camera_strength=-1.0), dict(min_attribute_diff=11)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            S.generate(str(tmp_path / "bad"), **bad)
    with pytest.raises(ValueError, match=r"unknown synthetic dataset option\(s\) \['num_ids'\]"):
        S.generate(str(tmp_path / "bad"), num_ids=3)  # the command's flag, not the option's name
    assert not os.path.exists(tmp_path / "bad")  # checked before anything is written
    # meta.json's params are the options, in SyntheticOptions' order: they rebuild them exactly
    assert list(params) == [f.name for f in dataclasses.fields(S.SyntheticOptions)]
    assert S.SyntheticOptions.of(params).params() == params


def test_occluder_images_for_the_covering_view(small, tmp_path):
    out = str(tmp_path / "with_occluders")
    summary = S.generate(out, seed=3, num_occluder_images=12, **SMALL)
    folder = os.path.join(out, S.OCCLUDER_DIR)
    assert sorted(os.listdir(folder)) == [f"occ_{i:04d}.png" for i in range(12)]
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["params"]["num_occluder_images"] == summary["num_occluder_images"] == 12
    kinds = meta["occluder_images"]
    assert len(kinds) == 12 and set(kinds) <= set(O.OCCLUDERS) and len(set(kinds)) >= 3
    for name in os.listdir(folder):
        im = np.asarray(Image.open(os.path.join(folder, name)))
        assert im.dtype == np.uint8 and im.shape[2] == 3
        assert 8 <= im.shape[0] <= 128 and 8 <= im.shape[1] <= 64
        assert im.std() > 3  # textured objects, not blank crops
    # The occluder images have their own random streams: the dataset's images are the same bytes as without them.
    small_out, _ = small
    for split in (S.TRAIN_DIR, S.QUERY_DIR, S.GALLERY_DIR):
        for name in _names(small_out, split):
            with open(os.path.join(small_out, split, name), "rb") as a, open(os.path.join(out, split, name), "rb") as b:
                assert a.read() == b.read(), (split, name)
    assert not os.path.exists(os.path.join(small_out, S.OCCLUDER_DIR))  # none by default
    # Deterministic per generator state; overwrite replaces the folder too.
    a, kind_a = O.render_occluder(np.random.default_rng(5))
    b, kind_b = O.render_occluder(np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert kind_a == kind_b
    S.generate(out, seed=3, overwrite=True, num_occluder_images=2, **SMALL)
    assert sorted(os.listdir(folder)) == ["occ_0000.png", "occ_0001.png"]
    with pytest.raises(ValueError, match="num_occluder_images"):
        S.generate(str(tmp_path / "bad"), num_occluder_images=-1)


def test_query_ambiguity_counts_identities_consistent_with_the_visible_attributes(small):
    out, _ = small
    meta = json.load(open(os.path.join(out, "meta.json")))
    queries = [r for r in meta["images"] if r["split"] == "query"]
    everything = S.query_ambiguity(out, visible_fraction=0.0)  # every attribute counts as visible
    assert everything["file_names"] == [r["file_name"] for r in queries]
    assert everything["consistent"].tolist() == [1] * len(queries)  # identities differ in >= min_attribute_diff
    assert everything["unique_fraction"] == everything["expected_rank1"] == 1.0
    previous = everything["consistent"]
    for fraction in (0.5, 0.8, 0.95, 1.0):
        got = S.query_ambiguity(out, visible_fraction=fraction)
        assert np.all(got["consistent"] >= previous)  # a stricter reading sees fewer attributes
        assert np.all(got["consistent"] <= SMALL["num_test_ids"])
        assert got["expected_rank1"] == pytest.approx(np.mean(1.0 / got["consistent"]))
        previous = got["consistent"]
    assert previous.max() > 1  # at 1.0 a partly covered region counts as hidden, and every query is partly covered


def test_query_ambiguity_redraws_each_query_exactly(small):
    out, _ = small
    meta = json.load(open(os.path.join(out, "meta.json")))
    p = meta["params"]
    drawn = A.sample_identities(
        p["num_train_ids"] + p["num_test_ids"], np.random.default_rng([p["seed"], 1]), min_diff=p["min_attribute_diff"]
    )
    idents = {i.pid: i for i in drawn}
    cameras = A.sample_cameras(np.random.default_rng([p["seed"], 2]), strength=p["camera_strength"])
    size = (p["height"], p["width"])
    for i, r in enumerate(meta["images"]):
        if r["split"] == "query":
            rng = np.random.default_rng([p["seed"], 5, i])
            img, _, _, rid, occ = S._render(
                idents[r["pid"]],
                cameras[r["cam"] - 1],
                rng,
                size,
                tuple(p["query_occlusion"]),
                p["background_saturation"],
            )
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=p["jpeg_quality"])
            assert buf.getvalue() == open(os.path.join(out, S.QUERY_DIR, r["file_name"]), "rb").read()
            person = np.isin(rid, [c for regions in A.ATTRIBUTE_REGIONS for c in regions])
            assert (person & (occ > 0)).sum() / (rid > 0).sum() > 0.1  # the occluder is over the body


def test_query_ambiguity_errors_name_the_file(small, tmp_path):
    out, _ = small
    with pytest.raises(ValueError, match=r"visible_fraction must be in \[0, 1\], got 1.5"):
        S.query_ambiguity(out, visible_fraction=1.5)
    with pytest.raises(FileNotFoundError, match="no meta.json"):
        S.query_ambiguity(str(tmp_path))
    meta = json.load(open(os.path.join(out, "meta.json")))
    q = next(r for r in meta["images"] if r["split"] == "query")
    q["occluder"] = "car" if q["occluder"] != "car" else "box"
    with open(tmp_path / "meta.json", "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match=f"meta.json: query {q['file_name']} records occluder"):
        S.query_ambiguity(str(tmp_path))


def _test_images(out):
    """{(folder, name with the pid replaced by its rank among the test pids): bytes} of the query and gallery."""
    pids = sorted({int(n[:4]) for n in _names(out, S.QUERY_DIR)})
    rank = {pid: k for k, pid in enumerate(pids)}
    return {
        (folder, f"{rank[int(n[:4])]:04d}{n[4:]}"): open(os.path.join(out, folder, n), "rb").read()
        for folder in (S.QUERY_DIR, S.GALLERY_DIR)
        for n in _names(out, folder)
    }


def test_independent_test_set_does_not_change_with_the_training_set(small, tmp_path):
    """Comparing training sets of different sizes needs one test set: with independent_test_set the queries and the
    gallery are the same pixels (renumbered after the training pids) whatever the training set."""
    opts = dict(SMALL, independent_test_set=True, min_attribute_diff=4)
    a = S.generate(str(tmp_path / "a"), seed=3, **opts)
    bigger = dict(opts, num_train_ids=9, images_per_id=3, train_occluded_fraction=0.5)
    b = S.generate(str(tmp_path / "b"), seed=3, **bigger)
    test_a, test_b = _test_images(str(tmp_path / "a")), _test_images(str(tmp_path / "b"))
    assert len(test_a) == 8 + 12 and test_a == test_b
    assert {int(n[:4]) for n in _names(str(tmp_path / "b"), S.QUERY_DIR)} == set(range(10, 14))  # after train 1..9
    assert a["num_images"]["train"] == 24 and b["num_images"]["train"] == 27
    assert _names(str(tmp_path / "a"), S.TRAIN_DIR) != _names(str(tmp_path / "b"), S.TRAIN_DIR)
    # The default draws the test set after the training set: it changes with the training set's size, which is why
    # the option exists.
    shared, _ = small
    c = str(tmp_path / "c")
    S.generate(c, seed=3, **dict(SMALL, num_train_ids=9))
    assert set(_test_images(shared).values()).isdisjoint(_test_images(c).values())
    # Every identity, training or test, differs from every other in >= min_attribute_diff attributes.
    for out in (tmp_path / "a", tmp_path / "b"):
        meta = json.load(open(out / "meta.json"))
        assert meta["params"]["independent_test_set"] is True
        keys = np.array([ident["attributes"] for ident in meta["identities"]])
        diffs = (keys[:, None, :] != keys[None, :, :]).sum(-1)
        assert diffs[~np.eye(len(keys), dtype=bool)].min() >= 4
        # query_ambiguity follows the test set's own streams (it refuses a query it cannot redraw)
        assert S.query_ambiguity(str(out), visible_fraction=0.0)["consistent"].tolist() == [1] * 8


def test_sample_identities_avoids_given_identities():
    taken = A.sample_identities(20, np.random.default_rng(1), min_diff=5)
    new = A.sample_identities(30, np.random.default_rng(2), first_pid=21, min_diff=5, avoid=taken)
    a, b = np.array([i.attributes for i in taken]), np.array([i.attributes for i in new])
    assert (a[:, None] != b[None]).sum(-1).min() >= 5
    assert [i.pid for i in new] == list(range(21, 51))
    # without `avoid` the same stream does give identities too close to the taken ones
    free = np.array([i.attributes for i in A.sample_identities(30, np.random.default_rng(2), min_diff=5)])
    assert (a[:, None] != free[None]).sum(-1).min() < 5
