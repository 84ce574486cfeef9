"""Interoperability: official ARM checkpoints (OliverRensu/ARM), timm, Hub-style model directories.

- :mod:`.official`: writing the official layout back (``to_official`` / ``save_official``); reading an official
  ``.pth`` (``read_official_checkpoint``, ``load_official``) is :mod:`armvision.weights.official`, re-exported;
- :mod:`.timm_models`: the ARM classifiers in timm's registry (``timm.create_model("arm_base_pz16")``),
  their pretrained cfgs and ``checkpoint_filter_fn``;
- :mod:`.hub`: ``save_pretrained`` / ``from_pretrained`` (config.json + model.safetensors + model card);
- :mod:`.convert`: what ``armvision convert`` does (:mod:`armvision.cli.interop` parses its flags).

Mapping weights onto a model (pretraining -> classifier, classifier -> classifier) is not here but in
:mod:`armvision.weights`, which every loader above calls. Importing this package registers the ARM
classifiers with timm. It sits above :mod:`armvision.models` and :mod:`armvision.weights`; nothing below imports
it.
"""

from . import timm_models  # noqa: F401  (registers the models with timm)
from .official import (
    CheckpointError,
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
    "to_official",
    "save_official",
]
