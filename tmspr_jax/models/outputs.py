"""What the T-MSPR model returns in training, by name (docs/reference.md §8).

The reference returns two positional lists, 15 classifier logits and 18 features, which its loss decodes by index.
Here every box of the paper's figure has a field; :func:`reference_order` and :func:`from_reference_order` convert
to and from the reference's lists, for the parity tests against the PyTorch oracle and for the comparison tool.

Fields that belong to a module switched off (``model.multi_view``, ``model.perception``, ``model.recovery``) are
``None`` (the per-view fields then hold the based view only).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import struct

NUM_REFERENCE_LOGITS = 15
NUM_REFERENCE_FEATS = 18


@struct.dataclass
class TrainOutputs:
    """T-MSPR's training outputs. ``B`` batch, ``D`` width, ``C`` identities, ``(gh, gw)`` the patch grid.

    * ``global_feats`` / ``global_logits``: b1's cls feature of each view (based, amplifying, covering, shrinking)
      ``[B, D]`` and its classifier's logits on the BNNeck feature ``[B, C]``.
    * ``jpm_feats`` / ``jpm_logits``: the four JPM group features (b2) and their logits.
    * ``parsing_logits``: HSPM's raw per-patch part logits ``O [B, gh, gw, 6]`` (background, head, upper body,
      accessory, legs, feet), trained by the segmentation loss.
    * ``part_feats`` / ``part_logits``: HSPM's six part features (b2 over the part-weighted tokens; 0 = foreground,
      1..5 = the body parts) and their logits.
    * ``visible_parts``: ``Q [B, 5, D]``, the part features 1..5 stacked, as HSRM receives them.
    * ``recovered_parts``: HSRM's ``Qc [B, 5, D]``, parts 1..5 with the invisible ones taken from the nearest sample.
    * ``recovered_feat`` / ``recovered_logits``: b2 over ``Qc`` and its logits.
    """

    global_feats: tuple[jax.Array, ...]
    global_logits: tuple[jax.Array, ...]
    jpm_feats: tuple[jax.Array, ...]
    jpm_logits: tuple[jax.Array, ...]
    parsing_logits: jax.Array | None = None
    part_feats: tuple[jax.Array, ...] | None = None
    part_logits: tuple[jax.Array, ...] | None = None
    visible_parts: jax.Array | None = None
    recovered_parts: jax.Array | None = None
    recovered_feat: jax.Array | None = None
    recovered_logits: jax.Array | None = None

    def all_logits(self) -> tuple[jax.Array, ...]:
        """Every classifier's logits, in the reference's order (those of modules switched off left out)."""
        extra = () if self.recovered_logits is None else (self.recovered_logits,)
        return (*self.global_logits, *self.jpm_logits, *extra, *(self.part_logits or ()))


def reference_order(out: TrainOutputs) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """``(logits, feats)`` as the reference's training forward returns them: 15 logits and 18 features.

    logits: ``[global x4, JPM x4, recovered, foreground part, parts 1..5]``;
    feats: ``[global 1, O, Q, Qc, global 2..4, JPM x4, recovered, foreground part, parts 1..5]``.
    Only defined for the full model (every module on).
    """
    if out.recovered_parts is None or out.part_feats is None or len(out.global_feats) != 4:
        raise ValueError(
            "reference_order: the reference's lists exist only for the full model "
            "(four views, perception and recovery on)"
        )
    logits = out.all_logits()
    feats = (
        out.global_feats[0],
        out.parsing_logits,
        out.visible_parts,
        out.recovered_parts,
        *out.global_feats[1:],
        *out.jpm_feats,
        out.recovered_feat,
        *out.part_feats,
    )
    return logits, feats


def from_reference_order(logits: Sequence[jax.Array], feats: Sequence[jax.Array]) -> TrainOutputs:
    """The inverse of :func:`reference_order`: name the reference's 15 logits and 18 features."""
    if len(logits) != NUM_REFERENCE_LOGITS:
        raise ValueError(f"from_reference_order: expected {NUM_REFERENCE_LOGITS} logits, got {len(logits)}")
    if len(feats) != NUM_REFERENCE_FEATS:
        raise ValueError(f"from_reference_order: expected {NUM_REFERENCE_FEATS} feats (features), got {len(feats)}")
    return TrainOutputs(
        global_feats=(feats[0], *feats[4:7]),
        global_logits=tuple(logits[0:4]),
        jpm_feats=tuple(feats[7:11]),
        jpm_logits=tuple(logits[4:8]),
        parsing_logits=feats[1],
        visible_parts=feats[2],
        part_feats=tuple(feats[12:18]),
        part_logits=tuple(logits[9:15]),
        recovered_parts=feats[3],
        recovered_feat=feats[11],
        recovered_logits=logits[8],
    )
