"""Occluded-Duke: T-MSPR as in the paper (reference configs/OCC_Duke/vit_transreid_stride.yml).

Command::

    python -m tmspr_jax.main --config=configs/occ_duke.py --workdir=workdirs/occ_duke \
        --config.data.data_dir=$TMSPR_DATA_DIR --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: the Occluded-Duke release (``Occluded_Duke/`` or the reference's ``occluded_dukemtmc/`` with
``bounding_box_train``, ``query``, ``bounding_box_test``), prepared with
``python -m tmspr_jax.tools.prepare --dataset occluded_duke --manual_dir DIR --data_dir $TMSPR_DATA_DIR``, and the SCHP
LIP parsing maps of its training images turned into targets with ``python -m tmspr_jax.tools.parsing_targets`` (see
docs/parsing.md).
Split: train 702 ids / 15,618 images / 8 cameras; query 519 / 2,210; gallery 1,110 / 17,661.

Expected result (paper): 63.8 mAP / 74.4 Rank-1. Run time: 170 epochs of ~450 steps of 32 images, about 19 TFLOP per
step: roughly 6-8 h on one H100 in bfloat16 (estimate from the FLOP count; not measured end to end).
"""

from tmspr_jax import config as common


def get_config():
    c = common.get_base_config()
    c.data.train = "occluded_duke"
    c.data.test = "occluded_duke"
    c.model.stride = (11, 11)
    c.train.epochs = 170
    c.train.eval_period = 5
    c.optim.base_lr = 0.008
    # mixed precision as the reference's fp16 autocast: bfloat16 matmuls; parameters, optimiser, norms, softmax,
    # losses and the test features (eval.dtype) float32. --config.model.dtype=float32 trains in float32.
    c.model.dtype = "bfloat16"
    c.data.test_batch_size = 256
    return c
