"""The human parser whose maps become the semantic perception head's targets: SCHP's AugmentCE2P (LIP, ResNet-101)
in Flax, inference only, with SCHP's own pre- and post-processing (docs/parsing.md).

* :mod:`tmspr_jax.parser.network`: the network (:class:`AugmentCE2P`, :class:`Arch`);
* :mod:`tmspr_jax.parser.preprocess`: SCHP's affine warps, normalisation and palette;
* :mod:`tmspr_jax.parser.weights`: the converted folder (``python -m convert_weights schp``);
* :mod:`tmspr_jax.parser.runner`: batched ``jax.jit`` inference over every device, restartable.

Which is which: this package is the parser network and its runner; ``python -m tmspr_jax.tools.parse`` runs it over a
folder of images and writes SCHP's map files; :mod:`tmspr_jax.data.parsing` turns maps (or this parser's logits)
into HSPM's per-patch training targets. This package imports nothing else from ``tmspr_jax``.
"""

from tmspr_jax.parser.network import Arch, AugmentCE2P
from tmspr_jax.parser.weights import load_parser, save_parser

__all__ = ["Arch", "AugmentCE2P", "load_parser", "save_parser"]
