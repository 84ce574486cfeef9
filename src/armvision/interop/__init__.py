"""Interoperability: official ARM checkpoints, timm, Hub-style model directories, feature extraction.

Importing this package registers the ARM classifiers with timm (``timm.create_model("arm_base_pz16")``).
It sits above :mod:`armvision.models`; nothing below imports it.
"""

from . import timm_models  # noqa: F401  (registers the models with timm)
from .official import (
    CheckpointError,
    init_classifier_from_official,
    is_official_checkpoint,
    load_official,
    read_official_checkpoint,
    save_official,
    to_official,
)

__all__ = [
    "CheckpointError",
    "load_official",
    "read_official_checkpoint",
    "is_official_checkpoint",
    "init_classifier_from_official",
    "to_official",
    "save_official",
]
