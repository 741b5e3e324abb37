"""Market-1501 (reference configs/Market/vit_transreid_stride.yml).

Command::

    python -m tmspr_jax.main --config=configs/market.py --workdir=workdirs/market \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: Market-1501-v15.09.15 (``bounding_box_train``, ``query``, ``bounding_box_test``), prepared with
``python -m tmspr_jax.tools.prepare --dataset market1501 --manual_dir DIR``, plus parsing targets for its training
images (``python -m tmspr_jax.tools.parsing_targets``). Split: train 751 ids / 12,936 images / 6 cameras; query 750 /
3,368; gallery 752 / 15,913 (pid 0 distractors kept, -1 junk dropped).

The reference's stride 12 (21x10 grid) crashes its hard-coded 22x11 reshape; here the grid is derived, so it runs.
The paper reports no Market-1501 figure for this code; TransReID-JPM reaches about 88-89 mAP / 95 Rank-1.
Run time: 300 epochs of ~400 steps: roughly 8-10 h on one H100 in bfloat16 (estimate).
"""

from tmspr_jax import config as common


def get_config():
    c = common.get_base_config()
    c.data.train = "market1501"
    c.data.test = "market1501"
    c.model.stride = (12, 12)
    c.train.epochs = 300
    c.train.eval_period = 5
    c.optim.base_lr = 0.008
    # mixed precision as the reference's fp16 autocast: bfloat16 matmuls; parameters, optimiser, norms, softmax,
    # losses and the test features (eval.dtype) float32. --config.model.dtype=float32 trains in float32.
    c.model.dtype = "bfloat16"
    c.data.test_batch_size = 32
    return c
