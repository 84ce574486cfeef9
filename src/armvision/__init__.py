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

# interoperability (official checkpoints, timm registration, Hub layout, features); importing it
# registers the ARM classifiers with timm
from .interop import (  # noqa: E402  (after __version__, which interop.hub records)
    CheckpointError,
    init_classifier_from_official,
    is_official_checkpoint,
    load_official,
    save_official,
    to_official,
)
from .interop.features import Features, extract_features  # noqa: E402
from .interop.hub import from_pretrained, save_pretrained  # noqa: E402

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
