"""The demo: T-MSPR on a synthetic occluded re-ID dataset, on a laptop CPU, from nothing.

Command (the same as ``python -m tmspr_jax.main`` with no ``--config``)::

    python -m tmspr_jax.main --config=configs/demo.py --workdir=workdirs/demo

Data: none to download. On first use a synthetic dataset in the Market-1501 layout with LIP label maps is generated
(``python -m tmspr_jax.tools.synthetic``), built into TFDS array_record files and turned into parsing targets, all under
``$TMSPR_CACHE`` (default ``~/.cache/tmspr_jax``). Queries are occluded (20-50% of the body), the gallery mostly whole.

Model: the same T-MSPR code with a small ViT (width 96, depth 4, 128x64 images) trained from scratch, its position
embedding starting from 2-D sine-cosine codes; the covering view pastes rendered street objects (``occluders/``, drawn
independently of the queries' occluders); 30% of the training images are occluded like the queries, and the part head
learns from a per-patch cross-entropy (``loss.seg_loss='soft_ce'``).
Training set: 400 identities x 8 images for 12 epochs (2,396 steps of 16).

Expected result: untrained mAP 2.1% / Rank-1 0%; trained mAP 65.8% / Rank-1 69.0% / Rank-5 89% with flip test
features, deterministic on one machine; other training seeds (``--config.seed``) spread over several points
(docs/experiments.md).
Time: about 6 minutes from nothing on a quiet 2-core CPU (AMD EPYC), data generation and evaluations included. How
these settings were chosen: docs/experiments.md.
"""

from tmspr_jax.config import cache_dir, demo_config

__all__ = ["cache_dir", "get_config"]


def get_config():
    return demo_config()
