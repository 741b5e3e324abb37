"""DukeMTMC-reID at 384x128 (TransReID's configs/DukeMTMC/vit_transreid_stride_384.yml settings on T-MSPR).

Command::

    python -m tmspr_jax.main --config=configs/duke_384.py --workdir=workdirs/duke_384 \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data as ``configs/duke.py``; grid 31x10 (``--config.model.stride=16``: vit_transreid_384.yml, 24x8). Settings and run
time as ``configs/market_384.py`` (120 epochs of ~260 steps of 64 images).
"""

from configs import duke
from configs.market_384 import at_384x128


def get_config():
    return at_384x128(duke.get_config())
