"""Your own identities: T-MSPR (the paper's settings, ViT-B/16) on a dataset prepared from your folders.

Commands (``shop`` is the name you choose; several custom datasets live side by side under their names)::

    python -m tmspr_jax.tools.prepare --dataset custom/shop --manual_dir DIR [--camid query:0,gallery:1]
    python -m tmspr_jax.tools.parsing_targets --config=configs/custom.py:shop --parser weights/schp_lip
    python -m tmspr_jax.main --config=configs/custom.py:shop --workdir=workdirs/shop \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: ``DIR/{train,query,gallery}/<identity>/[<camera>/]<image>`` or the list files ``DIR/{train,query,gallery}.txt``
with lines ``relative/path identity camera``; the camera from ``--camid``, the list, a camera folder (``c1``) or a
``c<N>`` in the file name (the rules: :mod:`tmspr_jax.data.builders.custom`, docs/data.md). Prepare prints the split
table and notes (identities with fewer than ``data.num_instances`` images, images under 4 px); it refuses query
identities missing from the gallery, a one-camera test set, duplicate and unreadable images.
A test-only set (no ``train/``) evaluates a model trained elsewhere: ``--config.data.train=occluded_duke``; a
train-only set trains for a test set of another dataset: ``--config.data.test=...``.

Parsing targets: made from the training images by the converted SCHP parser (docs/parsing.md), or from SCHP's own
outputs with ``--maps_dir``; without them ``--config.model.perception=False --config.model.recovery=False`` trains
the views and TransReID's branches only. Settings are the paper's Occluded-Duke ones (stride 11, 170 epochs,
evaluation every 5, SGD 0.008, bfloat16); on a small set fewer epochs (``--config.train.epochs``) are the usual
first change.
"""

from tmspr_jax import config as common


def get_config(name: str = ""):
    """``name``: the custom dataset's name (``--config=configs/custom.py:<name>``); '' leaves ``custom`` unnamed,
    for ``--config.data.train=custom/<name>`` and ``--config.data.test=custom/<name>``."""
    c = common.get_base_config()
    dataset = f"custom/{name}" if name else "custom"
    c.data.train = dataset
    c.data.test = dataset
    c.model.stride = (11, 11)
    c.train.epochs = 170
    c.train.eval_period = 5
    c.optim.base_lr = 0.008
    c.model.dtype = "bfloat16"  # as the paper's configs: float32 parameters, optimiser, norms and losses
    c.data.test_batch_size = 256
    return c
