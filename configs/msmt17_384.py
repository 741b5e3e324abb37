"""MSMT17 at 384x128 (TransReID's configs/MSMT17/vit_transreid_stride_384.yml settings on T-MSPR).

Command::

    python -m tmspr_jax.main --config=configs/msmt17_384.py --workdir=workdirs/msmt17_384 \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data as ``configs/msmt17.py``; grid 31x10 (``--config.model.stride=16``: vit_transreid_384.yml, 24x8). Settings as
``configs/market_384.py`` (120 epochs of ~510 steps of 64 images).
"""

from configs import msmt17
from configs.market_384 import at_384x128


def get_config():
    return at_384x128(msmt17.get_config())
