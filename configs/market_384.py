"""Market-1501 at 384x128 (TransReID's configs/Market/vit_transreid_stride_384.yml settings on T-MSPR).

Command::

    python -m tmspr_jax.main --config=configs/market_384.py --workdir=workdirs/market_384 \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data as ``configs/market.py``. The grid follows from the image size and stride: 384x128 with stride 12 is 31x10 = 310
patches, and the ImageNet position embedding (14x14) is resized to it when the weights are converted.
``--config.model.stride=16`` gives vit_transreid_384.yml's setting (24x8 grid). The reference's T-MSPR has no 384x128
setting (its grid is hard-coded to 22x11): these are TransReID's 384 settings, batch 64 for 120 epochs.
Run time: about 1.5x a 256x128 step per image (310 against 210 patches); 120 epochs of ~200 steps of 64 images.
"""

from configs import market


def at_384x128(c, stride: int = 12):
    """TransReID's vit_transreid_stride_384.yml (the same for Market-1501, DukeMTMC-reID and MSMT17): 384x128
    images, stride 12, batch 64, SGD at 0.008 for 120 epochs, one evaluation at the end, test batch 256."""
    c.img_size = (384, 128)
    c.model.stride = (stride, stride)
    c.data.batch_size = 64
    c.train.epochs = 120
    c.train.eval_period = 120
    c.optim.base_lr = 0.008
    c.data.test_batch_size = 256
    return c


def get_config():
    return at_384x128(market.get_config())
