"""Occluded-Duke ablation: four views and HSPM (part head, part features, segmentation loss), no HSRM.

Command::

    python -m tmspr_jax.main --config=configs/occ_duke_ablation_hspm.py --workdir=workdirs/occ_duke_hspm \
        --config.data.data_dir=$TMSPR_DATA_DIR --config.model.pretrained=weights/vit_base

Data: as ``configs/occ_duke.py``, with the parsing targets. The full model (HSRM too) is ``configs/occ_duke.py``
(paper: 63.8 mAP / 74.4 Rank-1).
Expected result: the paper's ablation figure for this row is not given in our sources; not run here (no GPU).
"""

from configs import occ_duke


def get_config():
    c = occ_duke.get_config()
    c.model.recovery = False
    return c
