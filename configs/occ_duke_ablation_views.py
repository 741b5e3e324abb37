"""Occluded-Duke ablation: the TransReID baseline plus T-MSPR's four training views (no HSPM, no HSRM).

Command::

    python -m tmspr_jax.main --config=configs/occ_duke_ablation_views.py --workdir=workdirs/occ_duke_views \
        --config.data.data_dir=$TMSPR_DATA_DIR --config.model.pretrained=weights/vit_base

Data: as ``configs/occ_duke.py``, without parsing targets. Everything but the switches is T-MSPR's setting
(``divide_length=6``); the test feature is TransReID's (without HSPM there are no part features).
Expected result: the paper's ablation figure for this row is not given in our sources; not run here (no GPU).
"""

from configs import occ_duke


def get_config():
    c = occ_duke.get_config()
    c.model.perception = False
    c.model.recovery = False
    return c
