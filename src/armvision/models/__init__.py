"""ARM models (plain PyTorch modules), the registry behind :func:`armvision.create_model`, and writing a
model directory.

- :mod:`.arm`: :class:`ARMPretrain` (autoregressive pretraining) and :class:`ARMClassifier` (fine-tuning);
- :mod:`.vim`: the Vim family's sizes (Vim is ``ARMClassifier(block="vim", ...)``);
- :mod:`.config`: the constructor arguments as typed configs (:class:`PretrainConfig`, :class:`ClassifierConfig`
  and the Vim family's), from which their checks, ``--help`` rows and the weights mappings' keys derive;
- :mod:`.registry`: the size table :data:`MODEL_SIZES`, :func:`create_model`, :func:`list_models`;
- :mod:`.io`: ``config.json`` + ``model.safetensors`` (:func:`save_model`, :func:`build_model`).

Models never load weights: reading any ARM weights (model directories, checkpoints, official ``.pth``,
state dicts) and mapping pretraining weights onto a classifier is :mod:`armvision.weights`.
"""

from __future__ import annotations

from .arm import ARMClassifier, ARMPretrain, Geometry, default_memory_layers
from .config import ClassifierConfig, PretrainConfig, VimClassifierConfig, VimPretrainConfig
from .io import build_model, model_config, save_model
from .registry import CLASSIFIER_ARGS, MODEL_SIZES, create_model, list_models, model_args

__all__ = [
    "ARMPretrain",
    "ARMClassifier",
    "Geometry",
    "create_model",
    "list_models",
    "model_args",
    "default_memory_layers",
    "MODEL_SIZES",
    "CLASSIFIER_ARGS",
    "save_model",
    "build_model",
    "model_config",
    "PretrainConfig",
    "ClassifierConfig",
    "VimPretrainConfig",
    "VimClassifierConfig",
]
