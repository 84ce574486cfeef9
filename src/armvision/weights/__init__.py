"""Where armvision reads model weights: every source, one result, and the mappings between the two models.

Every command and API that loads ARM weights comes through here: ``armvision.load_model``,
``from_pretrained``, ``finetune --init`` (:func:`init_classifier`), ``armvision convert``, ``extract``
and ``eval``, and timm's ``pretrained=True`` (``checkpoint_filter_fn``).

Sources :func:`read_weights` accepts, all read into one :class:`Weights` (kind, state dict, config, source):

* an armvision model directory (``config.json`` + ``model.safetensors``: :func:`armvision.save_model`,
  ``save_pretrained``, every training checkpoint), a training checkpoint folder ``checkpoints/step_*``
  or a run directory (its ``best`` checkpoint, else its latest): :func:`find_checkpoint`, which with the
  names of a checkpoint's files is :mod:`.layout`, the one description of checkpoints on disk;
* a ``.safetensors`` file (with a ``config.json`` beside it: that model directory; alone: bare weights);
* a PyTorch pickle (``.pth``, ``.pt``, ...): an official ARM checkpoint, read without unpickling arbitrary
  objects and checked key by key (:mod:`.official`, :mod:`.official_vim`: :func:`read_official_checkpoint`);
* a state dict, or a checkpoint dict holding one (``{'model': ..., 'model_ema': ...}``), in memory.

``kind`` is :data:`PRETRAINING` (weights of :class:`~armvision.ARMPretrain`) or :data:`CLASSIFIER`
(weights of :class:`~armvision.ARMClassifier`, i.e. a fine-tuning or fine-tuned model).

Mappings onto a classifier (:func:`classifier_state_dict`, :func:`init_classifier`):

* pretraining -> classifier (the reference's fine-tuning start): patch embedding and blocks copied, each
  mixer's forward direction copied into every scan direction, the 2-D position embedding resized
  bicubically to the classifier's grid with a zero class-token slot inserted in the middle; the decoder
  is dropped; cls_token keeps its init, norm_f and the head are re-initialised;
* classifier -> classifier: every weight copied, the position embedding resized when the grids differ,
  the head kept from the target classifier when its shape differs (another class count).

Errors are :class:`armvision.errors.CheckpointError` (with ``missing`` / ``unexpected`` / ``mismatched``
lists where a key check failed), :meth:`Weights.build` included; the mapping functions keep their KeyError /
ValueError. This package sits below :mod:`armvision.interop` (which writes the official layout back and holds
the conversion commands) and never imports it.
"""

from . import layout, mapping, official, read
from .layout import find_checkpoint, is_sharded_checkpoint, is_training_checkpoint
from .mapping import (
    ENCODER_KEYS,
    classifier_for,
    classifier_state_dict,
    classifier_state_dict_from_classifier,
    classifier_state_dict_from_pretraining,
    encoder_mismatch,
    init_classifier,
    init_classifier_from_official,
    init_classifier_from_pretraining,
)
from .official import (
    CLASSIFIER,
    PRETRAINING,
    OfficialCheckpoint,
    load_official,
    read_official_checkpoint,
    reference_kind,
)
from .read import (
    Weights,
    is_model_dir,
    is_pickle_file,
    link_target,
    load_model,
    pickle_message,
    read_config,
    read_weights,
    resolve_model_dir,
    step_dirs,
)

__all__ = [*read.__all__, *mapping.__all__, "OfficialCheckpoint", "read_official_checkpoint", "load_official",
           "reference_kind", "find_checkpoint", "is_sharded_checkpoint", "is_training_checkpoint"]
