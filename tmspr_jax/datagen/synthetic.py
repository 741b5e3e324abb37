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

The generator is spread over four modules: :mod:`~tmspr_jax.datagen.appearance` (identities and cameras),
:mod:`~tmspr_jax.datagen.figure` (drawing a person), :mod:`~tmspr_jax.datagen.occluders` and this one (images, the
dataset's plan and files, and :func:`query_ambiguity`). The command ``python -m tmspr_jax.tools.synthetic --out DIR``
runs :func:`generate`; the demo generates its set on first use (:mod:`tmspr_jax.datagen.ensure`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from tmspr_jax.datagen.appearance import (
    ATTRIBUTE_REGIONS,
    BAG,
    NUM_CAMERAS,
    Camera,
    Identity,
    sample_cameras,
    sample_identities,
)
from tmspr_jax.datagen.figure import background, colour_person, draw_person
from tmspr_jax.datagen.occluders import colour_occluder, place_occluder, render_occluder

TRAIN_DIR, QUERY_DIR, GALLERY_DIR, LABEL_DIR = "bounding_box_train", "query", "bounding_box_test", "parsing_lip"
OCCLUDER_DIR = "occluders"  # optional: object crops for the covering view (``num_occluder_images``)


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """What :func:`generate` makes: its keyword arguments, ``config.data.synthetic_options``' keys and the ``params``
    of ``meta.json`` (in this order)."""

    num_train_ids: int = 100  # training identities, pids 1..num_train_ids
    images_per_id: int = 8  # training images per identity, in at least two cameras
    num_test_ids: int = 50  # test identities (pids after the training ones)
    queries_per_id: int = 2  # occluded queries per test identity, each in its own camera
    gallery_per_id: int = 6  # gallery images per test identity, in cameras other than its queries'
    height: int = 128
    width: int = 64
    query_occlusion: tuple[float, float] = (0.2, 0.5)  # covered fraction of the body of every occluded image
    train_occluded_fraction: float = 0.1
    gallery_occluded_fraction: float = 0.1
    jpeg_quality: int = 90
    seed: int = 0  # the same seed gives the same bytes
    camera_strength: float = 1.0  # scales the cameras' colour cast, brightness and contrast shifts (0 = none)
    min_attribute_diff: int = 2  # how many of the 10 attributes any two identities differ in, at least
    background_saturation: float = 1.0  # in [0, 1]: mutes the background colours towards grey (1 = any colour)
    num_occluder_images: int = 0  # > 0: that many occluder objects (render_occluder) written into occluders/
    independent_test_set: bool = False  # the test set from random streams of its own (see generate)

    def __post_init__(self) -> None:
        object.__setattr__(self, "query_occlusion", tuple(self.query_occlusion))  # a list from JSON or the config
        checks = {
            "num_train_ids": self.num_train_ids >= 1,
            "num_test_ids": self.num_test_ids >= 1,
            "images_per_id": self.images_per_id >= 2,
            "queries_per_id": 1 <= self.queries_per_id <= NUM_CAMERAS - 1,
            "gallery_per_id": self.gallery_per_id >= 1,
            "height": self.height >= 32,
            "width": self.width >= 16,
            "num ids": self.num_train_ids + self.num_test_ids <= 9999,  # four-digit Market pids
            "train_occluded_fraction": 0 <= self.train_occluded_fraction <= 1,
            "gallery_occluded_fraction": 0 <= self.gallery_occluded_fraction <= 1,
            "jpeg_quality": 1 <= self.jpeg_quality <= 100,
            "camera_strength": self.camera_strength >= 0,
            "min_attribute_diff": 0 <= self.min_attribute_diff <= 10,
            "background_saturation": 0 <= self.background_saturation <= 1,
            "num_occluder_images": self.num_occluder_images >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid synthetic dataset settings {bad}: need num_train_ids, num_test_ids >= 1, images_per_id >= 2, "
                f"1 <= queries_per_id <= {NUM_CAMERAS - 1}, gallery_per_id >= 1, height >= 32, width >= 16, "
                "at most 9999 ids, fractions in [0, 1], 1 <= jpeg_quality <= 100, camera_strength >= 0, "
                "0 <= min_attribute_diff <= 10, 0 <= background_saturation <= 1, num_occluder_images >= 0"
            )

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> SyntheticOptions:
        """The options named in ``options`` (e.g. ``config.data.synthetic_options``), the defaults elsewhere."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown synthetic dataset option(s) {unknown}: expected some of {names}")
        return cls(**options)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.height), int(self.width)

    @property
    def num_train_images(self) -> int:
        return self.num_train_ids * self.images_per_id

    def params(self) -> dict[str, Any]:
        """The options as ``meta.json`` and :func:`generate`'s summary hold them."""
        return dict(dataclasses.asdict(self), query_occlusion=list(self.query_occlusion))


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


def _render(
    ident: Identity,
    camera: Camera,
    rng: np.random.Generator,
    size: tuple[int, int],
    occlusion: tuple[float, float] | None,
    background_saturation: float,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray, np.ndarray]:
    """:func:`render_image` plus the render ids (bags included) and the occluder mask (zeros when none)."""
    rid, geom = draw_person(ident, size, rng)
    img = background(size, rng, background_saturation)
    colour_person(img, rid, ident, geom, rng)
    labels = np.where(rid == BAG, 0, rid).astype(np.uint8)
    person = labels > 0
    meta: dict[str, Any] = {"occluder": None, "coverage": 0.0, "person_pixels": int(person.sum()), **geom}
    occ = np.zeros(size, np.uint8)
    if occlusion is not None:
        occ, kind, frac = place_occluder(person, geom, occlusion, rng)
        colour_occluder(img, occ, kind, rng)
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


def _identities(opts: SyntheticOptions) -> tuple[list[Identity], list[Identity]]:
    """The training and test identities (pids 1..num_train_ids, then the test ones), as :func:`generate` draws them."""
    seed, num_train, num_test, min_diff = opts.seed, opts.num_train_ids, opts.num_test_ids, opts.min_attribute_diff
    if not opts.independent_test_set:
        idents = sample_identities(num_train + num_test, np.random.default_rng([seed, 1]), min_diff=min_diff)
        return idents[:num_train], idents[num_train:]
    # the test identities first, from their own stream; the training ones must differ from them as well
    test = sample_identities(num_test, np.random.default_rng([seed, 1, 1]), first_pid=num_train + 1, min_diff=min_diff)
    train = sample_identities(num_train, np.random.default_rng([seed, 1]), min_diff=min_diff, avoid=test)
    return train, test


def _cameras(opts: SyntheticOptions) -> list[Camera]:
    return sample_cameras(np.random.default_rng([opts.seed, 2]), strength=opts.camera_strength)


def _image_rng(opts: SyntheticOptions, index: int) -> np.random.Generator:
    """The random stream of the ``index``-th image in writing order (training images first)."""
    if opts.independent_test_set and index >= opts.num_train_images:
        return np.random.default_rng([opts.seed, 7, index - opts.num_train_images])
    return np.random.default_rng([opts.seed, 5, index])


def _pick(rng: np.random.Generator, n: int, fraction: float) -> set[int]:
    """Exactly ``round(fraction * n)`` indices out of ``n``."""
    return set(rng.permutation(n)[: int(round(fraction * n))].tolist())


Plan = list[tuple[str, Identity, int, bool]]  # (split, identity, camera 1..6, occluded) per image, in writing order


def _plan(opts: SyntheticOptions, train_ids: list[Identity], test_ids: list[Identity]) -> Plan:
    """Which image of which identity goes where, in which camera, occluded or not."""
    seed = opts.seed
    plan: Plan = []
    rng = np.random.default_rng([seed, 3])
    for ident in train_ids:
        cams = rng.integers(1, NUM_CAMERAS + 1, opts.images_per_id)
        while len(set(cams.tolist())) < 2:  # every train id in at least two cameras
            cams = rng.integers(1, NUM_CAMERAS + 1, opts.images_per_id)
        plan += [("train", ident, int(c), False) for c in cams]
    if opts.independent_test_set:  # the test set's cameras from a stream the training plan does not advance
        rng = np.random.default_rng([seed, 3, 1])
    for ident in test_ids:
        qcams = rng.permutation(np.arange(1, NUM_CAMERAS + 1))[: opts.queries_per_id]
        others = np.setdiff1d(np.arange(1, NUM_CAMERAS + 1), qcams)
        plan += [("query", ident, int(c), True) for c in qcams]
        plan += [("gallery", ident, int(c), False) for c in rng.choice(others, opts.gallery_per_id)]
    for split, frac in (("train", opts.train_occluded_fraction), ("gallery", opts.gallery_occluded_fraction)):
        idx = [i for i, p in enumerate(plan) if p[0] == split]
        for j in _pick(np.random.default_rng([seed, 4, len(split)]), len(idx), frac):
            s, ident, cam, _ = plan[idx[j]]
            plan[idx[j]] = (s, ident, cam, True)
    return plan


_FOLDERS = {"train": TRAIN_DIR, "query": QUERY_DIR, "gallery": GALLERY_DIR}


def _write_images(out_dir: str, opts: SyntheticOptions, plan: Plan, cameras: list[Camera]) -> list[dict[str, Any]]:
    """Renders and writes every planned image (and each training image's label map); its metadata record each."""
    frames = {"train": 0, "query": 0, "gallery": 0}
    records = []
    for i, (split, ident, cam, occluded) in enumerate(plan):
        frames[split] += 1
        name = market_name(ident.pid, cam, frames[split])
        img, labels, meta = render_image(
            ident,
            cameras[cam - 1],
            _image_rng(opts, i),
            opts.size,
            opts.query_occlusion if occluded else None,
            opts.background_saturation,
        )
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=opts.jpeg_quality)
        with open(os.path.join(out_dir, _FOLDERS[split], name), "wb") as f:
            f.write(buf.getvalue())
        if split == "train":
            Image.fromarray(labels, mode="L").save(os.path.join(out_dir, LABEL_DIR, name[:-4] + ".png"))
        records.append({"file_name": name, "split": split, "pid": ident.pid, "cam": cam, **meta})
    return records


def _write_occluders(out_dir: str, opts: SyntheticOptions) -> list[str]:
    """Writes ``num_occluder_images`` occluder objects into ``occluders/``; their kinds."""
    kinds = []
    if opts.num_occluder_images:
        os.makedirs(os.path.join(out_dir, OCCLUDER_DIR))
    for i in range(opts.num_occluder_images):  # their own random streams: the dataset's images do not change
        occ_img, kind = render_occluder(np.random.default_rng([opts.seed, 6, i]), opts.size, opts.background_saturation)
        Image.fromarray(occ_img).save(os.path.join(out_dir, OCCLUDER_DIR, f"occ_{i:04d}.png"))
        kinds.append(kind)
    return kinds


def generate(out_dir: str, *, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Writes the dataset into ``out_dir`` and returns a summary (counts, seconds, per-image metadata).

    ``options`` are :class:`SyntheticOptions` fields (their defaults where not given). Occluded images of every split
    (all queries; ``train_occluded_fraction`` / ``gallery_occluded_fraction`` of the others) have an occluder covering
    ``query_occlusion`` of the body. The same seed gives the same bytes. ``camera_strength`` scales the cameras'
    colour cast, brightness and contrast shifts (0 = identical cameras); ``min_attribute_diff`` is how many of the 10
    appearance attributes any two identities differ in, at least; ``background_saturation`` in [0, 1] mutes the
    background colours towards grey (street scenes are mostly muted; 1 keeps any RGB colour). ``num_occluder_images``
    > 0 also writes that many occluder objects (:func:`render_occluder`) into ``occluders/``, for the covering view
    (``config.data.occluder_dir``). ``overwrite`` replaces a dataset already in ``out_dir``.

    ``independent_test_set=True`` draws the test identities, their cameras and their images from random streams of
    their own, and the training identities so that they differ from the test ones too: the query and gallery images
    are then the same pixels whatever ``num_train_ids``, ``images_per_id`` and ``train_occluded_fraction`` are (only
    their pids, which follow the training ones, shift), so training sets of different sizes compare on one test set.
    With the default (False) the test set is drawn after the training set, from the same streams, so it changes with
    the training set's size (the shared-stream set of docs/experiments.md).
    """
    t0 = time.perf_counter()
    opts = SyntheticOptions.of(options)
    _prepare_out(out_dir, overwrite)
    train_ids, test_ids = _identities(opts)
    records = _write_images(out_dir, opts, _plan(opts, train_ids, test_ids), _cameras(opts))
    occluder_kinds = _write_occluders(out_dir, opts)
    params = opts.params()
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(
            {
                "params": params,
                "identities": [dataclasses.asdict(x) for x in train_ids + test_ids],
                "images": records,
                "occluder_images": occluder_kinds,
            },
            f,
        )
    return {
        "out_dir": out_dir,
        "params": params,
        "num_images": {s: sum(r["split"] == s for r in records) for s in _FOLDERS},
        "num_ids": {"train": len(train_ids), "test": len(test_ids)},
        "num_occluded": {s: sum(r["split"] == s and r["occluder"] is not None for r in records) for s in _FOLDERS},
        "num_occluder_images": opts.num_occluder_images,
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
    opts = SyntheticOptions.of(meta["params"])  # a key missing from an older meta.json: its default
    train_ids, test_ids = _identities(opts)
    cameras = _cameras(opts)
    by_pid = {ident.pid: ident for ident in train_ids + test_ids}
    test = np.array([ident.attributes for ident in test_ids])  # [num_test_ids, 10]
    names, consistent = [], []
    for i, record in enumerate(meta["images"]):
        if record["split"] != "query":
            continue
        ident = by_pid[record["pid"]]
        _, _, drawn, rid, occ = _render(
            ident,
            cameras[record["cam"] - 1],
            _image_rng(opts, i),
            opts.size,
            opts.query_occlusion,
            opts.background_saturation,
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
