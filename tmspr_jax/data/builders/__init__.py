"""TFDS builders of the re-ID datasets; importing this package registers them with ``tensorflow_datasets``.

Each builder reads a dataset's own release layout from a manual-download folder and writes ``array_record`` splits
``train`` / ``query`` / ``gallery`` (test-only sets: ``query`` / ``gallery``) of records
``{'image': encoded bytes, 'pid': int64, 'camid': int64, 'file_name': str}`` (docs/interfaces.md).
"""

from __future__ import annotations

from tmspr_jax.data.builders.base import CorruptImageError, DatasetLayoutError, ReIDBuilder
from tmspr_jax.data.builders.custom import Custom, CustomConfig, custom_builder
from tmspr_jax.data.builders.dukemtmc_reid import DukemtmcReid
from tmspr_jax.data.builders.market1501 import Market1501
from tmspr_jax.data.builders.msmt17 import Msmt17
from tmspr_jax.data.builders.occluded_duke import OccludedDuke
from tmspr_jax.data.builders.occluded_reid import OccludedReid, OccludedReidConfig
from tmspr_jax.data.builders.partial_reid import PartialReid
from tmspr_jax.data.builders.synthetic_occluded import SyntheticOccluded

BUILDERS: dict[str, type[ReIDBuilder]] = {
    cls.name: cls
    for cls in (Market1501, DukemtmcReid, OccludedDuke, OccludedReid, PartialReid, Msmt17, SyntheticOccluded)
}
# Names a dataset may have: the builders above, and custom/<name> for the user's own folders (not registered with
# tfds: its configs are named by the user, see builders.custom).
DATASET_NAMES = [*sorted(BUILDERS), "custom/<name>"]

__all__ = [
    "BUILDERS",
    "DATASET_NAMES",
    "CorruptImageError",
    "Custom",
    "CustomConfig",
    "DatasetLayoutError",
    "DukemtmcReid",
    "Market1501",
    "Msmt17",
    "OccludedDuke",
    "OccludedReid",
    "OccludedReidConfig",
    "PartialReid",
    "ReIDBuilder",
    "SyntheticOccluded",
    "custom_builder",
]
