"""T-MSPR models: the TransReID ViT backbone and the T-MSPR branches (Flax linen).

The PyTorch oracles live in :mod:`tmspr_jax.oracles` and are not imported here (torch is optional).
"""

from tmspr_jax.models.outputs import TrainOutputs, from_reference_order, reference_order
from tmspr_jax.models.tmspr import TMSPR, build_model, init_variables
from tmspr_jax.models.vit import VisionTransformer, patch_grid

__all__ = [
    "TMSPR",
    "TrainOutputs",
    "VisionTransformer",
    "build_model",
    "from_reference_order",
    "init_variables",
    "patch_grid",
    "reference_order",
]
