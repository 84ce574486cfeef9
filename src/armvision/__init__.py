"""armvision: autoregressive pretraining (ARM) of Mamba vision models, in plain PyTorch.

Where things are (layers go one way: ops -> layers -> models -> data / weights / interop -> train -> CLI):

- :mod:`armvision.models`: the modules (:class:`ARMPretrain`, :class:`ARMClassifier`), the registry
  (:func:`create_model`) and writing a model directory (:func:`save_model`); models never load weights;
- :mod:`armvision.weights`: **where weights are loaded** -- every source (model / checkpoint / run
  directories, ``.safetensors``, official ``.pth``, state dicts) read into one ``Weights`` by
  ``read_weights``, the pretraining -> classifier and classifier -> classifier mappings, :func:`load_model`;
- :mod:`armvision.data`: datasets, image folders, the transforms (one evaluation transform);
- :mod:`armvision.features`: features of a batch or of an image folder;
- :mod:`armvision.interop`: official checkpoints (reading the pickle, writing it back), timm, Hub directories;
- :mod:`armvision.train`: the recipe's config, the trainer, checkpoints of a run, evaluation;
- :mod:`armvision.analysis`: frozen-feature probes, pictures and predictions of a checkpoint.

Command line: the package :mod:`armvision.cli` -- a dispatcher, one guard (one-line errors, ``--debug``, exit
codes) and one module per command group (``cli/train.py``, ``cli/interop.py``, ``cli/features.py``,
``cli/analysis.py``); each parses flags, calls the library functions named in its docstring and prints.
"""

from .models import ARMClassifier, ARMPretrain, create_model, list_models, save_model

__version__ = "0.1.0"

# interoperability (official checkpoints, timm registration, Hub layout); importing it registers the ARM
# classifiers with timm. It comes before .weights, which reads official checkpoints through it.
from .interop import (  # noqa: E402  (after __version__, which interop.hub records)
    CheckpointError,
    is_official_checkpoint,
    load_official,
    save_official,
    to_official,
)
from .interop.hub import from_pretrained, save_pretrained  # noqa: E402
from .weights import (  # noqa: E402
    init_classifier_from_official,
    init_classifier_from_pretraining,
    load_model,
)
from .features import Features, extract_features  # noqa: E402

__all__ = [
    "create_model",
    "list_models",
    "ARMPretrain",
    "ARMClassifier",
    "init_classifier_from_pretraining",
    "save_model",
    "load_model",
    "load_official",
    "init_classifier_from_official",
    "is_official_checkpoint",
    "to_official",
    "save_official",
    "CheckpointError",
    "save_pretrained",
    "from_pretrained",
    "extract_features",
    "Features",
    "__version__",
]
