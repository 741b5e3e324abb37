"""T-MSPR models: the TransReID ViT backbone and the T-MSPR branches (Flax linen).

The PyTorch oracles live in :mod:`tmspr_jax.oracles` and is not imported here (torch is optional).
"""

from tmspr_jax.models.tmspr import TMSPR, TrainOutputs, build_model, init_variables
from tmspr_jax.models.vit import VisionTransformer, patch_grid

__all__ = ["TMSPR", "TrainOutputs", "VisionTransformer", "build_model", "init_variables", "patch_grid"]
