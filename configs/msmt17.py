"""MSMT17 (reference configs/MSMT17/vit_transreid_stride.yml).

Command::

    python -m tmspr_jax.main --config=configs/msmt17.py --workdir=workdirs/msmt17 \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: MSMT17 (V1 ``train/``, ``test/`` and ``list_{train,val,query,gallery}.txt``; V2's ``mask_*_v2`` folders too),
prepared with ``python -m tmspr_jax.tools.prepare --dataset msmt17 --manual_dir DIR``, plus parsing targets for its
training images (``python -m tmspr_jax.tools.parsing_targets``). Split: train 1,041 ids / 32,621 images (train and
val lists) / 15 cameras; query 3,060 / 11,659; gallery 3,060 / 82,161.

Stride 12 as the reference's yml (21x10 grid, which crashes the reference's hard-coded 22x11 reshape; derived here).
The paper reports no MSMT17 figure for this code; TransReID-JPM with stride 12 reaches about 67 mAP / 85 Rank-1.
Run time: 120 epochs of ~1,000 steps: roughly 12-15 h on one H100 in bfloat16 (estimate); evaluated once, at the end,
as the reference (EVAL_PERIOD 120).
"""

from tmspr_jax import config as common


def get_config():
    c = common.get_base_config()
    c.data.train = "msmt17"
    c.data.test = "msmt17"
    c.model.stride = (12, 12)
    c.train.epochs = 120
    c.train.eval_period = 120
    c.train.log_every = 1000
    c.optim.base_lr = 0.008
    # mixed precision as the reference's fp16 autocast: bfloat16 matmuls; parameters, optimiser, norms, softmax,
    # losses and the test features (eval.dtype) float32. --config.model.dtype=float32 trains in float32.
    c.model.dtype = "bfloat16"
    c.data.test_batch_size = 256
    return c
