"""ARM and Vim classifiers in timm's model registry.

After ``import armvision``::

    model = timm.create_model("arm_base_pz16", pretrained=True, pretrained_cfg_overlay=dict(file=PATH))

builds the four-direction :class:`~armvision.ARMClassifier` through timm's own builder
(``build_model_with_cfg``), so every timm convention applies: ``pretrained_cfg`` (input size,
mean/std, crop, interpolation, classifier name) for ``timm.data.resolve_data_config`` and
``create_transform``, ``num_classes`` / ``in_chans`` / ``global_pool`` / ``drop_path_rate`` keyword
arguments, a new head when ``num_classes`` differs from the weights', ``features_only=True`` (a
``FeatureGetterNet`` over ``forward_intermediates``), ``reset_classifier``, ``group_matcher`` for
layer-wise lr decay.

``PATH`` may be any ARM weights: an official checkpoint (pretraining or fine-tuning ``.pth``), an
armvision model directory or its ``model.safetensors``, or a state dict saved by ``torch.save``.
Pickles are read with :func:`~armvision.interop.official.safe_torch_load` (``weights_only`` with an
allow-list), never by timm's generic loader; :func:`checkpoint_filter_fn` then maps the weights onto
the classifier (a pretraining checkpoint initialises it as the reference's fine-tuning does).

Hub downloads: the pretrained cfgs name the official repository (``hf_hub_id = "OliverRen/ARM"``),
but the file names in it were never seen by armvision (no network when it was written), so
``pretrained=True`` needs either ``pretrained_cfg_overlay=dict(file=PATH)`` or
``pretrained_cfg_overlay=dict(hf_hub_filename=NAME)`` (downloaded with ``huggingface_hub``; unverified).
The Vim names (``vim_tiny_pz16``, ``vim_small_pz16``, ``vim_base_pz16``: :mod:`armvision.models.vim`) name
hustvl's repositories; for Vim-T and Vim-S the file names are those of the Hub's file listing (never
downloaded by armvision), for Vim-B none is known.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from torch import Tensor

from ..data.transforms import reference_crop_pct
from ..models import CLASSIFIER_ARGS, MODEL_SIZES, ARMClassifier
from ..weights import CLASSIFIER, classifier_state_dict, read_weights

__all__ = ["OFFICIAL_HUB_ID", "checkpoint_filter_fn", "default_cfgs",
           "arm_tiny_pz16", "arm_small_pz16", "arm_base_pz16", "arm_large_pz16", "arm_huge_pz16",
           "vim_tiny_pz16", "vim_small_pz16", "vim_base_pz16"]

OFFICIAL_HUB_ID = "OliverRen/ARM"
_UNVERIFIED = ("Official ARM weights (OliverRensu/ARM). The file names on the Hub are not verified by armvision: "
               "pass pretrained_cfg_overlay=dict(file=PATH) or dict(hf_hub_filename=NAME).",)


def _cfg(**kwargs) -> dict[str, Any]:
    # eval transform of the reference (Finetuning/util/datasets.py): squash both sides to size / crop_pct
    # (bicubic; timm's crop_mode "squash"), center crop (crop_pct: reference_crop_pct)
    size = kwargs.get("input_size", (3, 224, 224))
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": reference_crop_pct(max(size[1:])), "crop_mode": "squash", "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2406.07537", "paper_name": "Autoregressive Pretraining with Mamba in Vision",
        "origin_url": "https://github.com/OliverRensu/ARM", **kwargs,
    }


# Vim's evaluation (vim/datasets.py, DeiT's): resize the shorter side to size / 0.875 (bicubic), center crop,
# at every size
_VIM_CROP_PCT = 0.875


def _vim_cfg(**kwargs) -> dict[str, Any]:
    # Vim evaluates as DeiT: the shorter side to size / 0.875, aspect kept, then a center crop
    return _cfg(crop_pct=_VIM_CROP_PCT, crop_mode="center", paper_ids="arXiv:2401.09417",
                paper_name="Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space "
                           "Model", origin_url="https://github.com/hustvl/Vim", **kwargs)


default_cfgs = generate_default_cfgs({
    "arm_tiny_pz16": _cfg(),
    "arm_small_pz16": _cfg(),
    "arm_base_pz16.arm_in1k": _cfg(hf_hub_id=OFFICIAL_HUB_ID, notes=_UNVERIFIED),
    "arm_large_pz16.arm_in1k": _cfg(hf_hub_id=OFFICIAL_HUB_ID, notes=_UNVERIFIED),
    "arm_huge_pz16.arm_in1k": _cfg(hf_hub_id=OFFICIAL_HUB_ID, notes=_UNVERIFIED),
    "arm_huge_pz16.arm_in1k_384": _cfg(hf_hub_id=OFFICIAL_HUB_ID, notes=_UNVERIFIED, input_size=(3, 384, 384)),
    "vim_tiny_pz16.vim_in1k": _vim_cfg(hf_hub_id="hustvl/Vim-tiny-midclstok",
                                       hf_hub_filename="vim_t_midclstok_76p1acc.pth"),
    "vim_small_pz16.vim_in1k": _vim_cfg(hf_hub_id="hustvl/Vim-small-midclstok",
                                        hf_hub_filename="vim_s_midclstok_80p5acc.pth"),
    "vim_base_pz16.vim_in1k": _vim_cfg(hf_hub_id="hustvl/Vim-base-midclstok",
                                       notes=("Official Vim-B weights (hustvl/Vim): pass pretrained_cfg_overlay="
                                              "dict(file=PATH) or dict(hf_hub_filename=NAME).",)),
})


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: ARMClassifier) -> dict[str, Tensor]:
    """Map any ARM weights onto ``model`` (timm's ``pretrained_filter_fn``): :func:`armvision.weights.read_weights`
    then :func:`armvision.weights.classifier_state_dict`.

    Accepts armvision classifier weights and official fine-tuning weights (the same names: position
    embedding resized to the model's grid, the head kept from the model when its shape differs), and
    pretraining weights, armvision's or official (the encoder copied into every scan direction and
    the position embedding resized, as the reference's fine-tuning starts; cls_token, norm_f and the
    head keep the model's initialisation). A whole checkpoint dict is reduced to its state dict.
    """
    weights = read_weights(state_dict)
    weights.state_dict.pop("mask", None)  # the official pretraining decoder mask: derived from the geometry
    weights.source = "pretrained weights"
    return classifier_state_dict(weights, model)


def _download(repo_id: str, filename: str, cache_dir: str | os.PathLike | None) -> str:
    try:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
    except Exception as e:
        raise RuntimeError(f"could not download {filename!r} from the Hugging Face Hub repository {repo_id!r} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); download it yourself "
                           "and pass pretrained_cfg_overlay=dict(file=PATH)") from e


def _resolve_weights(variant: str, pretrained_cfg: Any, overlay: dict[str, Any], kwargs: dict[str, Any]) -> dict:
    """Read the weights a ``pretrained=True`` call names into ``overlay['state_dict']``, so that timm's
    loader passes them to :func:`checkpoint_filter_fn` instead of unpickling the file itself. What the
    weights say about the model (class count, the reference's pooling flag) becomes its default."""
    if overlay.get("state_dict") is not None:
        return overlay
    # the variant's registered cfg (its tag's, when the name had one): where its weights live
    base = pretrained_cfg if isinstance(pretrained_cfg, Mapping) else \
        resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg).to_dict()
    file = overlay.get("file") or base.get("file")
    if not file:
        filename = overlay.get("hf_hub_filename") or base.get("hf_hub_filename")
        if not filename:
            raise RuntimeError(
                f"{variant}: no verified download location for its pretrained weights. Pass the weights file: "
                f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file=PATH)) (an "
                f"official .pth, an armvision model directory or model.safetensors), or name a file of the Hub "
                f"repository {overlay.get('hf_hub_id') or base.get('hf_hub_id') or OFFICIAL_HUB_ID!r} with "
                "pretrained_cfg_overlay=dict(hf_hub_filename=NAME)")
        repo = overlay.get("hf_hub_id") or base.get("hf_hub_id") or OFFICIAL_HUB_ID
        file = _download(repo, filename, kwargs.get("cache_dir"))
    weights = read_weights(file)
    out = {**overlay, "state_dict": weights.state_dict, "file": str(file)}
    if weights.kind == CLASSIFIER:
        sd = weights.state_dict
        # the class count of these weights: the model's default, and what timm compares num_classes with
        # before it keeps or drops the head
        out.setdefault("num_classes", int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0)
        if weights.official is not None and "global_pool" in weights.official.args:
            # as the reference's fine-tuning model reads its flag
            kwargs.setdefault("global_pool", weights.args["global_pool"])
    return out


def _create_arm(variant: str, pretrained: bool = False, **kwargs) -> ARMClassifier:
    out_indices = kwargs.pop("out_indices", 3)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    if pretrained:
        overlay = _resolve_weights(variant, kwargs.get("pretrained_cfg"), overlay, kwargs)
    args = {**MODEL_SIZES[variant], "patch_size": 16, **CLASSIFIER_ARGS.get(variant, {}), **kwargs}
    model = build_model_with_cfg(
        ARMClassifier, variant, pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **args,
    )
    inner = getattr(model, "model", model)  # a FeatureGetterNet wraps the classifier
    inner.model_name = variant
    input_size = (inner.geometry.in_chans, *inner.geometry.img_size)
    for m in (model, inner):
        cfg = getattr(m, "pretrained_cfg", None)
        if not isinstance(cfg, dict):
            continue
        cfg.pop("state_dict", None)  # the weights were only passed through the cfg: don't keep them there
        if tuple(cfg.get("input_size", ())) != input_size:
            # a model built for another input size: its data config follows it
            cfg["input_size"] = input_size
            cfg["crop_pct"] = _VIM_CROP_PCT if variant in CLASSIFIER_ARGS else reference_crop_pct(max(input_size[1:]))
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


@register_model
def arm_tiny_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """ARM tiny (width 192, depth 12, patch 16): our small size for tests and demos; no published weights."""
    return _create_arm("arm_tiny_pz16", pretrained, **kwargs)


@register_model
def arm_small_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """ARM small (width 384, depth 12, patch 16): no published weights."""
    return _create_arm("arm_small_pz16", pretrained, **kwargs)


@register_model
def arm_base_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """ARM-B (width 768, depth 12, patch 16; 85.0M parameters at 224 px): 83.2% ImageNet-1k in the paper."""
    return _create_arm("arm_base_pz16", pretrained, **kwargs)


@register_model
def arm_large_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """ARM-L (width 1024, depth 24, patch 16; 297.0M parameters): 84.5% ImageNet-1k in the paper."""
    return _create_arm("arm_large_pz16", pretrained, **kwargs)


@register_model
def arm_huge_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """ARM-H (width 1536, depth 24, patch 16; 662.7M parameters): 85.0% (224 px) / 85.5% (384 px) in the paper."""
    return _create_arm("arm_huge_pz16", pretrained, **kwargs)


@register_model
def vim_tiny_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """Vim-T (width 192, depth 24, patch 16, two scan directions; 7M parameters): 76.1% ImageNet-1k (hustvl/Vim)."""
    return _create_arm("vim_tiny_pz16", pretrained, **kwargs)


@register_model
def vim_small_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """Vim-S (width 384, depth 24, patch 16, two scan directions; 26M parameters): 80.5% ImageNet-1k (hustvl/Vim)."""
    return _create_arm("vim_small_pz16", pretrained, **kwargs)


@register_model
def vim_base_pz16(pretrained: bool = False, **kwargs) -> ARMClassifier:
    """Vim-B (width 768, depth 24, patch 16, two scan directions; 98M parameters): 81.9% ImageNet-1k (hustvl/Vim)."""
    return _create_arm("vim_base_pz16", pretrained, **kwargs)
