"""armvision: autoregressive pretraining (ARM) of Mamba vision models, in plain PyTorch."""

from .models import (
    ARMClassifier,
    ARMPretrain,
    create_model,
    init_classifier_from_pretraining,
    list_models,
    load_model,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "create_model",
    "list_models",
    "ARMPretrain",
    "ARMClassifier",
    "init_classifier_from_pretraining",
    "save_model",
    "load_model",
    "__version__",
]
