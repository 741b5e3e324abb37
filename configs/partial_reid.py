"""Partial-REID: train on Market-1501, test on Partial-REID (reference configs/Partial_ReID).

Command::

    python -m tmspr_jax.main --config=configs/partial_reid.py --workdir=workdirs/partial_reid \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: Market-1501 (training, with parsing targets) and Partial-REID (``partial_body_images/*.jpg`` as query, camera 0;
``whole_body_images/*.jpg`` as gallery, camera 1; 60 ids x 5 + 5 images). Prepare both with
``python -m tmspr_jax.tools.prepare --dataset market1501 ...`` and ``--dataset partial_reid ...``.

Expected result (paper): 86.0 mAP / 90.0 Rank-1. Run time: 20 epochs of ~400 steps: about 1 h on one H100 (estimate).
"""

from tmspr_jax import config as common


def get_config():
    c = common.get_base_config()
    c.data.train = "market1501"
    c.data.test = "partial_reid"
    c.data.mean = common.IMAGENET_MEAN
    c.data.std = common.IMAGENET_STD
    c.model.stride = (11, 11)
    c.train.epochs = 20
    c.train.eval_period = 1
    c.optim.base_lr = 1e-4
    # mixed precision as the reference's fp16 autocast: bfloat16 matmuls; parameters, optimiser, norms, softmax,
    # losses and the test features (eval.dtype) float32. --config.model.dtype=float32 trains in float32.
    c.model.dtype = "bfloat16"
    c.data.test_batch_size = 256
    return c
