"""DukeMTMC-reID (reference configs/DukeMTMC/vit_transreid_stride.yml).

Command::

    python -m tmspr_jax.main --config=configs/duke.py --workdir=workdirs/duke \
        --config.model.pretrained=jx_vit_base_p16_224-80ecf9dd.pth

Data: DukeMTMC-reID (``bounding_box_train``, ``query``, ``bounding_box_test``), prepared with
``python -m tmspr_jax.tools.prepare --dataset dukemtmc_reid --manual_dir DIR``, plus parsing targets for its training
images. Split: train 702 ids / 16,522 images / 8 cameras; query 702 / 2,228; gallery 1,110 / 17,661.

Stride 12 as the reference's yml (which crashes the reference's hard-coded grid; derived here). The paper reports no
DukeMTMC figure for this code. Run time: 300 epochs of ~500 steps: roughly 10-12 h on one H100 in bfloat16 (estimate).
"""

from tmspr_jax import config as common


def get_config():
    c = common.get_base_config()
    c.data.train = "dukemtmc_reid"
    c.data.test = "dukemtmc_reid"
    c.model.stride = (12, 12)
    c.train.epochs = 300
    c.train.eval_period = 10
    c.optim.base_lr = 0.01
    # mixed precision as the reference's fp16 autocast: bfloat16 matmuls; parameters, optimiser, norms, softmax,
    # losses and the test features (eval.dtype) float32. --config.model.dtype=float32 trains in float32.
    c.model.dtype = "bfloat16"
    c.data.test_batch_size = 256
    return c
