"""Generates the synthetic occluded re-ID dataset (Market-1501 layout, LIP label maps) into a folder.

    python -m tmspr_jax.tools.synthetic --out DIR [--num_ids 100 --images_per_id 8 --num_test_ids 50 --seed 0 ...]

The folder is what the ``synthetic_occluded`` TFDS builder reads (``--config.data.manual_dir=DIR``); the layout and
the drawing are described in :mod:`tmspr_jax.datagen.synthetic`. The demo generates its own set on first use, so this
command is for sets of other sizes or settings. The same options and seed give the same bytes.
"""

from __future__ import annotations

from tmspr_jax.datagen.synthetic import SyntheticOptions, generate
from tmspr_jax.tools import cli

_DEFAULTS = SyntheticOptions()


def _main() -> None:
    from absl import flags

    f = flags.FLAGS
    s = generate(
        f.out,
        overwrite=f.overwrite,
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


def define_flags() -> None:
    from absl import flags

    d = _DEFAULTS
    flags.DEFINE_string("out", None, "output folder (Market-1501 layout)")
    flags.DEFINE_integer("num_ids", d.num_train_ids, "training identities")
    flags.DEFINE_integer("images_per_id", d.images_per_id, "training images per identity")
    flags.DEFINE_integer("num_test_ids", d.num_test_ids, "test identities (disjoint from the training ones)")
    flags.DEFINE_integer(
        "queries_per_id", d.queries_per_id, "occluded query images per test identity (each in its own camera)"
    )
    flags.DEFINE_integer(
        "gallery_per_id", d.gallery_per_id, "gallery images per test identity (in cameras other than its queries')"
    )
    flags.DEFINE_integer("height", d.height, "image height")
    flags.DEFINE_integer("width", d.width, "image width")
    flags.DEFINE_float("occlusion_min", d.query_occlusion[0], "smallest covered fraction of the body when occluded")
    flags.DEFINE_float("occlusion_max", d.query_occlusion[1], "largest covered fraction of the body when occluded")
    flags.DEFINE_float("train_occluded", d.train_occluded_fraction, "fraction of training images that are occluded")
    flags.DEFINE_float("gallery_occluded", d.gallery_occluded_fraction, "fraction of gallery images that are occluded")
    flags.DEFINE_float(
        "camera_strength", d.camera_strength, "scale of the cameras' colour, brightness and contrast shifts (0 = none)"
    )
    flags.DEFINE_integer(
        "min_attribute_diff", d.min_attribute_diff, "attributes (of 10) any two identities differ in, at least"
    )
    flags.DEFINE_float(
        "background_saturation", d.background_saturation, "background colour saturation in [0, 1] (0 = greys)"
    )
    flags.DEFINE_integer(
        "occluder_images", d.num_occluder_images, "occluder objects to write into occluders/ (covering-view bank)"
    )
    flags.DEFINE_bool(
        "independent_test_set",
        d.independent_test_set,
        "draw the test set from its own random streams (unchanged by the training set's size)",
    )
    flags.DEFINE_integer("seed", d.seed, "random seed (same seed, same bytes)")
    flags.DEFINE_bool("overwrite", False, "replace an existing dataset in --out")


if __name__ == "__main__":
    define_flags()
    cli.run(_main, required=["out"])  # a bad flag or option value: one line, no traceback
