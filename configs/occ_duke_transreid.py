"""Occluded-Duke: the TransReID baseline (JPM + SIE, stride 11) that T-MSPR builds on, in the same code.

Command::

    python -m tmspr_jax.main --config=configs/occ_duke_transreid.py --workdir=workdirs/occ_duke_transreid \
        --config.data.data_dir=$TMSPR_DATA_DIR --config.model.pretrained=weights/vit_base

A trained TransReID JPM checkpoint converts into this config and evaluates::

    python -m convert_weights tmspr transformer_120.pth --out weights/transreid --config=configs/occ_duke_transreid.py
    python -m tmspr_jax.main --config=configs/occ_duke_transreid.py --mode=eval --workdir=workdirs/transreid_eval \
        --config.init_checkpoint=weights/transreid

Data: the Occluded-Duke release prepared as for ``configs/occ_duke.py``; no parsing targets (no part head).

Model: T-MSPR's three additions off (``model.multi_view``, ``model.perception``, ``model.recovery``) and TransReID's
JPM setting ``divide_length=4``; the test feature is TransReID's ``[g, jpm_1/4, .., jpm_4/4]`` (3840-d). The loss is
then TransReID's: ``0.5 * (ID_g + mean ID_jpm) + 0.5 * (TRI_g + mean TRI_jpm)``.
Expected result: the TransReID paper reports 59.2 mAP / 66.4 Rank-1 on Occluded-Duke for its stride-12 model
(TransReID*); not run here (no GPU). Run time: about a third less than T-MSPR's per step (one view, no part passes).
"""

from configs import occ_duke


def get_config():
    c = occ_duke.get_config()
    c.model.multi_view = False
    c.model.perception = False
    c.model.recovery = False
    c.model.divide_length = 4  # TransReID's DEVIDE_LENGTH (T-MSPR: 6)
    return c
