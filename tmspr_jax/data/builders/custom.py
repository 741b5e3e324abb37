"""Your own identities: a re-ID dataset from a folder of your images, prepared under a name you choose.

    python -m tmspr_jax.tools.prepare --dataset custom/shop --manual_dir DIR

Two layouts are read (the list files win when both are present):

* folders: ``DIR/{train,query,gallery}/<identity>/<image>`` or ``.../<identity>/<camera>/<image>``;
* list files: ``DIR/{train,query,gallery}.txt``, one ``relative/path identity camera`` per line (paths relative to
  ``DIR``, as MSMT17's lists).

``query`` and ``gallery`` come together; ``train`` may be left out (a test-only set) and so may both test splits (a
train-only set). Identities are folder names or list tokens: where all of them (of the training split, or of query
and gallery together) are integers they stay numbers, otherwise the sorted names are numbered 0.. (the map is
``metadata['identity_map']``); the training identities are then relabelled 0..N-1 as every builder's.

The camera of an image is, first found: ``--camid`` (``2`` for every image, or ``query:0,gallery:1`` per split), the
list's third column, a camera sub-folder (``c3``, ``cam3`` or ``3``), a ``c<N>`` / ``cam<N>`` in the file name
(``0001_c3s1_...``, ``img_cam3.jpg``). The camera labels found are numbered 0.. in sorted order over all splits, and
the SIE table has a row for each. The stored ``file_name`` is the path under the split folder (or as listed), unique
within a split.

Every image is fully decoded before anything is written, so the errors list all the offending files at once. Refused
(one line each): no images, a query identity absent from the gallery, query and gallery from one camera only (the
evaluation drops gallery images of the query's own camera, so every match would be dropped), the same file twice
(listed twice or byte-identical copies), unreadable images, an identity folder holding images next to camera
sub-folders. Reported without refusing (``metadata['notes']``, printed by prepare): a single training camera (SIE
then tells no cameras apart), test cameras the training split lacks, queries whose identity the gallery holds only
from the query's own camera. docs/data.md has the whole story.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import re
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from tmspr_jax.data.builders import base

NAME = "custom"
SPLITS = ("train", "query", "gallery")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# A dataset name under custom/: also a folder name under data_dir.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Camera sub-folders 'c3', 'cam3', 'camera_3', '3'; camera in a file name: 'c3' / 'cam3' at the start or after _ - . or
# a space ('0001_c3s1_000151_01.jpg', 'img-cam12.png').
CAMERA_FOLDER = re.compile(r"^(?:c|cam|camera)?[_\-]?(\d+)$", re.IGNORECASE)
CAMERA_IN_NAME = re.compile(r"(?:^|[_\-. ])c(?:am)?(\d+)", re.IGNORECASE)
LAYOUT = """Custom dataset (any name after custom/), one of two layouts:
  folders:     DIR/train/<identity>/<image>   DIR/query/<identity>/<image>   DIR/gallery/<identity>/<image>
               or .../<identity>/<camera>/<image> with camera folders c1, cam1 or 1
  list files:  DIR/train.txt DIR/query.txt DIR/gallery.txt, lines '<path relative to DIR> <identity> <camera>'
Camera: --camid (N, or query:0,gallery:1), the list's third column, a camera folder, or c<N>/cam<N> in the file
name. query and gallery come together; train may be left out."""


@dataclasses.dataclass(eq=False)
class CustomConfig(tfds.core.BuilderConfig):
    """A user's dataset: ``name`` is the name chosen for it; ``camid`` the ``--camid`` option ('' = from the files)."""

    camid: str = ""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One image as found: its path, identity token, raw camera label and the name to store."""

    path: Path
    identity: str
    camera: int
    file_name: str


def check_name(name: str) -> str:
    """The part after ``custom/``; one line naming the value when it cannot be a folder name."""
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"custom dataset name {name!r}: expected letters, digits, '_', '-', '.' (1-64, starting with a letter or "
            "digit), e.g. custom/shop_cameras"
        )
    return name


def parse_camid(spec: str) -> dict[str, int] | None:
    """``--camid``: '' -> None (from the files), ``'2'`` -> every split 2, ``'query:0,gallery:1'`` -> per split."""
    spec = spec.strip()
    if not spec:
        return None
    if re.fullmatch(r"\d+", spec):
        return {s: int(spec) for s in SPLITS}
    out = {}
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(train|query|gallery)\s*:\s*(\d+)\s*", part)
        if m is None:
            raise ValueError(
                f"--camid={spec!r}: expected a camera number (2) or split:camera pairs (query:0,gallery:1)"
            )
        out[m.group(1)] = int(m.group(2))
    return out


def _camera_from_name(path: Path) -> int | None:
    m = CAMERA_IN_NAME.search(path.stem)
    return int(m.group(1)) if m else None


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def read_split_folder(root: Path, split: str, camid: dict[str, int] | None) -> list[_Entry]:
    """Entries of ``root/split/<identity>/[<camera>/]<image>`` in sorted path order."""
    top = root / split
    loose = _images_under(top)
    if loose:
        raise base.DatasetLayoutError(
            f"{top}: images directly in the split folder (e.g. {loose[0].name}); expected one folder per identity"
        )
    entries = []
    for ident in sorted(p for p in top.iterdir() if p.is_dir()):
        subdirs = sorted(p for p in ident.iterdir() if p.is_dir())
        direct = _images_under(ident)
        if subdirs and direct:
            raise base.DatasetLayoutError(
                f"{ident}: holds images ({direct[0].name}) next to sub-folders ({subdirs[0].name}); expected images "
                "only, or camera folders only"
            )
        groups = [(None, direct)] + [(sub, _images_under(sub)) for sub in subdirs]
        for sub, paths in groups:
            folder_cam = None
            if sub is not None:
                deeper = [p.name for p in sub.iterdir() if p.is_dir()]
                if deeper:
                    raise base.DatasetLayoutError(
                        f"{sub}: sub-folder {deeper[0]!r}; expected <identity>/<camera>/<image> at most"
                    )
                m = CAMERA_FOLDER.match(sub.name)
                if m is None and camid is None:
                    raise base.DatasetLayoutError(
                        f"{sub}: a sub-folder of an identity must name its camera (c1, cam1 or 1), got {sub.name!r}"
                    )
                folder_cam = int(m.group(1)) if m else None
            for path in paths:
                if camid is not None:
                    if split not in camid:
                        raise base.DatasetLayoutError(f"--camid gives no camera for split {split!r} ({path})")
                    cam = camid[split]
                elif folder_cam is not None:
                    cam = folder_cam
                else:
                    cam = _camera_from_name(path)
                    if cam is None:
                        raise base.DatasetLayoutError(
                            f"{path}: no camera: put c<N> in the file name, the image in a camera folder "
                            "(<identity>/c<N>/), or pass --camid"
                        )
                entries.append(_Entry(path, ident.name, cam, path.relative_to(top).as_posix()))
    return entries


def read_list_file(root: Path, split: str, camid: dict[str, int] | None) -> list[_Entry]:
    """Entries of ``root/split.txt`` (``relative/path identity camera``; the camera column optional with --camid)."""
    list_file = root / f"{split}.txt"
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        want = "'<relative/path> <identity> <camera>'" + (" or '<relative/path> <identity>'" if camid else "")
        if len(parts) not in ((2, 3) if camid else (3,)):
            raise base.DatasetLayoutError(f"{list_file}:{lineno}: expected {want}, got {line.strip()!r}")
        path = root / parts[0]
        if not path.is_file():
            raise base.DatasetLayoutError(f"{list_file}:{lineno}: listed image {path} does not exist")
        if camid is not None:
            if split not in camid:
                raise base.DatasetLayoutError(f"--camid gives no camera for split {split!r} ({list_file})")
            cam = camid[split]
        elif not parts[2].isdigit():
            raise base.DatasetLayoutError(
                f"{list_file}:{lineno}: camera {parts[2]!r} is not a non-negative integer ({want})"
            )
        else:
            cam = int(parts[2])
        entries.append(_Entry(path, parts[1], cam, Path(parts[0]).as_posix()))
    return entries


def identity_numbers(tokens: set[str]) -> dict[str, int]:
    """Identity token -> number: the integer itself when every token is one, else the sorted tokens' positions."""
    if all(t.isdigit() for t in tokens) and len({int(t) for t in tokens}) == len(tokens):  # '7' and '007' differ
        return {t: int(t) for t in tokens}
    return {t: i for i, t in enumerate(sorted(tokens))}


def _scan(path: Path) -> tuple[str | None, str]:
    """(sha256 of the bytes, '') or (None, why it cannot be read): a full decode, as the build does."""
    try:
        raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
    except Exception as e:  # Pillow and the file system raise several types
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return hashlib.sha256(raw).hexdigest(), ""


def _examples(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def check_images(entries: dict[str, list[_Entry]], workers: int = 8) -> None:
    """Every image decodes and appears once (by path and by content); the error lists all offenders."""
    flat = [(split, e) for split, es in entries.items() for e in es]
    seen_paths: dict[Path, str] = {}
    twice = []
    for split, e in flat:
        key = e.path.resolve()
        if key in seen_paths:
            twice.append(f"{e.path} ({seen_paths[key]} and {split})")
        seen_paths.setdefault(key, split)
    if twice:
        raise base.DatasetLayoutError(f"{len(twice)} image(s) listed more than once: {_examples(twice)}")
    with futures.ThreadPoolExecutor(workers) as pool:  # Pillow and hashing release the GIL
        scanned = list(pool.map(_scan, [e.path for _, e in flat]))
    bad = [f"{e.path} ({why})" for (_, e), (digest, why) in zip(flat, scanned) if digest is None]
    if bad:
        raise base.CorruptImageError(f"{len(bad)} unreadable image(s): {_examples(bad)}")
    first: dict[str, str] = {}
    copies = []
    for (split, e), (digest, _) in zip(flat, scanned):
        where = f"{split}/{e.file_name}"
        if digest in first:
            copies.append(f"{where} = {first[digest]}")
        first.setdefault(digest, where)
    if copies:
        raise base.DatasetLayoutError(
            f"{len(copies)} image(s) are byte-identical copies of others (remove or relabel them): {_examples(copies)}"
        )


class Custom(base.ReIDBuilder, skip_registration=True):
    """A re-ID dataset from the user's own folders or list files (``custom/<name>``)."""

    name = NAME
    MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT

    def _read_layout(self, manual_dir: Path):
        cfg = self.builder_config
        camid = parse_camid(cfg.camid)
        root = Path(manual_dir)
        lists = [s for s in SPLITS if (root / f"{s}.txt").is_file()]
        folders = [s for s in SPLITS if (root / s).is_dir()]
        present, reader = (lists, read_list_file) if lists else (folders, read_split_folder)
        if not present:
            raise base.DatasetLayoutError(f"{root}: none of train/, query/, gallery/ or their .txt lists. {LAYOUT}")
        if ("query" in present) != ("gallery" in present):
            one = "query" if "query" in present else "gallery"
            raise base.DatasetLayoutError(f"{root}: {one} without {'gallery' if one == 'query' else 'query'}")
        entries = {s: reader(root, s, camid) for s in present}
        for split, es in entries.items():
            if not es:
                raise base.DatasetLayoutError(f"{root}: split {split!r} holds no images ({', '.join(EXTENSIONS)})")
        check_images(entries)
        # Training identities and test identities are numbered apart (the training ones are relabelled 0.. anyway).
        groups = {"train": ("train",), "test": ("query", "gallery")}
        ids = {
            g: identity_numbers({e.identity for s in ss if s in entries for e in entries[s]})
            for g, ss in groups.items()
        }
        cams = {c: i for i, c in enumerate(sorted({e.camera for es in entries.values() for e in es}))}
        splits = {
            s: [
                base.Item(e.path, ids["train" if s == "train" else "test"][e.identity], cams[e.camera], e.file_name)
                for e in es
            ]
            for s, es in entries.items()
        }
        notes = self._check_splits(splits, ids["test"], cams)
        md = self.info.metadata
        md["layout"] = "lists" if lists else "folders"
        md["camid_option"] = cfg.camid
        md["camera_map"] = {str(raw): cam for raw, cam in cams.items()}
        # identity name -> number where the names are not all numbers (the training numbers before relabelling)
        md["identity_map"] = {g: dict(sorted(m.items())) for g, m in ids.items() if any(not t.isdigit() for t in m)}
        md["notes"] = notes
        return splits, {}

    def _split_generators(self, dl_manager):
        generators = super()._split_generators(dl_manager)
        md = self.info.metadata
        if "train" in generators:
            # Cameras are numbered over all splits, so the SIE table has a row for each (also a test-only camera's).
            md["num_cameras"] = len(md["camera_map"])
        return generators

    @staticmethod
    def _check_splits(splits: dict[str, list[base.Item]], ids: dict[str, int], cams: dict[int, int]) -> list[str]:
        """Refuses test splits that cannot be evaluated; returns the notes on what works but deserves a look."""
        name_of = {v: k for k, v in ids.items()}
        raw_cam = {v: k for k, v in cams.items()}
        notes = []
        if "query" in splits:
            gallery = collections.defaultdict(set)
            for it in splits["gallery"]:
                gallery[it.pid].add(it.camid)
            q_ids = sorted({it.pid for it in splits["query"]})
            absent = [name_of[p] for p in q_ids if p not in gallery]
            if absent:
                raise base.DatasetLayoutError(
                    f"{len(absent)} of {len(q_ids)} query identities have no gallery image: {_examples(absent)} "
                    "(every query identity needs gallery images to be evaluated)"
                )
            test_cams = {it.camid for s in ("query", "gallery") for it in splits[s]}
            if len(test_cams) < 2:
                raise base.DatasetLayoutError(
                    f"query and gallery come from one camera only ({raw_cam[next(iter(test_cams))]}): the evaluation "
                    "drops gallery images of the query's own camera, so nothing could match; give the images their "
                    "cameras (c<N> in the name, camera folders, the list's third column or --camid query:0,gallery:1)"
                )
            own_only = sum(1 for it in splits["query"] if gallery[it.pid] == {it.camid})
            if own_only:
                notes.append(
                    f"{own_only} of {len(splits['query'])} queries have gallery images of their identity only from "
                    "their own camera: the evaluation skips them"
                )
        if "train" in splits and "query" in splits:
            test_only = sorted(
                {raw_cam[it.camid] for s in ("query", "gallery") for it in splits[s]}
                - {raw_cam[it.camid] for it in splits["train"]}
            )
            if test_only:
                notes.append(
                    f"camera(s) {', '.join(map(str, test_only))} appear in query/gallery but not in train: their SIE "
                    "rows stay untrained (--config.model.sie_camera=False leaves SIE out)"
                )
        if "train" in splits and len({it.camid for it in splits["train"]}) < 2:
            notes.append(
                "the training images come from one camera: SIE (model.sie_camera) learns a single camera vector, "
                "which tells no cameras apart"
            )
        return notes


class _NoConfigWarning:
    """Drops tfds' warning that a config is not one of the class's: every custom set's config is the user's own."""

    def filter(self, record) -> bool:
        return "Using custom data configuration" not in str(record.msg)


logging.get_absl_logger().addFilter(_NoConfigWarning())


def custom_builder(name: str, data_dir: str, camid: str = "") -> Custom:
    """The builder of ``custom/<name>`` under ``data_dir`` (``camid`` only matters when it is built)."""
    _, _, config = name.partition("/")
    if not config:
        raise ValueError(
            "dataset 'custom' needs a name: custom/<name> (e.g. custom/shop_cameras); prepare takes it from the "
            "manual_dir folder's name when --dataset=custom is given alone"
        )
    return Custom(
        config=CustomConfig(name=check_name(config), camid=camid), data_dir=data_dir, file_format="array_record"
    )
