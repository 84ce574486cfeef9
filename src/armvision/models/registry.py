"""The model registry: names -> sizes, and :func:`create_model` (the one table; timm's registration in
:mod:`armvision.interop.timm_models` builds from it)."""

from __future__ import annotations

from torch import nn

from .arm import ARMClassifier, ARMPretrain
from .config import arg_names, family_classifier_args
from .vim import VIM_SIZES

__all__ = ["MODEL_SIZES", "CLASSIFIER_ARGS", "list_models", "model_args", "create_model"]

# name -> encoder size; everything else is the reference's default (patch 16; pretraining at
# 192px with clusters of 4x4 patches; classifiers at 224px with 1000 classes)
MODEL_SIZES: dict[str, dict] = {
    "arm_tiny_pz16": dict(embed_dim=192, depth=12),
    "arm_small_pz16": dict(embed_dim=384, depth=12),
    "arm_base_pz16": dict(embed_dim=768, depth=12),
    "arm_large_pz16": dict(embed_dim=1024, depth=24),
    "arm_huge_pz16": dict(embed_dim=1536, depth=24),
    **VIM_SIZES,  # the Vim family: Vim blocks (block="vim")
}
# name -> the classifier's arguments beyond its encoder size: its family's (the Vim classifiers' two directions,
# pooling, ...; none for ARM's)
CLASSIFIER_ARGS: dict[str, dict] = {name: args for name, size in MODEL_SIZES.items()
                                    if (args := family_classifier_args(size.get("block", "mambamlp")))}


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: ARM's, then Vim's, each smallest first."""
    return list(MODEL_SIZES)


def model_args(name: str, pretraining: bool = False, **overrides) -> dict:
    """The constructor arguments ``create_model(name, pretraining, **overrides)`` would use."""
    if name not in MODEL_SIZES:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    allowed = arg_names(pretraining)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        kind = "pretraining" if pretraining else "classifier"
        raise TypeError(f"unknown argument(s) {unknown} for the {kind} model {name!r}; allowed: {', '.join(allowed)}")
    family = {} if pretraining else CLASSIFIER_ARGS.get(name, {})
    return {**MODEL_SIZES[name], "patch_size": 16, **family, **overrides}


def create_model(name: str, pretraining: bool = False, **overrides) -> nn.Module:
    """Build an ARM model by name.

    Args:
        name: one of :func:`list_models` (``arm_tiny_pz16`` ... ``arm_huge_pz16``; ``vim_tiny_pz16``,
            ``vim_small_pz16``, ``vim_base_pz16``: the Vim family, :mod:`armvision.models.vim`).
        pretraining: the autoregressive pretraining model (:class:`ARMPretrain`) instead of the
            classifier (:class:`ARMClassifier`: four directions for ARM, two for Vim).
        overrides: any constructor argument of that class (img_size, cluster_size, num_classes, ...).
    """
    args = model_args(name, pretraining, **overrides)
    model = (ARMPretrain if pretraining else ARMClassifier)(**args)
    model.model_name = name
    return model
